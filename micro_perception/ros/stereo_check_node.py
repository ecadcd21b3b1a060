"""stereo_check_node: receives stereo pairs through the synchroniser and verifies them.

Subscribes ``left/image_raw`` and ``right/image_raw`` (plus camera_info), pairs them with
``ApproximateTimeSynchronizer``, checks that every pair from ``stereo_pattern_node`` arrived
bit-exact and consistent, and measures latency as ``now - header.stamp``.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from micro_perception.errors import InputError
from micro_perception.pattern import pattern_index, stereo_pattern
from micro_perception.ros.conversions import camera_infos_to_stereo, image_to_numpy
from micro_perception.ros.params import (
    Parameters,
    ParamSpec,
    image_transport_param,
    qos_params,
)
from micro_perception.ros.qos import image_qos
from micro_perception.ros.runner import log_report, spin_node
from micro_perception.ros.shm_transport import ImageInput
from micro_perception.ros.sync import ApproximateTimeSynchronizer

PARAMS = [
    *qos_params("best_effort", 5, "image subscription"),
    ParamSpec("queue_size", 10, "synchroniser queue per input", 1, 1000, read_only=True),
    ParamSpec("slop", 0.005, "largest stamp difference paired, seconds", 0.0, 1.0, read_only=True),
    ParamSpec("disparity", 8, "pixel shift of the right pattern image", 0, 512),
    image_transport_param(),
]

# Latency samples kept for the percentiles.
_LATENCY_WINDOW = 100_000


class StereoCheckNode(Node):
    def __init__(self, **kwargs):
        super().__init__("stereo_check_node", **kwargs)
        self.params = Parameters(self, PARAMS)
        p = self.params
        qos = image_qos(p["reliability"], p["qos_depth"])
        self._lock = threading.Lock()
        self.pairs = 0
        self.exact = 0
        self.corrupt = 0
        self.bad_input = 0
        self.first_index: int | None = None
        self.last_index: int | None = None
        self.latency_ms: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.stereo = None
        self._info: dict[str, CameraInfo] = {}
        warn = self._transport_error
        left = ImageInput(self, "left/image_raw", qos, p["image_transport"], warn)
        right = ImageInput(self, "right/image_raw", qos, p["image_transport"], warn)
        self.inputs = (left, right)
        self.sync = ApproximateTimeSynchronizer([left, right], p["queue_size"], p["slop"])
        self.sync.registerCallback(self._on_pair)
        self.create_subscription(
            CameraInfo, "left/camera_info", lambda m: self._on_info("left", m), qos
        )
        self.create_subscription(
            CameraInfo, "right/camera_info", lambda m: self._on_info("right", m), qos
        )

    def destroy_node(self):
        for inp in getattr(self, "inputs", ()):
            inp.close()
        return super().destroy_node()

    def _transport_error(self, text: str) -> None:
        with self._lock:
            self.bad_input += 1
        self.get_logger().warning(text, throttle_duration_sec=1.0)

    def _on_info(self, side: str, msg: CameraInfo) -> None:
        self._info[side] = msg
        if self.stereo is None and len(self._info) == 2:
            try:
                self.stereo = camera_infos_to_stereo(self._info["left"], self._info["right"])
            except InputError as exc:
                self.get_logger().warning(
                    f"camera_info pair rejected: {exc}", throttle_duration_sec=5.0
                )

    def _on_pair(self, left_msg: Image, right_msg: Image) -> None:
        now = self.get_clock().now().nanoseconds
        try:
            left = image_to_numpy(left_msg)
            right = image_to_numpy(right_msg)
        except InputError as exc:
            with self._lock:
                self.bad_input += 1
            self.get_logger().warning(f"dropped a stereo pair: {exc}", throttle_duration_sec=1.0)
            return
        index = pattern_index(left)
        want_l, want_r = stereo_pattern(
            index, left.shape[0], left.shape[1], left_msg.encoding, self.params["disparity"]
        )
        ok = np.array_equal(left, want_l) and np.array_equal(right, want_r)
        stamp = left_msg.header.stamp.sec * 1_000_000_000 + left_msg.header.stamp.nanosec
        with self._lock:
            self.pairs += 1
            self.exact += int(ok)
            self.corrupt += int(not ok)
            self.first_index = index if self.first_index is None else min(self.first_index, index)
            self.last_index = index if self.last_index is None else max(self.last_index, index)
            self.latency_ms.append((now - stamp) / 1e6)
        if not ok:
            self.get_logger().error(
                f"pair {index} differs from what was sent", throttle_duration_sec=1.0
            )

    def report(self) -> dict:
        with self._lock:
            lat = np.asarray(self.latency_ms, dtype=np.float64)
            first, last = self.first_index, self.last_index
            expected = 0 if first is None else last - first + 1
            return {
                "pairs": self.pairs,
                "exact": self.exact,
                "corrupt": self.corrupt,
                "bad_input": self.bad_input,
                "missing": expected - self.pairs,
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
                "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
                "latency_ms_max": float(lat.max()) if lat.size else None,
                "baseline_m": self.stereo.baseline if self.stereo else None,
                "convergence_m": self.stereo.convergence_distance if self.stereo else None,
            }


def main(args=None) -> None:
    spin_node(StereoCheckNode, args, on_exit=log_report)


if __name__ == "__main__":
    main()
