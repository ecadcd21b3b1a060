"""Exact stereo rendering of analytic scenes: ray casting, shading, focal sweeps, sensor noise.

Each camera is rendered on its own by casting one ray per pixel centre into the analytic scene
(no image warping), so depth, masks and the stereo geometry are exact. Defocused slices are made
in two depth layers, the retina rendered without the instrument (but with its shadow) and the
instrument with its coverage, each blurred with the thin-lens disc of its own depth and then
composited front over back. A sharp instrument edge therefore never smears into a sharp
background, and a blurred instrument edge shows the background behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from micro_perception.camera import CameraIntrinsics
from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.scene import DARK_STEEL, GLOW, PORT, Capsule, Scene

# Blur-disc radii (pixels) with a precomputed kernel; others interpolate between neighbours.
_LEVELS = np.array(
    [0, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8.5, 10, 12, 14, 17, 20, 24, 28, 33, 39, 46, 54, 64],
    np.float64,
)


@dataclass(frozen=True)
class SensorConfig:
    full_well: float = 9000.0  # electrons at white
    read_noise: float = 6.0  # electrons rms
    jpeg_quality: int = 0  # 0: none, else 1..100
    exposure_percentile: float = 99.0  # retina radiance at this percentile maps to
    exposure_target: float = 0.8  # this fraction of white

    def __post_init__(self):
        if not 0 <= self.jpeg_quality <= 100:
            raise InputError(f"jpeg_quality must be in 0..100, got {self.jpeg_quality}")
        if self.full_well <= 0 or self.read_noise < 0:
            raise InputError("full_well must be > 0 and read_noise >= 0")


@dataclass
class ViewLayers:
    """Linear-light layers of one camera view, before defocus and sensor effects."""

    retina_rgb: np.ndarray  # (H, W, 3) float32
    retina_depth: np.ndarray  # (H, W) float32, m
    retina_points: np.ndarray  # (H, W, 3) float32, m, left optical frame
    inst_rgb: np.ndarray  # (H, W, 3) float32 (not premultiplied)
    inst_alpha: np.ndarray  # (H, W) float32 coverage, 0..1
    inst_depth: np.ndarray  # (H, W) float32, m (inf where no instrument)

    @property
    def mask(self) -> np.ndarray:
        return self.inst_alpha >= 0.5

    @property
    def depth(self) -> np.ndarray:
        return np.where(self.mask, self.inst_depth, self.retina_depth).astype(np.float32)


@dataclass
class EyeImages:
    aif: np.ndarray  # (H, W, 3) uint8, all in focus, noise free (the fusion target)
    slices: np.ndarray  # (K, H, W, 3) uint8, defocused, with sensor effects
    depth: np.ndarray  # (H, W) float32, m
    mask: np.ndarray  # (H, W) uint8, 255 = instrument


@dataclass
class StereoSample:
    left: EyeImages
    right: EyeImages
    focus_distances: np.ndarray  # (K,) m
    scene: Scene
    meta: dict = field(default_factory=dict)


def pixel_rays(
    cam: CameraIntrinsics, rows: slice | None = None, cols: slice | None = None
) -> np.ndarray:
    """Unit ray directions (h, w, 3) through pixel centres, in the (shared) camera orientation."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    if rows is not None:
        v, u = v[rows, cols], u[rows, cols]
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _ray_sphere_far(origin, rd, centre, radius):
    """Far intersection distance of rays with a sphere (the inside of the eye's back wall)."""
    oc = origin - centre
    b = rd @ oc
    c = oc @ oc - radius * radius
    h = b * b - c
    with np.errstate(invalid="ignore"):
        return np.where(h >= 0, -b + np.sqrt(h), np.nan)


