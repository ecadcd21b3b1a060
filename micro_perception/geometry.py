"""Instrument-to-retina geometry from depth and instrument masks (no ROS).

Coordinates are the left camera's optical frame in metres (x right, y down, z away from the
microscope), the frame every output of the depth node uses.

* **Retina**: a sphere (the eye's posterior wall) fitted to back-projected retina depth by RANSAC
  and then least squares, excluding the instrument, a margin around it and unconfident pixels
  (its shadow has little texture, so stereo gives it no confidence). The inliers' RMS distance to
  the sphere is the fit's quality figure.
* **Instrument**: the largest elongated mask component, small enclosed holes filled; the end of
  its principal axis nearer the image border (or the vignette) is where it enters, the other end
  is the tip, located at sub-pixel precision along the axis. The shaft's width across that axis
  gives its radius. A round end's outline is fitted with a circle: its centre and radius. A mask
  may come as probabilities: runs then end where they cross 0.5 between pixels, so silhouettes
  move by fractions of a pixel, not whole pixels.
* **Shaft in 3D**: the cameras see the top of a polished, curved instrument, whose stereo depth
  is biased by view-dependent highlights. Silhouettes are not: where the shaft crosses image rows,
  the centre of the left mask's run and of the right mask's run on the same row are the same
  axis point, so their disparity gives the axis depth without any highlight bias
  (``method="silhouette"``). A shaft nearly parallel to the rows is placed instead by its end's
  disparity, the right mask slid along the rows onto the left's over the end's cap (``"tip"``),
  and with no right mask by the depth map on the shaft plus its radius (``"depth"``, biased by
  the highlights, reported as such).
* **Distance**: the distal shaft is a capsule (axis segment plus radius) ending at the tip. The
  gap along the retina normal is ``R - |p - c| - r`` minimised over the axis (p on the axis, c
  and R the sphere); along the optical axis, the smallest depth difference between the capsule's
  surface and the retina straight below it. Both subtract the instrument's thickness, so they
  measure from its unseen underside. Jaws and blades (a working end thinner than the shaft) are
  measured instead: their rows in both views and their extreme point matched between the views.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from micro_perception.camera import StereoPair
from micro_perception.errors import InputError

DISTANCE_MODES = ("normal", "axial")
METHODS = ("silhouette", "tip", "depth")
# How the working end was placed: a capsule (round end), from a light pipe's sleeve (glow), on
# the silhouettes' rows (jaws or blades), or at the reach the robot told (reach).
ENDS = ("round", "glow", "jaws", "reach")


@dataclass(frozen=True)
class GeometryConfig:
    min_instrument_px: int = 60  # smaller mask components are not an instrument
    min_elongation: float = 2.5  # length / width (std along / across) of an instrument's mask
    # Enclosed holes in the mask up to this area (m^2, about 100 px at 512x512) are a network's
    # cracks (a light pipe's end against its glow), not the gap between jaws, and are filled.
    max_hole_area: float = 2.5e-8
    # A stretch of shaft the mask lost (vessels crossing behind a thin shaft) up to this long
    # (m) is bridged when the pieces beyond it lie on the shaft's axis, inside its width.
    max_gap: float = 1.0e-3
    contact_tolerance: float = 1.0e-3  # m inside the retina still read as contact (0), not unknown
    retina_margin_px: int = 10  # excluded around the instrument (mixed pixels, its shadow edge)
    min_confidence: float = 0.2  # stereo confidence a retina point needs
    # The sphere fit to the matcher's depth is then aligned on the images themselves: the
    # disparity it implies, plus an offset and a tilt across the image, is what carries the
    # right view's texture onto the left's (Gauss-Newton on band-passed images). The matcher's
    # sub-pixel disparities lean toward whole pixels, which left the fitted retina about 6 um too
    # near on average and 10 um off per frame. 0 iterations: the fit as it was.
    retina_align_iterations: int = 6
    retina_align_samples: int = 20000  # retina pixels the alignment samples
    retina_align_max_offset_px: float = 0.5  # a larger correction is not believed: fit kept
    min_retina_points: int = 400
    max_retina_points: int = 6000  # subsampled for the fit
    ransac_iterations: int = 100
    ransac_threshold: float = 60e-6  # m from the sphere to count as an inlier
    radius_range: tuple[float, float] = (5e-3, 40e-3)  # m, plausible eye radii
    shaft_start: float = 1.6e-3  # m behind the tip where the plain shaft begins (jaws, blades)
    shaft_length: float = 3.0e-3  # m of shaft used for the axis
    tip_zone: tuple[float, float] = (0.1e-3, 0.6e-3)  # m behind the tip: the working end's width
    # A working end thinner than this fraction of the shaft is jaws or blades: measured on the
    # silhouettes, not modelled as the shaft's own rounded end.
    thin_end_ratio: float = 0.6
    # Thinner still than any jaw or blade (their radii are 0.2-0.4 of the shaft's): a sliver
    # left by a notch in the mask (a vitrector's dark port the network missed). Where one view
    # reads that and the other a round end, the round end is believed.
    broken_end_ratio: float = 0.15
    end_percentile: float = 1.0  # of the jaws' or blades' gaps: their lowest, less a stray row
    # Open jaws side by side on the rows make one run per row, whose centre has the disparity of
    # neither jaw: forceps read up to 0.3 mm too far. Such runs' edges (each one jaw's, where it
    # runs within 45 degrees of the columns) are matched between the views too.
    end_edges: bool = True
    # A round end (needle, vitrector, light pipe) is a hemisphere: its outline from the extreme
    # back to end_circle_span of its radius is fitted with a circle, whose centre and radius
    # place the end. The extreme pixel alone sat 0.2-0.5 px off and the distance transform read
    # the radius 0.5-0.8 px small, which left round ends 12 um too near. A fit whose outline
    # strays from the circle by more than end_circle_max_rms_px (blades that read round, a cut
    # mask) is not used, in either view. 0: off.
    end_circle_span: float = 0.8
    end_circle_max_rms_px: float = 0.6
    # A shaft along the image rows is placed by its end's disparity: the right view's mask is
    # slid along the row onto the left's over the end's cap, within this many px of the tips'
    # disparity. The network's errors at the end are alike in both views and cancel there; the
    # two ends located apart disagreed by 0.36 px (65 um) on average. 0: off.
    end_match_px: float = 4.0
    # A row of the working end paired with the wrong run reads a depth no jaw can have: one
    # whose depth differs by more than end_depth_jump (m) from that of every other row within
    # end_jump_reach (m) of it in the image is dropped. Jaws open at most ~0.65 mm apart in
    # depth, so the other jaw's tip next to this one stays.
    end_depth_jump: float = 1.0e-3
    end_jump_reach: float = 0.25e-3
    # The mounted instrument's working end is two straight jaws symmetric about its shaft
    # (forceps), as a robot that knows its tool can say. A jaw opening away from the cameras
    # hides behind the other in both views, and the distance was read from the seen one (0.1-0.25
    # mm too far). Then the seen jaw's rows turned 180 degrees about the shaft's axis stand for
    # it. Off unless told: curved blades (scissors) are not symmetric, and turned they read up
    # to 0.35 mm too near.
    symmetric_jaws: bool = False
    # How far the mounted tool's closed jaws or blades reach past its shaft's end, along the
    # axis (m; 0: not told). A steep shaft hides them below its own end in both views, and the
    # shaft's round end was read instead: scissors 0.4-0.8 mm too far. Told, an end that reads
    # as wide as the shaft has its jaws placed on the axis out to this reach; only on an axis
    # the silhouettes measured (a flat shaft's slope is assumed from the port, and 1 mm along
    # it landed 0.4 mm off).
    jaw_reach: float = 0.0
    # The turned rows are used only where they read this much (m) nearer than the seen ones:
    # each row's depth is noisy, and the lowest of both sets is lower than either's.
    hidden_jaw_min_gain: float = 150e-6
    min_rows: int = 12  # rows crossing the shaft needed for the silhouette method
    # A row crossing the shaft is used for its axis only where its width lies within
    # row_width_tol_px of the median row's in that view. A stretch of edge the network notched
    # or bulged (a vessel passing behind the shaft, the optic disc) moves the row's centre by
    # half the change, which shifts its disparity, and enough such rows tilt the axis by degrees.
    # With fewer than min_rows such rows the tip's method places the axis; where it cannot (the
    # tips' rows differ), every row is used again.
    row_width_tol_px: float = 1.5
    min_row_angle_deg: float = 15.0  # shafts flatter than this are matched by their tip
    # Rows whose silhouette edge the network lost (against the optic disc, a shadow) bend the
    # 3D axis. Only when the axis fit's median residual exceeds refit_residual (m) is it refit
    # on the rows whose centres lie on one straight image line (straight_row_tol_px across the
    # shaft), and the refit is kept only if it halves the residual: a flat shaft's row centres
    # wander along the rows, and checking every fit picked the wrong rows there.
    refit_residual: float = 30e-6
    straight_row_tol_px: float = 0.5
    # A shaft steeper than this to the image rows crosses each row nearly square: there the
    # axis is read from the silhouettes' four straight edges (a cylinder's outline), each fit
    # on the rows whose edges lie within straight_row_tol_px of it. Flatter shafts keep the
    # rows' own centres: their long runs along the rows see the network's edge errors
    # stretched, and errors both views share (a shadow, a vessel under the edge) cancel in
    # the rows' disparities but not in lines fit to each view.
    edge_lines_min_angle_deg: float = 45.0
    # The network's edges wander 1-3 px along a shaft, so the rows all four edges agree on can
    # be one short stretch whose lines tilt the axis (a steep light pipe hovering: 2-4.5 deg,
    # 0.2 mm at its end). Lines on rows spanning less than this fraction of the shaft's rows
    # give way to the rows' centres.
    edge_lines_min_span: float = 0.5
    # Between this angle and edge_lines_min_angle_deg, a bent axis is first refit on row centres
    # repaired from each view's edge lines: a row whose one edge left its line (the network lost
    # a stretch of that edge against the optic disc) takes its centre from the other edge. Not on
    # flatter shafts, whose long runs stretch the edges' errors. Only where both views' lines give
    # the shaft's radius to within edge_repair_radius_tol_px: a view whose lines are narrower lost
    # an edge along most of the shaft, and which edge is not known.
    edge_repair_min_angle_deg: float = 25.0
    edge_repair_radius_tol_px: float = 0.8
    max_tip_row_offset_px: float = 3.0  # left and right tips must lie on one row
    # A silhouette whose tip lies closer than this (m) to the view's edge (the image's border,
    # or the vignette's dark rim) is not measured: the tip may lie beyond it. The optic disc cut
    # by that edge, which a network can take for a short instrument, ends there too (it read as
    # contact).
    tip_border_margin: float = 0.15e-3
    # A light pipe's fibre glows for this long (m) past the end of its metal sleeve, the
    # virtual microscope's 0.35 mm; set it to your light pipe's (0: the mask's end is believed).
    # The glowing end against the glow it casts on the retina has no edge to segment, but the
    # sleeve's end is a step from grey to white in both views: the working end lies this far
    # beyond it.
    bright_end_length: float = 0.35e-3
    bright_end_contrast: float = 0.15  # of full scale, between the sleeve and the glowing end
    # Instruments enter through the pars plana, this far (deg) from the posterior pole: the
    # slope of a shaft lying along the image rows, which stereo cannot see, is the one that
    # leaves the eye there.
    port_polar_deg: float = 110.0
    seed: int = 0

    def __post_init__(self):
        if self.min_instrument_px < 1 or self.min_retina_points < 10:
            raise InputError("min_instrument_px must be >= 1 and min_retina_points >= 10")
        if not 0 < self.ransac_threshold < 1e-3:
            raise InputError(f"ransac_threshold must be in (0, 1 mm), got {self.ransac_threshold}")
        if self.max_gap < 0:
            raise InputError(f"max_gap must be >= 0 m, got {self.max_gap}")
        if self.row_width_tol_px <= 0:
            raise InputError(f"row_width_tol_px must be > 0, got {self.row_width_tol_px}")
        if self.jaw_reach < 0 or self.bright_end_length < 0:
            raise InputError(
                "jaw_reach and bright_end_length (the light pipe's glow) must be >= 0 m, got "
                f"{self.jaw_reach} and {self.bright_end_length}"
            )
        if self.hidden_jaw_min_gain < 0:
            raise InputError(f"hidden_jaw_min_gain must be >= 0 m, got {self.hidden_jaw_min_gain}")
        if self.shaft_length <= 0 or self.shaft_start < 0:
            raise InputError("shaft_length must be > 0 and shaft_start >= 0")
        if self.refit_residual <= 0 or self.straight_row_tol_px <= 0:
            raise InputError("refit_residual and straight_row_tol_px must be > 0")
        if not 0 <= self.edge_lines_min_span <= 1:
            raise InputError(
                f"edge_lines_min_span must be in [0, 1], got {self.edge_lines_min_span}"
            )
        if not 0 < self.edge_lines_min_angle_deg <= 90:
            raise InputError(
                f"edge_lines_min_angle_deg must be in (0, 90], got {self.edge_lines_min_angle_deg}"
            )
        if not 0 <= self.bright_end_length <= 2e-3 or not 0 < self.bright_end_contrast < 1:
            raise InputError(
                "bright_end_length must be in [0, 2 mm] and bright_end_contrast in (0, 1), got "
                f"{self.bright_end_length} and {self.bright_end_contrast}"
            )
        if self.retina_align_iterations < 0 or self.retina_align_samples < self.min_retina_points:
            raise InputError(
                "retina_align_iterations must be >= 0 and retina_align_samples >= "
                f"min_retina_points, got {self.retina_align_iterations} and "
                f"{self.retina_align_samples}"
            )
        if self.retina_align_max_offset_px <= 0:
            raise InputError(
                f"retina_align_max_offset_px must be > 0, got {self.retina_align_max_offset_px}"
            )
        if self.tip_border_margin < 0:
            raise InputError(f"tip_border_margin must be >= 0 m, got {self.tip_border_margin}")
        if self.end_depth_jump <= 0 or self.end_jump_reach <= 0:
            raise InputError(
                "end_depth_jump and end_jump_reach must be > 0 m, got "
                f"{self.end_depth_jump} and {self.end_jump_reach}"
            )
        if not 0 < self.end_circle_span <= 1 or self.end_circle_max_rms_px < 0:
            raise InputError(
                "end_circle_span must be in (0, 1] and end_circle_max_rms_px >= 0, got "
                f"{self.end_circle_span} and {self.end_circle_max_rms_px}"
            )
        if self.end_match_px < 0:
            raise InputError(f"end_match_px must be >= 0, got {self.end_match_px}")
        if not 0 < self.edge_repair_min_angle_deg <= 90 or self.edge_repair_radius_tol_px <= 0:
            raise InputError(
                "edge_repair_min_angle_deg must be in (0, 90] and edge_repair_radius_tol_px > 0"
            )


# What the user says about the mounted tool, by the names the node's parameters and the CLI's
# options share, and the GeometryConfig field each sets.
TOOL_SETTINGS = {
    "light_pipe_glow": "bright_end_length",
    "symmetric_jaws": "symmetric_jaws",
    "jaw_reach": "jaw_reach",
}


def tool_geometry(told: dict, base: GeometryConfig | None = None) -> GeometryConfig:
    """``base`` (default: the defaults) told about the mounted tool: ``told`` maps names of
    TOOL_SETTINGS to values."""
    unknown = set(told) - set(TOOL_SETTINGS)
    if unknown:
        raise InputError(f"unknown tool settings {sorted(unknown)}; known: {list(TOOL_SETTINGS)}")
    return replace(base or GeometryConfig(), **{TOOL_SETTINGS[k]: v for k, v in told.items()})


@dataclass
class SphereFit:
    centre: np.ndarray  # (3,) m
    radius: float  # m
    residual: float  # RMS distance of the inliers to the sphere, m
    inliers: int

    def depth_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the far (retina) side of the sphere below lateral positions; NaN outside it."""
        dx, dy = x - self.centre[0], y - self.centre[1]
        h2 = self.radius**2 - dx * dx - dy * dy
        with np.errstate(invalid="ignore"):
            return self.centre[2] + np.sqrt(h2)

    def gap(self, points: np.ndarray) -> np.ndarray:
        """Distance of points inside the eye to the sphere, along its normal."""
        return self.radius - np.linalg.norm(points - self.centre, axis=-1)

    def foot(self, point: np.ndarray) -> np.ndarray:
        """The sphere point nearest ``point`` (along the normal)."""
        v = point - self.centre
        return self.centre + v / np.linalg.norm(v) * self.radius


