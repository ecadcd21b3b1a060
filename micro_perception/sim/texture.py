"""Procedural fundus texture in retina-plane coordinates (no ROS).

The texture is an RGB albedo image (linear, 0..1) covering a square of the retina's tangent plane
centred on the field. Everything is drawn from one ``numpy.random.Generator``, so the texture is a
pure function of its size, scale and the generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Linear-RGB albedos, roughly as fundus photographs show them under white light.
FUNDUS_ORANGE = np.array([0.62, 0.22, 0.07], np.float32)
CHOROID_DARK = np.array([0.42, 0.12, 0.04], np.float32)
ARTERY = np.array([0.55, 0.08, 0.03], np.float32)
VEIN = np.array([0.33, 0.04, 0.02], np.float32)
DISC = np.array([0.92, 0.62, 0.36], np.float32)
CUP = np.array([0.98, 0.86, 0.66], np.float32)
MACULA = np.array([0.30, 0.09, 0.03], np.float32)


@dataclass(frozen=True)
class FundusTexture:
    albedo: np.ndarray  # (N, N, 3) float32, linear RGB
    texel: float  # metres per texel
    disc_centre: tuple[float, float]  # m, retina-plane coordinates
    fovea_centre: tuple[float, float]

    @property
    def half_extent(self) -> float:
        return self.albedo.shape[0] * self.texel / 2.0

    def to_texel(self, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texel coordinates (column, row) of retina-plane points in metres."""
        centre = (self.albedo.shape[0] - 1) / 2.0
        return s / self.texel + centre, t / self.texel + centre


def _smooth_noise(rng: np.random.Generator, n: int, scales_px: list[float]) -> np.ndarray:
    """Sum of smooth noise octaves (feature sizes ``scales_px``), zero mean and unit std.

    Each octave is white noise on a grid about two cells per feature, blurred a little and
    upsampled: the same spectrum as blurring full-resolution noise, at a fraction of the cost.
    """
    total = np.zeros((n, n), np.float32)
    for i, sigma in enumerate(scales_px):
        cells = int(np.clip(np.ceil(n / max(sigma, 1.0)), 4, n))
        layer = rng.standard_normal((cells, cells)).astype(np.float32)
        layer = cv2.GaussianBlur(layer, (0, 0), 0.8)
        layer = cv2.resize(layer, (n, n), interpolation=cv2.INTER_CUBIC)
        layer /= layer.std() + 1e-8
        total += layer / (1.0 + i)
    return (total - total.mean()) / (total.std() + 1e-8)


