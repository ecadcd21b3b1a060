"""stereo_pattern_node: a stand-in stereo camera publishing verifiable test pairs.

Publishes ``left/image_raw``, ``right/image_raw`` and both ``camera_info`` with the geometry of a
converging stereo microscope, for checking DDS transport, QoS and synchronisation on a machine
before the real cameras (or the virtual microscope) are connected.
"""

from __future__ import annotations

from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from micro_perception.camera import CameraIntrinsics
from micro_perception.pattern import CHANNELS, stereo_pattern
from micro_perception.ros.conversions import intrinsics_to_camera_info
from micro_perception.ros.params import Parameters, ParamSpec, qos_params
from micro_perception.ros.qos import image_qos
from micro_perception.ros.runner import spin_node
from micro_perception.ros.shm_transport import ImagePublisher

PARAMS = [
    ParamSpec("width", 640, "image width in pixels", 8, 16384, read_only=True),
    ParamSpec("height", 480, "image height in pixels", 1, 16384, read_only=True),
    ParamSpec("encoding", "rgb8", "image encoding", choices=tuple(CHANNELS), read_only=True),
    ParamSpec("rate", 10.0, "frames per second", 0.1, 240.0, read_only=True),
    ParamSpec(
        "wait_for_subscribers", 0, "hold the first frame until this many image subscribers", 0, 100
    ),
    ParamSpec("frames", 0, "stop after this many pairs (0: never stop)", 0, 10**9),
    ParamSpec("disparity", 8, "pixel shift of the right image", 0, 512, read_only=True),
    *qos_params("reliable", 5, "publisher"),
    ParamSpec(
        "right_stamp_offset", 0.0, "seconds added to the right stamp (sync tests)", -1.0, 1.0
    ),
    ParamSpec("baseline", 0.022, "stereo baseline in metres", 1e-4, 1.0, read_only=True),
    ParamSpec(
        "convergence_distance",
        0.2,
        "distance where disparity is zero, metres",
        1e-3,
        10.0,
        read_only=True,
    ),
    ParamSpec(
        "field_of_view",
        0.008,
        "field width at the convergence distance, metres",
        1e-4,
        1.0,
        read_only=True,
    ),
    ParamSpec(
        "left_frame_id", "microscope_left_optical_frame", "left optical frame", read_only=True
    ),
    ParamSpec(
        "right_frame_id", "microscope_right_optical_frame", "right optical frame", read_only=True
    ),
]


class StereoPatternNode(Node):
    def __init__(self, **kwargs):
        super().__init__("stereo_pattern_node", **kwargs)
        self.params = Parameters(self, PARAMS)
        p = self.params
        qos = image_qos(p["reliability"], p["qos_depth"])
        self.pub_left = ImagePublisher(self, "left/image_raw", qos)
        self.pub_right = ImagePublisher(self, "right/image_raw", qos)
        self.pub_info_left = self.create_publisher(CameraInfo, "left/camera_info", qos)
        self.pub_info_right = self.create_publisher(CameraInfo, "right/camera_info", qos)
        w, h, z0, b = p["width"], p["height"], p["convergence_distance"], p["baseline"]
        fx = w * z0 / p["field_of_view"]
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        self.left_cam = CameraIntrinsics.from_pinhole(w, h, fx, fx, cx, cy)
        self.right_cam = CameraIntrinsics.from_pinhole(
            w, h, fx, fx, cx + fx * b / z0, cy, tx=-fx * b
        )
        self.sent = 0
        self.timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(
            f"publishing {w}x{h} {p['encoding']} stereo pairs at {p['rate']} Hz "
            f"({p['reliability']}), frames={p['frames'] or 'unlimited'}"
        )

    def destroy_node(self):
        for pub in (getattr(self, "pub_left", None), getattr(self, "pub_right", None)):
            if pub is not None:
                pub.close()  # in-process subscribers go back to DDS
        return super().destroy_node()

    def _tick(self) -> None:
        p = self.params
        if p["frames"] and self.sent >= p["frames"]:
            self.timer.cancel()
            self.get_logger().info(f"sent {self.sent} pairs; done")
            return
        if self.sent == 0 and (
            self.pub_left.get_subscription_count() < p["wait_for_subscribers"]
            or self.pub_right.get_subscription_count() < p["wait_for_subscribers"]
        ):
            return
        left, right = stereo_pattern(
            self.sent, p["height"], p["width"], p["encoding"], p["disparity"]
        )
        stamp = self.get_clock().now()
        right_stamp = stamp + Duration(nanoseconds=int(p["right_stamp_offset"] * 1e9))
        hl = Header(stamp=stamp.to_msg(), frame_id=p["left_frame_id"])
        hr = Header(stamp=right_stamp.to_msg(), frame_id=p["right_frame_id"])
        # The pair first: the transport's latency is timed on it, from the stamp.
        self.pub_left.publish(left, p["encoding"], hl)
        self.pub_right.publish(right, p["encoding"], hr)
        self.pub_info_left.publish(intrinsics_to_camera_info(self.left_cam, hl))
        self.pub_info_right.publish(intrinsics_to_camera_info(self.right_cam, hr))
        self.sent += 1


def main(args=None) -> None:
    spin_node(StereoPatternNode, args)


if __name__ == "__main__":
    main()