@dataclass(frozen=True)
class EdgeShift:
    """Corrections (px, outward positive) of one view's soft edges along the image rows, at the
    first (``first``) and last (``last``) pixel of each run of the mask they were made for: an
    edge refiner's reading of where the instrument's edge lies about the probability's 0.5
    crossing (``micro_perception.depth.edge_refine``). Zero elsewhere."""

    first: np.ndarray  # (H, W) float32
    last: np.ndarray  # (H, W) float32

    def apply(self, rows, first, last, left, right):
        w = self.first.shape[1]
        left = left - self.first[rows, np.clip(first, 0, w - 1)]
        right = right + self.last[rows, np.clip(last, 0, w - 1)]
        return left, right


@dataclass
class Instrument2D:
    tip_px: np.ndarray  # (2,) u, v sub-pixel
    direction: np.ndarray  # (2,) unit, from the tip along the shaft, image coordinates
    radius_px: float  # the shaft's
    tip_radius_px: float  # the working end's (jaws, blades) just behind the tip
    mask: np.ndarray  # (H, W) bool, the chosen component
    area: int
    # (H, W) float in [0, 1], the mask's probability (edges at its 0.5 crossing); None: hard
    soft: np.ndarray | None = None
    # A round end's outline fitted with a circle: (centre (2,), radius px); None where the end
    # is thin or not a circle.
    end_circle: tuple[np.ndarray, float] | None = None
    # Learned corrections of the soft edges (``EdgeShift``); None: the 0.5 crossing as it is.
    edge_shift: EdgeShift | None = None

    def with_end_circle(self) -> Instrument2D:
        """The tip and end radius the fitted circle gives, where there is one."""
        if self.end_circle is None:
            return self
        centre, r = self.end_circle
        return replace(self, tip_px=centre - r * self.direction, tip_radius_px=r)

    def along(self, u, v):
        """Distance (px) of image points from the tip, along the shaft's direction."""
        return (u - self.tip_px[0]) * self.direction[0] + (v - self.tip_px[1]) * self.direction[1]


@dataclass
class Measurement:
    """One frame's result. Distances are inf when unknown; ``reason`` then says why."""

    reason: str = ""
    method: str = ""  # how the shaft's axis was placed (METHODS)
    end: str = ""  # how the working end was (ENDS)
    tip_px: np.ndarray | None = None
    tip_xyz: np.ndarray | None = None  # the instrument's extreme point, m
    centre_xyz: np.ndarray | None = None  # centre of its rounded working end, m
    nearest_xyz: np.ndarray | None = None  # instrument surface point nearest the retina
    retina_xyz: np.ndarray | None = None  # its foot on the retina
    radius: float = float("nan")  # shaft radius, m
    axis: np.ndarray | None = None  # (3,) unit, from the tip along the shaft
    distance_normal: float = float("inf")
    distance_axial: float = float("inf")
    # The distance's standard deviation, m, from a calibrated model (uncertainty.py); NaN when
    # there is none, or no distance.
    sigma: float = float("nan")
    retina: SphereFit | None = None
    instrument_mask: np.ndarray | None = None  # the mask component taken for the instrument
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reason and np.isfinite(self.distance_normal)

    @property
    def tilt_deg(self) -> float:
        """The shaft's angle to the optical axis, degrees (NaN without an axis): a steep shaft
        hides its working end under itself."""
        if self.axis is None:
            return float("nan")
        return float(np.degrees(np.arccos(min(abs(float(self.axis[2])), 1.0))))

    @property
    def kind(self) -> str:
        """The axis's method and the end's, e.g. ``silhouette/jaws``: what the error of the
        distance depends on most (``uncertainty.py``)."""
        return f"{self.method}/{self.end}"

    def distance(self, mode: str = "normal") -> float:
        if mode not in DISTANCE_MODES:
            raise InputError(f"distance mode must be one of {DISTANCE_MODES}, got {mode!r}")
        return self.distance_normal if mode == "normal" else self.distance_axial


def back_project(pair: StereoPair, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Pixel coordinates and depth to (..., 3) points in the left optical frame."""
    cam = pair.left
    u, v, z = np.broadcast_arrays(np.asarray(u, float), np.asarray(v, float), np.asarray(z, float))
    return np.stack([(u - cam.cx) * z / cam.fx, (v - cam.cy) * z / cam.fy, z], -1)


def project(pair: StereoPair, points: np.ndarray) -> np.ndarray:
    cam = pair.left
    p = np.asarray(points, float)
    return np.stack(
        [cam.fx * p[..., 0] / p[..., 2] + cam.cx, cam.fy * p[..., 1] / p[..., 2] + cam.cy], -1
    )


# --- retina ----------------------------------------------------------------------------------


def _sphere_lstsq(p: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Algebraic sphere through points (centred and scaled for conditioning)."""
    mean = p.mean(0)
    q = (p - mean) * 1e3  # mm
    a = np.concatenate([q, np.ones((len(q), 1))], 1)
    b = -(q**2).sum(1)
    try:
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    except np.linalg.LinAlgError:
        return None
    c = -sol[:3] / 2
    r2 = c @ c - sol[3]
    if not np.isfinite(r2) or r2 <= 0:
        return None
    return c * 1e-3 + mean, float(np.sqrt(r2)) * 1e-3


def _spheres_through_four(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 3) and radii (N,) of the spheres through each of N quadruples of points
    (N, 4, 3), by ``_sphere_lstsq``'s equations solved together; NaN where degenerate."""
    mean = samples.mean(1, keepdims=True)
    q = (samples - mean) * 1e3  # mm
    a = np.concatenate([q, np.ones((*q.shape[:2], 1))], 2)
    b = -(q**2).sum(2)
    sol = np.full((len(samples), 4), np.nan)
    ok = np.abs(np.linalg.det(a)) > 1e-12
    if ok.any():
        sol[ok] = np.linalg.solve(a[ok], b[ok][..., None])[..., 0]
    c = -sol[:, :3] / 2
    r2 = (c * c).sum(1) - sol[:, 3]
    radii = np.sqrt(np.where(r2 > 0, r2, np.nan)) * 1e-3
    return c * 1e-3 + mean[:, 0], radii


def _subsample(n: int, cfg: GeometryConfig) -> tuple[np.ndarray | None, np.random.Generator]:
    """Which of ``n`` retina points the fit uses (None: all), and the generator the fit goes
    on drawing from; InputError when there are too few."""
    if n < cfg.min_retina_points:
        raise InputError(f"{n} retina points, need {cfg.min_retina_points}")
    rng = np.random.default_rng(cfg.seed)
    if n > cfg.max_retina_points:
        return rng.choice(n, cfg.max_retina_points, replace=False), rng
    return None, rng


def fit_sphere(points: np.ndarray, cfg: GeometryConfig | None = None) -> SphereFit:
    """RANSAC then least squares; raises InputError when no plausible sphere fits."""
    cfg = cfg or GeometryConfig()
    p = np.asarray(points, float).reshape(-1, 3)
    with np.errstate(invalid="ignore"):  # inf - inf
        p = p[np.isfinite(p.sum(1))]  # NaN or inf in any coordinate; .all(1) is slow on (N, 3)
    keep, rng = _subsample(len(p), cfg)
    return _ransac_sphere(p if keep is None else p[keep], cfg, rng)


def fit_retina(
    depth: np.ndarray,
    pair: StereoPair,
    instrument: np.ndarray | None,
    confidence: np.ndarray | None = None,
    cfg: GeometryConfig | None = None,
) -> SphereFit:
    """``fit_sphere(retina_points(...))``, the same sphere, with only the pixels the fit samples
    back-projected (a tenth of the time at 512x512)."""
    cfg = cfg or GeometryConfig()
    v, u = _retina_pixels(depth, instrument, confidence, cfg)
    keep, rng = _subsample(len(v), cfg)
    if keep is not None:
        v, u = v[keep], u[keep]
    return _ransac_sphere(back_project(pair, u, v, depth[v, u]), cfg, rng)


def _grey_u8(image: np.ndarray) -> np.ndarray:
    """An RGB or grey image, uint8 or float in [0, 1], as 8-bit grey."""
    g = np.asarray(image)
    if g.dtype != np.uint8:
        g = np.clip(np.asarray(g, np.float32) * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(g, cv2.COLOR_RGB2GRAY) if g.ndim == 3 else g


def _band_pass(image: np.ndarray) -> np.ndarray:
    """Grey texture with the illumination's slow changes removed: a small Gaussian less a
    13-pixel box mean (a box costs a fifth of a wide Gaussian)."""
    g = _grey_u8(image).astype(np.float32) / 255.0
    return cv2.GaussianBlur(g, (5, 5), 1.0) - cv2.boxFilter(g, -1, (13, 13))


def sphere_depth_along_rays(pair: StereoPair, u, v, sphere: SphereFit) -> np.ndarray:
    """Depth (z, m) where each pixel's ray meets the sphere's far side; NaN where it misses."""
    cam = pair.left
    r = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(np.shape(u))], -1)
    c = sphere.centre
    rc, rr = r @ c, (r * r).sum(-1)
    with np.errstate(invalid="ignore"):
        return (rc + np.sqrt(rc**2 - rr * (c @ c - sphere.radius**2))) / rr


