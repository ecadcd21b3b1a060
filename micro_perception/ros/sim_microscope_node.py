"""sim_microscope_node: a live virtual stereo surgical microscope.

Publishes ``left/image_raw``, ``right/image_raw`` (rgb8), both ``camera_info`` and ``focus``
(sensor_msgs/JointState, position[0] = focal-plane distance in m): focus sweeps of ``slices``
slices repeating at ``sweep_rate``, while an instrument approaches the retina, hovers and
retracts every ``period`` seconds. Each slice's images, camera_info and focus share one stamp.
Ground truth for evaluation, on the same stamps: ``ground_truth/depth`` (32FC1, left camera, m),
``ground_truth/left_aif`` (rgb8, the all-in-focus left image) and
``ground_truth/retina_distance`` (sensor_msgs/Range, m; +inf when no instrument, REP 117).

The sequence is rendered once per parameter set and cached on disk, then played at any rate.
"""

from __future__ import annotations

from pathlib import Path

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState, Range
from std_msgs.msg import Header

from micro_perception.ros.conversions import intrinsics_to_camera_info, numpy_to_image
from micro_perception.ros.params import Parameters, ParamSpec, qos_params
from micro_perception.ros.qos import image_qos
from micro_perception.ros.runner import spin_node
from micro_perception.ros.shm_transport import ImagePublisher
from micro_perception.sim.scene import INSTRUMENT_KINDS
from micro_perception.sim.sequence import (
    LEFT_FRAME,
    RIGHT_FRAME,
    TOPICS,
    Sequence,
    SequenceConfig,
    SequencePlayer,
    ground_truth_distance,
)

PARAMS = [
    ParamSpec("seed", 0, "scene seed", 0, 2**31 - 1, read_only=True),
    ParamSpec("width", 512, "image width, px", 16, 4096, read_only=True),
    ParamSpec("height", 512, "image height, px", 16, 4096, read_only=True),
    ParamSpec("slices", 8, "focal slices per sweep", 1, 64, read_only=True),
    ParamSpec("poses", 16, "instrument positions rendered per cycle", 2, 1000, read_only=True),
    ParamSpec("instrument", "needle", "instrument kind", choices=INSTRUMENT_KINDS, read_only=True),
    ParamSpec(
        "far_gap", 3.0e-3, "gap at the start and end of a cycle, m", 1e-5, 0.02, read_only=True
    ),
    ParamSpec("near_gap", 0.1e-3, "closest gap of a cycle, m", 0.0, 0.02, read_only=True),
    ParamSpec("sweep_rate", 2.0, "focus sweeps per second", 0.01, 100.0, read_only=True),
    ParamSpec("period", 10.0, "seconds per approach-hover-retract cycle", 0.1, 3600.0),
    ParamSpec(
        "frame_noise",
        1.5,
        "fresh sensor noise on every slice, grey levels (std); 0 replays the render exactly",
        0.0,
        50.0,
        read_only=True,
    ),
    *qos_params("reliable", 5, "publisher"),
    ParamSpec("publish_ground_truth", True, "publish ground_truth/* topics"),
    ParamSpec(
        "distance_mode",
        "normal",
        "ground-truth distance along the retina normal or the optical axis",
        choices=("normal", "axial"),
    ),
    ParamSpec(
        "cache_dir", "", "where rendered sequences are cached ('' = ~/.cache)", read_only=True
    ),
]


class SimMicroscopeNode(Node):
    def __init__(self, **kwargs):
        super().__init__("sim_microscope_node", **kwargs)
        self.params = p = Parameters(self, PARAMS)
        config = SequenceConfig(
            seed=p["seed"],
            height=p["height"],
            width=p["width"],
            slices=p["slices"],
            poses=p["poses"],
            kind=p["instrument"],
            far_gap=p["far_gap"],
            near_gap=p["near_gap"],
        )
        log = self.get_logger()
        log.info(
            f"loading the virtual microscope sequence {config.key()} (rendered once, then cached)"
        )
        sequence = Sequence.load_or_render(
            config,
            Path(p["cache_dir"]) if p["cache_dir"] else None,
            progress=lambda i, n: log.info(f"rendered pose {i}/{n}"),
        )
        self.player = SequencePlayer(
            sequence, p["sweep_rate"], p["period"], p["frame_noise"], p["seed"]
        )
        self.left_cam = sequence.optics.left_camera()
        self.right_cam = sequence.optics.right_camera()
        qos = image_qos(p["reliability"], p["qos_depth"])
        self.pubs = {
            "left_image": ImagePublisher(self, TOPICS["left_image"], qos),
            "right_image": ImagePublisher(self, TOPICS["right_image"], qos),
            "left_info": self.create_publisher(CameraInfo, TOPICS["left_info"], qos),
            "right_info": self.create_publisher(CameraInfo, TOPICS["right_info"], qos),
            "focus": self.create_publisher(JointState, TOPICS["focus"], qos),
            "gt_depth": self.create_publisher(Image, TOPICS["gt_depth"], qos),
            "gt_aif": self.create_publisher(Image, TOPICS["gt_aif"], qos),
            "gt_distance": self.create_publisher(Range, TOPICS["gt_distance"], qos),
        }
        self.n = 0
        self.timer = self.create_timer(self.player.slice_period_ns / 1e9, self._tick)
        log.info(
            f"publishing {config.width}x{config.height} stereo sweeps of {config.slices} "
            f"slices at {p['sweep_rate']} Hz, cycle {p['period']} s"
        )

    def destroy_node(self):
        for pub in getattr(self, "pubs", {}).values():
            if isinstance(pub, ImagePublisher):
                pub.close()  # in-process subscribers go back to DDS
        return super().destroy_node()

    def _tick(self) -> None:
        self.player.period = self.params["period"]
        frame = self.player.frame(self.n)
        self.n += 1
        stamp = self.get_clock().now().to_msg()
        left_h = Header(stamp=stamp, frame_id=LEFT_FRAME)
        right_h = Header(stamp=stamp, frame_id=RIGHT_FRAME)
        pub = self.pubs
        pub["left_info"].publish(intrinsics_to_camera_info(self.left_cam, left_h))
        pub["right_info"].publish(intrinsics_to_camera_info(self.right_cam, right_h))
        pub["focus"].publish(
            JointState(header=Header(stamp=stamp), name=["focus"], position=[frame.focus_distance])
        )
        pub["left_image"].publish(frame.left, "rgb8", left_h)
        pub["right_image"].publish(frame.right, "rgb8", right_h)
        if self.params["publish_ground_truth"]:
            pub["gt_depth"].publish(numpy_to_image(frame.pose.left_depth, "32FC1", left_h))
            pub["gt_aif"].publish(numpy_to_image(frame.pose.left_aif, "rgb8", left_h))
            gap = ground_truth_distance(frame.pose, self.params["distance_mode"])
            pub["gt_distance"].publish(
                Range(
                    header=left_h,
                    radiation_type=Range.INFRARED,
                    field_of_view=0.0,
                    min_range=0.0,
                    max_range=0.05,
                    range=float(gap),
                )
            )


def main(args=None) -> None:
    spin_node(SimMicroscopeNode, args)


if __name__ == "__main__":
    main()
