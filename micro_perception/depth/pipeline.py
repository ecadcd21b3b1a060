"""One frame of the depth node's work, shared by the node, the CLI and the evaluations (no ROS).

Rectified all-in-focus pair in; out: the left depth (m, NaN unknown), the instrument masks of
both views, and the instrument-to-retina measurement. Estimators of the depth image:

* ``stereo``: the stereo teacher (semi-global matching), unknown where it is not confident.
* ``net``: the depth network's own depth.
* ``combined``: the stereo depth on the retina, with the retina model (the fitted sphere) in the
  band around the instrument where matching smears foreground into background, and the
  instrument's pixels from its fitted 3D model (silhouettes of both views, see geometry.py),
  whose depth is free of the highlight bias stereo has on polished steel. Pixels neither cue
  explains stay unknown.

Instrument masks come from the depth network's mask head run on both views. Without network
weights, the left mask is the pixels standing ``min_height`` above the fitted retina (a stereo
cue: it misses the tip when it touches, and gives no right mask, so the distance comes from the
depth map and is flagged as biased).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from micro_perception.camera import StereoPair
from micro_perception.depth.stereo import StereoConfig, resolve_backend, stereo_depth
from micro_perception.errors import InputError
from micro_perception.geometry import (
    GeometryConfig,
    Measurement,
    back_project,
    fit_retina,
    measure,
    sphere_depth_along_rays,
    working_distance,
)
from micro_perception.inference import Runtime, RuntimeConfig, pick_device

ESTIMATORS = ("combined", "stereo", "net")
STAGES = ("stereo", "net", "segment", "geometry", "fuse")  # the keys of FrameResult.ms
# The shipped segmentation network's pixel scale: the virtual microscope's 512x512 images of an
# 8 mm field at its working distance (models/segmentation.md).
SHIPPED_SEG_PX_PER_MM = 64.0
_SEG_SCALE_SLACK = 0.05  # relative: nearer the network's scale than this, no resizing
SEG_FLIPS = (1, 2, 4)
_FLIP_DIMS = ((), (3,), (2,), (2, 3))  # of an (N, C, H, W) batch


@dataclass(frozen=True)
class PipelineConfig:
    estimator: str = "combined"
    mask_threshold: float = 0.5  # on the mask head's probability
    # Segment the image and its mirror images (1: as is; 2: and flipped left-right; 4: and
    # upside down, both) and average: the network's errors at the edges differ between them.
    seg_flips: int = 2
    # The pixel scale (px per mm at the working distance) the segmentation network learned at;
    # images at another scale are resized to it for segmenting and the probabilities back. The
    # network learned an instrument's size in pixels: the same scenes at 768x768 instead of
    # 512x512 read 75 um MAE instead of 40, and 37 resized. Negative: the shipped network's
    # (SHIPPED_SEG_PX_PER_MM) with the shipped weights, else 0; 0: never resized.
    seg_px_per_mm: float = -1.0
    min_height: float = 150e-6  # m above the retina: the mask without a network
    boundary_band_px: int = 4  # retina pixels this close to the instrument take the retina model
    retina_tolerance: float = 0.5e-3  # m off the retina model: a stereo mismatch, made unknown
    edge_px: int = 1  # pixels this close to the silhouette mix two depths: unknown
    stereo: StereoConfig = field(default_factory=StereoConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise InputError(
                f"estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}"
            )
        if not 0.0 < self.mask_threshold < 1.0:
            raise InputError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.seg_flips not in SEG_FLIPS:
            raise InputError(f"seg_flips must be one of {list(SEG_FLIPS)}, got {self.seg_flips}")
        if not np.isfinite(self.seg_px_per_mm):
            raise InputError(f"seg_px_per_mm must be a number, got {self.seg_px_per_mm}")
        if self.boundary_band_px < 0:
            raise InputError(f"boundary_band_px must be >= 0, got {self.boundary_band_px}")


def model_file_setting(value: str | None) -> str | None:
    """``DepthPipeline``'s ``edge_weights`` or ``uncertainty`` from a user's setting (the node's
    parameter, a command's option): unset or empty is the default, "none" none, else a file."""
    if not value:
        return "default"
    return None if value.lower() == "none" else value


def _threshold_at_half(prob: np.ndarray, threshold: float) -> np.ndarray:
    """``prob`` remapped piecewise linearly so that ``threshold`` becomes 0.5 (what the
    geometry's soft masks are cut at), keeping 0 and 1."""
    if threshold == 0.5:
        return prob
    low = prob * (0.5 / threshold)
    high = 0.5 + (prob - threshold) * (0.5 / (1.0 - threshold))
    return np.where(prob < threshold, low, high).astype(np.float32)


@dataclass
class FrameResult:
    depth: np.ndarray | None  # (H, W) float32, m, NaN unknown; None when not asked for
    mask: np.ndarray  # (H, W) bool, left view
    right_mask: np.ndarray | None
    measurement: Measurement
    ms: dict[str, float]  # per stage


def render_instrument_depth(
    pair: StereoPair, m: Measurement, pixels: np.ndarray, cfg: GeometryConfig
) -> np.ndarray:
    """Depth of the fitted instrument model seen through ``pixels`` ((N, 2) u, v); NaN on a
    miss. The model is the working-end capsule then the shaft, extended out of the view."""
    from micro_perception.sim.render import ray_capsule
    from micro_perception.sim.scene import Capsule

    if m.axis is None or m.tip_xyz is None or len(pixels) == 0:
        return np.full(len(pixels), np.nan)
    r_tip = float(np.linalg.norm(m.tip_xyz - m.centre_xyz))
    # A shaft placed by its end alone (method "tip") is known near that end only.
    length = 0.05 if m.method == "silhouette" else cfg.shaft_start
    caps = [Capsule(m.centre_xyz, m.centre_xyz + cfg.shaft_start * m.axis, r_tip)]
    if length > cfg.shaft_start:
        start = m.centre_xyz + cfg.shaft_start * m.axis
        caps.append(Capsule(start, m.centre_xyz + length * m.axis, m.radius))
    rays = back_project(pair, pixels[:, 0], pixels[:, 1], np.ones(len(pixels)))
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    t = np.full(len(pixels), np.inf)
    for cap in caps:
        t = np.minimum(t, ray_capsule(np.zeros(3), rays, cap)[0])
    z = rays[:, 2] * t
    return np.where(np.isfinite(z), z, np.nan)


class DepthPipeline:
    """``pipeline(left, right, pair)`` -> FrameResult. ``seg_weights``: the segmentation network
    (default: the shipped models/segmentation.pt); ``depth_weights``: the depth network, needed
    by the ``net`` estimator and otherwise only a source of masks when there is no segmentation
    network; ``edge_weights``: the edge refiner that corrects the segmentation network's edges
    (default: the shipped models/edge_refiner.pt, with the shipped segmentation network only:
    it learned that network's errors; None: the edges as the network placed them);
    ``uncertainty``: the distance's calibrated standard deviation by how it was measured
    (default: the shipped models/distance_uncertainty.json, with the shipped segmentation
    network and edge refiner only: it was calibrated with them; None: no sigma)."""

    def __init__(
        self,
        cfg: PipelineConfig | None = None,
        depth_weights: str | Path | None = None,
        seg_weights: str | Path | None = "default",
        device: str = "auto",
        runtime: RuntimeConfig | None = None,
        warn=None,
        edge_weights: str | Path | None = "default",
        uncertainty: str | Path | None = "default",
    ):
        """``runtime`` (backend, precision, device, ...) overrides ``device`` when given."""
        from micro_perception.resources import shipped_model

        self.cfg = cfg or PipelineConfig()
        runtime = runtime or RuntimeConfig(device=device)
        self.device = pick_device(runtime.device)
        self.warn = warn
        self.net = self.seg = None
        if depth_weights is not None:
            from micro_perception.depth.network import load_depth_net

            self.net = Runtime(load_depth_net(depth_weights), "depth", runtime, warn)
        shipped_seg = seg_weights == "default"
        if seg_weights == "default":
            seg_weights = shipped_model("segmentation.pt")
        if seg_weights is not None:
            from micro_perception.depth.segmentation import load_seg_net

            self.seg = Runtime(load_seg_net(seg_weights), "segmentation", runtime, warn)
        self.seg_px_per_mm = self.cfg.seg_px_per_mm
        if self.seg_px_per_mm < 0:
            self.seg_px_per_mm = SHIPPED_SEG_PX_PER_MM if shipped_seg else 0.0
        if self.cfg.estimator == "net" and self.net is None:
            raise InputError("estimator net needs depth network weights (a weights file)")
        if edge_weights == "default":
            with_shipped = shipped_seg and self.seg is not None
            edge_weights = shipped_model("edge_refiner.pt") if with_shipped else None
        self.edges = None
        self.edge_weights = Path(edge_weights) if edge_weights is not None else None
        if edge_weights is not None:
            if self.seg is None:
                raise InputError(
                    f"edge refiner {edge_weights} corrects a segmentation network's edges, and "
                    "there is none (pass segmentation weights, or no edge refiner)"
                )
            from micro_perception.depth.edge_refine import load_edge_refiner

            self.edges = load_edge_refiner(edge_weights)
        if uncertainty == "default":
            shipped_edges = self.edge_weights == shipped_model("edge_refiner.pt")
            with_shipped = shipped_seg and self.seg is not None and shipped_edges
            uncertainty = shipped_model("distance_uncertainty.json") if with_shipped else None
        self.uncertainty_file = Path(uncertainty) if uncertainty is not None else None
        self.uncertainty = None
        if uncertainty is not None:
            from micro_perception.uncertainty import DistanceUncertainty

            self.uncertainty = DistanceUncertainty.load(uncertainty)

    @property
    def mask_source(self) -> str:
        if self.seg is not None:
            return "segmentation"
        return "depth-net" if self.net is not None else "height"

    @property
    def stereo_backend(self) -> str:
        """The stereo matcher that runs: opencv (CPU) or torch (on this pipeline's device)."""
        return resolve_backend(self.cfg.stereo, self.device)

    def runtimes(self) -> dict:
        """How each network runs (backend, device, precision), for diagnostics."""
        return {
            name: rt.describe()
            for name, rt in (("depth", self.net), ("segmentation", self.seg))
            if rt is not None
        }

    def warmup(self, height: int, width: int) -> None:
        """Run the networks once at this image size (a compile or an engine load happens here,
        before the first frame, rather than on it)."""
        from micro_perception.optics import MicroscopeOptics

        blank = np.zeros((height, width, 3), np.uint8)
        # The virtual microscope's calibration stands in for the camera_info not yet received:
        # the size the network segments at, and Triton's kernels (compiled on the first call, one
        # per disparity block size).
        pair = MicroscopeOptics().scaled_to(height, width).stereo()
        if self.seg is not None:
            self.segment([blank, blank], self.seg_scale(pair))
        if self.stereo_backend == "torch":
            stereo_depth(blank, blank, pair, self.cfg.stereo, self.device, self.warn)
        if self.net is not None:
            self.run_net([blank] if self.seg is not None else [blank, blank])

    def seg_scale(self, pair: StereoPair, depth: np.ndarray | None = None) -> float:
        """The factor that brings ``pair``'s images to the segmentation network's pixel scale
        (``seg_px_per_mm``), at the working distance: the median of ``depth`` (m), else where
        the views converge; 1 when that is unknown, or within 5 %."""
        if self.seg_px_per_mm <= 0:
            return 1.0
        z = working_distance(pair, depth)
        if not 0.0 < z < float("inf"):
            return 1.0
        scale = self.seg_px_per_mm / (pair.left.fx / z * 1e-3)
        return 1.0 if abs(scale - 1.0) <= _SEG_SCALE_SLACK else scale

    def segment(self, images: list[np.ndarray], scale: float = 1.0) -> np.ndarray:
        """Instrument probability of each RGB image, (N, H, W) float32 (the mean over
        ``seg_flips`` mirror images), the images resized by ``scale`` for the network."""
        if scale == 1.0:
            return self._segment(images)
        h, w = images[0].shape[:2]
        size = (max(round(w * scale), 16), max(round(h * scale), 16))
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        probs = self._segment([cv2.resize(im, size, interpolation=interp) for im in images])
        return np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])

    @torch.inference_mode()
    def _segment(self, images: list[np.ndarray]) -> np.ndarray:
        x = self._batch(images)
        prob = None
        for dims in _FLIP_DIMS[: self.cfg.seg_flips]:
            p = torch.sigmoid(self.seg(x.flip(dims) if dims else x)[:, :1].float())
            p = p.flip(dims) if dims else p
            prob = p if prob is None else prob + p
        return (prob[:, 0] / self.cfg.seg_flips).cpu().numpy()

    def _batch(self, images: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images))  # a new array: inputs may be read-only views
        return x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)

    @torch.inference_mode()
    def run_net(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Depth (m) and mask probability of each RGB image, as (N, H, W) float32 arrays."""
        depth, logits = self.net(self._batch(images))
        return depth[:, 0].float().cpu().numpy(), torch.sigmoid(logits[:, 0]).float().cpu().numpy()

    def __call__(
        self,
        left: np.ndarray,
        right: np.ndarray,
        pair: StereoPair,
        masks: tuple[np.ndarray, np.ndarray] | None = None,
        dense: bool = True,
    ) -> FrameResult:
        """``masks``: given instrument masks of both views (an evaluation's oracle). ``dense``
        False: the distance only, no depth image (``depth`` is None), for a caller that has
        nobody to give the image to."""
        cfg = self.cfg
        if left.ndim != 3 or left.shape[2] != 3 or left.shape != right.shape:
            raise InputError(
                f"need two RGB images of one size, got {left.shape} and {right.shape}"
            )
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        st = stereo_depth(left, right, pair, cfg.stereo, self.device, self.warn)
        ms["stereo"] = (time.perf_counter() - t0) * 1e3
        net_depth = right_mask = None
        if cfg.estimator == "net":
            t0 = time.perf_counter()
            depths, probs = self.run_net([left, right] if self.seg is None else [left])
            ms["net"] = (time.perf_counter() - t0) * 1e3
            net_depth = depths[0]
        if masks is not None:
            mask = masks[0] > 0
            right_mask = masks[1] > 0 if masks[1] is not None else None
        elif self.seg is not None:
            t0 = time.perf_counter()
            probs = self.segment([left, right], self.seg_scale(pair, st.depth))
            ms["segment"] = (time.perf_counter() - t0) * 1e3
        elif self.net is not None:
            if net_depth is None:
                t0 = time.perf_counter()
                _, probs = self.run_net([left, right])
                ms["net"] = (time.perf_counter() - t0) * 1e3
        else:
            mask = self._height_mask(st.depth, st.confidence, pair)
        soft = soft_right = None
        if masks is None and (self.seg is not None or self.net is not None):
            # The geometry places edges where the probability crosses the threshold, between
            # pixels: a silhouette's centre moves by fractions of a pixel, its disparity too.
            soft = _threshold_at_half(probs[0], cfg.mask_threshold)
            soft_right = _threshold_at_half(probs[1], cfg.mask_threshold)
            mask, right_mask = soft >= 0.5, soft_right >= 0.5
        t0 = time.perf_counter()
        shifts = None
        if self.edges is not None and soft is not None:
            shifts = (self.edges(soft, left), self.edges(soft_right, right))
        m = measure(
            pair,
            st.depth,
            mask if soft is None else soft,
            right_mask if soft_right is None else soft_right,
            st.confidence,
            cfg.geometry,
            (left, right),
            shifts,
        )
        ms["geometry"] = (time.perf_counter() - t0) * 1e3
        # Calibrated on the network's masks: given masks (an oracle's) err otherwise.
        if self.uncertainty is not None and masks is None and m.ok:
            m.sigma = self.uncertainty.sigma(m.kind, m.tilt_deg)
        # What the geometry took for the instrument is the instrument: other mask pixels (the
        # optic disc, a highlight) are retina.
        mask = m.instrument_mask if m.instrument_mask is not None else np.zeros_like(mask)
        if not dense:
            depth = None
        elif cfg.estimator == "stereo":
            depth = st.depth
        elif cfg.estimator == "net":
            depth = net_depth
        else:
            t0 = time.perf_counter()
            depth = self._fuse(st.depth, mask, m, pair)
            ms["fuse"] = (time.perf_counter() - t0) * 1e3
        depth = None if depth is None else depth.astype(np.float32)
        return FrameResult(depth, mask, right_mask, m, ms)

    def _height_mask(self, depth, confidence, pair) -> np.ndarray:
        """Pixels standing min_height above a sphere fitted to all confident depth."""
        try:
            sphere = fit_retina(depth, pair, None, confidence, self.cfg.geometry)
        except InputError:
            return np.zeros(depth.shape, bool)
        v, u = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
        pts = back_project(pair, u, v, np.nan_to_num(depth, nan=0.0))
        below = sphere.depth_at(pts[..., 0], pts[..., 1])
        with np.errstate(invalid="ignore"):
            high = np.isfinite(depth) & (below - depth > self.cfg.min_height)
        high = cv2.morphologyEx(high.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3)))
        # Stereo leaves holes on the shiny shaft: close them so the instrument is one piece.
        return cv2.morphologyEx(high, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8)) > 0

    def _fuse(self, stereo: np.ndarray, mask: np.ndarray, m: Measurement, pair) -> np.ndarray:
        depth = stereo.copy()
        if m.retina is None:
            return depth
        k = 2 * self.cfg.boundary_band_px + 1
        band = (cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0) & ~mask
        far = ~mask & ~band & np.isfinite(depth)
        v, u = np.nonzero(far)
        if len(u):
            model = sphere_depth_along_rays(pair, u, v, m.retina)
            off = ~(np.abs(depth[v, u] - model) <= self.cfg.retina_tolerance)
            depth[v[off], u[off]] = np.nan
        v, u = np.nonzero(band)
        if len(u):
            # The retina under a pixel's ray: the sphere's far intersection.
            depth[v, u] = sphere_depth_along_rays(pair, u, v, m.retina)
        # Inside the mask, the fitted 3D instrument's depth; a pixel it misses (a jaw it does not
        # describe) is unknown rather than guessed. Pixels on the silhouette itself mix the
        # instrument and the retina millimetres below it: they have no one depth, so they are
        # unknown too (edge_px on either side of the mask's edge).
        v, u = np.nonzero(mask)
        if len(u):
            depth[v, u] = render_instrument_depth(
                pair, m, np.stack([u, v], 1).astype(float), self.cfg.geometry
            )
        if self.cfg.edge_px > 0:
            e = 2 * self.cfg.edge_px + 1
            m8 = mask.astype(np.uint8)
            kernel = np.ones((e, e), np.uint8)
            depth[(cv2.dilate(m8, kernel) > 0) & ~(cv2.erode(m8, kernel) > 0)] = np.nan
        return depth
