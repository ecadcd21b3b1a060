"""A live virtual microscope: an instrument approaching, hovering over and leaving the retina,
seen through focus sweeps (no ROS).

The sequence is pre-rendered at ``poses`` instrument positions along one approach-hover-retract
cycle and cached on disk (in the dataset format, keyed by a hash of every setting), then played
at any rate: a focus sweep of K slices repeats at ``sweep_rate``, and the instrument moves between
sweeps. The ROS node and the bag writer both play it through :class:`SequencePlayer`, so a bag
and a live run carry the same streams.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.dataset import read_ground_truth, read_rgb, write_sample
from micro_perception.sim.render import SensorConfig, render_layers, render_sample, sweep_distances
from micro_perception.sim.scene import INSTRUMENT_KINDS, make_scene

CACHE_VERSION = 1


@dataclass(frozen=True)
class SequenceConfig:
    seed: int = 0
    height: int = 512
    width: int = 512
    slices: int = 8  # per sweep
    poses: int = 16  # distinct instrument positions per cycle
    kind: str = "needle"
    far_gap: float = 3.0e-3  # m, start and end of the cycle
    near_gap: float = 0.1e-3  # m, closest approach (hover)
    hover_fraction: float = 0.2  # of the cycle spent at the closest gap

    def __post_init__(self):
        if self.kind not in INSTRUMENT_KINDS:
            raise InputError(f"kind must be one of {list(INSTRUMENT_KINDS)}, got {self.kind!r}")
        if not 0 <= self.near_gap < self.far_gap:
            raise InputError(f"need 0 <= near_gap < far_gap, got {self.near_gap}, {self.far_gap}")
        if self.poses < 2 or self.slices < 1:
            raise InputError("poses must be >= 2 and slices >= 1")
        if not 0 <= self.hover_fraction < 1:
            raise InputError(f"hover_fraction must be in [0, 1), got {self.hover_fraction}")

    def gap_at(self, phase: float) -> float:
        """Target gap at ``phase`` in [0, 1) of the cycle: log approach, hover, log retreat."""
        move = (1.0 - self.hover_fraction) / 2
        lo = max(self.near_gap, 1e-6)
        if phase < move:
            s = phase / move
        elif phase < move + self.hover_fraction:
            return self.near_gap
        else:
            s = 1.0 - (phase - move - self.hover_fraction) / move
        return float(np.exp(np.log(self.far_gap) + s * (np.log(lo) - np.log(self.far_gap))))

    def key(self) -> str:
        blob = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("MICRO_PERCEPTION_CACHE", os.path.join(base, "micro_perception")))


@dataclass
class Pose:
    """One pre-rendered instrument position: both eyes' sweeps and the ground truth."""

    left_slices: np.ndarray  # (K, H, W, 3) uint8
    right_slices: np.ndarray
    left_depth: np.ndarray  # (H, W) float32, m
    left_aif: np.ndarray  # (H, W, 3) uint8, the all-in-focus ground truth
    gap_normal: float  # m (inf: no instrument)
    gap_axial: float


