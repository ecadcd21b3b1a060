"""rosbag2 files without a ROS installation, through the ``rosbags`` library.

The rosbags counterpart of :mod:`micro_perception.ros.conversions`: the same arrays become the
same messages, serialised to CDR exactly as rclpy would, so ``ros2 bag play`` on a robot plays
them. Message definitions come from the chosen distro's typestore: Kilted by default, matching
the PyPI wheels, and identical to Jazzy's for the types written here; Humble's
sensor_msgs/Range has no ``variance`` field, so choose ``humble`` for a Humble robot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from micro_perception.camera import CameraIntrinsics
from micro_perception.errors import InputError
from micro_perception.ros.conversions import ENCODINGS

DISTROS = ("kilted", "jazzy", "humble")
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class BagMessages:
    """Builders of rosbags messages for one distro's message definitions."""

    def __init__(self, distro: str = "kilted"):
        if distro not in DISTROS:
            raise InputError(f"distro must be one of {list(DISTROS)}, got {distro!r}")
        self.distro = distro
        self.typestore = get_typestore(getattr(Stores, f"ROS2_{distro.upper()}"))
        t = self.typestore.types
        self._time = t["builtin_interfaces/msg/Time"]
        self._header = t["std_msgs/msg/Header"]
        self._image = t["sensor_msgs/msg/Image"]
        self._info = t["sensor_msgs/msg/CameraInfo"]
        self._roi = t["sensor_msgs/msg/RegionOfInterest"]
        self._joint = t["sensor_msgs/msg/JointState"]
        self._range = t["sensor_msgs/msg/Range"]
        self._clock = t["rosgraph_msgs/msg/Clock"]

    def header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self._header(stamp=self._time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def image(self, arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
        enc = ENCODINGS.get(encoding)
        if enc is None:
            raise InputError(f"encoding {encoding!r} is not supported")
        arr = np.ascontiguousarray(arr, dtype=np.dtype(enc.dtype).newbyteorder("<"))
        height, width = arr.shape[:2]
        return self._image(
            header=self.header(stamp_ns, frame_id),
            height=height,
            width=width,
            encoding=encoding,
            is_bigendian=0,
            step=width * enc.pixel_bytes,
            data=arr.reshape(-1).view(np.uint8),
        )

    def camera_info(self, cam: CameraIntrinsics, stamp_ns: int, frame_id: str):
        return self._info(
            header=self.header(stamp_ns, frame_id),
            height=cam.height,
            width=cam.width,
            distortion_model=cam.distortion_model,
            d=cam.D.astype(np.float64),
            k=cam.K.ravel(),
            r=cam.R.ravel(),
            p=cam.P.ravel(),
            binning_x=0,
            binning_y=0,
            roi=self._roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )

    def joint_state(self, names: list[str], positions, stamp_ns: int, frame_id: str = ""):
        empty = np.zeros(0, np.float64)
        return self._joint(
            header=self.header(stamp_ns, frame_id),
            name=list(names),
            position=np.asarray(positions, np.float64),
            velocity=empty,
            effort=empty,
        )

    def range(self, value: float, stamp_ns: int, frame_id: str, max_range: float = 0.05):
        fields = dict(
            header=self.header(stamp_ns, frame_id),
            radiation_type=self._range.INFRARED,
            field_of_view=0.0,
            min_range=0.0,
            max_range=float(max_range),
            range=float(value),
        )
        if "variance" in self._range.__dataclass_fields__:  # Jazzy and later
            fields["variance"] = 0.0
        return self._range(**fields)

    def clock(self, stamp_ns: int):
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self._clock(clock=self._time(sec=sec, nanosec=nanosec))


class BagWriter:
    """A rosbag2 (mcap or sqlite3) being written; use as a context manager."""

    def __init__(self, path: str | Path, storage: str = "mcap", distro: str = "kilted"):
        if storage not in STORAGE:
            raise InputError(f"storage must be one of {list(STORAGE)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f"{self.path} exists; rosbag2 writes a new folder")
        self.msgs = BagMessages(distro)
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGE[storage])
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, topic: str, msg, stamp_ns: int) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(
                topic, msg.__msgtype__, typestore=self.msgs.typestore
            )
            self._connections[topic] = conn
        data = self.msgs.typestore.serialize_cdr(msg, msg.__msgtype__)
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1


def write_sequence_bag(
    player,
    out: str | Path,
    seconds: float,
    start_ns: int,
    namespace: str = "/microscope",
    storage: str = "mcap",
    distro: str = "kilted",
    distance_mode: str = "normal",
    progress=None,
) -> dict[str, int]:
    """Write ``seconds`` of a virtual-microscope sequence as a rosbag2; returns message counts.

    The streams are those of sim_microscope_node, each slice's messages sharing one stamp,
    which is also the bag's receive time.
    """
    from micro_perception.sim.sequence import (
        LEFT_FRAME,
        RIGHT_FRAME,
        TOPICS,
        ground_truth_distance,
    )

    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    topic = {k: f"{ns}/{v}" for k, v in TOPICS.items()}
    optics = player.sequence.optics
    left_cam, right_cam = optics.left_camera(), optics.right_camera()
    with BagWriter(out, storage, distro) as bag:
        m = bag.msgs
        frames = list(player.frames(seconds))
        for i, f in enumerate(frames):
            t = start_ns + f.t_ns
            bag.write(topic["left_image"], m.image(f.left, "rgb8", t, LEFT_FRAME), t)
            bag.write(topic["right_image"], m.image(f.right, "rgb8", t, RIGHT_FRAME), t)
            bag.write(topic["left_info"], m.camera_info(left_cam, t, LEFT_FRAME), t)
            bag.write(topic["right_info"], m.camera_info(right_cam, t, RIGHT_FRAME), t)
            bag.write(topic["focus"], m.joint_state(["focus"], [f.focus_distance], t), t)
            bag.write(topic["gt_depth"], m.image(f.pose.left_depth, "32FC1", t, LEFT_FRAME), t)
            bag.write(topic["gt_aif"], m.image(f.pose.left_aif, "rgb8", t, LEFT_FRAME), t)
            gap = ground_truth_distance(f.pose, distance_mode)
            bag.write(topic["gt_distance"], m.range(gap, t, LEFT_FRAME), t)
            if progress:
                progress(i + 1, len(frames))
        return dict(bag.counts)
