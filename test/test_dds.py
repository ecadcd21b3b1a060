"""Real rclpy nodes over real Fast DDS: images, stereo pairs, synchronisation, parameters."""

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from ros_helpers import wait_for
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from micro_perception.errors import InputError
from micro_perception.ros.conversions import image_to_numpy, numpy_to_image
from micro_perception.ros.qos import image_qos
from micro_perception.ros.stereo_check_node import StereoCheckNode
from micro_perception.ros.stereo_pattern_node import StereoPatternNode
from micro_perception.ros.transport_check import TransportCheckConfig, run_transport_check


def test_full_hd_image_between_nodes_in_separate_executors(ros_context, spin):
    sender = Node("sender", context=ros_context)
    receiver = Node("receiver", context=ros_context)
    received = []
    qos = image_qos("reliable", 1)
    receiver.create_subscription(Image, "image_raw", received.append, qos)
    pub = sender.create_publisher(Image, "image_raw", qos)
    spin(sender, receiver)
    sent = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    header = Header(frame_id="microscope_left_optical_frame")
    header.stamp.sec = 1234
    msg = numpy_to_image(sent, "rgb8", header)
    wait_for(lambda: pub.get_subscription_count() > 0, 20, "discovery")
    pub.publish(msg)
    wait_for(lambda: received, 20, "the image")
    got = received[0]
    assert (got.header.stamp.sec, got.header.frame_id) == (1234, "microscope_left_optical_frame")
    np.testing.assert_array_equal(image_to_numpy(got), sent)


def test_stereo_pairs_from_a_separate_process_arrive_exact_and_synchronised():
    cfg = TransportCheckConfig(
        width=1920,
        height=1080,
        frames=6,
        rate=5.0,
        reliability="reliable",
        namespace="/test_sep",
        separate_process=True,
    )
    report = run_transport_check(cfg)
    assert report["pairs"] == 6
    assert report["exact"] == 6 and report["corrupt"] == 0 and report["bad_input"] == 0
    assert report["missing"] == 0
    assert report["baseline_m"] == pytest.approx(0.022)
    assert report["convergence_m"] == pytest.approx(0.2)
    assert 0 < report["latency_ms_p50"] < 5000


# At 20 Hz frames are 50 ms apart: 20 ms is beyond the 5 ms slop and far from the next frame.
@pytest.mark.parametrize(("offset", "paired"), [(0.003, True), (0.02, False)])
def test_synchroniser_pairs_a_real_publisher_within_slop_only(ros_context, spin, offset, paired):
    ns = f"/sync_{int(offset * 1000)}"
    pattern = StereoPatternNode(
        context=ros_context,
        namespace=ns,
        parameter_overrides=[
            Parameter("width", value=64),
            Parameter("height", value=48),
            Parameter("rate", value=20.0),
            Parameter("right_stamp_offset", value=offset),
            Parameter("wait_for_subscribers", value=1),
        ],
    )
    checker = StereoCheckNode(
        context=ros_context,
        namespace=ns,
        parameter_overrides=[
            Parameter("slop", value=0.005),
            Parameter("reliability", value="reliable"),
        ],
    )
    spin(pattern, checker)
    if paired:
        wait_for(lambda: checker.report()["pairs"] >= 5, 20, "5 synchronised pairs")
    else:
        wait_for(lambda: pattern.sent >= 10, 20, "10 pairs sent")
    report = checker.report()
    if paired:
        assert report["exact"] == report["pairs"] >= 5
    else:
        assert report["pairs"] == 0 and report["corrupt"] == 0


def test_bad_start_parameter_names_itself(ros_context):
    with pytest.raises(InputError, match=r"queue_size .*-p queue_size:=<value> \(default 10\)"):
        StereoCheckNode(
            context=ros_context, parameter_overrides=[Parameter("queue_size", value=0)]
        )
    with pytest.raises(InputError, match=r"reliability must be one of"):
        StereoCheckNode(
            context=ros_context, parameter_overrides=[Parameter("reliability", value="fast")]
        )


def test_runtime_parameter_changes_are_validated_through_the_service(ros_context, spin):
    node = StereoCheckNode(context=ros_context, namespace="/params")
    client_node = Node("param_client", context=ros_context)
    spin(node, client_node)
    client = AsyncParameterClient(client_node, "/params/stereo_check_node")
    assert client.wait_for_services(timeout_sec=20.0)

    def set_one(param):
        future = client.set_parameters([param])
        wait_for(future.done, 20, "set_parameters")
        return future.result().results[0]

    bad = set_one(Parameter("disparity", value=-3))
    assert not bad.successful and "disparity" in bad.reason and "-3" in bad.reason
    wrong_type = set_one(Parameter("disparity", value="eight"))
    assert not wrong_type.successful
    assert node.params["disparity"] == 8
    good = set_one(Parameter("disparity", value=12))
    assert good.successful
    assert node.params["disparity"] == 12
    read_only = set_one(Parameter("slop", value=0.01))
    assert not read_only.successful
    assert node.params["slop"] == 0.005


def test_selftest_command_reports_json(cli_json):
    report = cli_json(
        "selftest",
        "--size",
        "96",
        "128",
        "--frames",
        "5",
        "--rate",
        "10",
        "--reliability",
        "reliable",
    )
    assert report["pairs"] == 5 and report["exact"] == 5
    assert report["dds_profile"].endswith("fastdds_large_images.xml")
