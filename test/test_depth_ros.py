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


def errors_by_gap(got) -> dict[float, list[float]]:
    """Each published distance's error against the ground truth of its stamp, by true gap."""
    truth = {stamp(m): m.range for m in got["truth"]}
    errors: dict[float, list[float]] = {}
    for m in got["range"]:
        if stamp(m) in truth:
            errors.setdefault(truth[stamp(m)], []).append(abs(m.range - truth[stamp(m)]))
    return errors


def near_gaps(got) -> list[float]:
    """The true gaps under 1.5 mm that have a published distance."""
    return [gap for gap in errors_by_gap(got) if gap < 1.5e-3]


def assert_follows_the_truth(got, near_poses: int):
    """Every distance within 0.3 mm of the truth (about twice the evaluation's p95), and, over
    the poses under 1.5 mm, the median of each pose's median error under 100 um (the
    evaluation's p90 there: 77-100 um on eight held-out sets).

    Each pose counts once, whatever frames arrive: a loaded machine drops pairs, and other frames
    carry other sensor noise. This needle's frames read 6-135 um off with the network's masks
    (under 8 um with true ones), so a median over frames moved with the mix: 43 um here, 64 on
    a CI run, against a 60 um bound that then failed. The 2.5 mm pose (126-135 um) is judged by
    the first bound only."""
    errors = errors_by_gap(got)
    assert errors, f"{len(got['range'])} distances, none with a ground truth of its stamp"
    assert max(max(e) for e in errors.values()) < 0.3e-3, errors
    near = [float(np.median(errors[gap])) for gap in near_gaps(got)]
    assert len(near) >= near_poses, errors
    assert np.median(near) < 100e-6, errors


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
            # Stops once the alert has gone on and off again and three poses under 1.5 mm have
            # been measured: one cycle and a bit on a free machine (about 13 s). A loaded 2-core
            # one starts the nodes slowly and drops pairs (1.6 s a pair: a pose lasts 2 s), so
            # it may need the next cycle: the limit is only for a chain that never gets there.
            done=lambda got: (
                len(got["range"]) >= 4 and alert_went_on_and_off(got) and len(near_gaps(got)) >= 3
            ),
            timeout=60.0,
            namespace="/dn",
        )
    finally:
        rclpy.shutdown(context=context)


def test_every_output_has_its_type_frame_and_stamp(run):
    got, health = run
    assert len(got["range"]) >= 4, f"only {len(got['range'])} distances before the run's limit"
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
    assert values["seg_px_per_mm"] == "64"  # the shipped network's scale, by default
    assert values["stereo_backend"] == "opencv"  # auto on the CPU
    assert values["edge_refiner"].endswith("edge_refiner.pt")  # the shipped one, by default
    # Range.variance: the shipped calibration's sigma of how each distance was measured; 0
    # (unknown, as the message defines it) with no distance.
    from micro_perception.resources import shipped_model
    from micro_perception.uncertainty import DistanceUncertainty

    assert values["distance_uncertainty"] == str(shipped_model("distance_uncertainty.json"))
    model = DistanceUncertainty.load(shipped_model("distance_uncertainty.json"))
    bases = {*model.sigma_m.values(), *model.by_end_m.values(), model.fallback_m}
    sigmas = {b * f for b in bases for f in (1.0, model.steep_factor, model.flat_factor)}
    assert any(np.isfinite(m.range) and m.variance > 0 for m in got["range"])
    for m in got["range"]:
        if not np.isfinite(m.range) or m.variance == 0.0:  # 0: none known (a depth-map axis)
            assert m.variance == 0.0
        else:
            assert min(abs(np.sqrt(m.variance) / s - 1) for s in sigmas) < 1e-5, m.variance
    texts = [k.text for a in got["markers"] for k in a.markers if k.text]
    assert any(" ± " in t and t.endswith(" mm") for t in texts), texts  # its 95 % band


def test_distance_follows_the_ground_truth_and_the_alert_switches(run):
    got, _ = run
    # One stack a second: the filter's gate is wide after a second, so it follows each pose.
    assert_follows_the_truth(got, near_poses=3)
    assert alert_went_on_and_off(got), (errors_by_gap(got), [m.data for m in got["alert"]])


def test_with_nobody_taking_the_depth_image_the_distance_still_comes(sequence_cache):
    """A robot controller subscribes to the distance alone: the node skips the combined depth
    image (its CPU time), says so in /diagnostics, and the distances are as good: the full
    run's bounds, over the approach (2.5, 0.77, 0.24, 0.15 mm)."""
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
            done=lambda got: len(near_gaps(got)) >= 3,
            timeout=60.0,
            namespace="/lean",
            images=False,
        )
    finally:
        rclpy.shutdown(context=context)
    assert "depth" not in got
    values = {kv.key: kv.value for kv in health.values}
    assert values["depth_image"] == "skipped: no subscriber" and values["fuse_ms"] == "-"
    assert_follows_the_truth(got, near_poses=3)
