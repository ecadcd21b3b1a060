"""The virtual microscope on the ROS side: the live node over real DDS, and rosbag2 files."""

import itertools
import math
import time

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import CameraInfo, Image, JointState, Range

from micro_perception.errors import InputError
from micro_perception.ros.bag import write_sequence_bag
from micro_perception.ros.conversions import (
    camera_infos_to_stereo,
    image_to_numpy,
)
from micro_perception.ros.qos import image_qos
from micro_perception.ros.sim_microscope_node import SimMicroscopeNode
from micro_perception.sim.sequence import TOPICS, Sequence, SequenceConfig, SequencePlayer

CONFIG = dict(seed=3, height=48, width=64, slices=3, poses=3)


@pytest.fixture(scope="module")
def sequence(sequence_cache):
    return Sequence.load_or_render(SequenceConfig(**CONFIG), sequence_cache)


def test_node_publishes_consistent_sweeps(ros_context, spin, sequence_cache, sequence):
    overrides = [Parameter(k if k != "kind" else "instrument", value=v) for k, v in CONFIG.items()]
    overrides += [
        Parameter("sweep_rate", value=10.0),
        Parameter("period", value=0.6),
        Parameter("cache_dir", value=str(sequence_cache)),
    ]
    node = SimMicroscopeNode(
        context=ros_context, namespace="/simtest", parameter_overrides=overrides
    )
    listener = Node("listener", context=ros_context, namespace="/simtest")
    got = {k: [] for k in TOPICS}
    types = {
        "left_image": Image,
        "right_image": Image,
        "left_info": CameraInfo,
        "right_info": CameraInfo,
        "focus": JointState,
        "gt_depth": Image,
        "gt_aif": Image,
        "gt_distance": Range,
    }
    for key, msg_type in types.items():
        listener.create_subscription(
            msg_type, TOPICS[key], lambda m, k=key: got[k].append(m), image_qos("reliable", 50)
        )
    spin(node, listener)
    deadline = time.monotonic() + 30
    while min(len(v) for v in got.values()) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert min(len(v) for v in got.values()) >= 12, {k: len(v) for k, v in got.items()}

    def stamps(key):
        return [(m.header.stamp.sec, m.header.stamp.nanosec) for m in got[key]]

    # Every slice's messages share one stamp, in every stream.
    common = set(stamps("left_image"))
    for key in TOPICS:
        assert len(common & set(stamps(key))) >= 10, key
    by_stamp = {s: m for s, m in zip(stamps("focus"), got["focus"], strict=True)}
    focus_values = sorted({m.position[0] for m in got["focus"]})
    np.testing.assert_allclose(focus_values, np.sort(sequence.focus_distances), rtol=1e-9)
    for left in got["left_image"][:6]:
        stamp = (left.header.stamp.sec, left.header.stamp.nanosec)
        zf = by_stamp[stamp].position[0]
        k = int(np.argmin(np.abs(sequence.focus_distances - zf)))
        arr = image_to_numpy(left).astype(float)
        # A rendered slice plus fresh sensor noise (frame_noise, 1.5 grey levels by default).
        noise = min((arr - pose.left_slices[k] for pose in sequence.poses), key=np.std)
        assert 1.0 < np.std(noise) < 2.0 and abs(np.mean(noise)) < 0.3
        assert left.header.frame_id == "microscope_left_optical_frame"
    pair = camera_infos_to_stereo(got["left_info"][0], got["right_info"][0])
    assert pair.baseline == pytest.approx(0.022)
    assert pair.convergence_distance == pytest.approx(0.2)
    gaps = np.array([p.gap_normal for p in sequence.poses], np.float32)  # Range is float32
    assert all(np.isclose(gaps, m.range, rtol=1e-6).any() for m in got["gt_distance"])
    depth = image_to_numpy(got["gt_depth"][0])
    assert depth.dtype == np.float32 and np.nanmedian(depth) == pytest.approx(0.2, abs=0.005)