def ray_capsule(origin: np.ndarray, rd: np.ndarray, cap: Capsule) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance (inf on a miss) and unit normals of rays ``origin + t * rd``.

    Solves |(p - a) x (b - a)| = r |b - a| for the cylinder and |p - end| = r for the two caps.
    """
    ba = cap.b - cap.a
    oa = origin - cap.a
    baba = ba @ ba
    bard = rd @ ba
    baoa = ba @ oa
    rdoa = rd @ oa
    oaoa = oa @ oa
    r2 = cap.radius * cap.radius
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r2 * baba
    h = qb * qb - qa * qc
    with np.errstate(invalid="ignore", divide="ignore"):
        t_cyl = (-qb - np.sqrt(h)) / qa
        y = baoa + t_cyl * bard
        t_cyl = np.where((h >= 0) & (y > 0) & (y < baba) & (t_cyl > 0), t_cyl, np.inf)
        t = t_cyl
        for end in (cap.a, cap.b):
            oc = origin - end
            b2 = rd @ oc
            h2 = b2 * b2 - (oc @ oc - r2)
            t_cap = -b2 - np.sqrt(h2)
            t = np.minimum(t, np.where((h2 >= 0) & (t_cap > 0), t_cap, np.inf))
    p = origin + rd * np.where(np.isfinite(t), t, 0.0)[..., None]
    s = np.clip(((p - cap.a) @ ba) / baba, 0.0, 1.0)
    axis_point = cap.a + s[..., None] * ba
    n = p - axis_point
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return t, n


def _segment_distance(p0: np.ndarray, p1: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Distance between segments p0->p1 (one per row) and a->b, and the parameter on p0->p1."""
    d1 = p1 - p0
    d2 = b - a
    r = p0 - a
    aa = np.einsum("...i,...i->...", d1, d1)
    ee = d2 @ d2
    ff = r @ d2
    cc = np.einsum("...i,...i->...", d1, r)
    bb = d1 @ d2
    denom = aa * ee - bb * bb
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(denom > 1e-30, np.clip((bb * ff - cc * ee) / denom, 0, 1), 0.0)
        t = np.clip((bb * s + ff) / ee, 0, 1)
        s = np.where(
            t <= 0, np.clip(-cc / aa, 0, 1), np.where(t >= 1, np.clip((bb - cc) / aa, 0, 1), s)
        )
    c1 = p0 + d1 * s[..., None]
    c2 = a + d2 * t[..., None]
    return np.linalg.norm(c1 - c2, axis=-1), s


def _shadow_exact(points: np.ndarray, scene: Scene) -> np.ndarray:
    """Soft shadow factor (1 = lit) of points (..., 3) from the endoilluminator."""
    inst = scene.instrument
    light = scene.light
    lit = np.ones(points.shape[:-1], np.float64)
    to_light = light.position - points
    dist_light = np.linalg.norm(to_light, axis=-1)
    for cap in inst.capsules:
        if np.allclose(light.position, cap.a, atol=cap.radius + 1e-5):
            continue  # the light pipe does not shadow its own light
        d, s = _segment_distance(
            points, np.broadcast_to(light.position, points.shape), cap.a, cap.b
        )
        # Penumbra width grows with the occluder's distance from the receiver.
        occluder_to_receiver = s * dist_light
        occluder_to_light = np.maximum((1 - s) * dist_light, 1e-6)
        penumbra = light.radius * occluder_to_receiver / occluder_to_light + 5e-6
        x = np.clip((d - cap.radius) / penumbra, -1.0, 1.0)
        lit = np.minimum(lit, 0.5 + 0.5 * x)
    return lit


