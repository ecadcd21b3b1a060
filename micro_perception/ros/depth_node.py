"""depth_node: depth, the instrument, and its distance to the retina, from a stereo pair.

Subscribes ``left/image``, ``right/image``, ``left/camera_info``, ``right/camera_info``
(relative names; the launch files remap them to ``{eye}/fused/...``, or to ``{eye}/image_raw``
without a focus sweep), paired by the approximate-time synchroniser. Each pair runs through the
depth pipeline (depth/pipeline.py): stereo, instrument masks of both views, geometry.

Publishes, with the left image's stamp and frame:

* ``depth/image`` (32FC1, m, NaN unknown; REP 118) and ``depth/camera_info``;
* ``depth/points`` (PointCloud2 xyz + rgb, every ``point_decimation``-th pixel; only while
  subscribed);
* ``instrument/mask`` (mono8, 255 = instrument), ``instrument/tip`` (PointStamped, when known);
* ``instrument/retina_distance`` (sensor_msgs/Range, m, filtered; +inf when unknown, the REP 117
  convention for "nothing detected"; ``variance`` the calibrated variance of the measurement the
  distance rests on, 0 where none is known, as the message defines; Humble's Range has none);
* ``instrument/proximity_alert`` (std_msgs/Bool, reliable; on every change and at 1 Hz);
* ``instrument/markers`` (MarkerArray: tip, tip-to-retina line, distance text; only while
  subscribed);
* ``/diagnostics``: rate, latency, drops, estimator, device, mask source, fit residual, and why the
  distance is unknown when it is.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import Point, PointStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, Range
from std_msgs.msg import Bool, ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from micro_perception.depth.pipeline import (
    ESTIMATORS,
    SEG_FLIPS,
    STAGES,
    DepthPipeline,
    PipelineConfig,
    model_file_setting,
)
from micro_perception.depth.stereo import STEREO_BACKENDS, StereoConfig
from micro_perception.errors import InputError
from micro_perception.geometry import (
    DISTANCE_MODES,
    TOOL_SETTINGS,
    GeometryConfig,
    back_project,
    tool_geometry,
)
from micro_perception.ros.conversions import (
    COLOUR_ORDER,
    camera_infos_to_stereo,
    image_to_numpy,
    numpy_to_image,
    output_header,
    points_to_pointcloud2,
)
from micro_perception.ros.diagnostics import Health
from micro_perception.ros.intra_process import MessageInput
from micro_perception.ros.params import (
    Parameters,
    ParamSpec,
    image_transport_param,
    qos_params,
    runtime_config,
    runtime_params,
)
from micro_perception.ros.qos import alert_qos, image_qos
from micro_perception.ros.runner import spin_node
from micro_perception.ros.shm_transport import ImageInput
from micro_perception.ros.sync import ApproximateTimeSynchronizer
from micro_perception.ros.worker import LatestWorker
from micro_perception.sim.sequence import LEFT_FRAME
from micro_perception.tracking import DistanceFilter, FilterConfig, ProximityAlert

# Jazzy and later; Humble's sensor_msgs/Range has no variance.
_RANGE_HAS_VARIANCE = "variance" in Range.get_fields_and_field_types()

PARAMS = [
    ParamSpec(
        "estimator",
        "combined",
        "depth image: combined, stereo or net",
        choices=ESTIMATORS,
        read_only=True,
    ),
    ParamSpec(
        "depth_weights",
        "",
        "depth network weights ('' = none; estimator net needs them)",
        read_only=True,
    ),
    ParamSpec(
        "seg_weights",
        "",
        "segmentation weights ('' = the installed models/segmentation.pt)",
        read_only=True,
    ),
    ParamSpec(
        "edge_weights",
        "",
        "edge refiner weights ('' = the installed models/edge_refiner.pt with the installed "
        "segmentation weights; none = off)",
        read_only=True,
    ),
    ParamSpec(
        "distance_uncertainty",
        "",
        "calibrated sigma of the distance by how it was measured, for Range.variance ('' = the "
        "installed models/distance_uncertainty.json with the installed segmentation weights and "
        "edge refiner; none = off, variance 0: unknown)",
        read_only=True,
    ),
    *runtime_params("the networks"),
    ParamSpec(
        "stereo_backend",
        "auto",
        "stereo teacher: opencv (StereoSGBM on the CPU), torch (semi-global matching on the "
        "networks' device, Triton kernels on CUDA), auto (torch on CUDA, else opencv)",
        choices=STEREO_BACKENDS,
        read_only=True,
    ),
    image_transport_param(),
    *qos_params("best_effort", 5, "image subscription"),
    ParamSpec(
        "sync_slop",
        0.01,
        "largest stamp spread of a synchronised pair, s",
        0.0,
        1.0,
        read_only=True,
    ),
    ParamSpec("sync_queue", 10, "messages kept per input for pairing", 1, 1000, read_only=True),
    ParamSpec("frame_id", LEFT_FRAME, "output frame when the left image has none", read_only=True),
    ParamSpec(
        "distance_mode",
        "normal",
        "published gap: along the retina normal or the optical axis",
        choices=DISTANCE_MODES,
    ),
    ParamSpec("alert_distance", 0.5e-3, "proximity alert on below this gap, m", 1e-5, 0.02),
    ParamSpec(
        "alert_hysteresis", 0.1e-3, "alert off above alert_distance plus this, m", 0.0, 0.01
    ),
    ParamSpec(
        "alert_sigmas",
        0.0,
        "alert as if the gap were this many of its calibrated sigmas nearer (0: the gap as "
        "read); fewer misses for more false alarms, a band as wide as each frame's uncertainty",
        0.0,
        5.0,
    ),
    ParamSpec(
        "alert_period", 1.0, "alert republished at least this often, s", 0.05, 60.0, read_only=True
    ),
    ParamSpec("filter_noise", 25e-6, "one frame's distance noise for the filter, m", 1e-7, 1e-2),
    ParamSpec(
        "filter_acceleration", 2e-3, "instrument acceleration the filter allows, m/s^2", 1e-6, 10.0
    ),
    ParamSpec("filter_gate", 4.0, "outlier gate of the filter, standard deviations", 1.0, 100.0),
    ParamSpec("stale_after", 0.5, "no distance for this long: unknown, s", 0.01, 60.0),
    ParamSpec(
        "max_stamp_ahead",
        1.0,
        "pairs stamped further ahead of this node's clock are dropped (unsynchronised clocks), s",
        0.001,
        3600.0,
    ),
    ParamSpec("point_decimation", 4, "publish every n-th pixel in depth/points", 1, 64),
    ParamSpec(
        "mask_threshold",
        0.5,
        "segmentation probability of an instrument pixel",
        0.01,
        0.99,
        read_only=True,
    ),
    ParamSpec(
        "seg_flips",
        PipelineConfig.seg_flips,
        "segment each image as is (1), also mirrored left-right (2), also upside down (4), "
        "and average: steadier edges for 2x or 4x the segmentation time",
        choices=SEG_FLIPS,
        read_only=True,
    ),
    ParamSpec(
        "seg_px_per_mm",
        PipelineConfig.seg_px_per_mm,
        "pixel scale the segmentation network learned at, px per mm at the working distance: "
        "images at another scale are resized to it for segmenting (-1: the installed network's "
        "64 with the installed weights, else 0; 0: never resized)",
        -1.0,
        10000.0,
        read_only=True,
    ),
    ParamSpec(
        "light_pipe_glow",
        GeometryConfig.bright_end_length,
        "a light pipe's fibre glows this far past its metal sleeve, m (0: the mask's end is "
        "believed); measure your light pipe's",
        0.0,
        2e-3,
        read_only=True,
    ),
    ParamSpec(
        "symmetric_jaws",
        GeometryConfig.symmetric_jaws,
        "the mounted instrument has two straight jaws symmetric about its shaft (forceps): a jaw "
        "hidden behind the other is placed by symmetry; false for scissors and unknown tools",
        read_only=True,
    ),
    ParamSpec(
        "jaw_reach",
        GeometryConfig.jaw_reach,
        "how far the mounted tool's closed jaws or blades reach past its shaft's end, m (0: not "
        "told, or no jaws): jaws a steep shaft hides below its end are placed that far along it",
        0.0,
        5e-3,
        read_only=True,
    ),
    ParamSpec("range_max", 0.02, "Range.max_range, m", 1e-3, 1.0, read_only=True),
    ParamSpec(
        "queue_policy",
        "newest",
        "newest: process the newest pair, drop (and count) pairs that wait behind it; all: "
        "every pair in order (offline replay), latency grows under overload",
        choices=("newest", "all"),
        read_only=True,
    ),
]


class DepthNode(Node):
    def __init__(self, **kwargs):
        super().__init__("depth_node", **kwargs)
        self.params = p = Parameters(self, PARAMS)
        self.pipeline = DepthPipeline(
            PipelineConfig(
                estimator=p["estimator"],
                mask_threshold=p["mask_threshold"],
                seg_flips=p["seg_flips"],
                seg_px_per_mm=p["seg_px_per_mm"],
                stereo=StereoConfig(backend=p["stereo_backend"]),
                geometry=tool_geometry({k: p[k] for k in TOOL_SETTINGS}),
            ),
            depth_weights=p["depth_weights"] or None,
            seg_weights=p["seg_weights"] or "default",
            runtime=runtime_config(p),
            warn=self.get_logger().warning,
            edge_weights=model_file_setting(p["edge_weights"]),
            uncertainty=model_file_setting(p["distance_uncertainty"]),
        )
        if p["input_width"] and p["input_height"]:
            t0 = time.monotonic()
            self.pipeline.warmup(p["input_height"], p["input_width"])
            self.get_logger().info(
                f"warmed up for {p['input_width']}x{p['input_height']} in "
                f"{time.monotonic() - t0:.1f} s"
            )
        self.health = Health(self, "depth")
        self.health.values.update(
            {
                "estimator": p["estimator"],
                "device": str(self.pipeline.device),
                "masks": self.pipeline.mask_source,
                "seg_flips": str(p["seg_flips"]),
                "seg_px_per_mm": f"{self.pipeline.seg_px_per_mm:g}",
                "edge_refiner": str(self.pipeline.edge_weights or "off"),
                "distance_uncertainty": str(self.pipeline.uncertainty_file or "off"),
                "stereo_backend": self.pipeline.stereo_backend,
            }
        )
        for net, described in self.pipeline.runtimes().items():
            self.health.values.update({f"{net}_{k}": str(v) for k, v in described.items()})
        if self.pipeline.mask_source == "height":
            self.get_logger().warning(
                "no segmentation or depth network weights: instrument masks come from height "
                "above the retina and distances are biased (install models/segmentation.pt or "
                "set seg_weights)"
            )
        self.filter = DistanceFilter(self._filter_config())
        self.alert = ProximityAlert(p["alert_distance"], p["alert_hysteresis"], p["alert_sigmas"])
        p.on_change(self._on_params)
        self.last_stamp_ns: int | None = None
        qos = image_qos(p["reliability"], p["qos_depth"])
        # With the newest-pair worker the inputs only feed the synchroniser and the worker, both
        # locked: images from a publisher in this process are handed over on its thread,
        # without waking this node's executor.
        direct = p["queue_policy"] == "newest"
        err = self._transport_error
        subs = [
            ImageInput(self, "left/image", qos, p["image_transport"], err, direct),
            ImageInput(self, "right/image", qos, p["image_transport"], err, direct),
            MessageInput(self, CameraInfo, "left/camera_info", qos, direct),
            MessageInput(self, CameraInfo, "right/camera_info", qos, direct),
        ]
        self.inputs = subs
        self.sync = ApproximateTimeSynchronizer(subs, p["sync_queue"], p["sync_slop"])
        self._lock = threading.Lock()  # filter and alert: worker thread vs. executor
        self.worker = None
        if p["queue_policy"] == "newest":
            self.worker = LatestWorker(
                self._on_pair,
                "depth_node.worker",
                on_drop=lambda: self.health.count("superseded"),
                on_error=self.health.worker_failed("pair"),
            )
            self.sync.registerCallback(self.worker.submit)
        else:
            self.sync.registerCallback(self._on_pair)
        self.pub_depth = self.create_publisher(Image, "depth/image", qos)
        self.pub_info = self.create_publisher(CameraInfo, "depth/camera_info", qos)
        self.pub_points = self.create_publisher(PointCloud2, "depth/points", qos)
        self.pub_mask = self.create_publisher(Image, "instrument/mask", qos)
        self.pub_tip = self.create_publisher(PointStamped, "instrument/tip", 10)
        self.pub_range = self.create_publisher(Range, "instrument/retina_distance", 10)
        self.pub_alert = self.create_publisher(Bool, "instrument/proximity_alert", alert_qos())
        self.pub_markers = self.create_publisher(MarkerArray, "instrument/markers", 10)
        self.alert_timer = self.create_timer(p["alert_period"], self._publish_alert)
        self.get_logger().info(
            f"depth: {p['estimator']} on {self.pipeline.device}, masks from "
            f"{self.pipeline.mask_source}; alert below {p['alert_distance'] * 1e3:.2f} mm "
            f"({p['distance_mode']}); runtime {self.pipeline.runtimes()}"
        )

    def _transport_error(self, text: str) -> None:
        self.health.problem("transport", text)

    def destroy_node(self):
        worker = getattr(self, "worker", None)  # absent when construction failed
        if worker is not None:
            worker.stop()
        for sub in getattr(self, "inputs", ()):
            sub.close()
        return super().destroy_node()

    def _filter_config(self) -> FilterConfig:
        p = self.params
        return FilterConfig(
            measurement_noise=p["filter_noise"],
            acceleration_noise=p["filter_acceleration"],
            gate_sigma=p["filter_gate"],
            stale_after=p["stale_after"],
        )

    def _on_params(self, names: set[str]) -> None:
        with self._lock:
            if names & {"alert_distance", "alert_hysteresis", "alert_sigmas"}:
                self.alert.threshold = self.params["alert_distance"]
                self.alert.hysteresis = self.params["alert_hysteresis"]
                self.alert.sigmas = self.params["alert_sigmas"]
            if names & {"filter_noise", "filter_acceleration", "filter_gate", "stale_after"}:
                self.filter = DistanceFilter(self._filter_config())
            if "distance_mode" in names:
                self.filter.reset()

    # --- input -----------------------------------------------------------------------------

    def _decode(self, msg: Image, name: str) -> np.ndarray:
        if msg.encoding not in COLOUR_ORDER:
            raise InputError(f"{name}: encoding {msg.encoding!r} is not rgb8 or bgr8")
        arr = image_to_numpy(msg)
        return np.ascontiguousarray(arr[..., ::-1] if COLOUR_ORDER[msg.encoding] else arr)

    def _on_pair(self, left: Image, right: Image, left_info: CameraInfo, right_info: CameraInfo):
        t0 = time.perf_counter()
        self.health.input()
        self.health.values["transport"] = self.inputs[0].using  # local, shm or raw
        stamp_ns = left.header.stamp.sec * 1_000_000_000 + left.header.stamp.nanosec
        if not self._stamp_ok(stamp_ns):
            return
        # How old the pair is when its work starts (the chain before this node, transport and
        # waiting for the worker) and how long the work takes: where a chain's latency goes.
        age_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        try:
            pair = camera_infos_to_stereo(left_info, right_info)
            images = self._decode(left, "left/image"), self._decode(right, "right/image")
            if images[0].shape[:2] != (pair.left.height, pair.left.width):
                raise InputError(
                    f"images are {images[0].shape[1]}x{images[0].shape[0]}, camera_info says "
                    f"{pair.left.width}x{pair.left.height}"
                )
            # The combined depth image costs CPU time per frame: only when someone takes it.
            dense = (
                self.pub_depth.get_subscription_count() > 0
                or self.pub_points.get_subscription_count() > 0
            )
            result = self.pipeline(images[0], images[1], pair, dense=dense)
        except InputError as exc:
            self.health.problem("bad_input", f"stereo pair dropped: {exc}")
            return
        with self._lock:
            self._publish(left, left_info, images[0], pair, result, stamp_ns * 1e-9)
            self.health.values["pair_age_ms"] = f"{age_ms:.1f}"
            self.health.values["pair_ms"] = f"{(time.perf_counter() - t0) * 1e3:.1f}"

    def _stamp_ok(self, stamp_ns: int) -> bool:
        """Drops (and counts) a pair stamped like the last one or from the future; a stamp going
        backwards (a bag that loops) resets the filter and the alert and is processed."""
        now_ns = self.get_clock().now().nanoseconds
        ahead = (stamp_ns - now_ns) * 1e-9
        if now_ns > 0 and ahead > self.params["max_stamp_ahead"]:
            self.health.problem(
                "future_stamp",
                f"stereo pair dropped: stamped {ahead:.3f} s ahead of this node's clock (clocks "
                "not synchronised? use_sim_time without /clock?)",
            )
            return False
        last = self.last_stamp_ns
        if last is not None and stamp_ns == last:
            self.health.problem(
                "duplicate_stamp", f"stereo pair dropped: stamp {stamp_ns * 1e-9:.9f} s again"
            )
            return False
        if last is not None and stamp_ns < last:
            self.health.count("stamp_resets")
            self.get_logger().info(
                f"stamps went back {(last - stamp_ns) * 1e-9:.3f} s (a looping bag?): distance "
                "filter and alert reset"
            )
            with self._lock:
                self.filter.reset()
                self._update_alert(None)
        self.last_stamp_ns = stamp_ns
        return True

    # --- output ----------------------------------------------------------------------------

    def _publish(self, left, left_info, image, pair, result, t: float) -> None:
        p = self.params
        header = output_header(left.header, left.header.frame_id or p["frame_id"])
        if result.depth is not None:
            self.pub_depth.publish(numpy_to_image(result.depth, "32FC1", header))
        left_info.header = header
        self.pub_info.publish(left_info)
        self.pub_mask.publish(numpy_to_image(result.mask.astype(np.uint8) * 255, "mono8", header))
        if result.depth is not None and self.pub_points.get_subscription_count() > 0:
            self.pub_points.publish(self._cloud(image, result.depth, pair, header))
        m = result.measurement
        raw = m.distance(p["distance_mode"]) if m.ok else None
        distance = self.filter.update(t, raw, m.sigma if m.ok else None)
        if m.ok and m.tip_xyz is not None:
            x, y, z = (float(v) for v in m.tip_xyz)
            self.pub_tip.publish(PointStamped(header=header, point=Point(x=x, y=y, z=z)))
        reading = Range(
            header=header,
            radiation_type=Range.INFRARED,
            field_of_view=0.0,
            min_range=0.0,
            max_range=p["range_max"],
            range=float(distance) if distance is not None else float("inf"),
        )
        sigma = self.filter.sigma if distance is not None else None
        if sigma is not None and _RANGE_HAS_VARIANCE:
            reading.variance = float(sigma * sigma)
        self.pub_range.publish(reading)
        self._update_alert(distance)
        if self.pub_markers.get_subscription_count() > 0:
            self.pub_markers.publish(self._markers(header, m, distance, sigma))
        v = self.health.values
        v["distance_mm"] = f"{distance * 1e3:.3f}" if distance is not None else "unknown"
        v["distance_sigma_um"] = f"{sigma * 1e6:.1f}" if sigma is not None else "-"
        v["distance_unknown_because"] = m.reason or ("-" if m.ok else "filter")
        v["method"] = m.method or "-"
        v["fit_residual_um"] = f"{m.retina.residual * 1e6:.1f}" if m.retina else "-"
        v["geometry_notes"] = "; ".join(m.notes) or "-"
        v["alert"] = str(self.alert.on)
        for stage in STAGES:  # a stage this frame skipped shows "-", not an old figure
            v[f"{stage}_ms"] = f"{result.ms[stage]:.1f}" if stage in result.ms else "-"
        v["depth_image"] = "published" if result.depth is not None else "skipped: no subscriber"
        if not m.ok:
            self.health.count("distance_unknown")
        self.health.output(header.stamp)

    def _update_alert(self, distance: float | None) -> None:
        """The alert for this distance (None: unknown), published when it changes."""
        was = self.alert.on
        if was != self.alert.update(distance, self.filter.sigma):
            self._publish_alert()

    def _publish_alert(self) -> None:
        self.pub_alert.publish(Bool(data=self.alert.on))

    def _cloud(self, image, depth, pair, header):
        n = self.params["point_decimation"]
        h, w = depth.shape
        v, u = np.mgrid[0:h:n, 0:w:n]
        pts = back_project(pair, u, v, depth[::n, ::n]).astype(np.float32)
        return points_to_pointcloud2(pts, header, np.ascontiguousarray(image[::n, ::n]))

    def _markers(self, header, m, distance, sigma) -> MarkerArray:
        colour = (
            ColorRGBA(r=0.9, g=0.15, b=0.15, a=1.0)
            if self.alert.on
            else ColorRGBA(r=0.15, g=0.8, b=0.25, a=1.0)
        )
        out = MarkerArray()
        if not m.ok or m.tip_xyz is None:
            out.markers.append(
                Marker(header=header, ns="instrument", id=0, action=Marker.DELETEALL)
            )
            return out

        def point(xyz):
            return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))

        tip = Marker(header=header, ns="instrument", id=0, type=Marker.SPHERE, action=Marker.ADD)
        tip.pose.position = point(m.tip_xyz)
        tip.pose.orientation.w = 1.0
        tip.scale.x = tip.scale.y = tip.scale.z = 2 * max(m.radius, 50e-6)
        tip.color = colour
        line = Marker(header=header, ns="instrument", id=1, type=Marker.LINE_STRIP)
        line.points = [point(m.nearest_xyz), point(m.retina_xyz)]
        line.scale.x = 30e-6
        line.pose.orientation.w = 1.0
        line.color = colour
        text = Marker(header=header, ns="instrument", id=2, type=Marker.TEXT_VIEW_FACING)
        text.pose.position = point(m.tip_xyz - np.array([0.0, 0.0, 0.5e-3]))
        text.pose.orientation.w = 1.0
        text.scale.z = 0.4e-3
        text.text = f"{distance * 1e3:.2f} mm" if distance is not None else "?"
        if sigma is not None:  # the calibrated 95 % band (two sigmas)
            text.text = f"{distance * 1e3:.2f} ± {2 * sigma * 1e3:.2f} mm"
        text.color = colour
        out.markers = [tip, line, text]
        return out


def main(args=None) -> None:
    spin_node(DepthNode, args)


if __name__ == "__main__":
    main()