def _vessel_tree(
    rng: np.random.Generator,
    canvas: np.ndarray,
    start: np.ndarray,
    heading: float,
    width_px: float,
    colour: np.ndarray,
    avoid: np.ndarray,
    avoid_radius: float,
    depth: int = 0,
) -> None:
    """Draw one vessel as a curving polyline that bifurcates into thinner branches."""
    n = canvas.shape[0]
    step = max(2.0, 4.0 * width_px)
    length = int(rng.integers(18, 40))
    point = start.astype(np.float64)
    curvature = rng.normal(0.0, 0.06)
    points = [point.copy()]
    for _ in range(length):
        # Bend away from the fovea, as the vascular arcades do.
        away = point - avoid
        dist = np.hypot(*away)
        if dist < avoid_radius * 1.4:
            target = np.arctan2(away[1], away[0])
            delta = np.angle(np.exp(1j * (target - heading)))
            heading += 0.25 * delta
        heading += curvature + rng.normal(0.0, 0.08)
        point = point + step * np.array([np.cos(heading), np.sin(heading)])
        points.append(point.copy())
        if not (-0.1 * n < point[0] < 1.1 * n and -0.1 * n < point[1] < 1.1 * n):
            break
    pts = np.round(np.array(points) * 16).astype(np.int32)  # 4 fractional bits
    thickness = max(1, round(width_px))
    cv2.polylines(canvas, [pts], False, colour.tolist(), thickness, cv2.LINE_AA, shift=4)
    if depth >= 4 or width_px < 1.2:
        return
    n_branches = int(rng.integers(1, 3))
    for _ in range(n_branches):
        k = int(rng.integers(len(points) // 4, max(len(points) // 4 + 1, len(points) - 1)))
        branch_heading = heading_at(points, k) + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        _vessel_tree(
            rng,
            canvas,
            points[k],
            branch_heading,
            width_px * rng.uniform(0.62, 0.8),
            colour,
            avoid,
            avoid_radius,
            depth + 1,
        )


def heading_at(points: list[np.ndarray], k: int) -> float:
    a, b = points[max(k - 1, 0)], points[min(k + 1, len(points) - 1)]
    return float(np.arctan2(b[1] - a[1], b[0] - a[0]))


def _falloff(r: np.ndarray, edge: float, width: float) -> np.ndarray:
    """1 inside ``edge``, 0 outside, with a logistic rim ``width`` wide."""
    return 1.0 / (1.0 + np.exp(np.clip((r - edge) / width, -50.0, 50.0)))


def fundus_texture(rng: np.random.Generator, extent: float, texel: float) -> FundusTexture:
    """A fundus albedo map covering ``extent`` metres square at ``texel`` metres per texel."""
    n = int(np.ceil(extent / texel)) | 1
    mm = 1e-3 / texel  # texels per millimetre

    # Choroidal background: orange with a mottled, vessel-like darker network underneath.
    mottle = _smooth_noise(rng, n, [0.05 * mm, 0.15 * mm, 0.5 * mm])
    network = np.abs(_smooth_noise(rng, n, [0.12 * mm, 0.3 * mm]))
    dark = np.clip(1.0 - network / 0.35, 0.0, 1.0) * 0.55
    albedo = FUNDUS_ORANGE[None, None, :] * (1.0 + 0.10 * mottle[..., None])
    albedo *= (1.0 - dark)[..., None]
    albedo += dark[..., None] * CHOROID_DARK

    # Disc and fovea ~4.5 mm apart; the field may show either, both or neither.
    centre = (n - 1) / 2.0
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.0, 3.0) * mm
    fovea = np.array([centre, centre]) + offset * np.array([np.cos(angle), np.sin(angle)])
    disc_dir = rng.uniform(0, 2 * np.pi)
    disc = fovea + 4.5 * mm * np.array([np.cos(disc_dir), np.sin(disc_dir)])

    coords = np.arange(n, dtype=np.float32)

    def radius_mm(point):
        dx = (coords - np.float32(point[0])) ** 2
        dy = (coords - np.float32(point[1])) ** 2
        return np.sqrt(dy[:, None] + dx[None, :]) / np.float32(mm)

    def blend(img, weight, colour):
        """img <- img * (1 - weight) + colour * weight, in place."""
        img *= (1.0 - weight)[..., None]
        img += weight[..., None] * colour

    r_fovea = radius_mm(fovea)
    blend(albedo, 0.7 * np.exp(-((r_fovea / 1.3) ** 2)), MACULA)
    albedo *= (1.0 - 0.3 * np.exp(-((r_fovea / 0.25) ** 2)))[..., None]

    for colour, width_mm, count in ((VEIN, 0.14, 4), (ARTERY, 0.11, 4)):
        for i in range(count):
            heading = disc_dir + np.pi + (i - (count - 1) / 2) * 0.9 + rng.normal(0, 0.2)
            start = disc + 0.3 * mm * np.array([np.cos(heading), np.sin(heading)])
            _vessel_tree(
                rng,
                albedo,
                start,
                heading,
                width_mm * mm * rng.uniform(0.85, 1.15),
                colour,
                fovea,
                1.0 * mm,
            )

    r_disc = radius_mm(disc)
    disc_radius = rng.uniform(0.75, 0.95)
    cup_radius = disc_radius * rng.uniform(0.3, 0.5)
    blend(albedo, _falloff(r_disc, disc_radius, 0.04), DISC)
    blend(albedo, _falloff(r_disc, cup_radius, 0.05), CUP)
    np.clip(albedo, 0.0, 1.0, out=albedo)

    to_m = lambda p: ((p[0] - centre) * texel, (p[1] - centre) * texel)  # noqa: E731
    return FundusTexture(albedo.astype(np.float32), texel, to_m(disc), to_m(fovea))
