"""How far off one frame's instrument-to-retina distance may be: a calibrated standard deviation
(no ROS, no torch).

The error of a frame's distance depends most on how the geometry placed the instrument
(``Measurement.kind``): a shaft whose axis both silhouettes measured and whose round end is a
capsule reads within tens of micrometres; jaws and blades measured on their rows, or a shaft
lying along the image rows whose slope is assumed, read several times worse. A
:class:`DistanceUncertainty` gives each kind a standard deviation, calibrated on simulated frames
with exact gaps (``micro-perception train uncertainty`` on ``eval distance --frames`` files).

Errors are heavy-tailed (a jaw a steep shaft hides reads a millimetre off now and then), so a
kind's sigma is set from a quantile of its absolute errors, not from their RMS: with the default
``quantile`` 0.95, sigma is that quantile over 1.96, and the distance lies within 2 sigma of the
truth on 95 % of the calibration frames of that kind; within 1 sigma on more than a Gaussian's
68 %. :func:`coverage` measures both on other frames.

Within a kind, a shaft steeper than ``steep_deg`` from the optical axis errs more (its working
end hides under it): sigma is scaled by ``steep_factor`` there and ``flat_factor`` elsewhere,
each the ratio of its frames' 95th percentile of error-over-sigma to all frames'.

A kind with fewer than ``min_frames`` calibration frames takes the sigma of all frames of its
end (``round/glow/jaws/reach``), else of all frames, where its method (how the shaft's axis was
placed) has a calibrated kind; else its sigma is not known. The file is JSON (nothing executable is
loaded) and belongs to the segmentation network and edge refiner it was calibrated with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from micro_perception.errors import InputError

FORMAT = "micro_perception.distance_uncertainty/1"
GAP_RANGE = (0.05e-3, 3.0e-3)  # m: the tips a calibration and eval distance count
STEEP_DEG = 30.0  # shafts within this of the optical axis: their own scale


def normal_quantile(q: float) -> float:
    """z with P(|N(0, 1)| < z) = q, by bisection on erf (no scipy)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2.0)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _end(kind: str) -> str:
    return kind.rpartition("/")[2]


def _errors(rows: list[dict]) -> list[tuple[str, float, float]]:
    """(kind, |error| m, tilt degrees or NaN) of the rows in the calibrated range that have a
    distance and a kind."""
    lo, hi = GAP_RANGE
    out = []
    for r in rows:
        true, got, kind = r.get("true_m"), r.get("measured_m"), r.get("kind")
        if true is None or got is None or not kind or not lo <= true <= hi:
            continue
        if math.isfinite(got):
            tilt = r.get("tilt_deg")
            out.append((kind, abs(got - true), float("nan") if tilt is None else float(tilt)))
    return out