class Sequence:
    """The poses of one cycle, rendered once and cached."""

    def __init__(
        self,
        config: SequenceConfig,
        optics: MicroscopeOptics,
        poses: list[Pose],
        focus_distances: np.ndarray,
    ):
        self.config = config
        self.optics = optics
        self.poses = poses
        self.focus_distances = focus_distances

    @classmethod
    def load_or_render(
        cls, config: SequenceConfig, cache: Path | None = None, progress=None
    ) -> Sequence:
        optics = MicroscopeOptics().scaled_to(config.height, config.width)
        folder = (cache or cache_root()) / "sequences" / config.key()
        done = folder / "sequence.json"
        if not done.is_file():
            cls._render(config, optics, folder, progress)
        info = json.loads(done.read_text())
        poses = []
        for i, gaps in enumerate(info["gaps"]):
            d = folder / f"{i:05d}"
            stack = {
                eye: np.stack(
                    [read_rgb(d / eye / f"slice_{k:02d}.png") for k in range(config.slices)]
                )
                for eye in ("left", "right")
            }
            gt = read_ground_truth(d / "left")
            poses.append(Pose(stack["left"], stack["right"], gt["depth"], gt["aif"], *gaps))
        return cls(config, optics, poses, np.asarray(info["focus_distances_m"]))

    @staticmethod
    def _render(
        config: SequenceConfig, optics: MicroscopeOptics, folder: Path, progress=None
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # One sweep range for the whole cycle: the instrument is highest at the first pose.
        first = make_scene(config.seed, optics, gap=config.gap_at(0.0), kind=config.kind)
        depths = [render_layers(first, optics, eye).depth for eye in ("left", "right")]
        focus = sweep_distances(depths, config.slices)
        gaps = []
        for i in range(config.poses):
            scene = make_scene(
                config.seed, optics, gap=config.gap_at(i / config.poses), kind=config.kind
            )
            sample = render_sample(scene, optics, focus_distances=focus, sensor=SensorConfig())
            write_sample(folder / f"{i:05d}", sample)
            gaps.append([scene.gap_normal, scene.gap_axial])
            if progress:
                progress(i + 1, config.poses)
        info = {"config": asdict(config), "focus_distances_m": focus.tolist(), "gaps": gaps}
        tmp = folder / "sequence.json.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, folder / "sequence.json")


@dataclass
class Frame:
    """What the microscope shows at one slice time; all streams share ``t_ns``."""

    t_ns: int  # from the start of playback
    sweep: int
    slice_index: int
    focus_distance: float
    left: np.ndarray
    right: np.ndarray
    pose: Pose


class SequencePlayer:
    """Slice-by-slice playback: sweeps of K slices at ``sweep_rate`` Hz, a cycle every
    ``period`` seconds; the instrument pose changes between sweeps only.

    ``frame_noise`` (grey levels, std) adds fresh sensor noise to every slice it plays, as a
    camera would: without it a hovering instrument shows the same pixels sweep after sweep,
    and a measurement's frame-to-frame jitter could not be seen. The noise is drawn from a bank
    of fields, each slice's field and shift drawn from (seed, slice number): playback stays
    deterministic and cheap, and the noise does not repeat within a run. (Shifts stepping by
    fixed strides repeated every 512 slices: a 300-sweep hover of 4-slice sweeps saw 128
    realisations of the noise, each two or three times.)"""

    NOISE_FIELDS = 8

    def __init__(
        self,
        sequence: Sequence,
        sweep_rate: float = 2.0,
        period: float = 10.0,
        frame_noise: float = 0.0,
        seed: int = 0,
    ):
        if sweep_rate <= 0 or period <= 0:
            raise InputError("sweep_rate and period must be > 0")
        if not 0 <= frame_noise <= 50:
            raise InputError(f"frame_noise must be in [0, 50] grey levels, got {frame_noise}")
        self.sequence = sequence
        self.sweep_rate = sweep_rate
        self.period = period
        self.noise = None
        self.seed = seed
        if frame_noise > 0:
            rng = np.random.default_rng(seed)
            shape = (self.NOISE_FIELDS, *sequence.poses[0].left_slices.shape[1:])
            self.noise = np.clip(np.rint(rng.normal(0, frame_noise, shape)), -127, 127).astype(
                np.int16
            )

    @property
    def slice_period_ns(self) -> int:
        return round(1e9 / (self.sweep_rate * self.sequence.config.slices))

    def _noisy(self, image: np.ndarray, n: int, eye: int) -> np.ndarray:
        if self.noise is None:
            return image
        rng = np.random.default_rng((self.seed, n, eye))
        k = int(rng.integers(self.NOISE_FIELDS))
        shift = (int(rng.integers(image.shape[0])), int(rng.integers(image.shape[1])))
        field = np.roll(self.noise[k], shift, (0, 1))
        return np.clip(image.astype(np.int16) + field, 0, 255).astype(np.uint8)

    def frame(self, n: int) -> Frame:
        """The ``n``-th slice since playback started."""
        k = self.sequence.config.slices
        sweep, slice_index = divmod(n, k)
        t_sweep = sweep / self.sweep_rate
        phase = (t_sweep % self.period) / self.period
        pose = self.sequence.poses[
            int(phase * len(self.sequence.poses)) % len(self.sequence.poses)
        ]
        return Frame(
            n * self.slice_period_ns,
            sweep,
            slice_index,
            float(self.sequence.focus_distances[slice_index]),
            self._noisy(pose.left_slices[slice_index], n, 0),
            self._noisy(pose.right_slices[slice_index], n, 1),
            pose,
        )

    def frames(self, seconds: float) -> Iterator[Frame]:
        count = round(seconds * 1e9 / self.slice_period_ns)
        for n in range(count):
            yield self.frame(n)


# Topic names (relative to the namespace), shared by the live node and the bag writer.
TOPICS = {
    "left_image": "left/image_raw",
    "right_image": "right/image_raw",
    "left_info": "left/camera_info",
    "right_info": "right/camera_info",
    "focus": "focus",
    "gt_depth": "ground_truth/depth",
    "gt_aif": "ground_truth/left_aif",
    "gt_distance": "ground_truth/retina_distance",
}
LEFT_FRAME = "microscope_left_optical_frame"
RIGHT_FRAME = "microscope_right_optical_frame"


def ground_truth_distance(pose: Pose, mode: str) -> float:
    if mode not in ("normal", "axial"):
        raise InputError(f"distance mode must be 'normal' or 'axial', got {mode!r}")
    return pose.gap_normal if mode == "normal" else pose.gap_axial
