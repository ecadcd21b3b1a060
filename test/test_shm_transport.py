"""The mp_shm image transport: the ring across processes, the handles, and nodes over DDS; and
the intra-process path between nodes of one process."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from micro_perception.errors import InputError
from micro_perception.ros import intra_process
from micro_perception.ros.conversions import image_to_numpy, numpy_to_image
from micro_perception.ros.qos import image_qos
from micro_perception.ros.shm_transport import (
    SHM_DIR,
    SUFFIX,
    Handle,
    ImageInput,
    ImagePublisher,
    ShmRing,
    host_id,
)


def test_ring_is_read_bit_exact_by_another_process_and_detects_overwrites():
    ring = ShmRing(64 * 48 * 3, slots=3)
    try:
        images = [np.full((64, 48, 3), i, np.uint8) for i in range(5)]
        written = [ring.write(img) for img in images]
        code = (
            "import sys; from micro_perception.ros.shm_transport import ShmRing\n"
            f"r = ShmRing.attach({ring.name!r})\n"
            "for slot, seq in " + repr(written) + ":\n"
            "    d = r.read(slot, seq)\n"
            "    print(-1 if d is None else int(d[0]), 0 if d is None else len(d))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        # Three slots: the first two images were overwritten by the fourth and fifth.
        assert out == ["-1", "0", "-1", "0", "2", str(64 * 48 * 3), "3", "9216", "4", "9216"]
        with pytest.raises(InputError, match="fit"):
            ring.write(np.zeros((65, 48, 3), np.uint8))
    finally:
        ring.close()
    assert not (SHM_DIR / ring.name).exists()
    with pytest.raises(InputError, match="cannot be opened"):
        ShmRing.attach(ring.name)


def test_attach_refuses_what_is_not_a_ring(tmp_path):
    with pytest.raises(InputError, match="name"):
        ShmRing.attach("../etc/passwd")
    path = SHM_DIR / "mp_shm_test_not_a_ring"
    path.write_bytes(b"x" * 100)
    try:
        with pytest.raises(InputError, match="not an mp_shm ring"):
            ShmRing.attach(path.name)
    finally:
        path.unlink()


def test_handle_round_trips_and_malformed_ones_are_refused():
    h = Handle("mp_shm_ab", 3, 17, "rgb8", 1080, 1920, 5760, 0, host_id())
    assert Handle.parse(h.format()) == h
    for bad in ("jpeg", "mp_shm;a;b", h.format().replace(";17;", ";x;")):
        with pytest.raises(InputError):
            Handle.parse(bad)


def _wait(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_nodes_exchange_images_through_shared_memory_and_raw_stays_unpublished(ros_context, spin):
    talker = Node("shm_talker", context=ros_context, namespace="/shm")
    listener = Node("shm_listener", context=ros_context, namespace="/shm")
    qos = image_qos("reliable", 10)
    pub = ImagePublisher(talker, "cam/image", qos)
    errors, got = [], []
    inp = ImageInput(listener, "cam/image", qos, "shm", errors.append)
    inp.registerCallback(got.append)
    spin(talker, listener)
    assert _wait(lambda: pub.get_subscription_count() > 0)
    assert pub.raw.get_subscription_count() == 0  # nobody wants the serialised image
    rng = np.random.default_rng(0)
    sent = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(5)]
    for i, img in enumerate(sent):
        header = Header(frame_id="cam")
        header.stamp.sec = i + 1
        pub.publish(img, "rgb8", header)
        time.sleep(0.05)
    assert _wait(lambda: len(got) == 5)
    for i, msg in enumerate(got):
        assert msg.header.stamp.sec == i + 1 and msg.header.frame_id == "cam"
        np.testing.assert_array_equal(image_to_numpy(msg), sent[i])
    assert inp.received == {"local": 0, "shm": 5, "raw": 0} and not errors
    pub.close()
    inp.close()


def test_auto_input_takes_a_plain_image_topic_and_a_foreign_host_falls_back(ros_context, spin):
    talker = Node("raw_talker", context=ros_context, namespace="/auto")
    listener = Node("raw_listener", context=ros_context, namespace="/auto")
    qos = image_qos("reliable", 10)
    raw = talker.create_publisher(Image, "cam/image", qos)  # a camera driver
    errors, got = [], []
    inp = ImageInput(listener, "cam/image", qos, "auto", errors.append)
    inp.registerCallback(got.append)
    spin(talker, listener)
    assert _wait(lambda: raw.get_subscription_count() > 0)
    img = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
    raw.publish(numpy_to_image(img, "rgb8"))
    assert _wait(lambda: len(got) == 1)
    np.testing.assert_array_equal(image_to_numpy(got[0]), img)
    assert inp.using == "raw"

    # A publisher on another machine offers handles: they cannot be read here.
    handles = talker.create_publisher(CompressedImage, f"/auto/cam/image/{SUFFIX}", qos)
    assert _wait(lambda: inp.using == "shm")  # offered: the plain subscription is dropped
    h = Handle("mp_shm_elsewhere", 0, 1, "rgb8", 24, 32, 96, 0, "other-host/boot")
    handles.publish(CompressedImage(format=h.format()))
    assert _wait(lambda: inp.using == "raw")
    assert "another host" in errors[0]
    raw.publish(numpy_to_image(img, "rgb8"))
    assert _wait(lambda: len(got) == 2)


def _stamped(sec: int) -> Header:
    header = Header(frame_id="cam")
    header.stamp.sec = sec
    return header


def test_nodes_of_one_process_pass_the_array_itself_and_outsiders_still_get_the_topic(
    ros_context, spin
):
    import rclpy

    talker = Node("local_talker", context=ros_context, namespace="/local")
    listener = Node("local_listener", context=ros_context, namespace="/local")
    qos = image_qos("reliable", 10)
    pub = ImagePublisher(talker, "cam/image", qos)
    errors, got, threads = [], [], []

    def on_image(msg):
        threads.append(threading.current_thread().name)
        got.append(msg)

    inp = ImageInput(listener, "cam/image", qos, "auto", errors.append)
    inp.registerCallback(on_image)
    # Another process's view of the graph (rviz, a bag recorder): a context of its own.
    other = rclpy.Context()
    rclpy.init(context=other)
    try:
        outsider = Node("outsider", context=other, namespace="/local")
        seen = []
        outsider.create_subscription(Image, "cam/image", seen.append, qos)
        spin(talker, listener)
        from ros_helpers import Spinner

        outside = Spinner(other)
        outside(outsider)
        assert inp.using == "local"
        assert inp.handle_sub is None and inp.raw_sub is None  # no DDS subscription at all
        assert _wait(lambda: pub.raw.get_subscription_count() == 1)  # the outsider's
        assert pub.handles.get_subscription_count() == 0
        assert pub.get_subscription_count() == 2
        sent = [np.full((24, 32, 3), i, np.uint8) for i in range(3)]
        for i, img in enumerate(sent):
            pub.publish(img, "rgb8", _stamped(i + 1))
            time.sleep(0.05)
        assert _wait(lambda: len(got) == 3 and len(seen) == 3)
        for i, msg in enumerate(got):
            arr = image_to_numpy(msg)
            assert np.shares_memory(arr, sent[i])  # the publisher's array, not a copy
            assert not arr.flags.writeable  # and nobody downstream can change it
            assert msg.header.stamp.sec == i + 1 and msg.header.frame_id == "cam"
            np.testing.assert_array_equal(image_to_numpy(seen[i]), sent[i])
        # Delivered on the listener's executor thread, not on the publisher's (this one).
        assert threading.current_thread().name not in threads
        assert inp.received == {"local": 3, "shm": 0, "raw": 0} and not errors
        outside.stop()
    finally:
        rclpy.shutdown(context=other)
    pub.close()
    inp.close()


def test_input_takes_a_publisher_that_starts_later_and_falls_back_when_it_goes(ros_context, spin):
    listener = Node("late_listener", context=ros_context, namespace="/late")
    talker = Node("late_talker", context=ros_context, namespace="/late")
    qos = image_qos("reliable", 10)
    got = []
    inp = ImageInput(listener, "cam/image", qos, "auto")
    inp.registerCallback(got.append)
    spin(listener, talker)
    assert inp.using == "raw"  # nothing offered yet
    pub = ImagePublisher(talker, "cam/image", qos)
    # Taken at once through the watcher, long before the input's 1 s check.
    assert _wait(lambda: inp.using == "local", timeout=0.5)
    pub.publish(np.zeros((8, 8), np.uint8), "mono8", _stamped(1))
    assert _wait(lambda: len(got) == 1)
    # Its node goes, as destroy_node does it: the local publisher, then the DDS ones.
    pub.close()
    talker.destroy_publisher(pub.raw)
    talker.destroy_publisher(pub.handles)
    assert _wait(lambda: inp.using != "local", timeout=3.0)
    raw = talker.create_publisher(Image, "cam/image", qos)  # now a camera driver over DDS
    assert _wait(lambda: raw.get_subscription_count() > 0)
    raw.publish(numpy_to_image(np.ones((8, 8), np.uint8), "mono8", _stamped(2)))
    assert _wait(lambda: len(got) == 2)
    assert inp.received["local"] == 1 and inp.received["raw"] == 1
    inp.close()


def test_small_messages_in_one_process_are_copies_and_a_slow_reader_keeps_the_newest(
    ros_context, spin
):
    talker = Node("info_talker", context=ros_context, namespace="/info")
    listener = Node("info_listener", context=ros_context, namespace="/info")
    pub = intra_process.MessagePublisher(talker, CameraInfo, "cam/camera_info", 3)
    inp = intra_process.MessageInput(listener, CameraInfo, "cam/camera_info", 3)
    got = []
    inp.registerCallback(got.append)
    assert inp.using == "local" and inp.dds_sub is None
    assert pub.dds.get_subscription_count() == 0 and pub.get_subscription_count() == 1
    info = CameraInfo(width=64, height=48)
    for sec in range(1, 6):  # the listener is not spinning yet: a backlog of 5 into depth 3
        info.header = _stamped(sec)  # publishers reuse their message (focal_fusion_node does)
        pub.publish(info)
    spin(talker, listener)
    assert _wait(lambda: len(got) == 3)
    assert [m.header.stamp.sec for m in got] == [3, 4, 5]  # keep-last, as DDS would
    assert inp.local.dropped == 2
    assert all(m is not info for m in got)
    pub.close()
    inp.close()


def test_a_direct_input_runs_on_the_publishers_thread_and_its_errors_stay_there(ros_context):
    talker = Node("direct_talker", context=ros_context, namespace="/direct")
    listener = Node("direct_listener", context=ros_context, namespace="/direct")
    qos = image_qos("reliable", 10)
    pub = ImagePublisher(talker, "cam/image", qos)
    inp = ImageInput(listener, "cam/image", qos, "auto", direct=True)
    got, threads = [], []

    def on_image(msg):
        threads.append(threading.current_thread())
        if msg.header.stamp.sec == 1:
            raise RuntimeError("a subscriber's bug")
        got.append(msg)

    inp.registerCallback(on_image)
    assert inp.using == "local" and inp.local.guard is None  # nothing to wake: no executor
    for sec in (1, 2):  # nobody spins the listener: delivery needs no executor
        pub.publish(np.zeros((8, 8), np.uint8), "mono8", _stamped(sec))
    assert threads == [threading.current_thread()] * 2
    assert [m.header.stamp.sec for m in got] == [2]  # the failing callback did not stop it
    pub.close()
    inp.close()