def test_bad_sequence_parameters_stop_the_node(ros_context, sequence_cache):
    with pytest.raises(InputError, match="instrument must be one of"):
        SimMicroscopeNode(
            context=ros_context,
            parameter_overrides=[
                Parameter("instrument", value="laser"),
                Parameter("cache_dir", value=str(sequence_cache)),
            ],
        )


def test_player_timing_and_cycle(sequence):
    player = SequencePlayer(sequence, sweep_rate=2.0, period=3.0)
    frames = list(player.frames(3.0))
    assert len(frames) == 3 * 2 * 3
    assert [f.slice_index for f in frames[:6]] == [0, 1, 2, 0, 1, 2]
    dt = np.diff([f.t_ns for f in frames])
    assert np.all(np.abs(dt - 1e9 / 6) <= 1)
    # The pose changes only between sweeps, and the cycle returns to its first pose.
    for sweep in range(6):
        poses = {id(f.pose) for f in frames if f.sweep == sweep}
        assert len(poses) == 1
    assert player.frame(0).pose is player.frame(18).pose


def test_cycle_approaches_hovers_and_retracts():
    cfg = SequenceConfig(**CONFIG)
    gaps = [cfg.gap_at(i / 100) for i in range(100)]
    closest = int(np.argmin(gaps))
    assert gaps[0] == pytest.approx(cfg.far_gap)
    assert min(gaps) == pytest.approx(cfg.near_gap)
    assert all(a >= b for a, b in itertools.pairwise(gaps[: closest + 1]))
    assert sum(g == cfg.near_gap for g in gaps) == pytest.approx(100 * cfg.hover_fraction, abs=1)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_plays_back_as_ros_messages(tmp_path, sequence, storage):
    player = SequencePlayer(sequence, sweep_rate=4.0, period=2.0)
    out = tmp_path / f"bag_{storage}"
    start = 1_700_000_000_000_000_000
    counts = write_sequence_bag(player, out, 1.5, start, storage=storage)
    assert set(counts.values()) == {18}
    assert (out / "metadata.yaml").is_file()
    types = {
        "sensor_msgs/msg/Image": Image,
        "sensor_msgs/msg/CameraInfo": CameraInfo,
        "sensor_msgs/msg/JointState": JointState,
        "sensor_msgs/msg/Range": Range,
    }
    seen = {}
    with Reader(out) as reader:
        assert reader.message_count == 18 * len(TOPICS)
        for conn, t, raw in reader.messages():
            msg = deserialize_message(bytes(raw), types[conn.msgtype])
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert stamp == t  # receive time = header stamp, so replay keeps the timing
            seen.setdefault(conn.topic, []).append(msg)
    left = seen["/microscope/left/image_raw"]
    np.testing.assert_array_equal(image_to_numpy(left[1]), player.frame(1).left)
    focus = [m.position[0] for m in seen["/microscope/focus"]]
    np.testing.assert_allclose(focus[:3], sequence.focus_distances)
    ranges = [m.range for m in seen["/microscope/ground_truth/retina_distance"]]
    assert all(math.isfinite(r) and r > 0 for r in ranges)
    info = camera_infos_to_stereo(
        seen["/microscope/left/camera_info"][0], seen["/microscope/right/camera_info"][0]
    )
    assert info.baseline == pytest.approx(0.022)


def test_humble_bags_use_humble_definitions(tmp_path, sequence):
    player = SequencePlayer(sequence)
    out = tmp_path / "humble"
    write_sequence_bag(player, out, 0.5, 1, distro="humble")
    with Reader(out) as reader:
        defs = {c.topic: c.msgdef.data for c in reader.connections}
    range_def = defs["/microscope/ground_truth/retina_distance"]
    assert "float32 range" in range_def and "variance" not in range_def
    with pytest.raises(InputError, match="exists"):
        write_sequence_bag(player, out, 0.5, 1)
