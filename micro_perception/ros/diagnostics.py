"""/diagnostics for the package's nodes: is it healthy, and if not, why.

Each node owns a :class:`Health` and reports events into it; once a second it publishes one
DiagnosticStatus with the output rate, latency (now - header.stamp of the last output), counters
of drops and their last reason, the compute backend, and a level: OK, WARN (no input for a
while, or recent drops) or STALE (nothing received yet).
"""

from __future__ import annotations

import time
from collections import deque

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WARN_AFTER_S = 2.0  # no input for this long: WARN


class Health:
    def __init__(self, node, name: str, period_s: float = 1.0):
        self.node = node
        self.name = f"{node.get_namespace().rstrip('/')}/{node.get_name()}: {name}".lstrip("/")
        self.counters: dict[str, int] = {}
        self.values: dict[str, str] = {}
        self.last_input = None
        self.last_problem = ""
        self.last_problem_time = 0.0
        self._outputs: deque[float] = deque(maxlen=100)
        self._latency_ms: deque[float] = deque(maxlen=100)
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timer = node.create_timer(period_s, self.publish)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def input(self) -> None:
        self.last_input = time.monotonic()

    def output(self, stamp) -> None:
        now_ns = self.node.get_clock().now().nanoseconds
        self._latency_ms.append((now_ns - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e6)
        self._outputs.append(time.monotonic())

    def problem(self, key: str, reason: str) -> None:
        """Count a dropped input and log it, throttled."""
        self.count(key)
        self.last_problem = reason
        self.last_problem_time = time.monotonic()
        self.node.get_logger().warning(reason, throttle_duration_sec=2.0)

    def worker_failed(self, what: str):
        """An ``on_error`` for a node's worker: the failed ``what`` (a stack, a pair) counted
        as an ``error``, except while Ctrl-C shuts the context down, when nothing failed."""

        def on_error(exc: BaseException) -> None:
            if self.node.context.ok():
                self.problem("error", f"{what} failed: {type(exc).__name__}: {exc}")

        return on_error

    def status(self) -> DiagnosticStatus:
        now = time.monotonic()
        if self.last_input is None:
            level, message = DiagnosticStatus.STALE, "no input received yet"
        elif now - self.last_input > WARN_AFTER_S:
            level = DiagnosticStatus.WARN
            message = f"no input for {now - self.last_input:.1f} s"
        elif now - self.last_problem_time < WARN_AFTER_S:
            level, message = DiagnosticStatus.WARN, self.last_problem
        else:
            level, message = DiagnosticStatus.OK, "ok"
        recent = [t for t in self._outputs if now - t < 5.0]
        rate = (
            (len(recent) - 1) / (recent[-1] - recent[0])
            if len(recent) > 1 and (recent[-1] > recent[0])
            else 0.0
        )
        values = {"output_rate_hz": f"{rate:.2f}"}
        if self._latency_ms:
            lat = sorted(self._latency_ms)
            values["latency_ms_p50"] = f"{lat[len(lat) // 2]:.1f}"
            values["latency_ms_max"] = f"{lat[-1]:.1f}"
        values.update({k: str(v) for k, v in self.counters.items()})
        values.update(self.values)
        if self.last_problem:
            values["last_problem"] = self.last_problem
        return DiagnosticStatus(
            level=level,
            name=self.name,
            message=message,
            hardware_id=self.node.get_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [self.status()]
        self.pub.publish(msg)
