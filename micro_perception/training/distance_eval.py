"""Evaluating the instrument-to-retina distance: ``micro-perception eval distance`` (no ROS).

On a simulated set, per frame, the depth pipeline's distance (along the retina normal, or the
optical axis with ``mode="axial"``) against the scene's exact gap from the instrument's surface:

* ``mae_um`` / ``p95_um``: absolute error over frames whose tip is 0.05-3 mm above the retina
  and whose distance was measured, also ``by_range`` of true distance;
* ``tip_detect``: the share of those frames with a measured distance (unknown is not a guess);
* ``miss`` / ``false_alarm``: the proximity alert at ``alert_distance`` frame by frame (no
  hysteresis): frames truly closer than it without an alert, and frames not closer (including
  frames with no instrument) with one;
* ``alert_margins``: the same two rates were the alert set ``margin`` um above
  ``alert_distance`` (a guard band for the measurement's error: set ``alert_distance`` to the
  safety distance plus the margin), and ``margin_for_no_miss_um``, the least margin that misses
  no frame here (inf when a close frame has no distance at all);
* ``alert_sigma_margins``: the same with each frame's own guard band, ``k`` times its
  calibrated sigma (a pipeline with an uncertainty model), and the bands' mean;
* ``uncertainty``: how often the truth lies within 1, 2 and 3 sigmas of the distance, overall
  and by how the frame was measured (``kind``);
* ``by_instrument``: MAE, p95 and tip detection of each instrument kind;
* ``*_ci95*``: 95 % intervals (``training.stats``): a bootstrap over frames for the MAE and
  p95, exact binomial for the alert's rates, whose counts are in ``alert_counts``. A few hundred
  frames leave the MAE uncertain by several micrometres;
* ``tip_error_um``: mean 3D distance between the measured and the true tip;
* ``ms``: median milliseconds of the pipeline per frame on this machine.

``compare_frames`` (``eval compare``) pairs two runs' ``--frames`` files frame by frame: the
difference of their MAE with a paired interval, and the frames whose alert changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from micro_perception.depth.pipeline import DepthPipeline
from micro_perception.errors import InputError
from micro_perception.fusion.fuser import Fuser
from micro_perception.geometry import METHODS
from micro_perception.sim.dataset import dataset_stereo_pair, find_stacks, jaw_reach
from micro_perception.training.depth_eval import eval_frame
from micro_perception.training.stats import binomial_ci, bootstrap_ci, p95, paired_bootstrap_ci
from micro_perception.uncertainty import GAP_RANGE, coverage

RANGES = (("<0.5mm", 0.0, 0.5e-3), ("0.5-1.5mm", 0.5e-3, 1.5e-3), (">1.5mm", 1.5e-3, np.inf))
MARGINS_UM = (0, 25, 50, 75, 100, 150, 200)
SIGMA_MARGINS = (0.5, 1.0, 2.0)


def _stats(err_um: list[float]) -> dict:
    if not err_um:
        return {"n": 0, "mae_um": None, "p95_um": None, "mae_ci95_um": None}
    a = np.abs(np.asarray(err_um))
    return {
        "n": len(a),
        "mae_um": float(a.mean()),
        "p95_um": float(np.percentile(a, 95)),
        "mae_ci95_um": bootstrap_ci(a),
    }


def evaluate_distance(
    data: str | Path,
    pipeline: DepthPipeline,
    input_kind: str = "fused",
    oracle_masks: bool = False,
    mode: str = "normal",
    alert_distance: float = 0.5e-3,
    limit: int | None = None,
    progress: bool = True,
    known_instrument: bool = False,
) -> dict:
    """``known_instrument``: each frame's geometry is told its instrument, as a robot that
    knows its mounted tool would (``symmetric_jaws`` for forceps, ``jaw_reach`` for forceps and
    scissors)."""
    if input_kind not in ("fused", "aif"):
        raise InputError(f"input must be fused or aif, got {input_kind!r}")
    if mode not in ("normal", "axial"):
        raise InputError(f"mode must be normal or axial, got {mode!r}")
    root = Path(data)
    pair = dataset_stereo_pair(root)
    fuser = Fuser("net", "cpu") if input_kind == "fused" else None
    records = find_stacks(root)[:limit]
    base = pipeline.cfg
    try:
        rows = _measure_frames(
            records, pipeline, fuser, pair, oracle_masks, mode, progress, known_instrument
        )
    finally:
        pipeline.cfg = base
    out = summarise(rows, alert_distance, input_kind, oracle_masks, mode, pipeline, str(root))
    out["_meta"]["instrument_known"] = known_instrument
    return out


def _measure_frames(records, pipeline, fuser, pair, oracle_masks, mode, progress, known):
    """One row per frame: the measured distance against the scene's truth."""
    from tqdm import tqdm

    base = pipeline.cfg
    rows = []
    for rec in tqdm(records, desc="eval distance", unit="frame", disable=not progress):
        meta = json.loads((rec.root / "meta.json").read_text())
        if known:
            told = replace(
                base.geometry,
                symmetric_jaws=meta.get("instrument") == "forceps",
                jaw_reach=jaw_reach(rec.root, meta),
            )
            pipeline.cfg = replace(base, geometry=told)
        gts, _, images = eval_frame(rec, fuser)
        masks = None
        if oracle_masks:
            if "mask" not in gts["left"] or "mask" not in gts["right"]:
                raise InputError(f"{rec.root} has no masks for the oracle-mask evaluation")
            masks = (gts["left"]["mask"], gts["right"]["mask"])
        t0 = time.perf_counter()
        res = pipeline(images["left"], images["right"], pair, masks=masks)
        ms = (time.perf_counter() - t0) * 1e3
        m = res.measurement
        true = meta.get(f"gap_{mode}_m")
        true = float("inf") if true is None else float(true)
        tip = meta.get("tip_m")
        tip_err = (
            float(np.linalg.norm(m.tip_xyz - np.asarray(tip)) * 1e6)
            if tip is not None and m.tip_xyz is not None and m.ok
            else None
        )
        rows.append(
            {
                "frame": rec.root.name,
                "instrument": meta.get("instrument"),
                "true_m": true,
                "measured_m": m.distance(mode) if m.ok else float("inf"),
                "method": m.method,
                "kind": m.kind if m.ok else "",
                "sigma_m": float(m.sigma) if np.isfinite(m.sigma) else None,
                # The shaft's angle to the optical axis, and the retina fit's residual: what
                # else a frame's error may depend on.
                "tilt_deg": m.tilt_deg if m.ok and m.axis is not None else None,
                "residual_um": float(m.retina.residual * 1e6) if m.retina else None,
                "reason": m.reason,
                "tip_error_um": tip_err,
                "ms": ms,
            }
        )
    return rows


