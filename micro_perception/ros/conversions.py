"""The one place where ROS messages become numpy arrays and back.

Every node converts through these functions, so size and encoding checks live here once. Bad
messages raise :class:`~micro_perception.errors.InputError` naming the field; nothing allocates
from a size a header declares without first checking it against the bytes actually received.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from micro_perception.camera import CameraIntrinsics, StereoPair
from micro_perception.errors import InputError

try:  # the distro's builder on a robot; the PyPI wheels do not ship sensor_msgs_py
    from sensor_msgs_py import point_cloud2 as _sensor_msgs_py_pc2
except ImportError:  # pragma: no cover - depends on the installation
    _sensor_msgs_py_pc2 = None

# Larger than any microscope camera; a bigger header is garbage, not an image.
MAX_IMAGE_SIDE = 1 << 15


@dataclass(frozen=True)
class _Encoding:
    dtype: str  # numpy type without byte order
    channels: int

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def pixel_bytes(self) -> int:
        return self.itemsize * self.channels


ENCODINGS: dict[str, _Encoding] = {
    "mono8": _Encoding("u1", 1),
    "8UC1": _Encoding("u1", 1),
    "rgb8": _Encoding("u1", 3),
    "bgr8": _Encoding("u1", 3),
    "8UC3": _Encoding("u1", 3),
    "rgba8": _Encoding("u1", 4),
    "bgra8": _Encoding("u1", 4),
    "mono16": _Encoding("u2", 1),
    "16UC1": _Encoding("u2", 1),
    "32FC1": _Encoding("f4", 1),
}


# 3-channel colour encodings the networks take as RGB; value: channels stored reversed.
COLOUR_ORDER = {"rgb8": False, "bgr8": True}


def _encoding(name: str) -> _Encoding:
    try:
        return ENCODINGS[name]
    except KeyError:
        raise InputError(
            f"Image.encoding {name!r} is not supported (supported: {', '.join(ENCODINGS)})"
        ) from None


def _side(value, field: str) -> int:
    value = int(value)
    if not 0 < value <= MAX_IMAGE_SIDE:
        raise InputError(f"Image.{field} must be in 1..{MAX_IMAGE_SIDE}, got {value}")
    return value


def image_to_numpy(msg: Image) -> np.ndarray:
    """A (H, W) or (H, W, C) array in native byte order, viewing ``msg.data`` where possible.

    The view shares memory with the message: copy it before changing it in place.
    """
    enc = _encoding(msg.encoding)
    height = _side(msg.height, "height")
    width = _side(msg.width, "width")
    step = int(msg.step)
    row_bytes = width * enc.pixel_bytes
    if step < row_bytes:
        raise InputError(
            f"Image.step {step} is smaller than width * bytes per pixel = {width} * "
            f"{enc.pixel_bytes} = {row_bytes} for {msg.encoding}"
        )
    if msg.is_bigendian not in (0, 1):
        raise InputError(f"Image.is_bigendian must be 0 or 1, got {msg.is_bigendian}")
    data = msg.data
    if len(data) != step * height:
        raise InputError(
            f"Image.data has {len(data)} bytes, expected step * height = {step} * {height} = "
            f"{step * height}"
        )
    dtype = np.dtype(enc.dtype).newbyteorder(">" if msg.is_bigendian else "<")
    shape = (height, width, enc.channels)
    strides = (step, enc.pixel_bytes, enc.itemsize)
    arr = np.ndarray(shape=shape, dtype=dtype, buffer=data, strides=strides)
    if enc.channels == 1:
        arr = arr[:, :, 0]
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    elif not arr.flags.aligned:  # odd step on a multi-byte type: torch and cv2 want aligned rows
        arr = arr.copy()
    return arr


def numpy_to_image(arr: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """An Image holding ``arr`` (one copy, through the uint8[] fast path) with the given header."""
    enc = _encoding(encoding)
    arr = np.asarray(arr)
    if enc.channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    expected_ndim = 2 if enc.channels == 1 else 3
    if arr.ndim != expected_ndim or (expected_ndim == 3 and arr.shape[2] != enc.channels):
        want = "(H, W)" if enc.channels == 1 else f"(H, W, {enc.channels})"
        raise InputError(f"{encoding} needs an array of shape {want}, got {arr.shape}")
    want_dtype = np.dtype(enc.dtype)
    if arr.dtype.kind != want_dtype.kind or arr.dtype.itemsize != want_dtype.itemsize:
        raise InputError(f"{encoding} needs dtype {want_dtype.name}, got {arr.dtype.name}")
    height, width = _side(arr.shape[0], "height"), _side(arr.shape[1], "width")
    arr = np.ascontiguousarray(arr, dtype=want_dtype.newbyteorder("="))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = width * enc.pixel_bytes
    msg.data = _uint8_array(arr)
    return msg


def _uint8_array(arr: np.ndarray) -> array.array:
    # rclpy stores uint8[] as array('B'); handing it one skips its per-element Python checks.
    data = array.array("B")
    data.frombytes(memoryview(arr).cast("B"))
    return data


def output_header(source: Header, frame_id: str) -> Header:
    """The header of an output: the input's stamp (so bag replay stays consistent), our frame."""
    return Header(stamp=source.stamp, frame_id=frame_id)