@dataclass
class DistanceUncertainty:
    sigma_m: dict[str, float]  # by Measurement.kind
    by_end_m: dict[str, float]  # by the end alone, for kinds not calibrated
    fallback_m: float
    quantile: float = 0.95
    calibration: dict = field(default_factory=dict)  # what it was fitted on
    steep_deg: float = STEEP_DEG
    steep_factor: float = 1.0
    flat_factor: float = 1.0

    def sigma(self, kind: str, tilt_deg: float | None = None) -> float:
        """The standard deviation (m) of a distance measured as ``kind`` on a shaft
        ``tilt_deg`` from the optical axis (None or NaN: unscaled); NaN (not known) for no kind
        (no distance), and for a method the calibration did not see often enough: the depth
        map's axis, rare and off by millimetres when it comes, is not vouched for."""
        base = self._base(kind)
        if tilt_deg is None or not math.isfinite(tilt_deg):
            return base
        return base * (self.steep_factor if tilt_deg < self.steep_deg else self.flat_factor)

    def _base(self, kind: str) -> float:
        if not kind:
            return float("nan")
        if kind in self.sigma_m:
            return self.sigma_m[kind]
        method = kind.partition("/")[0]
        if not any(k.partition("/")[0] == method for k in self.sigma_m):
            return float("nan")
        return self.by_end_m.get(_end(kind), self.fallback_m)

    @classmethod
    def fit(
        cls,
        rows: list[dict],
        quantile: float = 0.95,
        min_frames: int = 20,
        calibration: dict | None = None,
    ) -> DistanceUncertainty:
        """From ``eval distance --frames`` rows (their ``kind``, ``true_m``, ``measured_m``)."""
        if not 0.5 <= quantile < 1.0:
            raise InputError(f"quantile must be in [0.5, 1), got {quantile}")
        if min_frames < 1:
            raise InputError(f"min_frames must be >= 1, got {min_frames}")
        errs = _errors(rows)
        if len(errs) < min_frames:
            raise InputError(
                f"{len(errs)} frames with a measured distance, a kind and a gap of 0.05-3 mm: "
                f"need at least {min_frames} (frames files of `eval distance --frames` from this "
                "version, which records each frame's kind)"
            )
        z = normal_quantile(quantile)

        def sigma(values: list[float]) -> float:
            return float(np.quantile(values, quantile)) / z

        groups: dict[str, list[float]] = {}
        ends: dict[str, list[float]] = {}
        for kind, e, _ in errs:
            groups.setdefault(kind, []).append(e)
            ends.setdefault(_end(kind), []).append(e)
        info = dict(calibration or {})
        info.update(
            {
                "frames": len(errs),
                "counts": {k: len(v) for k, v in sorted(groups.items())},
                "min_frames": min_frames,
            }
        )
        model = cls(
            sigma_m={k: sigma(v) for k, v in sorted(groups.items()) if len(v) >= min_frames},
            by_end_m={k: sigma(v) for k, v in sorted(ends.items()) if len(v) >= min_frames},
            fallback_m=sigma([e for _, e, _ in errs]),
            quantile=quantile,
            calibration=info,
        )
        # The steep and the other shafts' errors over their kind's sigma, against all frames'.
        scaled = [(e / model._base(k), t) for k, e, t in errs if math.isfinite(model._base(k))]
        steep = [z for z, t in scaled if t < model.steep_deg]
        flat = [z for z, t in scaled if t >= model.steep_deg]
        if len(steep) >= min_frames and len(flat) >= min_frames:
            every = float(np.quantile([z for z, t in scaled if math.isfinite(t)], quantile))
            model.steep_factor = float(np.quantile(steep, quantile)) / every
            model.flat_factor = float(np.quantile(flat, quantile)) / every
        info["steep_frames"], info["flat_frames"] = len(steep), len(flat)
        return model

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "quantile": self.quantile,
            "sigma_m": self.sigma_m,
            "by_end_m": self.by_end_m,
            "fallback_m": self.fallback_m,
            "steep": {
                "below_deg": self.steep_deg,
                "factor": self.steep_factor,
                "others_factor": self.flat_factor,
            },
            "calibration": self.calibration,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DistanceUncertainty:
        fix = "(write one with `micro-perception train uncertainty`, or set it to none)"
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"distance uncertainty file {path} does not exist {fix}") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read distance uncertainty file {path}: {exc} {fix}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{path} is not a distance uncertainty file ({FORMAT}) {fix}")

        def table(name: str) -> dict[str, float]:
            t = data.get(name)
            if not isinstance(t, dict) or not all(_positive(v) for v in t.values()):
                raise InputError(f"{path}: {name} must map kinds to sigmas > 0 (m) {fix}")
            return {str(k): float(v) for k, v in t.items()}

        if not _positive(data.get("fallback_m")) or not _positive(data.get("quantile")):
            raise InputError(f"{path}: fallback_m and quantile must be numbers > 0 {fix}")
        steep = data.get("steep", {"below_deg": STEEP_DEG, "factor": 1.0, "others_factor": 1.0})
        if not isinstance(steep, dict) or not all(
            _positive(steep.get(k)) for k in ("below_deg", "factor", "others_factor")
        ):
            raise InputError(f"{path}: steep must hold below_deg, factor, others_factor > 0 {fix}")
        return cls(
            table("sigma_m"),
            table("by_end_m"),
            float(data["fallback_m"]),
            float(data["quantile"]),
            dict(data.get("calibration") or {}),
            float(steep["below_deg"]),
            float(steep["factor"]),
            float(steep["others_factor"]),
        )


def _positive(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def coverage(rows: list[dict], multiples=(1.0, 2.0, 3.0)) -> dict:
    """How often the truth lies within k sigma of the distance, over rows that carry
    ``sigma_m`` (``eval distance`` with an uncertainty model), overall and by kind."""
    lo, hi = GAP_RANGE
    sel = [
        r
        for r in rows
        if r.get("kind")
        and lo <= r["true_m"] <= hi
        and math.isfinite(r["measured_m"])
        and r.get("sigma_m") is not None
        and math.isfinite(r["sigma_m"])
    ]

    def within(group: list[dict]) -> dict:
        z = np.array([abs(r["measured_m"] - r["true_m"]) / r["sigma_m"] for r in group])
        s = np.array([r["sigma_m"] for r in group])
        return {
            "n": len(group),
            "sigma_median_um": float(np.median(s) * 1e6),
            **{f"within_{k:g}_sigma": float(np.mean(z <= k)) for k in multiples},
        }

    if not sel:
        return {"n": 0}
    by_kind = {}
    for kind in sorted({r["kind"] for r in sel}):
        by_kind[kind] = within([r for r in sel if r["kind"] == kind])
    return within(sel) | {"by_kind": by_kind}
