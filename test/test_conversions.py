"""Image, CameraInfo and PointCloud2 conversion: round trips, zero-copy reads, hostile headers."""

import array
import importlib.util
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

from micro_perception.camera import CameraIntrinsics
from micro_perception.errors import InputError
from micro_perception.ros import conversions as conv

RNG = np.random.default_rng(7)


def sample(encoding: str, height=5, width=7) -> np.ndarray:
    spec = conv.ENCODINGS[encoding]
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    if spec.dtype == "f4":
        return RNG.normal(size=shape).astype(np.float32)
    info = np.iinfo(np.dtype(spec.dtype))
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=spec.dtype)


def raw_image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian=False) -> Image:
    """An Image built by hand, the way another driver (or a bag) might lay it out."""
    height, width = arr.shape[:2]
    dt = arr.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(arr, dtype=dt).reshape(height, -1).view(np.uint8)
    padded = np.full((height, rows.shape[1] + pad), 0xAB, dtype=np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image(height=height, width=width, encoding=encoding, step=padded.shape[1])
    msg.is_bigendian = int(bigendian)
    msg.data = array.array("B", padded.tobytes())
    return msg


@pytest.mark.parametrize("encoding", list(conv.ENCODINGS))
def test_round_trip_every_encoding(encoding):
    arr = sample(encoding)
    header = Header(frame_id="microscope_left_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = conv.numpy_to_image(arr, encoding, header)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * arr.itemsize * (1 if arr.ndim == 2 else arr.shape[2])
    assert msg.header.stamp.nanosec == 345
    back = conv.image_to_numpy(msg)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("encoding", list(conv.ENCODINGS))
@pytest.mark.parametrize("pad", [1, 3, 64])
def test_padded_step_is_honoured(encoding, pad):
    arr = sample(encoding, 4, 9)
    back = conv.image_to_numpy(raw_image(arr, encoding, pad=pad))
    np.testing.assert_array_equal(back, arr)
    assert back.flags.aligned


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_data_is_read_in_native_order(encoding):
    arr = sample(encoding)
    back = conv.image_to_numpy(raw_image(arr, encoding, bigendian=True))
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC1"])
def test_read_views_message_memory(encoding):
    msg = conv.numpy_to_image(sample(encoding, 6, 8), encoding)
    view = conv.image_to_numpy(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    padded = raw_image(sample(encoding, 6, 8), encoding, pad=conv.ENCODINGS[encoding].itemsize)
    assert np.shares_memory(conv.image_to_numpy(padded), np.frombuffer(padded.data, np.uint8))


def test_write_uses_the_uint8_array_fast_path(monkeypatch):
    # With field checks on, rclpy validates a non-array value element by element through the
    # module-global `all`; handing it an array('B') skips that loop entirely.
    image_module = sys.modules[Image.__module__]
    checked = []  # every element rclpy's checks iterate over

    def recording_all(iterable):
        items = list(iterable)
        checked.extend(items)
        return all(items)

    monkeypatch.setattr(image_module, "ros_python_check_fields", "1")
    monkeypatch.setattr(image_module, "all", recording_all, raising=False)
    arr = sample("rgb8", 1080, 1920)
    msg = conv.numpy_to_image(arr, "rgb8")
    assert msg._check_fields
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    assert len(checked) == 0, "data went through rclpy's per-element check"
    np.testing.assert_array_equal(conv.image_to_numpy(msg), arr)
    # The recorder does see the slow path, so the assertion above can fail.
    msg.data = bytes(3)
    assert len(checked) >= 3


def good_message(**changes) -> Image:
    msg = conv.numpy_to_image(sample("rgb8", 4, 6), "rgb8")
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"encoding": "yuv422_yuy2"}, "encoding"),
        ({"encoding": ""}, "encoding"),
        ({"height": 0}, "height"),
        ({"width": 0}, "width"),
        ({"step": 17}, "step"),
        ({"data": array.array("B", bytes(4 * 18 - 1))}, "data"),
        ({"data": array.array("B", bytes(4 * 18 + 1))}, "data"),
        ({"is_bigendian": 2}, "is_bigendian"),
        ({"height": 1 << 20}, "height"),
        ({"width": 1 << 16, "height": 1 << 15, "step": 3 << 16}, "width"),
    ],
)
def test_malformed_image_names_the_field(changes, field):
    with pytest.raises(InputError, match=rf"Image\.{field}"):
        conv.image_to_numpy(good_message(**changes))