# --- camera_info -----------------------------------------------------------------------------


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraIntrinsics:
    """Intrinsics of one camera; raises InputError on an uncalibrated or malformed message."""
    return CameraIntrinsics(
        width=int(msg.width),
        height=int(msg.height),
        K=np.asarray(msg.k, dtype=np.float64),
        P=np.asarray(msg.p, dtype=np.float64),
        D=np.asarray(msg.d, dtype=np.float64),
        R=np.asarray(msg.r, dtype=np.float64),
        distortion_model=msg.distortion_model or "plumb_bob",
    )


def camera_infos_to_stereo(left: CameraInfo, right: CameraInfo) -> StereoPair:
    """A checked rectified stereo pair from the two camera_info messages."""
    return StereoPair(camera_info_to_intrinsics(left), camera_info_to_intrinsics(right))


def intrinsics_to_camera_info(cam: CameraIntrinsics, header: Header | None = None) -> CameraInfo:
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width = cam.width
    msg.height = cam.height
    msg.distortion_model = cam.distortion_model
    msg.d = [float(v) for v in cam.D]
    msg.k = cam.K.ravel().tolist()
    msg.r = cam.R.ravel().tolist()
    msg.p = cam.P.ravel().tolist()
    return msg


# --- point clouds ----------------------------------------------------------------------------

_XYZ_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
]
# rviz reads colour from a FLOAT32 field named rgb holding 0x00RRGGBB bit patterns.
_RGB_FIELD = PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1)

_POINTFIELD_DTYPES = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}


def points_to_pointcloud2(
    points: np.ndarray, header: Header, rgb: np.ndarray | None = None
) -> PointCloud2:
    """A PointCloud2 from (N, 3) or organised (H, W, 3) xyz, with optional uint8 rgb alike.

    Non-finite points are kept (organised clouds need them) and make ``is_dense`` false.
    """
    xyz = np.asarray(points)
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3:
        raise InputError(f"points must have shape (N, 3) or (H, W, 3), got {xyz.shape}")
    if xyz.dtype.kind != "f":
        raise InputError(f"points must be floating point, got {xyz.dtype.name}")
    fields = list(_XYZ_FIELDS)
    names = ["x", "y", "z"]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != xyz.shape or rgb.dtype != np.uint8:
            raise InputError(
                f"rgb must be uint8 with the points' shape {xyz.shape}, "
                f"got {rgb.dtype.name} {rgb.shape}"
            )
        fields.append(_RGB_FIELD)
        names.append("rgb")
    cloud_shape = xyz.shape[:-1]
    structured = np.empty(cloud_shape, dtype=[(n, "<f4") for n in names])
    structured["x"], structured["y"], structured["z"] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    if rgb is not None:
        packed = (
            (rgb[..., 0].astype(np.uint32) << 16)
            | (rgb[..., 1].astype(np.uint32) << 8)
            | rgb[..., 2].astype(np.uint32)
        )
        structured["rgb"] = packed.view(np.float32)
    height, width = cloud_shape if len(cloud_shape) == 2 else (1, cloud_shape[0])
    is_dense = bool(np.isfinite(xyz).all())
    if _sensor_msgs_py_pc2 is not None:
        msg = _sensor_msgs_py_pc2.create_cloud(header, fields, structured.reshape(height, width))
    else:
        msg = PointCloud2()
        msg.header = header
        msg.height, msg.width = height, width
        msg.fields = fields
        msg.is_bigendian = False
        msg.point_step = structured.dtype.itemsize
        msg.row_step = msg.point_step * width
        msg.data = _uint8_array(np.ascontiguousarray(structured))
    msg.is_dense = is_dense
    return msg


def pointcloud2_to_numpy(msg: PointCloud2) -> np.ndarray:
    """A structured (height, width) array viewing the cloud's data, one named field per column."""
    if msg.is_bigendian:
        raise InputError("PointCloud2.is_bigendian clouds are not supported")
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _POINTFIELD_DTYPES:
            raise InputError(f"PointCloud2 field {f.name!r} has unknown datatype {f.datatype}")
        names.append(f.name)
        base = "<" + _POINTFIELD_DTYPES[f.datatype]
        formats.append(base if f.count == 1 else (base, (f.count,)))
        offsets.append(f.offset)
    try:
        dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step}
        )
    except ValueError as exc:
        raise InputError(
            f"PointCloud2.fields do not fit point_step {msg.point_step}: {exc}"
        ) from None
    if msg.row_step < msg.width * msg.point_step:
        raise InputError(
            f"PointCloud2.row_step {msg.row_step} < width * point_step "
            f"{msg.width * msg.point_step}"
        )
    if len(msg.data) != msg.row_step * msg.height:
        raise InputError(
            f"PointCloud2.data has {len(msg.data)} bytes, expected row_step * height = "
            f"{msg.row_step * msg.height}"
        )
    return np.ndarray(
        shape=(msg.height, msg.width),
        dtype=dtype,
        buffer=msg.data,
        strides=(msg.row_step, msg.point_step),
    )


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours from rviz's packed float32 ``rgb`` field."""
    bits = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(np.uint8)
