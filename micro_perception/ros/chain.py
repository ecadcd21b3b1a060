"""The live chain in one process: virtual microscope -> focal_fusion_node -> depth_node, each
node on an executor and thread of its own, and a listener collecting what depth_node publishes.

Used by the node test and by ``micro-perception eval hover`` (frame-to-frame jitter of the
published distance while the instrument hovers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, Range
from std_msgs.msg import Bool
from visualization_msgs.msg import MarkerArray

from micro_perception.ros.qos import alert_qos, image_qos
from micro_perception.ros.runner import spin_each

FUSED = [
    "--ros-args",
    "-r",
    "left/image:=left/fused/image",
    "-r",
    "right/image:=right/fused/image",
    "-r",
    "left/camera_info:=left/fused/camera_info",
    "-r",
    "right/camera_info:=right/fused/camera_info",
]


def _params(d: dict) -> list[Parameter]:
    return [Parameter(k, value=v) for k, v in d.items()]


def run_chain(
    context,
    sim: dict,
    fusion: dict,
    depth: dict,
    done: Callable[[dict], bool],
    timeout: float,
    namespace: str = "/chain",
    images: bool = True,
) -> tuple[dict, object]:
    """Run until ``done(got)`` or ``timeout`` seconds; returns (messages by output, the depth
    node's last DiagnosticStatus). ``got["arrival"][key]`` holds each message's wall-clock
    arrival time (s), taken in the subscription callback. ``images=False`` leaves out the
    image-sized outputs."""
    from micro_perception.ros.depth_node import DepthNode
    from micro_perception.ros.focal_fusion_node import FocalFusionNode
    from micro_perception.ros.sim_microscope_node import SimMicroscopeNode

    nodes = [
        SimMicroscopeNode(context=context, namespace=namespace, parameter_overrides=_params(sim)),
        FocalFusionNode(context=context, namespace=namespace, parameter_overrides=_params(fusion)),
        DepthNode(
            context=context,
            namespace=namespace,
            cli_args=FUSED,
            parameter_overrides=_params(depth),
        ),
    ]
    listener = Node("chain_listener", context=context, namespace=namespace)
    nodes.append(listener)
    got: dict = {"arrival": {}}
    topics = {
        "range": (Range, "instrument/retina_distance", 50),
        "truth": (Range, "ground_truth/retina_distance", 200),
        "tip": (PointStamped, "instrument/tip", 50),
        "alert": (Bool, "instrument/proximity_alert", alert_qos(50)),
    }
    if images:
        qos = image_qos("reliable", 20)
        topics |= {
            "depth": (Image, "depth/image", qos),
            "info": (CameraInfo, "depth/camera_info", qos),
            "points": (PointCloud2, "depth/points", qos),
            "mask": (Image, "instrument/mask", qos),
            "markers": (MarkerArray, "instrument/markers", 50),
        }
    for key, (msg_type, topic, q) in topics.items():
        got[key], got["arrival"][key] = [], []

        def on_msg(msg, key=key):
            got["arrival"][key].append(time.time())
            got[key].append(msg)

        listener.create_subscription(msg_type, topic, on_msg, q)
    executors, threads = spin_each(nodes, context)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(got):
            time.sleep(0.1)
    finally:
        for ex in executors:
            ex.shutdown()
        for t in threads:
            t.join(timeout=10)
        health = nodes[2].health.status()
        for node in nodes:
            node.destroy_node()
    return got, health