def test_gigabyte_header_with_little_data_allocates_nothing():
    msg = good_message(height=30000, width=30000, step=90000)
    with pytest.raises(InputError, match=r"Image\.data has 72 bytes, expected .* 2700000000"):
        conv.image_to_numpy(msg)


@given(
    encoding=st.sampled_from([*conv.ENCODINGS, "bayer_rggb8", "64FC1"]),
    height=st.integers(-2, 40),
    width=st.integers(-2, 40),
    step=st.integers(-1, 200),
    nbytes=st.integers(0, 3000),
    bigendian=st.integers(0, 3),
)
@settings(max_examples=300, deadline=None)
def test_hostile_headers_only_raise_input_error(encoding, height, width, step, nbytes, bigendian):
    msg = Image(encoding=encoding, height=max(height, 0), width=max(width, 0), step=max(step, 0))
    msg.is_bigendian = bigendian
    msg.data = array.array("B", bytes(nbytes))
    try:
        arr = conv.image_to_numpy(msg)
    except InputError:
        return
    assert arr.shape[:2] == (msg.height, msg.width)
    assert msg.step * msg.height == nbytes


@pytest.mark.parametrize(
    ("arr", "encoding", "match"),
    [
        (np.zeros((4, 4), np.float64), "32FC1", "float32"),
        (np.zeros((4, 4, 3), np.uint8), "mono8", "shape"),
        (np.zeros((4, 4), np.uint8), "rgb8", "shape"),
        (np.zeros((4, 4), np.uint8), "jpeg", "encoding"),
        (np.zeros((0, 4), np.uint8), "mono8", "height"),
    ],
)
def test_writing_a_wrong_array_raises(arr, encoding, match):
    with pytest.raises(InputError, match=match):
        conv.numpy_to_image(arr, encoding)


def test_output_header_copies_stamp_and_sets_frame():
    source = Header(frame_id="camera")
    source.stamp.sec, source.stamp.nanosec = 5, 6
    out = conv.output_header(source, "microscope_left_optical_frame")
    assert (out.stamp.sec, out.stamp.nanosec, out.frame_id) == (
        5,
        6,
        "microscope_left_optical_frame",
    )


# --- camera_info ---------------------------------------------------------------------------


def test_camera_info_round_trip():
    cam = CameraIntrinsics.from_pinhole(640, 480, 1500.0, 1501.0, 319.5, 239.5, tx=-33.0)
    msg = conv.intrinsics_to_camera_info(cam, Header(frame_id="f"))
    back = conv.camera_info_to_intrinsics(msg)
    np.testing.assert_array_equal(back.K, cam.K)
    np.testing.assert_array_equal(back.P, cam.P)
    assert (back.width, back.height) == (640, 480)
    assert back.baseline == pytest.approx(33.0 / 1500.0)
    assert msg.header.frame_id == "f"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("k", [0.0] * 9, r"camera_info\.k"),
        ("p", [0.0] * 12, r"camera_info\.p"),
        ("p", [float("nan")] * 12, r"camera_info\.p"),
        ("width", 0, r"camera_info\.width"),
    ],
)
def test_uncalibrated_camera_info_is_rejected(field, value, match):
    cam = CameraIntrinsics.from_pinhole(64, 48, 100.0, 100.0, 31.5, 23.5)
    msg = conv.intrinsics_to_camera_info(cam)
    setattr(msg, field, value)
    with pytest.raises(InputError, match=match):
        conv.camera_info_to_intrinsics(msg)


# --- point clouds --------------------------------------------------------------------------


