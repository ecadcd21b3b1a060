"""micro-perception replay: a rosbag2 onto the live graph, stamps intact, /clock, unknown types."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from rclpy.node import Node
from rosbags.highlevel import AnyReader
from rosbags.typesys import get_types_from_msg
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState

from micro_perception.errors import InputError
from micro_perception.ros.bag import BagWriter
from micro_perception.ros.replay import message_class


def _bag(path, storage):
    """Focus messages at 20 Hz and one topic of a type no machine has installed."""
    with BagWriter(path, storage) as w:
        ts = w.msgs.typestore
        ts.register(get_types_from_msg("int32 x", "nowhere_msgs/msg/Thing"))
        thing = ts.types["nowhere_msgs/msg/Thing"]
        joint = ts.types["sensor_msgs/msg/JointState"]
        t0 = 1_700_000_000_000_000_000
        for i in range(10):
            t = t0 + i * 50_000_000
            w.write(
                "/rp/focus",
                joint(
                    header=w.msgs.header(t, ""),
                    name=["focus"],
                    position=np.array([0.2 + i * 1e-4]),
                    velocity=np.zeros(0),
                    effort=np.zeros(0),
                ),
                t,
            )
            w.write("/rp/thing", thing(x=i), t)
    return [t0 + i * 50_000_000 for i in range(10)]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_publishes_the_bag_with_its_stamps_and_clock(ros_context, spin, tmp_path, storage):
    bag = tmp_path / f"bag_{storage}"
    stamps = _bag(bag, storage)
    listener = Node("replay_listener", context=ros_context)
    focus, clock = [], []
    listener.create_subscription(JointState, "/rp/focus", focus.append, 50)
    listener.create_subscription(Clock, "/clock", clock.append, 50)
    spin(listener)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "micro_perception.cli",
            "replay",
            str(bag),
            "--clock",
            "--rate",
            "2",
            "--delay",
            "0",
            "--wait-for-subscribers",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["published"] == {"/rp/focus": 10}
    assert report["skipped"] == {"/rp/thing": "nowhere_msgs/msg/Thing"}
    assert "nowhere_msgs/msg/Thing is not installed here; skipped" in out.stderr
    deadline = time.monotonic() + 5
    while len(focus) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in focus]
    assert got == stamps
    assert [m.position[0] for m in focus] == pytest.approx([0.2 + i * 1e-4 for i in range(10)])
    clock_ns = [c.clock.sec * 1_000_000_000 + c.clock.nanosec for c in clock]
    assert clock_ns and clock_ns == sorted(clock_ns)
    assert stamps[0] <= clock_ns[0] and clock_ns[-1] <= stamps[-1]


def test_bag_written_by_the_package_reads_back_with_an_independent_reader(tmp_path):
    stamps = _bag(tmp_path / "b", "mcap")
    with AnyReader([tmp_path / "b"]) as reader:
        conns = [c for c in reader.connections if c.topic == "/rp/focus"]
        msgs = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(conns)]
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs] == stamps


def test_message_classes_and_bad_bags():
    assert message_class("sensor_msgs/msg/Image").__name__ == "Image"
    assert message_class("nowhere_msgs/msg/Thing") is None
    assert message_class("garbage") is None
    from micro_perception.ros.replay import BagPlayer

    with pytest.raises(InputError, match="not found"):
        BagPlayer("/nonexistent/bag")
