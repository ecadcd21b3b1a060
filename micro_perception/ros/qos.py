"""QoS profiles: images best effort by default (sensor data), alerts and state reliable."""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}


def image_qos(reliability: str = "best_effort", depth: int = 5) -> QoSProfile:
    """Camera streams: keep last ``depth``; best effort unless the user asks for reliable."""
    if reliability not in RELIABILITY:
        raise ValueError(f"reliability must be one of {sorted(RELIABILITY)}, got {reliability!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=RELIABILITY[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


def alert_qos(depth: int = 10) -> QoSProfile:
    """Safety-relevant outputs (proximity alert): every message must arrive."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos() -> QoSProfile:
    """State a late subscriber must still get (e.g. static camera_info of a replayed setup)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
