"""Approximate-time pairing of stereo streams.

On a robot the distro's ``message_filters`` is used. The PyPI ROS wheels do not ship it, so this
module carries an equivalent of the part the package uses, with the same constructor arguments
and semantics: ``Subscriber(node, msg_type, topic, qos_profile=...)`` and
``ApproximateTimeSynchronizer(fs, queue_size, slop, allow_headerless=False)``.

Semantics (as message_filters): each input keeps at most ``queue_size`` messages keyed by stamp,
dropping the oldest; when a message arrives, the closest messages of the other inputs within
``slop`` seconds are tried, nearest first, and the first set whose stamps span less than ``slop``
is emitted and removed from the queues (identical stamps always pair, even at slop 0).
Unmatched older messages stay until pushed out.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence

from rclpy.clock import ROSClock


class SimpleFilter:
    """A message source that callbacks can be registered on (message_filters.SimpleFilter)."""

    def __init__(self):
        self.callbacks: dict[int, tuple[Callable, tuple]] = {}
        self._next_id = 0

    def registerCallback(self, cb: Callable, *args) -> int:  # noqa: N802 - message_filters API
        conn = self._next_id
        self._next_id += 1
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msgs) -> None:  # noqa: N802 - message_filters API
        for cb, args in list(self.callbacks.values()):
            cb(*(msgs + args))


class TopicSubscriber(SimpleFilter):
    """A ROS subscription feeding a filter chain (message_filters.Subscriber)."""

    def __init__(self, node, msg_type, topic: str, qos_profile=10, **kwargs):
        super().__init__()
        self.node = node
        self.topic = topic
        self.sub = node.create_subscription(
            msg_type, topic, self.signalMessage, qos_profile, **kwargs
        )

    def getTopic(self) -> str:  # noqa: N802 - message_filters API
        return self.topic

    def __getattr__(self, name):
        if name == "sub":  # not set yet: construction failed
            raise AttributeError(name)
        return getattr(self.sub, name)


def _stamp_ns(msg) -> int | None:
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class ApproximateTimeSync(SimpleFilter):
    """Emits one message from every input whose stamps lie within ``slop`` seconds."""

    def __init__(
        self, fs: Sequence[SimpleFilter], queue_size: int, slop: float, allow_headerless=False
    ):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop >= 0.0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = round(slop * 1e9)
        self.allow_headerless = allow_headerless
        self.lock = threading.Lock()
        self.queues: list[dict[int, object]] = []
        self.input_connections: list[int] = []
        self.connectInput(fs)

    def connectInput(self, fs: Sequence[SimpleFilter]) -> None:  # noqa: N802 - message_filters API
        self.queues = [{} for _ in fs]
        self.input_connections = [
            f.registerCallback(self.add, q, i)
            for i, (f, q) in enumerate(zip(fs, self.queues, strict=True))
        ]

    def add(self, msg, my_queue: dict[int, object], my_queue_index: int | None = None) -> None:
        stamp = _stamp_ns(msg)
        if stamp is None:
            if not self.allow_headerless:
                return
            stamp = ROSClock().now().nanoseconds
        with self.lock:
            my_queue[stamp] = msg
            while len(my_queue) > self.queue_size:
                del my_queue[min(my_queue)]
            # Older than everything a full queue holds: it was the one dropped.
            matched = self._match(stamp, my_queue_index) if stamp in my_queue else None
        if matched is not None:
            self.signalMessage(*matched)

    def _match(self, stamp: int, index: int | None):
        others = [i for i in range(len(self.queues)) if i != index]
        candidates = []
        for i in others:
            near = sorted(
                (s for s in self.queues[i] if abs(s - stamp) <= self.slop_ns),
                key=lambda s: abs(s - stamp),
            )
            if not near:
                return None
            candidates.append(near)
        for combo in itertools.product(*candidates):
            stamps = dict(zip(others, combo, strict=True))
            if index is not None:
                stamps[index] = stamp
            spread = max(stamps.values()) - min(stamps.values())
            if spread < self.slop_ns or spread == 0:  # identical stamps pair even at slop 0
                ordered = [stamps[i] for i in range(len(self.queues))]
                return tuple(q.pop(s) for q, s in zip(self.queues, ordered, strict=True))
        return None


try:  # the distro's implementation on a robot
    from message_filters import ApproximateTimeSynchronizer, Subscriber

    BACKEND = "message_filters"
except ImportError:
    ApproximateTimeSynchronizer = ApproximateTimeSync
    Subscriber = TopicSubscriber
    BACKEND = "micro_perception.ros.sync"

__all__ = [
    "BACKEND",
    "ApproximateTimeSync",
    "ApproximateTimeSynchronizer",
    "SimpleFilter",
    "Subscriber",
    "TopicSubscriber",
]