def align_retina(
    sphere: SphereFit,
    pair: StereoPair,
    images: tuple[np.ndarray, np.ndarray],
    instrument: np.ndarray,
    right_instrument: np.ndarray | None,
    cfg: GeometryConfig,
) -> tuple[SphereFit, str | None]:
    """The sphere re-fit to the disparities that align the two views' retina texture: the
    sphere's own disparities corrected by an offset and a tilt across the image, found by
    Gauss-Newton (Huber-weighted) on band-passed images. Pixels near the instrument in either
    view are left out (hidden in the other view, or mixed with it). Returns the sphere (its
    residual and inliers still the stereo fit's, the quality figure) and None, or the fit
    unchanged and why."""
    left, right = _band_pass(images[0]), _band_pass(images[1])
    h, w = left.shape
    k = 2 * cfg.retina_margin_px + 1
    kernel = np.ones((k, k), np.uint8)
    near_l = cv2.dilate(instrument.astype(np.uint8), kernel) > 0
    near_r = (
        cv2.dilate(right_instrument.astype(np.uint8), kernel) > 0
        if right_instrument is not None
        else np.zeros_like(near_l)
    )
    stride = max(1, int(np.ceil(np.sqrt(h * w / cfg.retina_align_samples))))  # a grid, no draw
    v, u = np.mgrid[stride // 2 : h : stride, stride // 2 : w : stride].reshape(2, -1)
    keep = ~near_l[v, u]
    v, u = v[keep], u[keep]
    d0 = pair.disparity_from_depth(sphere_depth_along_rays(pair, u, v, sphere))
    ur = u - d0
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(d0) & (ur > 2) & (ur < w - 3)
    ok[ok] = ~near_r[v[ok], np.round(ur[ok]).astype(int)]
    if ok.sum() < cfg.min_retina_points:
        return sphere, "too few retina pixels to align the views on"
    u, v, d0 = u[ok].astype(np.float64), v[ok].astype(np.float64), d0[ok]
    basis = np.stack([np.ones_like(u), (u - w / 2) / w, (v - h / 2) / h], 1)
    grad = cv2.Sobel(right, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    target = left[v.astype(int), u.astype(int)]
    rows = v.astype(np.float32)

    def sample(image, cols):  # cv2.remap takes maps under 32767 wide: fold them into rows
        n = len(cols)
        pad = -n % 1024
        maps = [np.pad(a, (0, pad), mode="edge").reshape(-1, 1024) for a in (cols, rows)]
        return cv2.remap(image, *maps, cv2.INTER_LINEAR).reshape(-1)[:n]

    p = np.zeros(3)
    for _ in range(cfg.retina_align_iterations):
        cols = (u - d0 - basis @ p).astype(np.float32)
        r = target - sample(right, cols)
        jac = sample(grad, cols)[:, None] * basis
        scale = 1.4826 * float(np.median(np.abs(r))) + 1e-9
        wt = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(r), 1e-12))[:, None]
        try:
            step = -np.linalg.solve((jac * wt).T @ jac, (jac * wt).T @ r)
        except np.linalg.LinAlgError:
            return sphere, "no texture to align the views on"
        p += step
        if np.abs(step).max() < 1e-4:
            break
    correction = basis @ p
    if not np.isfinite(p).all() or np.abs(correction).max() > cfg.retina_align_max_offset_px:
        return sphere, f"view alignment moved the retina {np.abs(correction).max():.2f} px"
    pts = back_project(pair, u, v, pair.depth_from_disparity(d0 + correction))
    fit = _sphere_lstsq(pts[np.isfinite(pts).all(1)])
    if fit is None:
        return sphere, "the aligned retina fits no sphere"
    return SphereFit(fit[0], fit[1], sphere.residual, sphere.inliers), None


def _ransac_sphere(p: np.ndarray, cfg: GeometryConfig, rng: np.random.Generator) -> SphereFit:
    lo, hi = cfg.radius_range
    samples = np.stack(
        [p[rng.choice(len(p), 4, replace=False)] for _ in range(cfg.ransac_iterations)]
    )
    centres, radii = _spheres_through_four(samples)
    # The retina is the sphere's far wall: its centre is nearer the camera than its points.
    plausible = (
        np.isfinite(radii) & (lo <= radii) & (radii <= hi) & (centres[:, 2] < p[:, 2].mean())
    )
    if not plausible.any():
        raise InputError("no plausible sphere fits the retina points")
    centres, radii = centres[plausible], radii[plausible]
    # All hypotheses scored at once, (hypotheses, points), one coordinate at a time: what
    # np.linalg.norm sums, without a (hypotheses, points, 3) array or a K=3 matrix product
    # (slow in some BLAS builds).
    sq = sum((p[None, :, k] - centres[:, k, None]) ** 2 for k in range(3))
    off = np.sqrt(sq) - radii[:, None]
    counts = (np.abs(off) < cfg.ransac_threshold).sum(1)
    k = int(np.argmax(counts))  # the first of the best, as a sequential search keeps
    best = centres[k], float(radii[k])
    for _ in range(3):  # refit on the inliers of the current sphere
        inl = np.abs(np.linalg.norm(p - best[0], axis=1) - best[1]) < cfg.ransac_threshold
        if inl.sum() < cfg.min_retina_points // 2:
            break
        fit = _sphere_lstsq(p[inl])
        if fit is None:
            break
        best = fit
    dist = np.abs(np.linalg.norm(p - best[0], axis=1) - best[1])
    inl = dist < cfg.ransac_threshold
    if inl.sum() < cfg.min_retina_points // 2:
        raise InputError(f"only {int(inl.sum())} retina points agree with one sphere")
    if not lo <= best[1] <= hi:
        raise InputError(f"retina fit radius {best[1] * 1e3:.1f} mm is implausible")
    return SphereFit(best[0], best[1], float(np.sqrt(np.mean(dist[inl] ** 2))), int(inl.sum()))


def retina_points(
    depth: np.ndarray,
    pair: StereoPair,
    instrument: np.ndarray | None,
    confidence: np.ndarray | None = None,
    cfg: GeometryConfig | None = None,
) -> np.ndarray:
    """Back-projected depth pixels that may be retina: away from the instrument, confident."""
    v, u = _retina_pixels(depth, instrument, confidence, cfg or GeometryConfig())
    return back_project(pair, u, v, depth[v, u])


