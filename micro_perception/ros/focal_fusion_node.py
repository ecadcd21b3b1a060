"""focal_fusion_node: fuses the slices of focus sweeps into all-in-focus images.

Subscribes ``{left,right}/image_raw``, ``{left,right}/camera_info`` and, optionally, ``focus``
(sensor_msgs/JointState, position[0] = focal-plane distance in m). Slices are matched to focus
positions by stamp and collected per eye in a bounded focal buffer; a stack is complete after
``slices_per_stack`` slices or when the focus direction reverses (without a focus topic: by
count). Each complete stack is fused on ``device`` with ``method`` and published on
``{eye}/fused/image`` (input encoding, stamp of the last slice) with ``{eye}/fused/camera_info``;
for the left eye also ``left/fused/focus_depth`` (32FC1, m, NaN where confidence is low).
"""

from __future__ import annotations

import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState

from micro_perception.errors import InputError
from micro_perception.fusion.buffer import FocalBuffer, FocusMatcher, Slice
from micro_perception.fusion.fuser import METHODS, Fuser
from micro_perception.ros.conversions import (
    COLOUR_ORDER,
    image_to_numpy,
    numpy_to_image,
    output_header,
)
from micro_perception.ros.diagnostics import Health
from micro_perception.ros.intra_process import MessagePublisher
from micro_perception.ros.params import (
    Parameters,
    ParamSpec,
    image_transport_param,
    qos_params,
    runtime_config,
    runtime_params,
)
from micro_perception.ros.qos import image_qos
from micro_perception.ros.runner import spin_node
from micro_perception.ros.shm_transport import ImageInput, ImagePublisher
from micro_perception.ros.worker import LatestWorker

EYES = ("left", "right")
MONO = ("mono8", "8UC1", "mono16", "16UC1")

PARAMS = [
    ParamSpec("slices_per_stack", 8, "slices of one focus sweep", 2, 64, read_only=True),
    ParamSpec(
        "max_buffered_slices", 32, "bound of the focal buffer per eye", 2, 1024, read_only=True
    ),
    ParamSpec("method", "net", "fusion method", choices=METHODS, read_only=True),
    ParamSpec(
        "weights", "", "fusion weights file ('' = the installed models/fusion.pt)", read_only=True
    ),
    *runtime_params("fusion"),
    image_transport_param("slices"),
    *qos_params("best_effort", 10, "image subscription"),
    ParamSpec(
        "focus_tolerance",
        0.001,
        "largest stamp difference matching a slice to a focus position, s",
        0.0,
        1.0,
    ),
    ParamSpec("focus_wait", 0.5, "how long a slice waits for its focus position, s", 0.0, 10.0),
    ParamSpec("publish_focus_depth", True, "publish left/fused/focus_depth"),
    ParamSpec(
        "queue_policy",
        "newest",
        "newest: fuse the newest complete stack of each eye on a worker thread, drop (and "
        "count) stacks that wait behind it; all: every stack in order, in the callback",
        choices=("newest", "all"),
        read_only=True,
    ),
    ParamSpec(
        "min_focus_confidence",
        0.5,
        "depth-from-focus confidence below which depth is NaN",
        0.0,
        1.0,
    ),
]


class FocalFusionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("focal_fusion_node", **kwargs)
        self.params = p = Parameters(self, PARAMS)
        self.fuser = Fuser(
            p["method"],
            weights=p["weights"] or None,
            runtime=runtime_config(p),
            warn=self.get_logger().warning,
        )
        if p["input_width"] and p["input_height"] and self.fuser.runtime is not None:
            t0 = time.monotonic()
            size = (p["slices_per_stack"], p["input_height"], p["input_width"], 3)
            self.fuser(np.zeros(size, np.uint8))  # compile / load the engine now, not at frame 1
            self.get_logger().info(
                f"warmed up for {p['input_width']}x{p['input_height']} in "
                f"{time.monotonic() - t0:.1f} s"
            )
        self.health = Health(self, "focal fusion")
        self.health.values.update(
            {"method": p["method"], "device": str(self.fuser.device), **self._runtime()}
        )
        self.health.values["weights"] = str(self.fuser.weights or "-")
        qos = image_qos(p["reliability"], p["qos_depth"])
        self._joined: set[str] = set()  # eyes with a stack since the start or the last reset
        self.buffers = {
            e: FocalBuffer(p["slices_per_stack"], p["max_buffered_slices"]) for e in EYES
        }
        self.matchers = {e: self._matcher() for e in EYES}
        self.info: dict[str, CameraInfo] = {}
        self.pub_image, self.pub_info, self.inputs = {}, {}, {}
        self.worker = None
        if p["queue_policy"] == "newest":
            self.worker = LatestWorker(
                self._fuse,
                "focal_fusion_node.worker",
                on_drop=lambda: self.health.count("superseded_stacks"),
                on_error=self.health.worker_failed("stack"),
            )
        for eye in EYES:
            self.inputs[eye] = ImageInput(
                self, f"{eye}/image_raw", qos, p["image_transport"], self._transport_error
            )
            self.inputs[eye].registerCallback(lambda m, e=eye: self._on_image(e, m))
            self.create_subscription(
                CameraInfo, f"{eye}/camera_info", lambda m, e=eye: self.info.__setitem__(e, m), qos
            )
            self.pub_image[eye] = ImagePublisher(self, f"{eye}/fused/image", qos)
            self.pub_info[eye] = MessagePublisher(
                self, CameraInfo, f"{eye}/fused/camera_info", qos
            )
        self.create_subscription(JointState, "focus", self._on_focus, image_qos("reliable", 100))
        self.pub_depth = self.create_publisher(Image, "left/fused/focus_depth", qos)
        self.get_logger().info(
            f"fusing {p['slices_per_stack']}-slice stacks with {p['method']} on "
            f"{self.fuser.device}"
            + (f" ({self.fuser.weights})" if self.fuser.weights else "")
            + (f", runtime {self._runtime()}" if self.fuser.runtime else "")
        )

    def destroy_node(self):
        worker = getattr(self, "worker", None)  # absent when construction failed
        if worker is not None:
            worker.stop()
        for part in ("inputs", "pub_image", "pub_info"):
            for obj in getattr(self, part, {}).values():
                obj.close()
        return super().destroy_node()

    def _transport_error(self, text: str) -> None:
        self.health.problem("transport", text)

    def _runtime(self) -> dict:
        rt = self.fuser.runtime
        return {k: str(v) for k, v in rt.describe().items()} if rt is not None else {}

    def _matcher(self) -> FocusMatcher:
        p = self.params
        return FocusMatcher(round(p["focus_tolerance"] * 1e9), round(p["focus_wait"] * 1e9))

    def _on_focus(self, msg: JointState) -> None:
        if len(msg.position) == 0 or not np.isfinite(msg.position[0]):
            self.health.problem(
                "bad_focus",
                f"focus message without a finite position[0] ({list(msg.position)}): ignored",
            )
            return
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        for eye in EYES:
            for sl in self.matchers[eye].add_focus(stamp, float(msg.position[0])):
                self._buffer(eye, sl)

    def _on_image(self, eye: str, msg: Image) -> None:
        self.health.input()
        self.health.values["transport"] = self.inputs[eye].using  # local, shm or raw
        self.health.count(f"{eye}_slices")
        if msg.encoding not in COLOUR_ORDER and msg.encoding not in MONO:
            self.health.problem(
                "bad_input",
                f"{eye}/image_raw: encoding {msg.encoding!r} "
                "cannot be fused (rgb8, bgr8, mono8, mono16): slice dropped",
            )
            return
        try:
            arr = image_to_numpy(msg)
        except InputError as exc:
            self.health.problem("bad_input", f"{eye}/image_raw: {exc}: slice dropped")
            return
        if COLOUR_ORDER.get(msg.encoding):
            arr = arr[..., ::-1]
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        sl = Slice(stamp, np.array(arr), encoding=msg.encoding, meta=msg.header)
        for ready in self.matchers[eye].add_slice(sl):
            self._buffer(eye, ready)

    def _buffer(self, eye: str, sl: Slice) -> None:
        stack, note = self.buffers[eye].push(sl)
        if note:
            if "backwards" in note:
                self.get_logger().info(f"{eye}: {note}")
                self.matchers[eye] = self._matcher()
                self._joined.discard(eye)
            else:
                self.health.problem("dropped_stacks", f"{eye}: {note}")
        if stack is not None:
            n, want = len(stack.slices), self.params["slices_per_stack"]
            # The first sweep after a start or a reset may have begun before this node listened.
            if stack.complete_because == "reversal" and n < want and eye in self._joined:
                self.health.problem(
                    "short_stacks",
                    f"{eye}: focus reversed after {n} of {want} slices: fused the {n} (a sweep "
                    "shorter than slices_per_stack, or focus out of order)",
                )
            self._joined.add(eye)
            if self.worker is not None:
                self.worker.submit(eye, stack, key=eye)
            else:
                self._fuse(eye, stack)

    def _fuse(self, eye: str, stack) -> None:
        last = stack.slices[-1]
        t0 = time.perf_counter()
        fused = self.fuser(stack.images)
        self.health.values["fuse_ms"] = f"{(time.perf_counter() - t0) * 1e3:.1f}"
        if COLOUR_ORDER.get(last.encoding):
            fused = fused[..., ::-1]
        header = output_header(last.meta, last.meta.frame_id)
        self.pub_image[eye].publish(fused, last.encoding, header)
        if eye in self.info:
            info = self.info[eye]
            info.header = header
            self.pub_info[eye].publish(info)
        self.health.count(f"{eye}_stacks")
        self.health.output(header.stamp)
        focus = stack.focus
        if eye == "left" and self.params["publish_focus_depth"] and focus is not None:
            depth = self.fuser.focus_depth(
                stack.images, focus, self.params["min_focus_confidence"]
            )
            self.pub_depth.publish(numpy_to_image(depth.astype(np.float32), "32FC1", header))


def main(args=None) -> None:
    spin_node(FocalFusionNode, args)


if __name__ == "__main__":
    main()
