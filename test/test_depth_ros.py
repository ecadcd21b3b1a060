"""depth_node over real DDS, fed by the live virtual microscope through focal_fusion_node."""

import numpy as np
import pytest

from micro_perception.ros.conversions import image_to_numpy, pointcloud2_to_numpy
from micro_perception.sim.sequence import LEFT_FRAME

# Six poses of a 12 s cycle, gaps 2.5, 0.77, 0.24, 0.15, 0.24, 0.77 mm: the alert (0.5 mm, off
# above 0.6 mm) must come on during the approach and go off during the retraction.
CONFIG = dict(seed=2, height=512, width=512, slices=4, poses=6, instrument="needle")
CONFIG |= dict(far_gap=2.5e-3, near_gap=0.15e-3, sweep_rate=1.0, period=12.0)


def stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def alert_went_on_and_off(got) -> bool:
    alerts = [m.data for m in got["alert"]]
    return True in alerts and False in alerts[alerts.index(True) :]


@pytest.fixture(scope="module")
def run(sequence_cache):
    """Run the chain for one cycle and a bit; collect what the depth node publishes."""
    import rclpy

    from micro_perception.ros.chain import run_chain

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield run_chain(
            context,
            sim=CONFIG | {"cache_dir": str(sequence_cache)},
            fusion={
                "slices_per_stack": 4,
                "device": "cpu",
                "reliability": "reliable",
                "publish_focus_depth": False,
            },
            depth={"device": "cpu", "reliability": "reliable"},
            # Stops once the alert has gone on and off again: one cycle and a bit on a free
            # machine. A loaded 2-core one drops pairs and lags (1.2 s a pair), so the
            # retraction can come after 14 s: the second cycle's far pose still counts.
            done=lambda got: len(got["range"]) >= 4 and alert_went_on_and_off(got),
            timeout=26.0,
            namespace="/dn",
        )
    finally:
        rclpy.shutdown(context=context)


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
    assert values["masks"] == "segmentation" and values["seg_flips"] == "2"
    assert values["stereo_backend"] == "opencv"  # auto on the CPU


def test_distance_follows_the_ground_truth_and_the_alert_switches(run):
    got, _ = run
    truth = {stamp(m): m.range for m in got["truth"]}
    pairs = [(truth[stamp(m)], m.range) for m in got["range"] if stamp(m) in truth]
    assert len(pairs) >= 4
    # One stack a second: the filter's gate is wide after a second, so it follows each pose.
    errors = [abs(d - t) for t, d in pairs]
    assert np.median(errors) < 60e-6, pairs
    assert alert_went_on_and_off(got), (pairs, [m.data for m in got["alert"]])


def test_with_nobody_taking_the_depth_image_the_distance_still_comes(sequence_cache):
    """A robot controller subscribes to the distance alone: the node skips the combined depth
    image (its CPU time), says so in /diagnostics, and the distances are as good: over the
    first three poses (2.5, 0.77, 0.24 mm), the bound the full run meets over the cycle."""
    import rclpy

    from micro_perception.ros.chain import run_chain

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        got, health = run_chain(
            context,
            sim=CONFIG | {"cache_dir": str(sequence_cache)},
            fusion={"slices_per_stack": 4, "device": "cpu", "publish_focus_depth": False},
            depth={"device": "cpu"},
            done=lambda got: len(got["range"]) >= 6,
            timeout=20.0,
            namespace="/lean",
            images=False,
        )
    finally:
        rclpy.shutdown(context=context)
    assert "depth" not in got and len(got["range"]) >= 6
    values = {kv.key: kv.value for kv in health.values}
    assert values["depth_image"] == "skipped: no subscriber" and values["fuse_ms"] == "-"
    truth = {stamp(m): m.range for m in got["truth"]}
    errors = [abs(m.range - truth[stamp(m)]) for m in got["range"] if stamp(m) in truth]
    assert len(errors) >= 6 and np.median(errors) < 60e-6, errors
