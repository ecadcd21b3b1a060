"""fusion_check_node: scores fused images against the virtual microscope's ground truth.

Subscribes ``left/fused/image`` and ``ground_truth/left_aif``, pairs them by stamp (the fused
image carries the stamp of its stack's last slice, which the ground truth shares) and keeps SSIM,
PSNR (scikit-image, data_range 255) and latency (now - header.stamp) of every pair.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from micro_perception.errors import InputError
from micro_perception.ros.conversions import image_to_numpy
from micro_perception.ros.params import Parameters, ParamSpec, qos_params
from micro_perception.ros.qos import image_qos
from micro_perception.ros.runner import log_report, spin_node

PARAMS = [
    *qos_params("reliable", 20, "subscription"),
    ParamSpec("history", 64, "unpaired messages kept per stream", 1, 10000, read_only=True),
]


class FusionCheckNode(Node):
    def __init__(self, **kwargs):
        super().__init__("fusion_check_node", **kwargs)
        self.params = p = Parameters(self, PARAMS)
        qos = image_qos(p["reliability"], p["qos_depth"])
        self._lock = threading.Lock()
        self._truth: OrderedDict[int, Image] = OrderedDict()
        self._fused: OrderedDict[int, Image] = OrderedDict()
        self.scores: deque[tuple[float, float, float]] = deque(maxlen=10000)
        self.last_pair: tuple[np.ndarray, np.ndarray] | None = None
        self.create_subscription(Image, "left/fused/image", self._on_fused, qos)
        self.create_subscription(Image, "ground_truth/left_aif", self._on_truth, qos)

    @staticmethod
    def _stamp(msg: Image) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _keep(self, store: OrderedDict, msg: Image, received_ns: int = 0) -> None:
        store[self._stamp(msg)] = (msg, received_ns)
        while len(store) > self.params["history"]:
            store.popitem(last=False)

    def _on_truth(self, msg: Image) -> None:
        with self._lock:
            self._keep(self._truth, msg)
        self._pair(self._stamp(msg))

    def _on_fused(self, msg: Image) -> None:
        now = self.get_clock().now().nanoseconds
        with self._lock:
            self._keep(self._fused, msg, now)
        self._pair(self._stamp(msg))

    def _pair(self, stamp: int) -> None:
        with self._lock:
            if stamp not in self._truth or stamp not in self._fused:
                return
            (truth, _), (fused, received_ns) = self._truth.pop(stamp), self._fused.pop(stamp)
        try:
            a, b = image_to_numpy(fused), image_to_numpy(truth)
        except InputError as exc:
            self.get_logger().warning(f"unusable image: {exc}", throttle_duration_sec=2.0)
            return
        if a.shape != b.shape:
            self.get_logger().warning(
                f"fused {a.shape} and truth {b.shape} differ in size", throttle_duration_sec=2.0
            )
            return
        ssim = structural_similarity(a, b, channel_axis=2, data_range=255)
        psnr = peak_signal_noise_ratio(b, a, data_range=255)
        latency_ms = (received_ns - stamp) / 1e6
        with self._lock:
            self.scores.append((ssim, psnr, latency_ms))
            self.last_pair = (np.array(a), np.array(b))

    def report(self) -> dict:
        with self._lock:
            s = np.array(self.scores) if self.scores else np.zeros((0, 3))
        if not len(s):
            return {"stacks": 0}
        return {
            "stacks": len(s),
            "ssim": float(s[:, 0].mean()),
            "psnr": float(s[:, 1].mean()),
            "latency_ms_p50": float(np.percentile(s[:, 2], 50)),
            "latency_ms_p95": float(np.percentile(s[:, 2], 95)),
        }


def main(args=None) -> None:
    spin_node(FusionCheckNode, args, on_exit=log_report)


if __name__ == "__main__":
    main()