def _shadow(points: np.ndarray, scene: Scene) -> np.ndarray:
    """Soft shadow of an (H, W, 3) grid of retina points.

    Found on a 4x coarser grid first (with a margin of two coarse pixels), then computed exactly
    at full resolution only there: the result equals the full computation wherever the coarse
    grid sees the shadow, i.e. for any shadow wider than a few pixels.
    """
    lit = np.ones(points.shape[:-1], np.float64)
    if scene.instrument is None:
        return lit
    coarse = _shadow_exact(points[::4, ::4], scene) < 1.0
    if not coarse.any():
        return lit
    coarse = cv2.dilate(coarse.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    near = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[: lit.shape[0], : lit.shape[1]]
    lit[near] = _shadow_exact(points[near], scene)
    return lit


def _light_terms(points: np.ndarray, normals: np.ndarray, scene: Scene):
    """Irradiance direction and strength from the endoilluminator at each point."""
    light = scene.light
    to_light = light.position - points
    dist = np.linalg.norm(to_light, axis=-1, keepdims=True)
    ldir = to_light / dist
    cos_beam = np.clip(-(ldir @ light.direction), -1, 1)
    beam = np.exp(-((np.arccos(cos_beam) / light.half_angle) ** 2))
    ref = (5e-3) ** 2  # radiance normalised so a point 5 mm away on the beam axis gets 1
    strength = light.power * beam * ref / (dist[..., 0] ** 2)
    cos_n = np.clip(np.einsum("...i,...i->...", normals, ldir), 0, None)
    return ldir, strength, cos_n


def render_layers(scene: Scene, optics: MicroscopeOptics, eye: str) -> ViewLayers:
    """Ray cast one camera: retina layer, instrument layer, depth and geometry."""
    cam = optics.camera(eye)
    origin = optics.camera_origin(eye)
    rd = pixel_rays(cam)
    h, w = cam.height, cam.width
    retina = scene.retina

    # Retina: the far wall of the eye sphere.
    t = _ray_sphere_far(origin, rd, retina.centre, retina.radius)
    points = origin + rd * t[..., None]
    depth_r = (points[..., 2] - origin[2]).astype(np.float32)
    normals = retina.inward_normal(points)
    s, tt = retina.plane_coords(points)
    col, row = scene.texture.to_texel(s, tt)
    albedo = cv2.remap(
        scene.texture.albedo,
        col.astype(np.float32),
        row.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    _, strength, cos_n = _light_terms(points, normals, scene)
    view_dir = -rd
    cos_view = np.clip(np.einsum("...i,...i->...", normals, view_dir), 0, None)
    shade = strength * cos_n * _shadow(points, scene) + scene.light.coaxial * cos_view + 0.01
    retina_rgb = (albedo * shade[..., None]).astype(np.float32)

    inst_rgb = np.zeros((h, w, 3), np.float32)
    inst_alpha = np.zeros((h, w), np.float32)
    inst_depth = np.full((h, w), np.inf, np.float32)
    if scene.instrument is not None:
        _render_instrument(scene, cam, origin, rd, inst_rgb, inst_alpha, inst_depth)
    return ViewLayers(
        retina_rgb, depth_r, points.astype(np.float32), inst_rgb, inst_alpha, inst_depth
    )


def _capsule_bbox(cap: Capsule, cam: CameraIntrinsics, origin: np.ndarray):
    """Pixel rows/cols slices covering a capsule's projection (None if off screen)."""
    pts = np.stack([cap.a, cap.b]) - origin
    if np.any(pts[:, 2] <= 0):
        return slice(0, cam.height), slice(0, cam.width)
    u = cam.fx * pts[:, 0] / pts[:, 2] + cam.cx
    v = cam.fy * pts[:, 1] / pts[:, 2] + cam.cy
    pad = cam.fx * cap.radius / pts[:, 2].min() + 2
    c0, c1 = int(np.floor(u.min() - pad)), int(np.ceil(u.max() + pad)) + 1
    r0, r1 = int(np.floor(v.min() - pad)), int(np.ceil(v.max() + pad)) + 1
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, cam.width), min(r1, cam.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _render_instrument(scene, cam, origin, rd, out_rgb, out_alpha, out_depth) -> None:
    inst = scene.instrument
    h, w = cam.height, cam.width
    best_t = np.full((h, w), np.inf)
    best_n = np.zeros((h, w, 3))
    best_mat = np.zeros((h, w), np.int8)
    for cap in inst.capsules:
        box = _capsule_bbox(cap, cam, origin)
        if box is None:
            continue
        t, n = ray_capsule(origin, rd[box], cap)
        closer = t < best_t[box]
        best_t[box] = np.where(closer, t, best_t[box])
        best_n[box] = np.where(closer[..., None], n, best_n[box])
        best_mat[box] = np.where(closer, cap.material, best_mat[box])
    hit = np.isfinite(best_t)
    if not hit.any():
        return
    rays = rd[hit]
    t = best_t[hit]
    p = origin + rays * t[:, None]
    n = best_n[hit]
    mat = best_mat[hit]
    if inst.kind == "vitrector":  # the cutting port: a dark window on the side near the tip
        along = (p - inst.tip) @ inst.axis
        radial = p - inst.tip - along[:, None] * inst.axis
        e = np.cross(inst.axis, [0.0, 0.0, 1.0])
        e /= np.linalg.norm(e)
        f = np.cross(inst.axis, e)
        angle = np.arctan2(radial @ f, radial @ e)
        in_port = (
            (along > 0.25e-3)
            & (along < 0.65e-3)
            & (np.abs(np.angle(np.exp(1j * (angle - inst.port_roll)))) < np.deg2rad(50))
        )
        mat = np.where(in_port, PORT, mat)

    view = -rays
    ldir, strength, cos_n = _light_terms(p, n, scene)
    half = ldir + view
    half /= np.linalg.norm(half, axis=-1, keepdims=True)
    spec = np.clip(np.einsum("ij,ij->i", n, half), 0, 1) ** 80 * strength * 3.0
    coax_spec = np.clip(np.einsum("ij,ij->i", n, view), 0, 1) ** 30 * scene.light.coaxial * 2.0
    # Polished steel mirrors the orange fundus below and the dark microscope above.
    refl = 2 * np.einsum("ij,ij->i", n, view)[:, None] * n - view
    env = np.where(refl[:, 2:3] > 0, [0.35, 0.14, 0.05], [0.03, 0.03, 0.035]) * (
        np.abs(refl[:, 2:3]) ** 0.5
    )
    env_strength = 0.6 * (scene.light.coaxial + 0.3)
    base = np.where((mat == DARK_STEEL)[:, None], [0.30, 0.30, 0.31], [0.55, 0.55, 0.57])
    diffuse = base * (strength * cos_n + scene.light.coaxial)[:, None] * 0.5
    rgb = diffuse + env * env_strength + (spec + coax_spec)[:, None] * np.array([1.0, 0.97, 0.92])
    rgb = np.where((mat == PORT)[:, None], rgb * 0.08, rgb)
    glow = (
        np.array([1.6, 1.5, 1.3])
        * (0.6 + 0.4 * np.clip(np.einsum("ij,ij->i", n, view), 0, 1))[:, None]
    )
    rgb = np.where((mat == GLOW)[:, None], glow, rgb)
    out_rgb[hit] = rgb.astype(np.float32)
    out_alpha[hit] = 1.0
    out_depth[hit] = (p[:, 2] - origin[2]).astype(np.float32)


# --- defocus ---------------------------------------------------------------------------------

_KERNELS: dict[float, np.ndarray] = {}


def disc_kernel(radius: float) -> np.ndarray:
    """A normalised pillbox of ``radius`` pixels with anti-aliased rim (area coverage)."""
    if radius not in _KERNELS:
        size = int(np.ceil(radius + 0.5))
        y, x = np.mgrid[-size : size + 1, -size : size + 1].astype(np.float64)
        # Supersample each kernel pixel 8x8 for its covered area.
        sub = (np.arange(8) + 0.5) / 8 - 0.5
        yy = y[..., None, None] + sub[:, None]
        xx = x[..., None, None] + sub[None, :]
        k = ((xx**2 + yy**2) <= max(radius, 0.5) ** 2).mean(axis=(-1, -2))
        _KERNELS[radius] = (k / k.sum()).astype(np.float32)
    return _KERNELS[radius]


def _level_span(radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Index of the level below each radius, the fraction towards the next, and the range used."""
    r = np.clip(radius, 0, _LEVELS[-1] - 1e-6)
    idx = np.clip(np.searchsorted(_LEVELS, r, side="right") - 1, 0, len(_LEVELS) - 2)
    frac = ((r - _LEVELS[idx]) / (_LEVELS[idx + 1] - _LEVELS[idx])).astype(np.float32)
    return idx, frac, int(idx.min()), int(idx.max()) + 1


def _resampling_variance(scale: int) -> float:
    """Per-axis variance (full-resolution px^2) that area downsampling by ``scale`` and linear
    upsampling add to a point, measured once on a delta."""
    n = 16 * scale
    delta = np.zeros((n, n), np.float32)
    delta[n // 2, n // 2] = 1.0
    small = cv2.resize(delta, (n // scale, n // scale), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (n, n), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    x = np.arange(n)
    mean = (back.sum(0) * x).sum() / back.sum()
    return float((back.sum(0) * (x - mean) ** 2).sum() / back.sum())


_RESAMPLING_VAR = {scale: _resampling_variance(scale) for scale in (2, 4)}


def blur_disc(img: np.ndarray, radius: float, border=cv2.BORDER_REFLECT101) -> np.ndarray:
    """Convolve with a disc of ``radius`` px; larger discs run on a downsampled image.

    Up to 3 px the disc is applied at full resolution; beyond, at 1/2 (up to 8 px) or 1/4 of it,
    with the low-resolution disc shrunk so that the total second moment (disc plus resampling)
    equals the full-resolution disc's, rho^2 / 4 per axis.
    """
    if radius <= 0:
        return img
    if radius <= 3:
        return cv2.filter2D(img, -1, disc_kernel(radius), borderType=border)
    scale = 2 if radius <= 8 else 4
    target_var = radius * radius / 4 - _RESAMPLING_VAR[scale]
    small_radius = 2 * np.sqrt(max(target_var, 0.25)) / scale
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(w // scale, 1), max(h // scale, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.filter2D(small, -1, disc_kernel(round(small_radius * 4) / 4), borderType=border)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class SurfaceBlurStack:
    """A continuous surface blurred at every disc level it will need, computed once.

    Each focal slice then interpolates, per pixel, between the two levels bracketing its own
    blur radius (a gather approximation, accurate where the radius varies smoothly, as it does
    over the retina).
    """

    def __init__(self, rgb: np.ndarray, max_radius: float):
        top = int(np.searchsorted(_LEVELS, min(max_radius, _LEVELS[-1] - 1e-6), side="right"))
        self.levels = np.stack([blur_disc(rgb, float(r)) for r in _LEVELS[: top + 2]])

    def at(self, radius: np.ndarray) -> np.ndarray:
        idx, frac, _, _ = _level_span(radius)
        n_levels, h, w, c = self.levels.shape
        flat = self.levels.reshape(n_levels * h * w, c)
        pixel = np.arange(h * w)
        lo = np.minimum(idx, n_levels - 1).ravel() * (h * w) + pixel
        hi = np.minimum(idx + 1, n_levels - 1).ravel() * (h * w) + pixel
        out = np.take(flat, hi, axis=0)
        below = np.take(flat, lo, axis=0)
        out -= below
        out *= frac.reshape(-1, 1)
        out += below
        return out.reshape(h, w, c)


def defocus_surface(rgb: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Blur of a continuous surface with a smoothly varying disc radius."""
    return SurfaceBlurStack(rgb, float(np.nanmax(radius))).at(radius)


def defocus_layer(premult: np.ndarray, alpha: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Blur a premultiplied layer where it has coverage, each pixel spreading over its own disc
    (scatter); returns (H, W, 4): rgb * alpha and alpha."""
    h, w = alpha.shape
    out = np.zeros((h, w, 4), np.float32)
    covered = alpha > 0
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size == 0:
        return out
    # Work inside the layer's bounding box grown by the largest disc.
    grow = int(np.ceil(min(float(radius[covered].max()), _LEVELS[-1]) + 0.5)) + 2
    y0, y1 = max(rows[0] - grow, 0), min(rows[-1] + grow + 1, h)
    x0, x1 = max(cols[0] - grow, 0), min(cols[-1] + grow + 1, w)
    cov = covered[y0:y1, x0:x1]
    idx, frac, _, _ = _level_span(np.where(cov, radius[y0:y1, x0:x1], 0))
    stack = np.concatenate([premult[y0:y1, x0:x1], alpha[y0:y1, x0:x1, None]], -1)
    stack = stack.astype(np.float32) * cov[..., None]
    box = out[y0:y1, x0:x1]
    used = idx[cov]
    for k in range(int(used.min()), int(used.max()) + 2):
        weight = np.where(idx == k, 1 - frac, 0) + np.where(idx + 1 == k, frac, 0)
        nz_rows = np.flatnonzero((weight * cov).any(axis=1))
        if nz_rows.size == 0:
            continue
        nz_cols = np.flatnonzero(
            (weight[nz_rows[0] : nz_rows[-1] + 1] * cov[nz_rows[0] : nz_rows[-1] + 1]).any(axis=0)
        )
        pad = int(np.ceil(_LEVELS[k] + 0.5)) + 1
        bh, bw = box.shape[:2]
        r0, r1 = max(nz_rows[0] - pad, 0), min(nz_rows[-1] + pad + 1, bh)
        c0, c1 = max(nz_cols[0] - pad, 0), min(nz_cols[-1] + pad + 1, bw)
        part = stack[r0:r1, c0:c1] * weight[r0:r1, c0:c1, None]
        box[r0:r1, c0:c1] += blur_disc(part, float(_LEVELS[k]), cv2.BORDER_CONSTANT)
    return out


@dataclass
class _InstrumentLayer:
    """What every slice of a sweep needs from the instrument layer, computed once per view."""

    premult: np.ndarray  # (H, W, 3) rgb * alpha
    alpha: np.ndarray  # (H, W)
    depth: np.ndarray  # (H, W) instrument depth where covered, retina depth elsewhere

    @classmethod
    def of(cls, layers: ViewLayers) -> _InstrumentLayer | None:
        if not layers.inst_alpha.any():
            return None
        return cls(
            layers.inst_rgb * layers.inst_alpha[..., None],
            layers.inst_alpha,
            np.where(layers.inst_alpha > 0, layers.inst_depth, layers.retina_depth),
        )


def render_slice(
    layers: ViewLayers,
    optics: MicroscopeOptics,
    focus_distance: float,
    retina_stack: SurfaceBlurStack | None = None,
    instrument: _InstrumentLayer | None = None,
) -> np.ndarray:
    """Linear RGB of the view with the focal plane at ``focus_distance`` (m)."""
    r_ret = optics.coc_diameter_px(layers.retina_depth, focus_distance) / 2
    if retina_stack is None:
        retina_stack = SurfaceBlurStack(layers.retina_rgb, float(np.nanmax(r_ret)))
    ret_rgb = retina_stack.at(r_ret)
    if instrument is None:
        instrument = _InstrumentLayer.of(layers)
        if instrument is None:
            return ret_rgb
    r_inst = optics.coc_diameter_px(instrument.depth, focus_distance) / 2
    inst = defocus_layer(instrument.premult, instrument.alpha, r_inst)
    a = np.clip(inst[..., 3:], 0, 1)
    return inst[..., :3] + (1 - a) * ret_rgb


def render_sweep(
    layers: ViewLayers, optics: MicroscopeOptics, focus_distances: np.ndarray
) -> list[np.ndarray]:
    """Linear RGB slices of one view for every focal distance."""
    r_max = max(
        float(np.nanmax(optics.coc_diameter_px(layers.retina_depth, zf))) / 2
        for zf in focus_distances
    )
    stack = SurfaceBlurStack(layers.retina_rgb, r_max)
    instrument = _InstrumentLayer.of(layers)
    if instrument is None:
        return [
            stack.at(optics.coc_diameter_px(layers.retina_depth, zf) / 2) for zf in focus_distances
        ]
    return [render_slice(layers, optics, zf, stack, instrument) for zf in focus_distances]


def composite_aif(layers: ViewLayers) -> np.ndarray:
    a = layers.inst_alpha[..., None]
    return layers.inst_rgb * a + layers.retina_rgb * (1 - a)


# --- sensor ----------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _vignette(shape, vignette) -> np.ndarray | None:
    if vignette is None:
        return None
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((x - (w - 1) / 2) / (w / 2), (y - (h - 1) / 2) / (h / 2)) / np.sqrt(2)
    radius, soft = vignette
    vig = np.clip((radius - r) / soft, 0, 1)
    vig.setflags(write=False)
    return vig


_LUT_SIZE = 1 << 14


def _srgb_curve(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


# Linear light in 1/16384 steps to 8-bit sRGB: finer than any 8-bit code step of the curve.
_SRGB_LUT = np.round(_srgb_curve(np.linspace(0, 1, _LUT_SIZE)) * 255).astype(np.uint8)


def to_srgb8(linear: np.ndarray) -> np.ndarray:
    codes = np.clip(linear * (_LUT_SIZE - 1) + 0.5, 0, _LUT_SIZE - 1).astype(np.int32)
    return _SRGB_LUT[codes]


def srgb8_to_linear(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32) / 255
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def apply_sensor(
    linear: np.ndarray,
    exposure: float,
    scene: Scene,
    sensor: SensorConfig,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Exposure, white balance, vignette, shot and read noise, 8-bit sRGB, optional JPEG."""
    signal = linear * np.float32(exposure) * scene.white_balance
    vig = _vignette(linear.shape[:2], scene.vignette)
    if vig is not None:
        signal = signal * vig[..., None]
    signal = np.clip(signal, 0, 1)
    if rng is not None:
        electrons = signal * sensor.full_well
        noise = rng.standard_normal(signal.shape, dtype=np.float32)
        electrons = electrons + noise * np.sqrt(electrons + sensor.read_noise**2)
        signal = electrons / sensor.full_well
    img = to_srgb8(signal)
    if sensor.jpeg_quality and rng is not None:
        ok, buf = cv2.imencode(
            ".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, sensor.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a slice")
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return img


def sweep_distances(depths: list[np.ndarray], slices: int, margin: float = 0.15) -> np.ndarray:
    """``slices`` focal distances evenly spanning the visible depth range (plus a margin)."""
    finite = np.concatenate([d[np.isfinite(d)].ravel() for d in depths])
    lo, hi = np.percentile(finite, 0.5), np.percentile(finite, 99.5)
    span = max(hi - lo, 1e-4)
    if slices == 1:
        return np.array([(lo + hi) / 2])
    return np.linspace(lo - margin * span / slices, hi + margin * span / slices, slices)


def render_sample(
    scene: Scene,
    optics: MicroscopeOptics,
    slices: int = 8,
    focus_distances: np.ndarray | None = None,
    sensor: SensorConfig | None = None,
    noise: bool = True,
) -> StereoSample:
    """Both eyes: exact ground truth, all-in-focus targets and a focal sweep per eye."""
    sensor = sensor or SensorConfig()
    layers = {eye: render_layers(scene, optics, eye) for eye in ("left", "right")}
    if focus_distances is None:
        focus_distances = sweep_distances([lay.depth for lay in layers.values()], slices)
    focus_distances = np.asarray(focus_distances, np.float64)
    left_aif = composite_aif(layers["left"])
    exposure = sensor.exposure_target / max(
        np.percentile(layers["left"].retina_rgb, sensor.exposure_percentile), 1e-6
    )
    # SFC64: a fast generator for the many noise samples of a sweep.
    rng = (
        np.random.Generator(np.random.SFC64(np.random.SeedSequence([scene.seed, 1])))
        if noise
        else None
    )
    eyes = {}
    for eye, lay in layers.items():
        aif = left_aif if eye == "left" else composite_aif(lay)
        clean = apply_sensor(aif, exposure, scene, sensor, None)
        stack = np.stack(
            [
                apply_sensor(img, exposure, scene, sensor, rng)
                for img in render_sweep(lay, optics, focus_distances)
            ]
        )
        eyes[eye] = EyeImages(clean, stack, lay.depth, (lay.mask * 255).astype(np.uint8))
    return StereoSample(eyes["left"], eyes["right"], focus_distances, scene)
