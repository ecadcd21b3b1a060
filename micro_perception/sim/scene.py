"""Analytic scenes of the posterior eye under the microscope (no ROS).

Coordinates are the left camera's optical frame in metres (x right, y down, z away from the
microscope). The retina is the far wall of a sphere (the eye), seen from outside through the
transparent front; instruments are unions of capsules (segments with a radius). A scene is a pure
function of ``(SceneConfig, optics, seed)``.

Ground truth distance is the gap between the instrument's surface and the retina (zero: contact)
from the instrument point nearest the retina, which is usually on the tip's underside that the
cameras cannot see:

* ``gap_normal``: along the retina normal, exact: for a point p inside the eye sphere (centre c,
  radius R) the distance to the sphere is ``R - |p - c|``; a capsule's gap is that minus its
  radius, minimised over its axis (the maximum of |p - c| on a segment is at an end point).
* ``gap_axial``: along the optical axis (z), from dense samples of the instrument surface to the
  retina directly below each sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.texture import FundusTexture, fundus_texture

INSTRUMENT_KINDS = ("needle", "light_pipe", "forceps", "vitrector", "scissors")

# Materials of instrument surfaces.
STEEL, PORT, GLOW, DARK_STEEL = 0, 1, 2, 3


@dataclass(frozen=True)
class SceneConfig:
    """What scenes to draw: ranges sampled per seed."""

    retina_radius_mm: tuple[float, float] = (11.0, 13.0)
    retina_tilt_deg: tuple[float, float] = (0.0, 15.0)
    retina_offset_mm: float = 1.0  # lateral offset of the field from the pole
    retina_depth_jitter_mm: float = 0.5  # retina depth around the working distance
    instrument_kinds: tuple[str, ...] = INSTRUMENT_KINDS
    p_no_instrument: float = 0.1
    p_contact: float = 0.08
    gap_mm: tuple[float, float] = (0.05, 3.0)  # log-uniform
    # Instruments enter through the pars plana: this far from the posterior pole (deg, central).
    sclerotomy_deg: tuple[float, float] = (100.0, 120.0)
    p_vignette: float = 0.35
    texture_oversample: float = 1.5  # texels per pixel

    def __post_init__(self):
        unknown = set(self.instrument_kinds) - set(INSTRUMENT_KINDS)
        if unknown:
            raise InputError(
                f"unknown instrument kinds {sorted(unknown)}; known: {list(INSTRUMENT_KINDS)}"
            )
        lo, hi = self.gap_mm
        if not 0 < lo <= hi:
            raise InputError(f"gap_mm must satisfy 0 < low <= high, got {self.gap_mm}")


@dataclass(frozen=True)
class Capsule:
    a: np.ndarray  # (3,) axis start, m
    b: np.ndarray  # (3,) axis end, m
    radius: float
    material: int = STEEL


@dataclass(frozen=True)
class Instrument:
    kind: str
    capsules: tuple[Capsule, ...]
    tip: np.ndarray  # (3,) the working end's extreme point
    axis: np.ndarray  # (3,) unit vector from the tip along the shaft
    shaft_radius: float
    port_roll: float = 0.0  # vitrector: angle of the side port around the axis

    @property
    def jaw_reach(self) -> float:
        """How far the jaws or blades reach past the shaft's round end along the axis (m), as
        the tool's maker would give it; 0 for an instrument without them."""
        if self.kind not in ("forceps", "scissors"):
            return 0.0
        shaft, jaws = self.capsules[0], self.capsules[1:]
        end = (shaft.a - self.tip) @ self.axis - shaft.radius
        reach = min(
            min((c.a - self.tip) @ self.axis, (c.b - self.tip) @ self.axis) - c.radius
            for c in jaws
        )
        return float(end - reach)


@dataclass(frozen=True)
class Light:
    """The endoilluminator: a point source with a cone, plus the microscope's coaxial light."""

    position: np.ndarray  # (3,) m
    direction: np.ndarray  # (3,) unit, centre of the beam
    half_angle: float  # rad, beam spread
    radius: float  # m, source size (penumbra)
    power: float
    coaxial: float  # relative coaxial illumination