def summarise(rows, alert_distance, input_kind, oracle_masks, mode, pipeline, data) -> dict:
    lo, hi = GAP_RANGE
    in_range = [r for r in rows if lo <= r["true_m"] <= hi]
    measured = [r for r in in_range if np.isfinite(r["measured_m"])]
    err = [(r["measured_m"] - r["true_m"]) * 1e6 for r in measured]
    by_range = {}
    for name, a, b in RANGES:
        sel = [(r["measured_m"] - r["true_m"]) * 1e6 for r in measured if a <= r["true_m"] < b]
        by_range[name] = _stats(sel)
    by_instrument = {}
    for kind in sorted({str(r["instrument"]) for r in in_range}):
        mine = [r for r in in_range if str(r["instrument"]) == kind]
        sel = [(r["measured_m"] - r["true_m"]) * 1e6 for r in mine if np.isfinite(r["measured_m"])]
        by_instrument[kind] = _stats(sel) | {"tip_detect": len(sel) / len(mine)}
    margins = {}  # "0": the alert as set
    for um in MARGINS_UM:
        c = _alert_counts(rows, alert_distance, alert_distance + um * 1e-6)
        margins[str(um)] = _rates(c)
    sigma_margins = {}  # the alert on below alert_distance plus k of each frame's sigmas
    if any(r.get("sigma_m") is not None for r in rows):
        for k in SIGMA_MARGINS:
            shifted = [
                r | {"measured_m": r["measured_m"] - k * (r.get("sigma_m") or 0.0)} for r in rows
            ]
            c = _alert_counts(shifted, alert_distance)
            sigmas = [k * r["sigma_m"] * 1e6 for r in rows if r.get("sigma_m") is not None]
            sigma_margins[f"{k:g}"] = _rates(c) | {"mean_margin_um": float(np.mean(sigmas))}
    counts = _alert_counts(rows, alert_distance)
    worst = max((r["measured_m"] for r in rows if r["true_m"] < alert_distance), default=None)
    tips = [r["tip_error_um"] for r in measured if r["tip_error_um"] is not None]
    summary = _stats(err)
    return {
        "mae_um": summary["mae_um"],
        "p95_um": summary["p95_um"],
        # 95 % intervals: a bootstrap over frames, exact binomial for the alert's rates.
        "mae_ci95_um": summary["mae_ci95_um"],
        "p95_ci95_um": bootstrap_ci(np.abs(err), p95),
        "bias_um": float(np.mean(err)) if err else None,
        "by_range": by_range,
        "by_instrument": by_instrument,
        "false_alarm": margins["0"]["false_alarm"],
        "miss": margins["0"]["miss"],
        **_alert_intervals(counts),
        "alert_counts": counts,
        "alert_margins": margins,
        "alert_sigma_margins": sigma_margins,
        # How often the truth lies within 1, 2 and 3 of the frames' sigmas (uncertainty.py).
        "uncertainty": coverage(rows),
        "margin_for_no_miss_um": (
            None if worst is None else max(0.0, (worst - alert_distance) * 1e6)
        ),
        "tip_detect": (len(measured) / len(in_range)) if in_range else None,
        "tip_error_um": float(np.mean(tips)) if tips else None,
        "ms": float(np.median([r["ms"] for r in rows])) if rows else None,
        "_meta": {
            "frames": len(rows),
            "in_range": len(in_range),
            "input": input_kind,
            "masks": "oracle" if oracle_masks else pipeline.mask_source,
            # A stand-in pipeline (a test's, a replay's) may name no refiner.
            "edge_refiner": None
            if oracle_masks or getattr(pipeline, "edge_weights", None) is None
            else str(pipeline.edge_weights),
            "seg_px_per_mm": None if oracle_masks else getattr(pipeline, "seg_px_per_mm", None),
            "uncertainty": None
            if oracle_masks or getattr(pipeline, "uncertainty_file", None) is None
            else str(pipeline.uncertainty_file),
            "mode": mode,
            "alert_distance_m": alert_distance,
            "data": data,
            "threads": torch.get_num_threads(),
            "methods": {m: sum(r["method"] == m for r in measured) for m in METHODS},
        },
        "_frames": rows,
    }