def _retina_pixels(depth, instrument, confidence, cfg: GeometryConfig):
    """Rows and columns of the pixels retina_points takes, in its order: finite depth only."""
    ok = np.isfinite(depth)
    if confidence is not None:
        ok &= confidence >= cfg.min_confidence
    if instrument is not None and instrument.any():
        k = 2 * cfg.retina_margin_px + 1
        near = cv2.dilate(instrument.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
        ok &= ~near
    return np.nonzero(ok)


# --- instrument in the image -----------------------------------------------------------------


def _components(mask: np.ndarray):
    """(count, labels, stats) of the mask's 8-connected components, background included."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return n, labels, stats


def _largest_component(components, min_px: int, min_elongation: float = 0.0) -> np.ndarray | None:
    """The largest connected component (of ``_components``) of at least ``min_px`` pixels whose
    length is at least ``min_elongation`` times its width (an instrument is long; the optic
    disc, a highlight or a speck a segmentation mistakes for one are not)."""
    _, labels, stats = components
    for i in 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA]):
        if stats[i, cv2.CC_STAT_AREA] < min_px:
            return None
        # Within the component's bounding box: whole-image scans cost more than the rest.
        x, y, w, h = stats[i, :4]
        box = labels[y : y + h, x : x + w] == i
        if min_elongation > 0:
            v, u = np.nonzero(box)
            ev = np.linalg.eigvalsh(np.cov(np.stack([u, v]).astype(np.float64)))
            if ev[0] > 0 and np.sqrt(ev[1] / ev[0]) < min_elongation:
                continue
        comp = np.zeros(labels.shape, bool)
        comp[y : y + h, x : x + w] = box
        return comp
    return None


def _join_collinear(comp, components, centroid, axis, width: float, max_gap_px: float):
    """``comp`` joined with the mask's other pieces (``_components``) that continue it along
    its axis, inside the shaft's width, across a gap of at most ``max_gap_px``, and the gaps
    filled across that width; ``comp`` itself when there are none. A network can lose a stretch
    of a thin shaft where vessels cross behind it: the tip was then read at the break,
    millimetres short."""
    n, labels, stats = components
    if n <= 2 or max_gap_px <= 0:
        return comp
    normal = np.array([-axis[1], axis[0]])
    half = width / 2 + 1.5
    pieces = []
    for i in range(1, n):
        x, y, w, h = stats[i, :4]
        vv, uu = np.nonzero(labels[y : y + h, x : x + w] == i)
        rel = np.stack([uu + x, vv + y], 1) - centroid
        if np.percentile(np.abs(rel @ normal), 95) <= half:
            pieces.append((i, rel @ axis, uu + x, vv + y))
    v, u = np.nonzero(comp)
    along = (np.stack([u, v], 1) - centroid) @ axis
    lo, hi = along.min(), along.max()
    out, gaps = comp, []
    grew = True
    while grew:
        grew = False
        for k, (_, s, uu, vv) in enumerate(pieces):
            if s.min() > hi and s.min() - hi <= max_gap_px:
                gaps.append((hi, s.min()))
            elif s.max() < lo and lo - s.max() <= max_gap_px:
                gaps.append((s.max(), lo))
            else:
                continue
            out = out.copy() if out is comp else out
            out[vv, uu] = True
            lo, hi = min(lo, s.min()), max(hi, s.max())
            pieces.pop(k)
            grew = True
            break
    if out is comp:
        return comp
    h, w = comp.shape
    for a, b in gaps:
        ends = np.array([centroid + a * axis, centroid + b * axis])
        x0, y0 = np.floor(ends.min(0) - half).astype(int)
        x1, y1 = np.ceil(ends.max(0) + half).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        rel = np.stack([xx, yy], -1) - centroid
        fill = (np.abs(rel @ normal) <= width / 2) & (rel @ axis >= a) & (rel @ axis <= b)
        out[y0:y1, x0:x1] |= fill
    return out


def _fill_holes(comp: np.ndarray, max_px: float) -> np.ndarray:
    """``comp`` with its enclosed background holes of at most ``max_px`` pixels filled."""
    if max_px < 1:
        return comp
    rows, cols = np.flatnonzero(comp.any(1)), np.flatnonzero(comp.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = comp[y0:y1, x0:x1]
    # One pixel of background around the box joins everything outside into one component.
    inv = np.pad(~box, 1, constant_values=True).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    outside = labels[0, 0]
    small = [i for i in range(1, n) if i != outside and stats[i, cv2.CC_STAT_AREA] <= max_px]
    if not small:
        return comp
    out = comp.copy()
    out[y0:y1, x0:x1] |= np.isin(labels[1:-1, 1:-1], small)
    return out


def _border_distance(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.minimum.reduce([pts[:, 0], pts[:, 1], w - 1 - pts[:, 0], h - 1 - pts[:, 1]])


def _dark_rim(image: np.ndarray, level: float = 10 / 255, min_px: int = 500) -> np.ndarray:
    """The microscope's vignette: near-black pixels in regions that reach the image's border
    (dark instrument parts do not)."""
    g = cv2.blur(_grey_u8(image), (5, 5))
    _, labels, stats, _ = cv2.connectedComponentsWithStats((g < level * 255).astype(np.uint8))
    h, w = g.shape
    x, y, bw, bh, area = stats.T
    rim = (area >= min_px) & ((x == 0) | (y == 0) | (x + bw == w) | (y + bh == h))
    rim[0] = False  # the label of the pixels that are not dark
    return rim[labels]


def _tip_at_view_edge(tip_px, shape, images, margin_px: float) -> bool:
    """Whether the tip lies within ``margin_px`` of the image's border or, given the images,
    of the vignette's dark rim in the left one."""
    if _border_distance(np.asarray(tip_px)[None], shape)[0] < margin_px:
        return True
    if images is None or margin_px <= 0:
        return False
    u, v = np.round(tip_px).astype(int)
    r = int(np.ceil(margin_px))
    rim = _dark_rim(images[0])[max(v - r, 0) : v + r + 1, max(u - r, 0) : u + r + 1]
    dv, du = np.nonzero(rim)
    dv, du = dv + max(v - r, 0) - tip_px[1], du + max(u - r, 0) - tip_px[0]
    return bool(len(dv)) and float(np.min(np.hypot(du, dv))) < margin_px


def _centre_line(comp: np.ndarray, horizontal: bool, soft: np.ndarray | None = None):
    """The shaft's centre line from the centres of the runs across it: (point, unit direction,
    perpendicular width in px), or None. Runs cut by the image border, split runs and runs of
    another length than the shaft's (the rounded end, jaws, blades) are left out."""
    m = comp.T if horizontal else comp
    sm = None if soft is None else (soft.T if horizontal else soft)
    centre, length, single, first, last = _row_centres(m, sm)
    n = m.shape[1]
    ok = single & (first > 0) & (last < n - 1)
    if ok.sum() < 5:
        return None
    med = float(np.median(length[ok]))
    ok &= np.abs(length - med) <= 0.2 * med + 1
    if ok.sum() < 5:
        return None
    rows = np.nonzero(ok)[0].astype(float)
    a, b = _robust_line_1d(rows, centre[ok])
    r0 = rows.mean()
    point = np.array([a + b * r0, r0])
    direction = np.array([b, 1.0]) / np.hypot(b, 1.0)
    width = float(np.median(length[ok])) / np.hypot(b, 1.0)
    if horizontal:
        point, direction = point[::-1], direction[::-1]
    return point, direction, width


def soft_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(hard bool mask, soft occupancy or None) of a mask: bool or integer masks are hard
    (nonzero is instrument); float masks are probabilities, the instrument where >= 0.5, with
    edges placed where they cross 0.5 between pixels."""
    if np.issubdtype(mask.dtype, np.floating):
        soft = np.nan_to_num(mask.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        soft = np.clip(soft, 0.0, 1.0)
        return soft >= 0.5, soft
    return mask > 0, None


def find_instrument(mask: np.ndarray, px_per_m: float, cfg: GeometryConfig | None = None):
    """The instrument's tip, shaft direction and radius in the image, or None.

    ``mask``: hard, or a probability (see ``soft_mask``). ``px_per_m`` converts the config's
    lengths to pixels (fx / working depth).
    """
    return _find_instrument(*soft_mask(mask), px_per_m, cfg or GeometryConfig())


def _find_instrument(hard, soft, px_per_m: float, cfg: GeometryConfig):
    """find_instrument on a mask already split by soft_mask."""
    components = _components(hard)
    comp = _largest_component(components, cfg.min_instrument_px, cfg.min_elongation)
    if comp is None:
        return None
    comp = _fill_holes(comp, cfg.max_hole_area * px_per_m**2)
    v, u = np.nonzero(comp)
    pts = np.stack([u, v], 1).astype(np.float64)
    centroid = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - centroid, full_matrices=False)
    axis = vt[0]
    line = _centre_line(comp, abs(axis[0]) >= abs(axis[1]), soft)
    if line is not None:
        centroid, axis, width = line
        joined = _join_collinear(comp, components, centroid, axis, width, cfg.max_gap * px_per_m)
        if joined is not comp:
            comp = joined
            v, u = np.nonzero(comp)
            pts = np.stack([u, v], 1).astype(np.float64)
    else:  # too short to scan: the principal axis and the extent across it
        t = (pts - centroid) @ np.array([-axis[1], axis[0]])
        width = float(np.percentile(t, 95) - np.percentile(t, 5)) + 1.0
    s = (pts - centroid) @ axis
    ends = np.stack([pts[np.argmin(s)], pts[np.argmax(s)]])
    # The end nearer the border (or the vignette's dark rim) is where the shaft enters.
    near_border = _border_distance(ends, comp.shape)
    direction = axis if near_border[1] < near_border[0] else -axis  # tip -> shaft
    s = (pts - centroid) @ direction
    along = s - s.min()
    radius_px = width / 2
    # Tip: the extreme pixel along the axis, on the axis line, half a pixel beyond its centre.
    tip = centroid + (s.min() - 0.5) * direction
    tip_radius_px = _end_radius_px(pts, along, px_per_m, cfg)
    tip_radius_px = radius_px if tip_radius_px is None else min(tip_radius_px, radius_px)
    circle = None
    if tip_radius_px >= cfg.thin_end_ratio * radius_px and cfg.end_circle_max_rms_px > 0:
        circle = _end_circle(comp, soft, tip, direction, radius_px, cfg)
    return Instrument2D(
        tip, direction, radius_px, tip_radius_px, comp, int(comp.sum()), soft, circle
    )


def _outline_points(comp: np.ndarray, soft: np.ndarray | None, box) -> np.ndarray:
    """(N, 2) u, v of the mask's outline within box (v0, v1, u0, u1): between each pair of
    4-neighbours on either side of it, where the probability crosses 0.5 (midway for a hard
    mask)."""
    v0, v1, u0, u1 = box
    m = comp[v0:v1, u0:u1]
    sm = None if soft is None else soft[v0:v1, u0:u1]
    points = []
    for horizontal in (True, False):
        a, b = (m[:, :-1], m[:, 1:]) if horizontal else (m[:-1, :], m[1:, :])
        vv, uu = np.nonzero(a != b)
        t = np.full(len(vv), 0.5)
        if sm is not None:
            sa, sb = (sm[:, :-1], sm[:, 1:]) if horizontal else (sm[:-1, :], sm[1:, :])
            pa, pb = sa[vv, uu], sb[vv, uu]
            step = pb - pa
            ok = np.abs(step) > 1e-6
            t[ok] = np.clip((0.5 - pa[ok]) / step[ok], 0.0, 1.0)
        du, dv = (t, 0.0) if horizontal else (0.0, t)
        points.append(np.stack([uu + du + u0, vv + dv + v0], 1))
    return np.concatenate(points)


def _end_circle(comp, soft, tip, direction, radius_px: float, cfg: GeometryConfig):
    """A circle fitted to a round end's outline, from its extreme back to end_circle_span of
    its radius: (centre, radius) in px, or None where the outline is not such a circle."""
    if radius_px < 2.0:
        return None
    h, w = comp.shape
    start = tip + radius_px * direction
    reach = int(np.ceil(2 * radius_px + 4))
    cu, cv = np.round(start).astype(int)
    box = (max(cv - reach, 0), min(cv + reach, h), max(cu - reach, 0), min(cu + reach, w))
    p = _outline_points(comp, soft, box)
    across = np.array([-direction[1], direction[0]])
    along = (p - tip) @ direction
    keep = (along >= -2.0) & (along <= cfg.end_circle_span * radius_px)
    p = p[keep & (np.abs((p - tip) @ across) <= radius_px + 2.0)]
    if len(p) < 8:
        return None
    centre, r = start.astype(float), float(radius_px)
    weight = np.ones(len(p))
    for i in range(10):
        rel = p - centre
        dist = np.maximum(np.hypot(rel[:, 0], rel[:, 1]), 1e-9)
        res = dist - r
        if i >= 2:  # a stray outline stretch (a vessel under the edge) is left out
            spread = 1.4826 * float(np.median(np.abs(res - np.median(res)))) + 0.05
            weight = (np.abs(res) <= 2.5 * spread).astype(float)
        jac = np.concatenate([-rel / dist[:, None], -np.ones((len(p), 1))], 1)
        a = jac.T @ (jac * weight[:, None]) + 1e-9 * np.eye(3)
        step = np.linalg.solve(a, -(jac.T @ (res * weight)))
        centre, r = centre + step[:2], r + float(step[2])
    rel = p - centre
    res = np.hypot(rel[:, 0], rel[:, 1]) - r
    rms = float(np.sqrt(np.sum(weight * res**2) / max(weight.sum(), 1.0)))
    if (
        not 0.7 * radius_px < r < 1.3 * radius_px
        or np.hypot(*(centre - start)) > 3.0
        or rms > cfg.end_circle_max_rms_px
        or weight.mean() < 0.8
    ):
        return None
    return centre, r


def _end_radius_px(pts, along, px_per_m, cfg) -> float | None:
    """The working end's radius just behind the tip: the distance transform along the
    silhouette's medial ridge there. Ridges, not widths: open jaws, blades crossing each other
    or lying over the shaft in the view make widths several times a blade's. A low percentile,
    as ridge points where two blades merge read wider."""
    near = along <= (cfg.shaft_start + 0.2e-3) * px_per_m
    if near.sum() < 10:
        return None
    x0, y0 = pts[near].min(0).astype(int) - 2
    x1, y1 = pts[near].max(0).astype(int) + 3
    part = np.zeros((y1 - y0, x1 - x0), np.uint8)
    part[pts[near, 1].astype(int) - y0, pts[near, 0].astype(int) - x0] = 1
    dt = cv2.distanceTransform(part, cv2.DIST_L2, 5)
    ridge = (dt >= cv2.dilate(dt, np.ones((3, 3), np.uint8)) - 1e-6) & (dt >= 1)
    u, v = pts[near, 0].astype(int) - x0, pts[near, 1].astype(int) - y0
    zone = (along[near] >= cfg.tip_zone[0] * px_per_m) & (
        along[near] <= cfg.tip_zone[1] * px_per_m
    )
    values = dt[v, u][ridge[v, u] & zone]
    if values.size < 3:
        return None
    return max(float(np.percentile(values, 10)) - 0.5, 0.5)


def _end_disparity(left: Instrument2D, right: Instrument2D, d0: float, cfg) -> float | None:
    """The horizontal shift (px) that lays the right view's mask onto the left's over the left
    end's cap (from a little before its extreme to its centre), searched within
    ``cfg.end_match_px`` of ``d0``; None where the best shift lies at the search's edge."""
    if cfg.end_match_px <= 0:
        return None
    r, pad, d = left.tip_radius_px, 3.0, left.direction
    h, w = left.mask.shape
    u0, v0 = left.tip_px
    reach = int(np.ceil(r + pad)) + 2
    x0, x1 = max(int(u0) - reach, 0), min(int(u0) + reach + 1, w)
    y0, y1 = max(int(v0) - reach, 0), min(int(v0) + reach + 1, h)
    vv, uu = np.mgrid[y0:y1, x0:x1]
    along = (uu - u0) * d[0] + (vv - v0) * d[1]
    across = (vv - v0) * d[0] - (uu - u0) * d[1]
    window = (along >= -pad) & (along <= r) & (np.abs(across) <= r + pad)
    if window.sum() < 20:
        return None

    def occupancy(inst):  # blurred: binary masks then give sub-pixel shifts too
        m = inst.mask.astype(np.float32) if inst.soft is None else inst.soft * inst.mask
        return cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.0)

    target = occupancy(left)[vv[window], uu[window]]
    moving = occupancy(right)[vv[window]]  # the window's rows of the right view
    cols = uu[window].astype(float)
    rows = np.arange(len(cols))

    def cost(shift: float) -> float:
        x = cols - shift
        i = np.clip(np.floor(x).astype(int), 0, w - 2)
        t = np.clip(x - i, 0.0, 1.0)
        value = moving[rows, i] * (1 - t) + moving[rows, i + 1] * t
        return float(np.mean((value - target) ** 2))

    coarse = d0 + np.arange(-cfg.end_match_px, cfg.end_match_px + 1e-9, 0.1)
    k = int(np.argmin([cost(x) for x in coarse]))
    if k in (0, len(coarse) - 1):
        return None
    fine = coarse[k] + np.arange(-0.1, 0.1001, 0.01)
    c = np.array([cost(x) for x in fine])
    k = int(np.clip(np.argmin(c), 1, len(fine) - 2))
    curvature = c[k - 1] - 2 * c[k] + c[k + 1]
    offset = 0.5 * (c[k - 1] - c[k + 1]) / curvature if curvature > 0 else 0.0
    return float(fine[k] + np.clip(offset, -1.0, 1.0) * 0.01)


