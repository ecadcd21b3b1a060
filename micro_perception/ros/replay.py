"""Playing a rosbag2 onto the live graph: ``micro-perception replay`` (``ros2 bag play`` for
machines without a ROS distro).

The bag is read with ``rosbags`` (mcap or sqlite3, including bags ``ros2 bag record`` wrote on a
robot). Each message is published as recorded, in its serialised form (no decoding, so stamps
and contents are the original bytes), at the recorded pace scaled by ``rate``. With ``clock``,
``/clock`` carries the bag's time, so nodes with ``use_sim_time:=true`` follow it. A topic whose
message type this machine does not have is skipped with a warning.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from micro_perception.errors import InputError

CLOCK_PERIOD_NS = 10_000_000  # /clock at least every 10 ms of bag time, as ros2 bag play does


def message_class(type_name: str):
    """The rclpy class of ``pkg/msg/Name``, or None where this machine lacks it."""
    try:
        pkg, kind, name = type_name.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        return None


def _time_msg(ns: int):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


class BagPlayer(Node):
    """Publishes a bag's messages; :meth:`play` runs one pass (or loops) until stopped."""

    def __init__(
        self,
        bag: str | Path,
        rate: float = 1.0,
        loop: bool = False,
        clock: bool = False,
        topics: list[str] | None = None,
        **kwargs,
    ):
        from rosbags.highlevel import AnyReader

        if rate <= 0:
            raise InputError(f"rate must be > 0, got {rate}")
        if not Path(bag).exists():
            raise InputError(f"bag {bag} not found")
        super().__init__("micro_perception_replay", **kwargs)
        self.bag, self.rate, self.loop, self.clock = Path(bag), rate, loop, clock
        try:
            self.reader = AnyReader([self.bag])
            self.reader.open()
        except Exception as exc:  # rosbags raises several types for unreadable bags
            raise InputError(f"{self.bag} is not a readable rosbag2: {exc}") from None
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.connections = []
        self.pubs: dict[str, object] = {}
        self.skipped: dict[str, str] = {}
        for conn in self.reader.connections:
            if topics and conn.topic not in topics:
                continue
            cls = message_class(conn.msgtype)
            if cls is None:
                self.skipped[conn.topic] = conn.msgtype
                self.get_logger().warning(
                    f"{conn.topic}: message type {conn.msgtype} is not installed here; skipped"
                )
                continue
            if conn.topic not in self.pubs:
                self.pubs[conn.topic] = self.create_publisher(cls, conn.topic, qos)
            self.connections.append(conn)
        if not self.connections:
            raise InputError(f"{self.bag} has no topic that can be played here")
        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if clock else None
        self.published: dict[str, int] = {t: 0 for t in self.pubs}
        self.passes = 0

    def wait_for_subscribers(self, count: int, timeout: float = 30.0) -> bool:
        """Until every played topic has ``count`` subscribers (or ``timeout`` s pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() >= count for p in self.pubs.values()):
                return True
            time.sleep(0.05)
        return False

    def _sleep_until(self, wall: float, stop: threading.Event) -> bool:
        while True:
            left = wall - time.monotonic()
            if left <= 0:
                return not stop.is_set()
            if stop.wait(min(left, 0.05)):
                return False

    def play(self, stop: threading.Event | None = None) -> dict:
        """Publish until the bag ends (or, with ``loop``, until ``stop`` is set)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            first = None
            start = time.monotonic()
            last_clock = None
            for conn, t_ns, raw in self.reader.messages(connections=self.connections):
                if first is None:
                    first = t_ns
                if not self._sleep_until(start + (t_ns - first) / 1e9 / self.rate, stop):
                    break
                if self.pub_clock is not None and (
                    last_clock is None or t_ns - last_clock >= CLOCK_PERIOD_NS
                ):
                    self.pub_clock.publish(Clock(clock=_time_msg(t_ns)))
                    last_clock = t_ns
                self.pubs[conn.topic].publish(bytes(raw))
                self.published[conn.topic] += 1
            self.passes += 1
            if not self.loop:
                break
        for pub in self.pubs.values():  # reliable subscribers get the last messages too
            pub.wait_for_all_acked(Duration(seconds=2))
        return {
            "bag": str(self.bag),
            "passes": self.passes,
            "published": dict(self.published),
            "skipped": dict(self.skipped),
        }

    def destroy_node(self):
        self.reader.close()
        return super().destroy_node()