def load_frames(path: str | Path) -> list[dict]:
    """The per-frame rows ``eval distance --frames`` wrote."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read frames file {path}: {exc}") from exc
    keys = {"frame", "true_m", "measured_m"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and keys <= set(r) for r in rows):
        raise InputError(
            f"{path} is not an `eval distance --frames` file (a list of rows with {sorted(keys)})"
        )
    return rows


def _alert_counts(rows: list[dict], alert_distance: float, on: float | None = None) -> dict:
    """The alert, on where the measured distance is below ``on`` (default: ``alert_distance``),
    frame by frame against the truth (closer than ``alert_distance``): how many frames were
    close and missed, and not close and alarmed."""
    on = alert_distance if on is None else on
    close = [r["measured_m"] < on for r in rows if r["true_m"] < alert_distance]
    far = [r["measured_m"] < on for r in rows if not r["true_m"] < alert_distance]
    return {
        "close": len(close),
        "missed": close.count(False),
        "not_close": len(far),
        "false_alarms": sum(far),
    }


def _rates(counts: dict) -> dict:
    """The miss and false-alarm rates of ``_alert_counts`` (None where no frame counts)."""
    c = counts
    return {
        "miss": (c["missed"] / c["close"]) if c["close"] else None,
        "false_alarm": (c["false_alarms"] / c["not_close"]) if c["not_close"] else None,
    }


def _alert_intervals(counts: dict) -> dict:
    """Exact 95 % intervals of the miss and false-alarm rates of ``_alert_counts``."""
    return {
        "false_alarm_ci95": binomial_ci(counts["false_alarms"], counts["not_close"]),
        "miss_ci95": binomial_ci(counts["missed"], counts["close"]),
    }


def _alert_wrong(row: dict, alert_distance: float) -> bool:
    return (row["measured_m"] < alert_distance) != (row["true_m"] < alert_distance)


def compare_frames(base: list[dict], new: list[dict], alert_distance: float = 0.5e-3) -> dict:
    """Two ``eval distance --frames`` runs on the same frames, paired frame by frame.

    ``mae_diff_um``/``p95_diff_um``: new minus base over the frames in range that both
    measured, with a paired bootstrap 95 % interval; ``verdict`` is ``better`` or ``worse`` only
    where that interval of the MAE excludes 0. The alert's outcome on every shared frame:
    ``fixed`` (wrong in base, right in new) and ``broken`` frames by name.
    """
    by_name = {r["frame"]: r for r in base}
    shared = [(by_name[r["frame"]], r) for r in new if r["frame"] in by_name]
    if not shared:
        raise InputError("the two frame files have no frame in common")
    for a, b in shared:
        if abs(float(a["true_m"]) - float(b["true_m"])) > 1e-9:
            raise InputError(
                f"frame {a['frame']}: true distances differ ({a['true_m']} and {b['true_m']}); "
                "the two files come from different data"
            )
    lo, hi = GAP_RANGE
    in_range = [(a, b) for a, b in shared if lo <= a["true_m"] <= hi]
    both = [
        (a, b)
        for a, b in in_range
        if np.isfinite(a["measured_m"]) and np.isfinite(b["measured_m"])
    ]
    ea = np.array([abs(a["measured_m"] - a["true_m"]) * 1e6 for a, _ in both])
    eb = np.array([abs(b["measured_m"] - b["true_m"]) * 1e6 for _, b in both])
    mae_ci = paired_bootstrap_ci(ea, eb)
    verdict = "no difference shown"
    if mae_ci is not None and mae_ci[1] < 0:
        verdict = "better"
    elif mae_ci is not None and mae_ci[0] > 0:
        verdict = "worse"
    by_instrument = {}
    for kind in sorted({str(a.get("instrument")) for a, _ in both}):
        sel = [i for i, (a, _) in enumerate(both) if str(a.get("instrument")) == kind]
        by_instrument[kind] = {
            "n": len(sel),
            "base_mae_um": float(ea[sel].mean()),
            "new_mae_um": float(eb[sel].mean()),
            "mae_diff_ci95_um": paired_bootstrap_ci(ea[sel], eb[sel]),
        }
    change = eb - ea
    order = np.argsort(change)
    moved = [
        {
            "frame": both[i][0]["frame"],
            "instrument": both[i][0].get("instrument"),
            "true_um": both[i][0]["true_m"] * 1e6,
            "base_error_um": (both[i][0]["measured_m"] - both[i][0]["true_m"]) * 1e6,
            "new_error_um": (both[i][1]["measured_m"] - both[i][1]["true_m"]) * 1e6,
            "change_um": float(change[i]),
        }
        for i in order
    ]

    def alert(side: int) -> dict:
        counts = _alert_counts([pair[side] for pair in shared], alert_distance)
        return counts | _alert_intervals(counts)

    fixed, broken = [], []
    for a, b in shared:
        before, after = _alert_wrong(a, alert_distance), _alert_wrong(b, alert_distance)
        if before != after:
            (fixed if before else broken).append(a["frame"])
    return {
        "frames": len(shared),
        "only_in_base": len(base) - len(shared),
        "only_in_new": len(new) - len(shared),
        "paired": len(both),
        # Python ints: numpy's bools sum to numpy ints, which json cannot write.
        "measured_by_base_only": sum(
            bool(np.isfinite(a["measured_m"]) and not np.isfinite(b["measured_m"]))
            for a, b in in_range
        ),
        "measured_by_new_only": sum(
            bool(np.isfinite(b["measured_m"]) and not np.isfinite(a["measured_m"]))
            for a, b in in_range
        ),
        "base_mae_um": float(ea.mean()) if len(ea) else None,
        "new_mae_um": float(eb.mean()) if len(eb) else None,
        "mae_diff_um": float(change.mean()) if len(ea) else None,
        "mae_diff_ci95_um": mae_ci,
        "base_p95_um": float(np.percentile(ea, 95)) if len(ea) else None,
        "new_p95_um": float(np.percentile(eb, 95)) if len(eb) else None,
        "p95_diff_ci95_um": paired_bootstrap_ci(ea, eb, p95),
        "verdict": verdict,
        "by_instrument": by_instrument,
        "alert_distance_m": alert_distance,
        "alert": {"base": alert(0), "new": alert(1)},
        "alert_fixed": fixed,
        "alert_broken": broken,
        "most_improved": [m for m in moved if m["change_um"] < 0][:5],
        "most_worsened": [m for m in moved[::-1] if m["change_um"] > 0][:5],
    }