def test_pointcloud_layout_and_round_trip():
    xyz = RNG.normal(size=(50, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, size=(50, 3), dtype=np.uint8)
    msg = conv.points_to_pointcloud2(xyz, Header(frame_id="f"), rgb)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1),
        ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1),
    ]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 50, 16, 800)
    assert msg.is_dense and not msg.is_bigendian and len(msg.data) == 800
    cloud = conv.pointcloud2_to_numpy(msg)
    got = np.stack([cloud["x"], cloud["y"], cloud["z"]], -1)[0]
    np.testing.assert_array_equal(got, xyz)
    np.testing.assert_array_equal(conv.unpack_rgb(cloud["rgb"][0]), rgb)


def test_organised_cloud_with_nan_is_not_dense():
    xyz = np.ones((4, 6, 3), np.float64)
    xyz[1, 2] = np.nan
    msg = conv.points_to_pointcloud2(xyz, Header())
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (4, 6, 12, 72)
    assert not msg.is_dense
    assert np.isnan(conv.pointcloud2_to_numpy(msg)["z"][1, 2])


def test_known_packed_colour_matches_rviz_convention():
    msg = conv.points_to_pointcloud2(
        np.zeros((1, 3), np.float32), Header(), np.array([[0x12, 0x34, 0x56]], np.uint8)
    )
    packed = conv.pointcloud2_to_numpy(msg)["rgb"].view(np.uint32)
    assert packed[0, 0] == 0x123456


@pytest.mark.parametrize(
    ("points", "rgb", "match"),
    [
        (np.zeros((5, 2), np.float32), None, "shape"),
        (np.zeros((5, 3), np.int32), None, "floating"),
        (np.zeros((5, 3), np.float32), np.zeros((4, 3), np.uint8), "rgb"),
        (np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32), "rgb"),
    ],
)
def test_bad_points_raise(points, rgb, match):
    with pytest.raises(InputError, match=match):
        conv.points_to_pointcloud2(points, Header(), rgb)


def test_truncated_cloud_is_rejected():
    msg = conv.points_to_pointcloud2(np.zeros((5, 3), np.float32), Header())
    msg.data = array.array("B", bytes(len(msg.data) - 1))
    with pytest.raises(InputError, match=r"PointCloud2\.data"):
        conv.pointcloud2_to_numpy(msg)
    msg = PointCloud2(height=1, width=2, point_step=4, row_step=8)
    msg.fields = [PointField(name="x", offset=2, datatype=PointField.FLOAT64, count=1)]
    msg.data = array.array("B", bytes(8))
    with pytest.raises(InputError, match="point_step"):
        conv.pointcloud2_to_numpy(msg)


# --- agreement with the distro's tools, where a ROS 2 distro is installed ---------------------


@pytest.mark.skipif(
    importlib.util.find_spec("cv_bridge") is None, reason="needs the ROS 2 distro's cv_bridge"
)
@pytest.mark.parametrize("encoding", list(conv.ENCODINGS))
def test_agrees_with_cv_bridge(encoding):
    from cv_bridge import CvBridge

    bridge = CvBridge()
    arr = sample(encoding)
    ours = conv.numpy_to_image(arr, encoding)
    theirs = bridge.cv2_to_imgmsg(arr, encoding=encoding)
    assert (ours.step, ours.height, ours.width) == (theirs.step, theirs.height, theirs.width)
    assert bytes(ours.data) == bytes(theirs.data)
    np.testing.assert_array_equal(conv.image_to_numpy(theirs), bridge.imgmsg_to_cv2(ours))


@pytest.mark.skipif(
    importlib.util.find_spec("sensor_msgs_py") is None, reason="needs the distro's sensor_msgs_py"
)
def test_agrees_with_sensor_msgs_py():
    from sensor_msgs_py import point_cloud2

    xyz = RNG.normal(size=(20, 3)).astype(np.float32)
    msg = conv.points_to_pointcloud2(xyz, Header())
    theirs = point_cloud2.read_points_numpy(msg, field_names=("x", "y", "z"))
    np.testing.assert_array_equal(theirs, xyz)