def _working_end_radius_px(left: Instrument2D, right: Instrument2D, cfg) -> float:
    """The left view's working-end radius, decided by both views where they disagree on
    whether the end is thin (jaws, blades) or round. A blade can hide against the shaft in
    one view and read round there; a notch in one view's mask can read as a sliver. So the thin
    view is believed unless it is thinner than any blade."""
    ratios = [v.tip_radius_px / v.radius_px for v in (left, right)]
    thin = [r < cfg.thin_end_ratio for r in ratios]
    if thin[0] == thin[1]:
        return left.tip_radius_px
    k = 0 if thin[0] else 1  # the thin view
    if ratios[k] < cfg.broken_end_ratio:
        k = 1 - k
    # The other view's ratio, on the left view's shaft radius (the views' scales agree).
    return ratios[k] * left.radius_px


# --- the shaft in 3D ---------------------------------------------------------------------------


def _edges(soft: np.ndarray | None, rows: np.ndarray, first: np.ndarray, last: np.ndarray):
    """Sub-pixel left and right edges of runs [first, last] on ``rows``: half a pixel outside
    the end pixels for a hard mask, where the probability crosses 0.5 for a soft one."""
    left = first - 0.5
    right = last + 0.5
    if soft is None or len(rows) == 0:
        return left, right
    w = soft.shape[1]
    inner = np.clip(first, 0, w - 1)
    outer = np.clip(first - 1, 0, w - 1)
    p_in, p_out = soft[rows, inner], soft[rows, outer]
    # Only across the 0.5 crossing: a run cut by something else (the image border, a zone's
    # end) keeps its hard edge.
    ok = (first > 0) & (p_out < 0.5) & (p_in >= 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(ok, first - 1 + (0.5 - p_out) / (p_in - p_out), left)
    inner = np.clip(last, 0, w - 1)
    outer = np.clip(last + 1, 0, w - 1)
    p_in, p_out = soft[rows, inner], soft[rows, outer]
    ok = (last < w - 1) & (p_out < 0.5) & (p_in >= 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        right = np.where(ok, last + (p_in - 0.5) / (p_in - p_out), right)
    return left, right


def mask_runs(soft: np.ndarray):
    """Every run of a soft mask's instrument pixels (>= 0.5) along the image rows: its row,
    first and last pixel, and its sub-pixel left and right edges (``_edges``)."""
    rows, first, last = _all_runs(soft >= 0.5)
    left, right = _edges(soft, rows, first, last)
    return rows, first, last, left, right


def _row_centres(comp: np.ndarray, soft: np.ndarray | None = None):
    """Per row: the run's centre and length (sub-pixel with a soft mask), whether the row holds
    one contiguous run, and its first and last pixel."""
    w = comp.shape[1]
    count = comp.sum(1)
    first = np.argmax(comp, 1)
    last = w - 1 - np.argmax(comp[:, ::-1], 1)
    single = (count > 0) & (count == last - first + 1)
    left, right = _edges(soft, np.arange(comp.shape[0]), first, last)
    return (left + right) / 2.0, right - left, single, first, last


def _fit_line(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3D line by PCA with two rounds of outlier rejection: (point, unit direction)."""
    keep = np.ones(len(points), bool)
    for _ in range(3):
        c = points[keep].mean(0)
        _, _, vt = np.linalg.svd(points[keep] - c, full_matrices=False)
        d = vt[0]
        res = _line_residuals(points, c, d)
        mad = np.median(res[keep]) + 1e-9
        keep = res <= max(3.0 * 1.4826 * mad, 2e-6)
    return c, d


def _line_residuals(points: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distances of points to the line through c along the unit vector d."""
    rel = points - c
    return np.linalg.norm(rel - np.outer(rel @ d, d), axis=1)


def _orient(d3: np.ndarray, direction2d: np.ndarray) -> np.ndarray:
    d3 = d3 / np.linalg.norm(d3)
    return d3 if d3[:2] @ direction2d >= 0 else -d3


def _axis_through_tip(pair, inst: Instrument2D, point, d3, radius_px) -> np.ndarray:
    """The axis point whose projection is the end's centre (radius_px behind the tip)."""
    target = inst.tip_px + radius_px * inst.direction
    # Sample the line densely around its closest approach in the image.
    s = np.linspace(-20e-3, 20e-3, 4001)
    pts = point + s[:, None] * d3
    pts = pts[pts[:, 2] > 0]
    uv = project(pair, pts)
    i = int(np.argmin(((uv - target) ** 2).sum(1)))
    lo, hi = max(i - 1, 0), min(i + 1, len(pts) - 1)
    fine = np.linspace(0, 1, 201)[:, None] * (pts[hi] - pts[lo]) + pts[lo]
    return fine[int(np.argmin(((project(pair, fine) - target) ** 2).sum(1)))]


def shaft_from_silhouettes(
    pair: StereoPair,
    left: Instrument2D,
    right: Instrument2D,
    px_per_m: float,
    cfg,
    even_rows: bool = True,
):
    """Axis line from the left and right silhouettes (their straight edges where the shaft is
    steep in the image, else their rows' centres), or None when too flat or too few rows.
    ``even_rows``: only rows within ``row_width_tol_px`` of the median row's width."""
    # The sine of the flatter view's angle to the image rows decides which reading applies.
    slope = min(abs(left.direction[1]), abs(right.direction[1]))
    if slope < np.sin(np.deg2rad(cfg.min_row_angle_deg)):
        return None
    w = left.mask.shape[1]
    rows = np.arange(left.mask.shape[0], dtype=float)
    use = np.ones(len(rows), bool)
    even = np.ones(len(rows), bool)  # within row_width_tol_px of each view's median row
    centres, edges = [], []
    for inst in (left, right):
        c, length, single, first, last = _row_centres(inst.mask, inst.soft)
        centre, edge_pair = c, (c - length / 2, c + length / 2)
        # Which rows cross the shaft is the mask's to say; where their edges lie, the
        # corrected edges' (their widths would admit rows on a flat shaft that reads worse).
        if inst.edge_shift is not None:
            edge_pair = inst.edge_shift.apply(rows.astype(int), first, last, *edge_pair)
            centre = (edge_pair[0] + edge_pair[1]) / 2
        edges.append(edge_pair)
        crossing = 2 * inst.radius_px / abs(inst.direction[1])  # across a straight shaft
        along = inst.along(c, rows)
        cand = (
            single
            & (first > 0)
            & (last < w - 1)  # a run cut by the image border has no centre
            & (along >= 2 * inst.radius_px)  # past the rounded end
            & (along <= (cfg.shaft_start + cfg.shaft_length) * px_per_m)
        )
        use &= cand & (np.abs(length - crossing) <= 0.2 * crossing + 2)
        if cand.any():
            even &= np.abs(length - np.median(length[cand])) <= cfg.row_width_tol_px
        centres.append(centre)
    if even_rows:
        use &= even
    if use.sum() < cfg.min_rows:
        return None
    if slope >= np.sin(np.deg2rad(cfg.edge_lines_min_angle_deg)):
        fit = _shaft_from_edge_lines(pair, edges, rows, use, (left, right), cfg)
        if fit is not None:
            return fit[0], _orient(fit[1], left.direction)
    fit = _shaft_line(pair, centres, rows, use, cfg)
    if fit is None:
        return None
    point, d3, residual = fit
    if residual > cfg.refit_residual:
        refit = None
        if slope >= np.sin(np.deg2rad(cfg.edge_repair_min_angle_deg)):
            repaired = _centres_from_edge_lines(rows, edges, (left, right), centres, use, cfg)
            if repaired is not None:
                refit = _shaft_line(pair, repaired[0], rows, repaired[1], cfg)
        if refit is None or refit[2] >= 0.5 * residual:
            straight = _rows_on_lines(rows, zip(centres, (left, right), strict=True), use, cfg)
            refit = _shaft_line(pair, centres, rows, straight, cfg)
        if refit is not None and refit[2] < 0.5 * residual:
            point, d3, _ = refit
    return point, _orient(d3, left.direction)


def _silhouette_axis(pair, left, right, px_per_m, cfg, out: Measurement, even_rows: bool):
    """``shaft_from_silhouettes``, setting ``out.method``; None also for an axis that sinks."""
    line = shaft_from_silhouettes(pair, left, right, px_per_m, cfg, even_rows)
    # A shaft leaves the eye through a port in front of its tip (nearer the camera): an axis
    # sinking away from the camera behind the tip was fit to mismatched rows.
    if line is not None and line[1][2] > 0:
        note = "the silhouettes' axis sank behind the tip: not used"
        if note not in out.notes:
            out.notes.append(note)
        return None
    if line is not None:
        out.method = "silhouette"
    return line


def _centres_from_edge_lines(rows, edges, views, centres, use, cfg):
    """Each view's row centres with notched edges repaired, and the rows to use; or None.

    Per view, each edge gets the straight image line most used rows agree on. A row whose one
    edge lies on its line and the other does not takes its centre from the good edge and the
    lines' width; a row with neither is left out. A view with too few rows on a line keeps its
    centres. None where the views' lines disagree on the shaft's radius.
    """
    out, keep, radii = [], use.copy(), []
    for (e0, e1), inst, c in zip(edges, views, centres, strict=True):
        across = abs(inst.direction[1])
        tol = cfg.straight_row_tol_px / across
        on0 = _on_straight_line(rows, e0, use, tol, cfg.seed)
        on1 = _on_straight_line(rows, e1, use, tol, cfg.seed)
        if min((use & on0).sum(), (use & on1).sum()) < cfg.min_rows:
            out.append(c)
            continue
        half = (_line_at(rows, e1, use & on1) - _line_at(rows, e0, use & on0)) / 2
        both = use & on0 & on1
        radii.append(float(np.median(half[both])) * across if both.any() else np.nan)
        out.append(np.where(on0 & on1, c, np.where(on0, e0 + half, e1 - half)))
        keep &= on0 | on1
    if len(radii) == 2 and not abs(radii[0] - radii[1]) <= cfg.edge_repair_radius_tol_px:
        return None
    return out, keep


def _shaft_from_edge_lines(pair, edges, rows, use, views, cfg):
    """The 3D line through the centres of the two views' edge lines, each line fit on the rows
    whose four edges all lie on their lines; or None, also where those rows cover too short a
    stretch of the shaft."""
    each_edge = [
        (e, inst) for edge_pair, inst in zip(edges, views, strict=True) for e in edge_pair
    ]
    straight = _rows_on_lines(rows, each_edge, use, cfg)
    if straight.sum() < cfg.min_rows:
        return None
    if np.ptp(rows[straight]) < cfg.edge_lines_min_span * np.ptp(rows[use]):
        return None
    centres = [
        (_line_at(rows, e0, straight) + _line_at(rows, e1, straight)) / 2 for e0, e1 in edges
    ]
    return _shaft_line(pair, centres, rows, straight, cfg)


def _shaft_line(pair, centres, rows, use, cfg):
    """The 3D line through the rows' stereo centres and its median residual (m), or None."""
    if use.sum() < cfg.min_rows:
        return None
    z = pair.depth_from_disparity(centres[0][use] - centres[1][use])
    ok = np.isfinite(z)
    if ok.sum() < cfg.min_rows:
        return None
    pts = back_project(pair, centres[0][use][ok], rows[use][ok], z[ok])
    point, d3 = _fit_line(pts)
    return point, d3, float(np.median(_line_residuals(pts, point, d3)))


def _rows_on_lines(rows, series, use, cfg):
    """The used rows whose value lies on its image line in every (values, view) series, each
    within straight_row_tol_px across that view's shaft; fewer than min_rows ends the search."""
    straight = use.copy()
    for values, inst in series:
        if straight.sum() < cfg.min_rows:
            break
        tol = cfg.straight_row_tol_px / abs(inst.direction[1])
        straight &= _on_straight_line(rows, values, straight, tol, cfg.seed)
    return straight


def _on_straight_line(rows, centres, use, tol, seed, trials=200):
    """Rows whose centre (or edge) lies within tol (px, along the row) of the image line that
    most of the used rows agree on: the best of the lines through random pairs of rows, then a
    least-squares line."""
    x, y = rows[use], centres[use]
    i, j = np.random.default_rng(seed).integers(0, len(x), (2, trials))
    pick = x[i] != x[j]
    if not pick.any():
        return use
    i, j = i[pick], j[pick]
    slope = (y[j] - y[i]) / (x[j] - x[i])
    offset = y[i] - slope * x[i]
    # Truncated squared residuals, not a count: a band tilted across two offset groups of rows
    # can hold more of them than either group's own line.
    cost = np.minimum((y[None, :] - (offset[:, None] + slope[:, None] * x[None, :])) ** 2, tol**2)
    k = int(np.argmin(cost.sum(1)))
    inside = np.abs(centres - (offset[k] + slope[k] * rows)) <= tol
    return np.abs(centres - _line_at(rows, centres, use & inside)) <= tol


def _line_at(rows, values, keep):
    """The least-squares line through the kept rows' values, on every row."""
    return np.polyval(np.polyfit(rows[keep], values[keep], 1), rows)


def _shaft_top_depth(depth, inst: Instrument2D, px_per_m, cfg):
    """(along px, depth of the shaft's top at its centre line) samples from the depth map."""
    v, u = np.nonzero(inst.mask & np.isfinite(depth))
    if len(u) < 20:
        return None
    rel = np.stack([u, v], 1) - inst.tip_px
    along = rel @ inst.direction
    across = rel @ np.array([-inst.direction[1], inst.direction[0]])
    z = depth[v, u]
    # The top of a cylinder lies sqrt(r^2 - t^2) above its axis at lateral offset t: keep the
    # central half, where that is nearly r.
    central = np.abs(across) <= 0.5 * inst.radius_px
    lo = cfg.shaft_start * px_per_m
    hi = lo + cfg.shaft_length * px_per_m
    sel = central & (along >= lo) & (along <= hi)
    if sel.sum() < 20:
        sel = central & (along >= 0)
    if sel.sum() < 20:
        return None
    a, zz, t = along[sel], z[sel], across[sel]
    rz = inst.radius_px / px_per_m
    return a, zz, np.sqrt(np.clip(rz**2 - (t / px_per_m) ** 2, 0, None))


def _axis_depth_line(top, px_per_m) -> tuple[float, float]:
    """Axis depth = a + b * along from the shaft's top: a cylinder tilted by beta out of the
    image plane has its top sqrt(r^2 - t^2) / cos(beta) above its axis along the view."""
    along, z, lift = top
    b = _robust_line_1d(along, z)[1]
    stretch = np.sqrt(1.0 + (b * px_per_m) ** 2)
    return _robust_line_1d(along, z + lift * stretch)


def _robust_line_1d(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    keep = np.ones(len(x), bool)
    for _ in range(4):
        b, a = np.polyfit(x[keep], y[keep], 1)
        res = np.abs(y - (a + b * x))
        mad = np.median(res[keep]) + 1e-9
        keep = res <= max(3 * 1.4826 * mad, 5e-6)
    return a, b


def _line_from_axis_depth(pair, inst: Instrument2D, z_axis_at, slope):
    """The 3D axis through the image axis line with depth z(along) = z_axis_at + slope*along."""
    s = np.array([0.0, 100.0])
    uv = inst.tip_px + s[:, None] * inst.direction
    z = z_axis_at + slope * s
    p = back_project(pair, uv[:, 0], uv[:, 1], z)
    return p[0], _orient(p[1] - p[0], inst.direction)


def _direction_through_port(pair, sphere: SphereFit, c3, inst: Instrument2D, cfg) -> np.ndarray:
    """The shaft direction (tip -> shaft) in the plane of the camera ray through ``c3`` and the
    image direction of the shaft, whose line leaves the eye sphere at ``port_polar_deg`` from
    the posterior pole (the retina point seen at the image centre)."""
    ray_c = back_project(pair, pair.left.cx, pair.left.cy, 1.0)
    pole = sphere.foot(sphere.centre + ray_c * 1e-3 * np.sign(ray_c[2])) - sphere.centre
    pole /= np.linalg.norm(pole)
    ahead = c3 / np.linalg.norm(c3)
    lateral = back_project(pair, *(inst.tip_px + inst.direction), 1.0) - back_project(
        pair, *inst.tip_px, 1.0
    )
    lateral -= (lateral @ ahead) * ahead
    lateral /= np.linalg.norm(lateral)
    beta = np.deg2rad(np.linspace(-85, 85, 341))
    u = np.cos(beta)[:, None] * lateral - np.sin(beta)[:, None] * ahead  # rising to the camera
    rel = c3 - sphere.centre
    b = u @ rel
    s_exit = -b + np.sqrt(np.clip(b * b - (rel @ rel - sphere.radius**2), 0, None))
    exit_dir = rel + s_exit[:, None] * u
    exit_dir /= np.linalg.norm(exit_dir, axis=1, keepdims=True)
    polar = np.degrees(np.arccos(np.clip(exit_dir @ pole, -1, 1)))
    return u[int(np.argmin(np.abs(polar - cfg.port_polar_deg)))]


def _all_runs(region: np.ndarray):
    """Row, first and last column of every run of True in a 2D bool array, row by row and
    left to right."""
    h, w = region.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = region
    step = np.diff(padded, axis=1)
    rows, first = np.nonzero(step == 1)
    _, end = np.nonzero(step == -1)
    return rows, first, end - 1


def working_end_points(
    pair, left: Instrument2D, right: Instrument2D, px_per_m: float, cfg, edges: bool = False
):
    """3D points on the centre lines of the working end (jaws, blades, the needle's end), from
    the runs of both silhouettes on each row crossing it, the end's radius, and (``edges``)
    points from the edges of runs wide enough to hold two jaws; or None.

    Jaws and blades are not the shaft's shape: they are measured, not extrapolated. Runs are
    paired in order along the row where both views cut the same number of them. On a shaft
    along the rows, a run the zone cut is matched at its uncut end; rows that the rows near
    them contradict by over ``end_depth_jump`` are dropped."""
    zone = (cfg.shaft_start + 0.2e-3) * px_per_m
    regions = []
    for inst in (left, right):
        h, w = inst.mask.shape
        along = inst.along(np.arange(w)[None, :], np.arange(h)[:, None])
        regions.append(inst.mask & (along <= zone))
    slope = max(abs(left.direction[1]), 1e-3)
    # Every run of both views at once; rows where the views cut the same number of runs pair
    # them in order along the row.
    (yl, fl, ll_), (yr, fr, lr_) = _all_runs(regions[0]), _all_runs(regions[1])
    h = regions[0].shape[0]
    count_l, count_r = np.bincount(yl, minlength=h), np.bincount(yr, minlength=h)
    paired = (count_l == count_r) & (count_l > 0)
    keep_l, keep_r = paired[yl], paired[yr]
    y = yl[keep_l]
    el = _edges(left.soft, y, fl[keep_l], ll_[keep_l])
    er = _edges(right.soft, y, fr[keep_r], lr_[keep_r])
    wl, wr = el[1] - el[0], er[1] - er[0]
    ok = np.abs(wl - wr) <= 0.3 * np.maximum(wl, wr) + 2
    ok &= wl * slope <= 4 * left.radius_px  # along the row: no disparity in a run's centre
    alike = ok.copy()
    centres_l, centres_r = (el[0] + el[1]) / 2, (er[0] + er[1]) / 2
    flat = slope < np.sin(np.deg2rad(cfg.min_row_angle_deg))
    if flat:
        # Along the rows, a row through the jaws runs on into the shaft, where the zone cuts
        # it: that end is no edge, and the run's centre reads a blend of the tip's disparity
        # and the edge's (a flat scissors at 0.40 mm read 0.12). Its uncut end is matched.
        (lf, ll), (rf, rl) = (
            _cut_ends(inst.mask, y, f[k], e[k])
            for inst, f, e, k in ((left, fl, ll_, keep_l), (right, fr, lr_, keep_r))
        )
        first, last = lf & rf & ~ll & ~rl, ll & rl & ~lf & ~rf
        ok &= first | last | ~(lf | ll | rf | rl)
        centres_l = np.where(first, el[1], np.where(last, el[0], centres_l))
        centres_r = np.where(first, er[1], np.where(last, er[0], centres_r))
    centres_l, centres_r = centres_l[ok], centres_r[ok]
    rows, widths = y[ok], (wl * slope)[ok]
    if len(rows) < cfg.min_rows // 2:
        return None
    z = pair.depth_from_disparity(centres_l - centres_r)
    ok = np.isfinite(z)
    # A jaw along the rows crosses several of them: there a row with none other near it is
    # as suspect as one they contradict.
    reach = cfg.end_jump_reach * px_per_m
    ok[ok] = ~_depth_strays(centres_l[ok], rows[ok], z[ok], reach, cfg, lone=flat)
    if ok.sum() < cfg.min_rows // 2:
        return None
    pts = back_project(pair, centres_l[ok], rows[ok], z[ok])
    radius_px = min(float(np.median(widths[ok])) / 2, left.radius_px)
    if edges and not flat:
        # Two jaws in one run: its centre is neither's; each edge is one jaw's.
        sel = alike & (wl * slope > 3.0 * left.tip_radius_px)
        n = int(sel.sum())
        ul, ur = np.concatenate([el[0][sel], el[1][sel]]), np.concatenate([er[0][sel], er[1][sel]])
        v = np.tile(y[sel], 2).astype(float)
        steep = _steep_edge(left, ul, v) & _steep_edge(right, ur, v)
        extra = [np.empty((0, 3))]
        for side in (slice(0, n), slice(n, 2 * n)):  # the runs' left edges, then their right
            ze = pair.depth_from_disparity(ul[side] - ur[side])
            good = np.isfinite(ze) & steep[side]
            u_e, v_e = ul[side][good], v[side][good]
            ze, good = _along_edge_median(u_e, v_e, ze[good])
            extra.append(back_project(pair, u_e[good], v_e[good], ze[good]))
        return pts, radius_px, np.vstack(extra)
    return pts, radius_px, np.empty((0, 3))


def _steep_edge(inst: Instrument2D, u: np.ndarray, v: np.ndarray, max_deg: float = 45.0):
    """Whether the silhouette's edge at (u, v) runs within max_deg of the image columns: a
    flatter edge (a rounded end's apex) moves far along its row for a small error across it."""
    img = inst.soft if inst.soft is not None else inst.mask
    if not len(u):
        return np.zeros(0, bool)
    h, w = img.shape
    iu = np.clip(np.round(u).astype(int), 0, w - 1)
    iv = np.clip(np.round(v).astype(int), 0, h - 1)
    # Only about the points: 6 px holds the blur's 4 px kernel and the gradient's step, so the
    # values there are the whole image's (8 ms a frame at 512x512 for the whole).
    u0, u1 = max(iu.min() - 6, 0), min(iu.max() + 7, w)
    v0, v1 = max(iv.min() - 6, 0), min(iv.max() + 7, h)
    crop = img[v0:v1, u0:u1].astype(np.float32)
    gy, gx = np.gradient(cv2.GaussianBlur(crop, (0, 0), 1.0))
    ax, ay = np.abs(gx[iv - v0, iu - u0]), np.abs(gy[iv - v0, iu - u0])
    return ax >= np.cos(np.deg2rad(max_deg)) * np.hypot(ax, ay) + 1e-6


def _along_edge_median(u, v, z, rows: int = 4, least: int = 3):
    """Each edge point's depth as the median of its edge's points within ``rows`` rows (an
    edge within 45 degrees of the columns moves at most a pixel a row), and whether it had
    ``least`` of them: one edge's disparity is a single sub-pixel position, noisier than a
    run's centre, and the lowest percentile of the jaws' gaps picked its noise."""
    dv = np.abs(v[:, None] - v[None])
    near = (dv <= rows) & (np.abs(u[:, None] - u[None]) <= dv + 1.0)
    stacked = np.where(near, z[None, :], np.nan)
    with np.errstate(all="ignore"):
        out = np.nanmedian(stacked, 1) if len(z) else z
    return out, near.sum(1) >= least


def _cut_ends(mask: np.ndarray, rows: np.ndarray, first: np.ndarray, last: np.ndarray):
    """Whether each run's first and last pixel has the instrument's mask beyond it on its row:
    where the run was cut, not where the instrument's edge is."""
    w = mask.shape[1]
    before = (first > 0) & mask[rows, np.maximum(first - 1, 0)]
    after = (last < w - 1) & mask[rows, np.minimum(last + 1, w - 1)]
    return before, after


def _depth_strays(u, v, z, reach_px: float, cfg, lone: bool = False) -> np.ndarray:
    """Points whose depth no other point within ``reach_px`` of them in the image comes within
    ``cfg.end_depth_jump`` of. A point with no other in reach is kept (nothing contradicts it)
    unless ``lone``."""
    d = np.hypot(u[:, None] - u[None], v[:, None] - v[None])
    near = (d <= reach_px) & ~np.eye(len(z), dtype=bool)
    agree = near & (np.abs(z[:, None] - z[None]) <= cfg.end_depth_jump)
    return (near.any(1) | lone) & ~agree.any(1)


def working_distance(pair: StereoPair, depth: np.ndarray | None = None) -> float:
    """Where the retina and the instrument lie (m): the median of ``depth`` (NaN unknown), else
    where the views converge (inf for a parallel pair)."""
    if depth is not None and np.isfinite(depth).any():
        return float(np.nanmedian(depth))
    return pair.convergence_distance


def view_uv(pair: StereoPair, points: np.ndarray, view: int) -> np.ndarray:
    """Image coordinates of 3D points (left optical frame) in the left (0) or right (1) view."""
    uv = project(pair, points)
    if view == 1:
        uv[..., 0] -= pair.disparity_from_depth(points[..., 2])
    return uv


def whiteness(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the least of an RGB image's channels (uint8 or float in [0, 1]).
    White glow is high in all three; grey steel is lower, and the orange fundus low in blue."""
    img = image
    if image.ndim == 3:  # cv2's per-element min: 5x numpy's reduction over the last axis
        img = cv2.min(cv2.min(image[..., 0], image[..., 1]), image[..., 2])
    img = img.astype(np.float32)
    return img / 255.0 if image.dtype == np.uint8 else img


_BRIGHT_STEP = 10e-6  # m between samples along the axis
_BRIGHT_RUN = 0.15e-3  # m of glowing end the sleeve's step must have beyond it
_BRIGHT_FROM = -1.6e-3  # m along the axis from the measured end's centre: where sampling starts
_BRIGHT_SHAFT = (0.9e-3, 1.6e-3)  # m from that centre: plain sleeve, its grey level
_BRIGHT_AGREE = 60e-6  # m: the two views' steps must agree along the axis
_BRIGHT_SHORT = -1.3e-3  # m: the mask may stop this far short of the sleeve's end
_BRIGHT_BEYOND = 0.3e-3  # m: or run on into the glow this far past the working end
_BRIGHT_FLAT = 0.15e-3  # m: on a flat shaft, a mask's end nearer the step's reading stands


def _sample_view(pair, image, points, view) -> np.ndarray | None:
    """``image`` (H, W) at the projections of 3D points into a view; None if any falls outside."""
    uv = view_uv(pair, points, view).astype(np.float32)
    h, w = image.shape
    if not ((uv >= 0).all() and (uv[..., 0] <= w - 1).all() and (uv[..., 1] <= h - 1).all()):
        return None
    flat = uv.reshape(1, -1, 2)
    out = cv2.remap(image, flat[..., 0], flat[..., 1], cv2.INTER_LINEAR)[0]
    return out.reshape(uv.shape[:-1])


def _sleeve_step(prof, t, shaft, contrast) -> tuple[float, float] | None:
    """Along one view's profile (sampled at ``t``, the plain sleeve where ``shaft``): where its
    grey steps up to a glowing end toward the tip, and the level halfway up the step."""
    n_run = round(_BRIGHT_RUN / _BRIGHT_STEP)
    grey = float(np.median(prof[shaft]))
    bright = np.nonzero((prof > grey + contrast) & ~shaft)[0]
    if len(bright) == 0 or bright[-1] < n_run - 1:
        return None
    run = prof[bright[-1] - n_run + 1 : bright[-1] + 1]
    white = float(np.percentile(run, 75))
    mid = (grey + white) / 2
    if white - grey < contrast or (run >= mid).mean() < 0.8:
        return None
    j = bright[-1]
    while j + 1 < len(prof) and prof[j + 1] >= mid:
        j += 1
    if j + 1 == len(prof) or shaft[j]:
        return None
    # From the step to the plain sleeve, one grey: where the mask stopped short of the sleeve's
    # end, this is shaft the mask missed, not retina.
    sleeve = prof[j + 3 :][~shaft[j + 3 :]]
    if len(sleeve) and (np.abs(sleeve - grey) <= contrast / 2).mean() < 0.9:
        return None
    return t[j] + (prof[j] - mid) / max(prof[j] - prof[j + 1], 1e-6) * _BRIGHT_STEP, mid


def glowing_end_centre(pair, images, centre, d3, radius, cfg, measured_axis=True):
    """The centre of a light pipe's rounded glowing end, ``cfg.bright_end_length`` past where
    its metal sleeve ends; None unless both views show the sleeve's grey stepping to a glowing
    end across the shaft's whole width. ``centre``, ``d3``: the end and the axis (toward the
    shaft) the mask gave; ``images``: both views' ``whiteness``.

    Each view is sampled on the shaft's top, the line of its surface facing the camera: there
    the sleeve's end lies in the image where the axis point's projection would not. On an axis
    the silhouettes measured, the views' steps must agree along it; on an assumed one (a flat
    shaft), the step is placed in depth by its own disparity instead."""
    t = np.arange(_BRIGHT_FROM, _BRIGHT_SHAFT[1], _BRIGHT_STEP)
    on_axis = centre + t[:, None] * d3
    shaft = t >= _BRIGHT_SHAFT[0]
    phi = np.deg2rad(np.linspace(-45, 45, 7))[:, None]
    found, uv = [], []
    for view, img in enumerate(images):
        # The top as this view's camera sees it: the views look at the shaft from angles apart.
        to_cam = np.array([view * pair.baseline, 0.0, 0.0]) - on_axis
        up = to_cam - (to_cam @ d3)[:, None] * d3
        up /= np.linalg.norm(up, axis=1, keepdims=True)
        side = np.cross(d3, up)
        if view == 0:
            up_left = up
        prof = _sample_view(pair, img, on_axis + radius * up, view)
        step = None if prof is None else _sleeve_step(prof, t, shaft, cfg.bright_end_contrast)
        if step is None:
            return None
        ts, mid = step
        # The whole width glows beyond the step and none of it before: not a highlight's streak.
        across = []
        for dt in (-_BRIGHT_RUN / 2, _BRIGHT_RUN / 2):
            k = int(np.argmin(np.abs(t - (ts + dt))))
            ring = on_axis[k] + radius * (np.cos(phi) * up[k] + np.sin(phi) * side[k])
            across.append(_sample_view(pair, img, ring, view))
        if across[0] is None or across[1] is None:
            return None
        if across[0].min() < mid or np.median(across[1]) >= mid:
            return None
        found.append(ts)
        k = int(np.argmin(np.abs(t - ts)))  # one physical point of the sleeve's rim in both
        uv.append(view_uv(pair, centre + ts * d3 + radius * up_left[k], view))
    ts = float(np.mean(found))
    if measured_axis:
        if abs(found[0] - found[1]) > _BRIGHT_AGREE:
            return None
        sleeve = centre + ts * d3
    else:
        (ul, vl), (ur, vr) = uv
        z = float(pair.depth_from_disparity(ul - ur))
        if abs(vl - vr) > cfg.max_tip_row_offset_px or not np.isfinite(z):
            return None
        top = back_project(pair, ul, vl, z)
        k = int(np.argmin(np.abs(t - ts)))
        sleeve = top - radius * up_left[k]
        # Where the sleeve lies along the shaft from the mask's end, read along the left image:
        # a mask cut short in one view puts ``centre`` off in depth, which the assumed slope
        # turned into up to 0.4 mm along the axis, and a true step was refused as too far off
        # (a light pipe at 0.94 mm read 0.33; on an exact render, contact for 0.3 mm).
        c, ahead, s = project(pair, np.stack([centre, centre + 1e-3 * d3, sleeve]))
        ts = 1e-3 * float((s - c) @ (ahead - c)) / max(float((ahead - c) @ (ahead - c)), 1e-12)
    # From a mask that stopped short on the sleeve to one that ran on into the glow.
    if not _BRIGHT_SHORT <= ts <= cfg.bright_end_length + _BRIGHT_BEYOND:
        return None
    return sleeve - cfg.bright_end_length * d3


# --- distance --------------------------------------------------------------------------------


def _capsule_surface(centre, axis, radius, length, n_len=40, n_ring=36) -> np.ndarray:
    """Points on a capsule from ``centre`` (hemispherical end) along ``axis`` for ``length``."""
    e1 = np.cross(axis, [0.0, 0.0, 1.0])
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.cross(axis, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    th = np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
    ring = np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2
    s = np.linspace(0, length, n_len)
    body = (centre + s[:, None, None] * axis + radius * ring[None]).reshape(-1, 3)
    # The end cap: the half sphere facing away from the shaft.
    phi = np.linspace(0, np.pi / 2, 10)[1:]
    cap = (
        centre
        - radius * np.sin(phi)[:, None, None] * axis
        + radius * np.cos(phi)[:, None, None] * ring[None]
    ).reshape(-1, 3)
    return np.concatenate([body, cap, (centre - radius * axis)[None]])


def capsule_gaps(sphere: SphereFit, centre, axis, radius, length):
    """(normal gap, axial gap, nearest instrument point, its retina foot) of a capsule."""
    s = np.linspace(0, length, 200)
    on_axis = centre + s[:, None] * axis
    g = sphere.gap(on_axis) - radius
    i = int(np.argmin(g))
    outward = on_axis[i] - sphere.centre
    outward /= np.linalg.norm(outward)
    nearest = on_axis[i] + radius * outward
    surface = _capsule_surface(centre, axis, radius, length)
    below = sphere.depth_at(surface[:, 0], surface[:, 1])
    axial = below - surface[:, 2]
    axial = axial[np.isfinite(axial)]
    return (
        float(g[i]),
        float(axial.min()) if axial.size else float("inf"),
        nearest,
        sphere.foot(nearest),
    )


def _end_on_axis(pair, inst, point, d3, px_per_m, reach=1.0e-3) -> bool:
    """Whether the silhouette's last ``reach`` (m) lies within the working end's radius of the
    shaft axis's image: jaws closed and straight, not open or curved."""
    a, b = project(pair, np.stack([point, point + 1e-3 * d3]))
    n = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
    v, u = np.nonzero(inst.mask)
    along = inst.along(u, v)
    near = along <= reach * px_per_m
    if near.sum() < 5:
        return False
    lateral = np.abs((np.stack([u[near], v[near]], 1) - a) @ n)
    return float(np.percentile(lateral, 95)) <= 1.5 * inst.tip_radius_px + 2.0


def end_point(pair, left: Instrument2D, right: Instrument2D, cfg) -> np.ndarray | None:
    """The working end's extreme point in 3D, from the silhouettes' last pixels along the left
    view's shaft direction in both views, or None when they lie on different rows. A point both
    views see has a disparity even where jaws or blades lie along the image rows, whose runs'
    centres have none."""
    ends = [_end_px(inst, left) for inst in (left, right)]  # one physical end: left's direction
    (ul, vl), (ur, vr) = ends
    if abs(vl - vr) > cfg.max_tip_row_offset_px:
        return None
    z = float(pair.depth_from_disparity(ul - ur))
    return back_project(pair, ul, vl, z) if np.isfinite(z) else None


def _end_px(inst: Instrument2D, ref: Instrument2D) -> tuple[float, float]:
    """(u, v) of ``inst``'s silhouette's extreme along ``ref``'s shaft direction, toward its tip.
    Whole pixels moved the disparity by 1 px (0.14 mm of depth at the virtual microscope's) when
    one pixel flipped: with a soft mask each row's last run is centred between its sub-pixel
    edges, then carried along the direction to where the probability crosses 0.5."""
    v, u = np.nonzero(inst.mask)
    direction = ref.direction
    s = ref.along(u, v)
    end = s <= s.min() + 0.5
    last = np.zeros_like(inst.mask)
    last[v[end], u[end]] = True
    centre, _, single, _, _ = _row_centres(last, inst.soft)
    rows = np.nonzero(last.any(1))[0]
    weight = last[rows].sum(1).astype(float)
    mean = (last[rows] * np.arange(last.shape[1])).sum(1) / weight
    cu = np.where(single[rows], centre[rows], mean)  # not one run: two tips, their mean
    cv = rows.astype(float)
    if inst.soft is not None:
        t = np.linspace(0.0, 1.5, 31)
        su = (cu[:, None] - t * direction[0]).astype(np.float32)
        sv = (cv[:, None] - t * direction[1]).astype(np.float32)
        p = cv2.remap(inst.soft, su, sv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out = p < 0.5
        k = out.argmax(1)  # the first sample past the 0.5 crossing
        i = np.arange(len(k))
        p0, p1 = p[i, np.maximum(k - 1, 0)], p[i, k]
        frac = np.clip((p0 - 0.5) / np.maximum(p0 - p1, 1e-6), 0, 1)
        # No crossing within 1.5 px (or none needed): the run's centre stays.
        crossed = out.any(1) & (k > 0)
        step = np.where(crossed, t[np.maximum(k - 1, 0)] + frac * (t[1] - t[0]), 0.0)
        cu, cv = cu - step * direction[0], cv - step * direction[1]
    return float(np.average(cu, weights=weight)), float(np.average(cv, weights=weight))


def hidden_jaw_points(pair, left: Instrument2D, right: Instrument2D, pts, point, d3, sphere, cfg):
    """The working end's points ``pts`` turned 180 degrees about the shaft's axis (through
    ``point`` along ``d3``) that both silhouettes hold: where symmetric jaws' other jaw may hide.
    Empty unless they read ``hidden_jaw_min_gain`` nearer the retina than ``pts``."""
    q = pts - point
    turned = point + 2 * (q @ d3)[:, None] * d3 - q
    keep = np.ones(len(turned), bool)
    grow = np.ones((3, 3), np.uint8)  # a pixel of slack for the edges' rounding
    for view, inst in ((0, left), (1, right)):
        mask = cv2.dilate(inst.mask.astype(np.uint8), grow) > 0
        uv = np.round(view_uv(pair, turned, view)).astype(int)
        h, w = mask.shape
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        keep[inside] &= mask[uv[inside, 1], uv[inside, 0]]
        keep &= inside
    turned = turned[keep]
    if not len(turned):
        return turned
    pct = cfg.end_percentile
    gain = np.percentile(sphere.gap(pts), pct) - np.percentile(sphere.gap(turned), pct)
    return turned if gain >= cfg.hidden_jaw_min_gain else turned[:0]


def _points_gaps(sphere: SphereFit, pts: np.ndarray, radius: float, pct: float):
    """(normal gap, axial gap, nearest point, its foot) of tubes of ``radius`` around axis
    points ``pts``: the ``pct`` percentile of their gaps, not the minimum, against stray rows."""
    gaps = sphere.gap(pts) - radius
    k = int(np.argsort(gaps)[min(len(gaps) - 1, round(pct / 100 * (len(gaps) - 1)))])
    outward = pts[k] - sphere.centre
    nearest = pts[k] + radius * outward / np.linalg.norm(outward)
    below = sphere.depth_at(pts[:, 0], pts[:, 1]) - (pts[:, 2] + radius)
    below = below[np.isfinite(below)]
    axial = float(np.percentile(below, pct)) if below.size else float("inf")
    return float(np.percentile(gaps, pct)), axial, nearest, sphere.foot(nearest)


def measure(
    pair: StereoPair,
    depth: np.ndarray,
    mask: np.ndarray | None,
    right_mask: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    cfg: GeometryConfig | None = None,
    images: tuple[np.ndarray, np.ndarray] | None = None,
    edge_shift: tuple[EdgeShift | None, EdgeShift | None] | None = None,
) -> Measurement:
    """The instrument tip, the retina and the gap between them, for one left frame.

    ``depth`` is the left depth (m, NaN unknown); ``mask`` and ``right_mask`` the instrument in
    the left and right images, hard or as probabilities (``soft_mask``: a network's edges at
    sub-pixel precision); ``images`` the left and right images themselves (RGB, uint8 or float
    in [0, 1]), on which the retina is aligned and a light pipe's glowing end is looked for;
    ``edge_shift`` the left and right soft masks' edge corrections, used for the shaft's rows.
    Never raises on a bad scene: the result says why it is unknown.
    """
    cfg = cfg or GeometryConfig()
    if depth.ndim != 2:
        raise InputError(f"depth must be (H, W), got {depth.shape}")
    h, w = depth.shape
    if (w, h) != (pair.left.width, pair.left.height):
        raise InputError(
            f"depth is {w}x{h}, camera_info says {pair.left.width}x{pair.left.height}"
        )
    if mask is not None and mask.shape != depth.shape:
        raise InputError(f"mask {mask.shape} and depth {depth.shape} differ in size")
    if right_mask is not None and right_mask.shape != depth.shape:
        raise InputError(f"right mask {right_mask.shape} and depth {depth.shape} differ in size")
    out = Measurement()
    hard, soft = soft_mask(mask) if mask is not None else (np.zeros(depth.shape, bool), None)
    right_split = soft_mask(right_mask) if right_mask is not None else None
    try:
        out.retina = fit_retina(depth, pair, hard, confidence, cfg)
    except InputError as exc:
        out.reason = f"retina fit failed: {exc}"
        return out
    if images is not None and cfg.retina_align_iterations > 0:
        right_hard = right_split[0] if right_split is not None else None
        out.retina, why = align_retina(out.retina, pair, images, hard, right_hard, cfg)
        if why:
            out.notes.append(f"retina not aligned on the images: {why}")
    px_per_m = pair.left.fx / working_distance(pair, depth)
    inst = _find_instrument(hard, soft, px_per_m, cfg) if hard.any() else None
    if inst is None:
        out.reason = "no instrument in view"
        return out
    if _tip_at_view_edge(inst.tip_px, hard.shape, images, cfg.tip_border_margin * px_per_m):
        out.reason = "the instrument's tip is at the view's edge: it may lie beyond it"
        out.instrument_mask = inst.mask
        return out
    out.instrument_mask = inst.mask
    line = None
    right = _find_instrument(*right_split, px_per_m, cfg) if right_split is not None else None
    if edge_shift is not None:
        inst = replace(inst, edge_shift=edge_shift[0])
        right = replace(right, edge_shift=edge_shift[1]) if right is not None else None
    # Round ends are placed by their circles only where both views have one: the tips must
    # be read alike for their rows and disparity to agree.
    circles = right is not None and inst.end_circle is not None and right.end_circle is not None
    if right is None:
        inst = inst.with_end_circle()
    elif circles:
        inst, right = inst.with_end_circle(), right.with_end_circle()
    out.tip_px = inst.tip_px
    if right is not None:
        inst = replace(inst, tip_radius_px=_working_end_radius_px(inst, right, cfg))
        line = _silhouette_axis(pair, inst, right, px_per_m, cfg, out, even_rows=True)
    if line is None and right is not None:
        # A shaft along the rows: the end's centre (its radius behind the tip) at the depth of
        # the end's disparity, read from the masks laid onto each other.
        r_right = right.tip_radius_px if circles else inst.tip_radius_px  # the end as decided
        cl = inst.tip_px + inst.tip_radius_px * inst.direction
        cr = right.tip_px + r_right * right.direction
        if abs(cl[1] - cr[1]) <= cfg.max_tip_row_offset_px:
            disparity = _end_disparity(inst, right, inst.tip_px[0] - right.tip_px[0], cfg)
            if disparity is None:
                disparity = cl[0] - cr[0]
            z_c = float(pair.depth_from_disparity(disparity))
            if np.isfinite(z_c):
                c3 = back_project(pair, cl[0], cl[1], z_c)
                line = c3, _direction_through_port(pair, out.retina, c3, inst, cfg)
                out.method = "tip"
    if line is None and right is not None:
        # The tip's rows differ between the views: rows of uneven width still beat the depth map.
        line = _silhouette_axis(pair, inst, right, px_per_m, cfg, out, even_rows=False)
        if line is not None:
            out.notes.append("shaft axis fit on rows of uneven width")
    if line is None:
        top = _shaft_top_depth(depth, inst, px_per_m, cfg)
        if top is None:
            out.reason = "no depth on the instrument"
            return out
        a, b = _axis_depth_line(top, px_per_m)
        line = _line_from_axis_depth(pair, inst, a, b)
        out.method = "depth"
        out.notes.append("axis depth from the depth map: biased by highlights on the shaft")
    point, d3 = line
    # The working end (radius from the mask just behind the tip) then the shaft, as capsules.
    centre = _axis_through_tip(pair, inst, point, d3, inst.tip_radius_px)
    r_tip = inst.tip_radius_px * centre[2] / pair.left.fx
    radius = inst.radius_px * centre[2] / pair.left.fx
    thin = inst.tip_radius_px < cfg.thin_end_ratio * inst.radius_px
    glowing = False
    # A light pipe: its glowing end is placed from where its sleeve ends, not from the mask.
    if images is not None and out.method != "depth" and cfg.bright_end_length > 0 and not thin:
        glow = glowing_end_centre(
            pair,
            (whiteness(images[0]), whiteness(images[1])),
            centre,
            d3,
            radius,
            cfg,
            measured_axis=out.method == "silhouette",
        )
        # A flat shaft's step, placed by its disparity along the rows, read 15-115 um off on
        # exact renders: there it overrules only a mask that is far off (ran into the glow).
        if glow is not None and out.method == "tip" and abs((centre - glow) @ d3) < _BRIGHT_FLAT:
            glow = None
        if glow is not None:  # the mask's end, wherever it stopped in the glow, is not used
            out.notes.append(
                f"light pipe: the end placed {cfg.bright_end_length * 1e3:.2f} mm past its "
                f"sleeve's, {(centre - glow) @ d3 * 1e3:+.2f} mm beyond the mask's"
            )
            centre, r_tip, glowing = glow, radius, True
    out.end = "glow" if glowing else "jaws" if thin else "round"
    out.radius, out.axis = radius, d3
    out.tip_xyz = centre - r_tip * d3
    out.centre_xyz = centre
    out.tip_px = project(pair, out.tip_xyz)
    parts = [
        capsule_gaps(out.retina, centre + cfg.shaft_start * d3, d3, radius, cfg.shaft_length),
    ]
    # Jaws and blades are not the shaft's shape (open, curved): where the working end is thin,
    # it is measured on the silhouettes' rows instead of modelled as a capsule on the axis.
    # A round end (needle, light pipe, vitrector) is the capsule, and the rows a check.
    end = None
    if right is not None and not glowing:
        end = working_end_points(pair, inst, right, px_per_m, cfg, thin and cfg.end_edges)
    # Closed, straight jaws do lie on the axis: there the capsule holds, and rows along a jaw
    # that runs near the image rows say little. Only on an axis the silhouettes measured: a
    # flat shaft's (method "tip") slope is assumed from the port, and jaws capped on it read
    # 0.1-0.2 mm off.
    on_axis = out.method == "silhouette" and _end_on_axis(pair, inst, point, d3, px_per_m)
    if not (thin and end is not None) or on_axis:
        parts.append(capsule_gaps(out.retina, centre, d3, r_tip, cfg.shaft_start))
    if end is not None and (thin or out.method == "silhouette"):
        pts, r_px, edge_pts = end
        rows = len(pts)
        if thin:
            r_px, pct = inst.tip_radius_px, cfg.end_percentile
            if cfg.symmetric_jaws and out.method == "silhouette":
                hidden = hidden_jaw_points(pair, inst, right, pts, point, d3, out.retina, cfg)
                if len(hidden):
                    pts = np.vstack([pts, hidden])
                    out.notes.append("a jaw hidden behind the other placed by symmetry")
        else:  # one mismatched row must not make the distance
            pct = 10.0
        r_m = r_px * float(np.median(pts[:, 2])) / pair.left.fx
        parts.append(_points_gaps(out.retina, pts, r_m, pct))
        if len(edge_pts):  # apart: their number must not move the centres' percentile
            parts.append(_points_gaps(out.retina, edge_pts, r_m, pct))
        kind = "jaws or blades" if thin else "working end"
        out.notes.append(f"{kind} measured on {rows} rows")
    tip3 = end_point(pair, inst, right, cfg) if thin and right is not None else None
    if tip3 is not None:  # the silhouette's edge: the surface lies r_tip further down
        parts.append(_points_gaps(out.retina, tip3[None], r_tip, 0.0))
    if cfg.jaw_reach > 0 and not thin and not glowing and out.method == "silhouette":
        out.tip_xyz = out.tip_xyz - cfg.jaw_reach * d3
        out.tip_px = project(pair, out.tip_xyz)
        hidden = out.tip_xyz + np.linspace(0.0, cfg.jaw_reach, 16)[:, None] * d3
        parts.append(_points_gaps(out.retina, hidden, 0.0, 0.0))
        out.end = "reach"
        out.notes.append(
            f"jaws not seen past the shaft's end: placed {cfg.jaw_reach * 1e3:.2f} mm beyond it"
        )
    gn = min(p[0] for p in parts)
    ga = min(p[1] for p in parts)
    _, _, nearest, foot = min(parts, key=lambda p: p[0])
    out.nearest_xyz, out.retina_xyz = nearest, foot
    if not np.isfinite(gn) or gn < -cfg.contact_tolerance:
        out.reason = f"instrument {-gn * 1e3:.2f} mm inside the fitted retina: inconsistent"
        return out
    if gn < 0:  # touching, or a mask that runs into the tip's glow: the safe reading is contact
        out.notes.append(f"instrument {-gn * 1e6:.0f} um inside the fitted retina: contact")
    out.distance_normal, out.distance_axial = max(gn, 0.0), max(ga, 0.0)
    return out