@dataclass(frozen=True)
class Retina:
    centre: np.ndarray  # (3,) eye sphere centre, m
    radius: float  # m
    pole: np.ndarray  # (3,) unit, from the centre towards the retina at the field
    basis: np.ndarray  # (2, 3) tangent directions of the texture plane
    cap_cos: float  # the retina is the cap where (p - c)/R . pole >= cap_cos

    def depth_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the retina below lateral positions (NaN outside the sphere's silhouette)."""
        dx, dy = x - self.centre[0], y - self.centre[1]
        h2 = self.radius**2 - dx * dx - dy * dy
        with np.errstate(invalid="ignore"):
            return self.centre[2] + np.sqrt(h2)

    def plane_coords(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = points - self.centre
        return rel @ self.basis[0], rel @ self.basis[1]

    def inward_normal(self, points: np.ndarray) -> np.ndarray:
        rel = self.centre - points
        return rel / np.linalg.norm(rel, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Scene:
    seed: int
    retina: Retina
    texture: FundusTexture | None  # None: drawn for its geometry alone (make_scene)
    light: Light
    instrument: Instrument | None
    vignette: tuple[float, float] | None  # (radius, softness) as fractions of the half-diagonal
    gap_normal: float  # m; inf without instrument
    gap_axial: float  # m; inf without instrument
    nearest_point: np.ndarray | None  # (3,) instrument point nearest the retina (normal)
    white_balance: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))

    @property
    def has_instrument(self) -> bool:
        return self.instrument is not None


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _orthonormal(n: np.ndarray) -> np.ndarray:
    """Two unit vectors perpendicular to ``n`` and to each other."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(n, helper))
    return np.stack([e1, np.cross(n, e1)])


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about unit ``axis``."""
    axis = _unit(axis)
    return (
        v * np.cos(angle)
        + np.cross(axis, v) * np.sin(angle)
        + axis * np.dot(axis, v) * (1 - np.cos(angle))
    )


def _in_cap(retina: Retina, p: np.ndarray) -> np.ndarray:
    rel = p - retina.centre
    return (rel @ retina.pole) >= retina.cap_cos * np.linalg.norm(rel, axis=-1)


def _capsule_gap(retina: Retina, cap: Capsule) -> tuple[float, np.ndarray | None]:
    """Normal gap of a capsule to the posterior retina and the surface point that realises it.

    The retina is the cap of the sphere within a cone around the pole. A convex cone cuts the
    capsule's axis in one interval, and on that interval |p - c| is largest at an end, so the gap
    is exact from the interval's two ends (found by bisection where the axis crosses the cone).
    """
    s = np.linspace(0.0, 1.0, 257)
    axis_pts = cap.a + s[:, None] * (cap.b - cap.a)
    inside = _in_cap(retina, axis_pts)
    if not inside.any():
        return np.inf, None
    ends = []
    first, last = int(np.argmax(inside)), len(s) - 1 - int(np.argmax(inside[::-1]))
    for k, step in ((first, -1), (last, 1)):
        lo_in = s[k]
        if 0 <= k + step < len(s):
            out = s[k + step]
            for _ in range(50):  # bisection to the cone crossing
                mid = 0.5 * (lo_in + out)
                if _in_cap(retina, cap.a + mid * (cap.b - cap.a)):
                    lo_in = mid
                else:
                    out = mid
        ends.append(cap.a + lo_in * (cap.b - cap.a))
    best, best_point = np.inf, None
    for p in ends:
        rel = p - retina.centre
        dist = np.linalg.norm(rel)
        gap = retina.radius - dist - cap.radius
        if gap < best:
            best, best_point = gap, p + cap.radius * rel / dist
    return best, best_point


def instrument_gap_normal(retina: Retina, inst: Instrument) -> tuple[float, np.ndarray]:
    gaps = [_capsule_gap(retina, c) for c in inst.capsules]
    gap, point = min(gaps, key=lambda g: g[0])
    return gap, point


def surface_samples(inst: Instrument, per_capsule: int = 4000) -> np.ndarray:
    """Points densely covering every capsule's surface: rings on the cylinder, Fibonacci caps."""
    out = []
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for cap in inst.capsules:
        axis = cap.b - cap.a
        length = np.linalg.norm(axis)
        u = axis / length if length > 0 else np.array([0.0, 0.0, 1.0])
        e = _orthonormal(u)
        n_ring = 48
        n_len = max(2, per_capsule // (2 * n_ring))
        s = np.linspace(0.0, 1.0, n_len)
        th = np.linspace(0.0, 2 * np.pi, n_ring, endpoint=False)
        ring = np.cos(th)[:, None] * e[0] + np.sin(th)[:, None] * e[1]
        out.append((cap.a + s[:, None, None] * axis + cap.radius * ring[None]).reshape(-1, 3))
        k = np.arange(per_capsule // 2)
        z = 1 - 2 * (k + 0.5) / len(k)
        r = np.sqrt(1 - z * z)
        sphere = np.stack([r * np.cos(golden * k), r * np.sin(golden * k), z], -1)
        out.append(cap.a + cap.radius * sphere)
        out.append(cap.b + cap.radius * sphere)
    return np.concatenate(out)


def instrument_gap_axial(retina: Retina, inst: Instrument) -> float:
    pts = surface_samples(inst)
    pts = pts[_in_cap(retina, pts)]
    if len(pts) == 0:
        return np.inf
    below = retina.depth_at(pts[:, 0], pts[:, 1])
    gaps = below - pts[:, 2]
    gaps = gaps[np.isfinite(gaps)]
    return float(gaps.min()) if gaps.size else np.inf


def _build_instrument(
    kind: str,
    rng: np.random.Generator,
    tip: np.ndarray,
    axis: np.ndarray,
    roll_ref: np.ndarray,
    shaft_len: float,
) -> Instrument:
    """Capsules of an instrument whose working end is at ``tip``, shaft along ``axis``."""
    mm = 1e-3
    side = _unit(np.cross(axis, roll_ref))  # opening direction of jaws/blades
    if kind == "needle":
        r = rng.choice([0.205, 0.255, 0.32]) * mm  # 27G / 25G / 23G
        caps = (Capsule(tip + r * axis, tip + shaft_len * axis, r),)
        return Instrument(kind, caps, tip, axis, r)
    if kind == "light_pipe":
        r = rng.choice([0.255, 0.32]) * mm
        glow = 0.35 * mm
        caps = (
            Capsule(tip + r * axis, tip + (r + glow) * axis, r, GLOW),
            Capsule(tip + (r + glow) * axis, tip + shaft_len * axis, r),
        )
        return Instrument(kind, caps, tip, axis, r)
    if kind == "vitrector":
        r = 0.32 * mm
        caps = (Capsule(tip + r * axis, tip + shaft_len * axis, r),)
        return Instrument(kind, caps, tip, axis, r, port_roll=float(rng.uniform(0, 2 * np.pi)))
    if kind == "forceps":
        r = 0.32 * mm
        jaw_r = rng.uniform(0.09, 0.12) * mm
        jaw_len = rng.uniform(1.0, 1.5) * mm
        opening = np.deg2rad(rng.uniform(0.0, 25.0))
        base = tip + jaw_len * np.cos(opening / 2) * axis
        caps = [Capsule(base + 0.5 * r * axis, tip + shaft_len * axis, r)]
        for sign in (-1.0, 1.0):
            end = base - jaw_len * _rotate(axis, np.cross(axis, side), sign * opening / 2)
            caps.append(Capsule(base, end + jaw_r * axis, jaw_r, DARK_STEEL))
        return Instrument(kind, tuple(caps), tip, axis, r)
    if kind == "scissors":
        r = 0.32 * mm
        blade_r = rng.uniform(0.07, 0.09) * mm
        blade_len = rng.uniform(0.9, 1.3) * mm
        bend = np.deg2rad(rng.uniform(20.0, 45.0))  # total curvature of the blades
        opening = np.deg2rad(rng.uniform(0.0, 15.0))
        base = tip + blade_len * axis
        caps = [Capsule(base + 0.5 * r * axis, tip + shaft_len * axis, r)]
        segments = 4
        for sign in (-1.0, 1.0):
            p = base.copy()
            direction = _rotate(-axis, np.cross(axis, side), sign * opening / 2)
            for _ in range(segments):
                q = p + blade_len / segments * direction
                caps.append(Capsule(p, q, blade_r, DARK_STEEL))
                p = q
                direction = _rotate(direction, np.cross(axis, side), bend / segments)
        return Instrument(kind, tuple(caps), tip, axis, r)
    raise InputError(f"unknown instrument kind {kind!r}")


def _translate(inst: Instrument, offset: np.ndarray) -> Instrument:
    caps = tuple(Capsule(c.a + offset, c.b + offset, c.radius, c.material) for c in inst.capsules)
    return Instrument(
        inst.kind, caps, inst.tip + offset, inst.axis, inst.shaft_radius, inst.port_roll
    )


def make_scene(
    seed: int,
    optics: MicroscopeOptics | None = None,
    config: SceneConfig | None = None,
    gap: float | None = None,
    kind: str | None = None,
    texture: bool = True,
) -> Scene:
    """The scene of ``seed``; ``gap`` (m) and ``kind`` override the sampled ones.
    ``texture=False``: the same scene without its fundus texture, which is most of the time
    drawing one takes (its geometry is drawn from streams of its own)."""
    optics = optics or MicroscopeOptics()
    config = config or SceneConfig()
    # One stream per part, so a change to how one part is drawn leaves the others as they were.
    streams = np.random.SeedSequence(int(seed)).spawn(5)
    rng_retina, rng_texture, rng_inst, rng_light, rng_view = map(np.random.default_rng, streams)
    rng = rng_retina
    mm = 1e-3
    fov = optics.field_of_view

    # Retina: a sphere whose far wall passes near the field centre (0, 0, Z0).
    radius = rng.uniform(*config.retina_radius_mm) * mm
    tilt = np.deg2rad(rng.uniform(*config.retina_tilt_deg))
    azimuth = rng.uniform(0, 2 * np.pi)
    pole = np.array([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), np.cos(tilt)])
    offset = rng.uniform(-1, 1, 2) * config.retina_offset_mm * mm
    z_field = optics.working_distance + rng.uniform(-1, 1) * config.retina_depth_jitter_mm * mm
    field_point = np.array([offset[0], offset[1], z_field])
    centre = field_point - radius * pole
    basis = _orthonormal(pole)
    # The posterior retina: everything within ~60 degrees of the pole (far beyond the view).
    retina = Retina(centre, radius, pole, basis, cap_cos=float(np.cos(np.deg2rad(60.0))))

    texel = optics.pixel_size / config.texture_oversample
    # The field centre maps to texture (0, 0); the image diagonal plus tilt fits in 1.5 fields.
    extent = 1.5 * fov
    fundus = fundus_texture(rng_texture, extent, texel) if texture else None

    # Instrument.
    rng = rng_inst
    instrument, gap_n, gap_a, nearest = None, np.inf, np.inf, None
    draw_kind = kind or str(rng.choice(config.instrument_kinds))
    absent = rng.uniform() < config.p_no_instrument
    contact = rng.uniform() < config.p_contact
    lo, hi = config.gap_mm
    target_gap = 0.0 if contact else float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * mm
    if gap is not None:
        target_gap, absent = float(gap), False
    if kind is not None:
        absent = False
    tip_xy = rng.uniform(-0.28, 0.28, 2) * fov
    enter = rng.uniform(0, 2 * np.pi)
    sclerotomy_angle = np.deg2rad(rng.uniform(*config.sclerotomy_deg))
    roll_ref = _unit(rng.normal(size=3))
    if not absent:
        z_below = retina.depth_at(np.array(tip_xy[0]), np.array(tip_xy[1]))
        foot = np.array([tip_xy[0], tip_xy[1], float(z_below)])
        normal_in = retina.inward_normal(foot)
        # The shaft runs from the tip to its port in the eye wall, and on out of the eye.
        sclerotomy = centre + radius * (
            np.cos(sclerotomy_angle) * pole
            + np.sin(sclerotomy_angle) * (np.cos(enter) * basis[0] + np.sin(enter) * basis[1])
        )
        axis = _unit(sclerotomy - foot)
        shaft_len = float(np.linalg.norm(sclerotomy - foot)) + 8 * mm
        instrument = _build_instrument(
            draw_kind, rng, foot + normal_in * 1 * mm, axis, roll_ref, shaft_len
        )
        # Move along the normal until the surface gap is the target (curvature: iterate).
        for _ in range(10):
            gap_now, _ = instrument_gap_normal(retina, instrument)
            if abs(gap_now - target_gap) < 1e-12:
                break
            instrument = _translate(instrument, normal_in * (target_gap - gap_now))
        gap_n, nearest = instrument_gap_normal(retina, instrument)
        gap_a = instrument_gap_axial(retina, instrument)

    # Light: the light pipe's tip when the instrument is one, else an unseen endoilluminator.
    rng = rng_light
    if instrument is not None and instrument.kind == "light_pipe":
        position = instrument.tip + 0.05 * mm * -instrument.axis
        direction = -instrument.axis
    else:
        a = rng.uniform(0, 2 * np.pi)
        position = field_point + retina.inward_normal(field_point) * rng.uniform(4, 8) * mm
        position = position + rng.uniform(2, 5) * mm * np.array([np.cos(a), np.sin(a), 0.0])
        direction = _unit(field_point + rng.normal(0, 1.0, 3) * mm - position)
    light = Light(
        position,
        _unit(direction),
        np.deg2rad(rng.uniform(30, 45)),
        0.3 * mm,
        power=1.0,
        coaxial=float(rng.uniform(0.08, 0.2)),
    )

    rng = rng_view
    vignette = None
    if rng.uniform() < config.p_vignette:
        vignette = (float(rng.uniform(0.75, 0.98)), float(rng.uniform(0.02, 0.08)))
    white_balance = (1.0 + rng.normal(0.0, 0.04, 3)).astype(np.float32)
    return Scene(
        int(seed),
        retina,
        fundus,
        light,
        instrument,
        vignette,
        float(gap_n),
        float(gap_a),
        nearest,
        white_balance,
    )
