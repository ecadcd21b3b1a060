"""depth_node over real DDS, fed by the live virtual microscope through focal_fusion_node."""

import time

import numpy as np
import pytest
from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, Range
from std_msgs.msg import Bool
from visualization_msgs.msg import MarkerArray

from micro_perception.ros.conversions import image_to_numpy, pointcloud2_to_numpy
from micro_perception.ros.depth_node import DepthNode
from micro_perception.ros.focal_fusion_node import FocalFusionNode
from micro_perception.ros.qos import alert_qos, image_qos
from micro_perception.ros.sim_microscope_node import SimMicroscopeNode
from micro_perception.sim.sequence import LEFT_FRAME

# Six poses of a 12 s cycle, gaps 2.5, 0.77, 0.24, 0.15, 0.24, 0.77 mm: the alert (0.5 mm, off
# above 0.6 mm) must come on during the approach and go off during the retraction.
CONFIG = dict(seed=2, height=512, width=512, slices=4, poses=6, instrument="needle")
CONFIG |= dict(far_gap=2.5e-3, near_gap=0.15e-3, sweep_rate=1.0, period=12.0)
REMAP = [
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


def stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope="module")
def run(sequence_cache):
    """Run the chain for one cycle and collect what the depth node publishes."""
    import rclpy

    ros_context = rclpy.Context()
    rclpy.init(context=ros_context)
    try:
        yield _run(ros_context, sequence_cache)
    finally:
        rclpy.shutdown(context=ros_context)


def _run(ros_context, sequence_cache):
    import threading

    from rclpy.executors import SingleThreadedExecutor

    ns = "/dn"
    sim = SimMicroscopeNode(
        context=ros_context,
        namespace=ns,
        parameter_overrides=[Parameter(k, value=v) for k, v in CONFIG.items()]
        + [Parameter("cache_dir", value=str(sequence_cache))],
    )
    fusion = FocalFusionNode(
        context=ros_context,
        namespace=ns,
        parameter_overrides=[
            Parameter("slices_per_stack", value=4),
            Parameter("device", value="cpu"),
            Parameter("reliability", value="reliable"),
            Parameter("publish_focus_depth", value=False),
        ],
    )
    depth = DepthNode(
        context=ros_context,
        namespace=ns,
        cli_args=REMAP,
        parameter_overrides=[
            Parameter("device", value="cpu"),
            Parameter("reliability", value="reliable"),
        ],
    )
    listener = Node("dn_listener", context=ros_context, namespace=ns)
    got = {k: [] for k in ("depth", "info", "points", "mask", "tip", "range", "alert", "markers")}
    got["truth"] = []
    qos = image_qos("reliable", 20)
    sub = listener.create_subscription
    sub(Image, "depth/image", got["depth"].append, qos)
    sub(CameraInfo, "depth/camera_info", got["info"].append, qos)
    sub(PointCloud2, "depth/points", got["points"].append, qos)
    sub(Image, "instrument/mask", got["mask"].append, qos)
    sub(PointStamped, "instrument/tip", got["tip"].append, 50)
    sub(Range, "instrument/retina_distance", got["range"].append, 50)
    sub(Bool, "instrument/proximity_alert", got["alert"].append, alert_qos(50))
    sub(MarkerArray, "instrument/markers", got["markers"].append, 50)
    sub(Range, "ground_truth/retina_distance", got["truth"].append, 200)
    executors, threads = [], []
    for node in (sim, fusion, depth, listener):
        ex = SingleThreadedExecutor(context=ros_context)
        ex.add_node(node)
        executors.append(ex)
        threads.append(threading.Thread(target=ex.spin, daemon=True))
    for t in threads:
        t.start()
    time.sleep(14.0)  # one cycle and a bit
    for ex in executors:
        ex.shutdown()
    for t in threads:
        t.join(timeout=5)
    health = depth.health.status()
    for node in (sim, fusion, depth, listener):
        node.destroy_node()
    return got, health


def test_every_output_has_its_type_frame_and_stamp(run):
    got, health = run
    assert len(got["range"]) >= 4, f"only {len(got['range'])} distances in a 12 s cycle"
    d = got["depth"][-1]
    assert d.encoding == "32FC1" and d.header.frame_id == LEFT_FRAME
    arr = image_to_numpy(d)
    assert arr.shape == (512, 512) and 0.19 < np.nanmedian(arr) < 0.21
    assert got["mask"][-1].encoding == "mono8"
    assert set(np.unique(image_to_numpy(got["mask"][-1]))) <= {0, 255}
    stamps = {stamp(m) for m in got["depth"]}
    for key in ("info", "mask", "range"):
        assert {stamp(m) for m in got[key]} == stamps, key
        assert all(m.header.frame_id == LEFT_FRAME for m in got[key])
    assert got["points"] and got["markers"] and got["alert"]
    cloud = pointcloud2_to_numpy(got["points"][-1])
    assert cloud.shape == (128, 128) and {"x", "y", "z", "rgb"} <= set(cloud.dtype.names)
    values = {kv.key: kv.value for kv in health.values}
    assert values["estimator"] == "combined" and values["device"] == "cpu"
    assert values["masks"] == "segmentation"


def test_distance_follows_the_ground_truth_and_the_alert_switches(run):
    got, _ = run
    truth = {stamp(m): m.range for m in got["truth"]}
    pairs = [(truth[stamp(m)], m.range) for m in got["range"] if stamp(m) in truth]
    assert len(pairs) >= 4
    # One stack a second: the filter's gate is wide after a second, so it follows each pose.
    errors = [abs(d - t) for t, d in pairs]
    assert np.median(errors) < 60e-6, pairs
    alerts = [m.data for m in got["alert"]]
    assert True in alerts, pairs
    assert False in alerts[alerts.index(True) :], pairs
