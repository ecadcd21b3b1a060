"""``make demo``: the whole pipeline on a virtual-microscope rosbag, over real DDS, recorded and
scored against the simulator's ground truth.

1. A virtual-microscope rosbag2 (cached by its settings under the output folder).
2. ``micro-perception run --use-sim-time`` (focal_fusion_node and depth_node) and
   ``micro-perception replay --clock`` as processes of their own; a recorder here subscribes to
   the outputs (serialised, as ``ros2 bag record`` does).
3. The recorded outputs as an mcap rosbag2 that ``ros2 bag play`` plays.
4. ``demo_out/``: a montage, a plot of the published distance against ground truth, and
   ``metrics.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rclpy
from geometry_msgs.msg import PointStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState, Range
from std_msgs.msg import Bool

from micro_perception.ros.conversions import image_to_numpy
from micro_perception.ros.qos import alert_qos, image_qos

NS = "/microscope"
OUTPUTS = {  # recorded topic -> type
    "left/fused/image": Image,
    "depth/image": Image,
    "depth/camera_info": CameraInfo,
    "instrument/mask": Image,
    "instrument/retina_distance": Range,
    "instrument/proximity_alert": Bool,
    "instrument/tip": PointStamped,
}
TYPE_NAMES = {
    Image: "sensor_msgs/msg/Image",
    CameraInfo: "sensor_msgs/msg/CameraInfo",
    Range: "sensor_msgs/msg/Range",
    Bool: "std_msgs/msg/Bool",
    JointState: "sensor_msgs/msg/JointState",
    PointStamped: "geometry_msgs/msg/PointStamped",
}


@dataclass
class DemoConfig:
    out: str = "demo_out"
    seconds: float = 20.0
    size: tuple[int, int] = (512, 512)
    slices: int = 8
    sweep_rate: float = 1.0
    poses: int = 12
    instrument: str = "needle"
    seed: int = 0
    rate: float = 0.5  # replay speed: the 2-core CI machine fuses and measures about 0.7 Hz
    device: str = "auto"
    alert_distance: float = 0.5e-3
    extra: dict = field(default_factory=dict)

    def bag_key(self) -> str:
        h, w = self.size
        return (
            f"sim_bag_{self.instrument}_{h}x{w}_{self.slices}s_{self.sweep_rate:g}hz_"
            f"{self.seconds:g}s_seed{self.seed}"
        )


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def make_bag(cfg: DemoConfig, say=print) -> Path:
    """The virtual-microscope bag of these settings, written once and then reused."""
    from micro_perception.ros.bag import write_sequence_bag
    from micro_perception.sim.sequence import Sequence, SequenceConfig, SequencePlayer

    bag = Path(cfg.out) / cfg.bag_key()
    if (bag / "metadata.yaml").is_file():
        say(f"  cached: {bag}")
        return bag
    seq = SequenceConfig(
        seed=cfg.seed,
        height=cfg.size[0],
        width=cfg.size[1],
        slices=cfg.slices,
        poses=cfg.poses,
        kind=cfg.instrument,
    )
    sequence = Sequence.load_or_render(
        seq, progress=lambda i, n: say(f"  rendered pose {i + 1}/{n}", end="\r")
    )
    # One approach-hover-retract cycle over the bag.
    player = SequencePlayer(sequence, cfg.sweep_rate, cfg.seconds)
    tmp = bag.with_name(bag.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    counts = write_sequence_bag(player, tmp, cfg.seconds, 1_700_000_000_000_000_000, NS)
    tmp.rename(bag)
    say(f"  wrote {bag}: {sum(counts.values())} messages on {len(counts)} topics")
    return bag


class Recorder(Node):
    """Subscribes (serialised) to the pipeline's outputs and the input's focus messages."""

    def __init__(self, **kwargs):
        super().__init__("demo_recorder", **kwargs)
        self.lock = threading.Lock()
        self.raw: dict[str, list[tuple[float, bytes]]] = {}  # topic -> (wall arrival, bytes)
        self.sim_now_ns = 0
        qos_img = image_qos("best_effort", 50)  # what the nodes offer for images
        for topic, msg_type in OUTPUTS.items():
            qos = (
                alert_qos(50)
                if msg_type is Bool
                else (qos_img if msg_type in (Image, CameraInfo) else 50)
            )
            self.raw[topic] = []
            self.create_subscription(
                msg_type, f"{NS}/{topic}", lambda m, t=topic: self._keep(t, m), qos, raw=True
            )
        self.raw["focus"] = []
        self.create_subscription(
            JointState, f"{NS}/focus", lambda m: self._keep("focus", m), 200, raw=True
        )
        self.create_subscription(Clock, "/clock", self._on_clock, 50)

    def _keep(self, topic: str, data: bytes) -> None:
        with self.lock:
            self.raw[topic].append((time.time(), bytes(data)))

    def _on_clock(self, msg: Clock) -> None:
        self.sim_now_ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec


def _ground_truth(bag: Path) -> dict:
    """Ground truth of the input bag by stamp: aif, depth, distance; and slice images."""
    from rosbags.highlevel import AnyReader

    gt: dict = {"aif": {}, "depth": {}, "distance": {}, "slices": {}, "focus": []}
    with AnyReader([bag]) as reader:
        want = {
            f"{NS}/ground_truth/left_aif": "aif",
            f"{NS}/ground_truth/depth": "depth",
            f"{NS}/ground_truth/retina_distance": "distance",
            f"{NS}/left/image_raw": "slices",
            f"{NS}/focus": "focus",
        }
        conns = [c for c in reader.connections if c.topic in want]
        for conn, _, raw in reader.messages(connections=conns):
            key = want[conn.topic]
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if key == "distance":
                gt[key][stamp] = float(msg.range)
            elif key == "focus":
                gt[key].append(stamp)
            else:
                h, w = msg.height, msg.width
                dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
                arr = np.frombuffer(bytes(msg.data), dtype).reshape(h, w, -1)
                gt[key][stamp] = arr[..., 0] if arr.shape[2] == 1 else arr
    return gt


def _write_output_bag(path: Path, rec: dict) -> dict[str, int]:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    counts = {}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        for topic, msg_type in OUTPUTS.items():
            items = rec[topic]
            if not items:
                continue
            conn = w.add_connection(f"{NS}/{topic}", TYPE_NAMES[msg_type], typestore=ts)
            for wall, data in items:
                msg = deserialize_message(data, msg_type)
                header = getattr(msg, "header", None)
                t = _stamp_ns(header) if header is not None else int(wall * 1e9)
                w.write(conn, t, data)
            counts[f"{NS}/{topic}"] = len(items)
    return counts


def _montage(gt, stamp, slices, parts, distance, truth) -> np.ndarray:
    """Defocused slice, fused image, depth, and the mask with the tip and the distance."""
    from micro_perception.ros.conversions import camera_info_to_intrinsics
    from micro_perception.sim.preview import _label, depth_colour

    fused, depth, mask, info = parts["fused"], parts["depth"], parts["mask"], parts["info"]
    sweep = [s for s in sorted(gt["slices"]) if s <= stamp][-slices:]
    first = gt["slices"][sweep[0]] if sweep else np.zeros_like(fused[stamp])
    panel_mask = fused[stamp].copy()
    m = mask.get(stamp)
    if m is not None:
        panel_mask[m > 0] = (0.5 * panel_mask[m > 0] + [0, 90, 0]).astype(np.uint8)
    tip = parts["tips"].get(stamp)
    if tip is not None and stamp in info:
        cam = camera_info_to_intrinsics(info[stamp])
        u = cam.fx * tip[0] / tip[2] + cam.cx
        v = cam.fy * tip[1] / tip[2] + cam.cy
        cv2.circle(panel_mask, (round(u), round(v)), 6, (255, 60, 60), 2)
    text = "distance unknown" if not np.isfinite(distance) else f"{distance * 1e3:.2f} mm"
    panels = [
        _label(first, "defocused slice"),
        _label(fused[stamp], "fused (all-in-focus)"),
        _label(depth_colour(depth[stamp]), "depth"),
        _label(panel_mask, f"mask, tip: {text} (true {truth * 1e3:.2f} mm)"),
    ]
    return np.concatenate(panels, axis=1)


def _plot(times, published, truth, threshold, width=960, height=360) -> np.ndarray:
    """Distance (mm) against bag time (s): ground truth, published, the alert threshold."""
    img = np.full((height, width, 3), 24, np.uint8)
    left, right, top, bottom = 60, 20, 20, 40
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    t1 = max(t1, t0 + 1e-6)
    ymax = max(3.0, *(v for v in truth if np.isfinite(v)), 0) if truth else 3.0

    def xy(t, d):
        x = left + (t - t0) / (t1 - t0) * (width - left - right)
        y = height - bottom - min(d, ymax) / ymax * (height - top - bottom)
        return round(x), round(y)

    for k in range(int(ymax) + 1):
        cv2.line(img, xy(t0, k), xy(t1, k), (60, 60, 60), 1)
        cv2.putText(img, f"{k} mm", (5, xy(t0, k)[1] + 4), 0, 0.4, (200, 200, 200), 1)
    step = max(1, round((t1 - t0) / 8))
    for k in range(0, int(t1 - t0) + 1, step):
        x, y = xy(t0 + k, 0)
        cv2.line(img, (x, y), (x, y + 4), (200, 200, 200), 1)
        cv2.putText(img, f"{k}", (x - 4, y + 16), 0, 0.4, (200, 200, 200), 1)
    cv2.line(img, xy(t0, threshold), xy(t1, threshold), (60, 60, 220), 1)
    cv2.putText(img, "alert", (width - 70, xy(t0, threshold)[1] - 4), 0, 0.4, (60, 60, 220), 1)
    for series, colour in ((truth, (80, 200, 80)), (published, (240, 240, 240))):
        pts = [xy(t, d) for t, d in zip(times, series, strict=True) if np.isfinite(d)]
        for a, b in itertools.pairwise(pts):
            cv2.line(img, a, b, colour, 1, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 2, colour, -1)
    cv2.putText(img, "bag time (s)", (width // 2 - 40, height - 4), 0, 0.45, (200, 200, 200), 1)
    cv2.putText(img, "ground truth", (left + 10, top + 14), 0, 0.45, (80, 200, 80), 1)
    cv2.putText(img, "published", (left + 120, top + 14), 0, 0.45, (240, 240, 240), 1)
    return img[..., ::-1]  # the callers write RGB


def _metrics(cfg, gt, rec) -> tuple[dict, dict]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    dec = {
        t: [(wall, deserialize_message(d, OUTPUTS.get(t, JointState))) for wall, d in items]
        for t, items in rec.items()
    }
    fused = {_stamp_ns(m.header): image_to_numpy(m).copy() for _, m in dec["left/fused/image"]}
    depth = {_stamp_ns(m.header): image_to_numpy(m).copy() for _, m in dec["depth/image"]}
    mask = {_stamp_ns(m.header): image_to_numpy(m).copy() for _, m in dec["instrument/mask"]}
    info = {_stamp_ns(m.header): m for _, m in dec["depth/camera_info"]}
    focus_wall = {_stamp_ns(m.header): wall for wall, m in dec["focus"]}
    ssim, psnr = [], []
    for s, img in fused.items():
        if s in gt["aif"]:
            ssim.append(structural_similarity(img, gt["aif"][s], channel_axis=2, data_range=255))
            psnr.append(peak_signal_noise_ratio(gt["aif"][s], img, data_range=255))
    rmse = []
    for s, d in depth.items():
        if s in gt["depth"]:
            ok = np.isfinite(d) & np.isfinite(gt["depth"][s])
            if ok.any():
                rmse.append(float(np.sqrt(np.mean((d[ok] - gt["depth"][s][ok]) ** 2))) * 1e6)
    rows, latency = [], []
    for wall, m in dec["instrument/retina_distance"]:
        s = _stamp_ns(m.header)
        truth = gt["distance"].get(s, float("nan"))
        rows.append((s, float(m.range), truth))
        if s in focus_wall:
            latency.append((wall - focus_wall[s]) * 1e3)
    errs = [abs(p - t) * 1e6 for _, p, t in rows if np.isfinite(p) and np.isfinite(t)]
    alerts = [bool(m.data) for _, m in dec["instrument/proximity_alert"]]
    events = sum(1 for a, b in itertools.pairwise(alerts) if a != b) + (
        1 if alerts and alerts[0] else 0
    )
    truth_on = [t < cfg.alert_distance for _, _, t in rows if np.isfinite(t)]
    sweeps_in = len(gt["focus"]) // cfg.slices
    metrics = {
        "fusion": {
            "ssim": float(np.mean(ssim)) if ssim else None,
            "psnr_db": float(np.mean(psnr)) if psnr else None,
            "frames": len(ssim),
        },
        "depth": {"rmse_um": float(np.mean(rmse)) if rmse else None, "frames": len(rmse)},
        "distance": {
            "mae_um": float(np.mean(errs)) if errs else None,
            "p95_um": float(np.percentile(errs, 95)) if errs else None,
            "known": len(errs),
            "published": len(rows),
        },
        "alert": {
            "events": events,
            "messages_on": int(sum(alerts)),
            "frames_truly_below_threshold": int(sum(truth_on)),
        },
        "latency_ms": {
            "p50": float(np.median(latency)) if latency else None,
            "p95": float(np.percentile(latency, 95)) if latency else None,
            "note": f"wall clock, replayed last slice to distance, replay x{cfg.rate}",
        },
        "frames": {"sweeps_in": sweeps_in, "distances_out": len(rows)},
    }
    tips = {
        _stamp_ns(m.header): (m.point.x, m.point.y, m.point.z) for _, m in dec["instrument/tip"]
    }
    parts = {"fused": fused, "depth": depth, "mask": mask, "info": info, "rows": rows}
    return metrics, {**parts, "tips": tips}


def run_demo(cfg: DemoConfig, say=print) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    say(
        f"1/5 virtual-microscope rosbag ({cfg.seconds:g} s, {cfg.size[0]}x{cfg.size[1]}, "
        f"{cfg.slices} slices at {cfg.sweep_rate:g} sweeps/s, {cfg.instrument})"
    )
    bag = make_bag(cfg, say)
    say(
        "2/5 replay through the nodes over DDS: micro-perception run --use-sim-time and "
        f"replay --clock --rate {cfg.rate:g} in processes of their own"
    )
    params = out / "demo_params.yaml"
    from micro_perception.ros.config import render_yaml

    text = render_yaml()
    import yaml

    doc = yaml.safe_load(text)
    for node in ("focal_fusion_node", "depth_node"):
        doc[f"/**/{node}"]["ros__parameters"]["device"] = cfg.device
    doc["/**/focal_fusion_node"]["ros__parameters"]["slices_per_stack"] = cfg.slices
    for node, values in cfg.extra.items():
        doc[f"/**/{node}"]["ros__parameters"].update(values)
    params.write_text(yaml.safe_dump(doc))
    env = os.environ.copy()
    cli = [sys.executable, "-m", "micro_perception.cli"]
    run = subprocess.Popen(
        [*cli, "run", "--use-sim-time", "--params", str(params), "--namespace", NS],
        env=env,
        start_new_session=True,
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    recorder = ex = spin = None
    try:
        recorder = Recorder(context=context)
        ex = SingleThreadedExecutor(context=context)
        ex.add_node(recorder)
        spin = threading.Thread(target=ex.spin, daemon=True)
        spin.start()
        replay = subprocess.run(
            [
                *cli,
                "replay",
                str(bag),
                "--clock",
                "--rate",
                str(cfg.rate),
                "--delay",
                "1",
                "--wait-for-subscribers",
                "1",
                "--topics",
                *(
                    f"{NS}/{t}"
                    for t in (
                        "left/image_raw",
                        "right/image_raw",
                        "left/camera_info",
                        "right/camera_info",
                        "focus",
                    )
                ),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=cfg.seconds / cfg.rate + 180,
            check=False,
        )
        if replay.returncode != 0:
            raise RuntimeError(f"replay failed: {replay.stderr[-2000:]}")
        if run.poll() is not None:
            raise RuntimeError(f"micro-perception run exited with {run.returncode}")
        time.sleep(3.0)  # the last sweep through fusion and depth
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        if ex is not None:
            ex.shutdown()
            spin.join(timeout=5)
        if recorder is not None:
            recorder.destroy_node()
        rclpy.shutdown(context=context)
    with recorder.lock:
        rec = {k: list(v) for k, v in recorder.raw.items()}
    if not rec["instrument/retina_distance"]:
        raise RuntimeError("the pipeline published no distance: see the nodes' log above")
    say("3/5 record the outputs as an mcap rosbag2")
    counts = _write_output_bag(out / "output_bag", rec)
    say(
        f"  {out / 'output_bag'}: "
        + ", ".join(f"{k.split('/', 2)[2]} {v}" for k, v in counts.items())
    )
    say("4/5 score against the simulator's ground truth; montage, plot, metrics.json")
    gt = _ground_truth(bag)
    metrics, parts = _metrics(cfg, gt, rec)
    rows = parts["rows"]
    t0 = min(s for s, _, _ in rows)
    plot = _plot(
        [(s - t0) / 1e9 for s, _, _ in rows],
        [p * 1e3 for _, p, _ in rows],
        [t * 1e3 for _, _, t in rows],
        cfg.alert_distance * 1e3,
    )
    cv2.imwrite(str(out / "distance.png"), plot[..., ::-1])
    # The montage shows the frame where the instrument came closest.
    known = [(s, p, t) for s, p, t in rows if s in parts["fused"] and s in parts["depth"]]
    if known:
        s, p, t = min(known, key=lambda r: r[2] if np.isfinite(r[2]) else 1.0)
        montage = _montage(gt, s, cfg.slices, parts, p, t)
        cv2.imwrite(str(out / "montage.png"), montage[..., ::-1])
    metrics["input_bag"] = str(bag)
    metrics["output_bag"] = {"path": str(out / "output_bag"), "messages": counts}
    metrics["config"] = asdict(cfg)
    metrics["seconds"] = time.monotonic() - t_start
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def summary_table(m: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [
        (
            "fusion SSIM / PSNR",
            f"{f(m['fusion']['ssim'], '.3f')} / {f(m['fusion']['psnr_db'], '.1f')} dB",
        ),
        ("depth RMSE", f"{f(m['depth']['rmse_um'], '.0f')} um"),
        (
            "distance MAE / p95",
            f"{f(m['distance']['mae_um'], '.0f')} / {f(m['distance']['p95_um'], '.0f')} um",
        ),
        ("alert events", str(m["alert"]["events"])),
        (
            "latency p50 / p95",
            f"{f(m['latency_ms']['p50'], '.0f')} / {f(m['latency_ms']['p95'], '.0f')} ms",
        ),
        (
            "sweeps in / distances out",
            f"{m['frames']['sweeps_in']} / {m['frames']['distances_out']}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
