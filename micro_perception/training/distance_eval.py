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
* ``by_instrument``: MAE, p95 and tip detection of each instrument kind;
* ``tip_error_um``: mean 3D distance between the measured and the true tip;
* ``ms``: median milliseconds of the pipeline per frame on this machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from micro_perception.depth.pipeline import DepthPipeline
from micro_perception.errors import InputError
from micro_perception.fusion.fuser import Fuser
from micro_perception.geometry import METHODS
from micro_perception.sim.dataset import dataset_stereo_pair, find_stacks
from micro_perception.training.depth_eval import eval_frame

RANGES = (("<0.5mm", 0.0, 0.5e-3), ("0.5-1.5mm", 0.5e-3, 1.5e-3), (">1.5mm", 1.5e-3, np.inf))
MARGINS_UM = (0, 25, 50, 75, 100, 150, 200)
GAP_RANGE = (0.05e-3, 3.0e-3)


def _stats(err_um: list[float]) -> dict:
    if not err_um:
        return {"n": 0, "mae_um": None, "p95_um": None}
    a = np.abs(np.asarray(err_um))
    return {"n": len(a), "mae_um": float(a.mean()), "p95_um": float(np.percentile(a, 95))}


def evaluate_distance(
    data: str | Path,
    pipeline: DepthPipeline,
    input_kind: str = "fused",
    oracle_masks: bool = False,
    mode: str = "normal",
    alert_distance: float = 0.5e-3,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    if input_kind not in ("fused", "aif"):
        raise InputError(f"input must be fused or aif, got {input_kind!r}")
    if mode not in ("normal", "axial"):
        raise InputError(f"mode must be normal or axial, got {mode!r}")
    root = Path(data)
    pair = dataset_stereo_pair(root)
    fuser = Fuser("net", "cpu") if input_kind == "fused" else None
    records = find_stacks(root)[:limit]
    rows = []
    for rec in tqdm(records, desc="eval distance", unit="frame", disable=not progress):
        meta = json.loads((rec.root / "meta.json").read_text())
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
                "reason": m.reason,
                "tip_error_um": tip_err,
                "ms": ms,
            }
        )
    return summarise(rows, alert_distance, input_kind, oracle_masks, mode, pipeline, str(root))


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
        on = alert_distance + um * 1e-6
        c = [r["measured_m"] < on for r in rows if r["true_m"] < alert_distance]
        f = [r["measured_m"] < on for r in rows if not r["true_m"] < alert_distance]
        margins[str(um)] = {
            "miss": (c.count(False) / len(c)) if c else None,
            "false_alarm": (sum(f) / len(f)) if f else None,
        }
    worst = max((r["measured_m"] for r in rows if r["true_m"] < alert_distance), default=None)
    tips = [r["tip_error_um"] for r in measured if r["tip_error_um"] is not None]
    summary = _stats(err)
    return {
        "mae_um": summary["mae_um"],
        "p95_um": summary["p95_um"],
        "bias_um": float(np.mean(err)) if err else None,
        "by_range": by_range,
        "by_instrument": by_instrument,
        "false_alarm": margins["0"]["false_alarm"],
        "miss": margins["0"]["miss"],
        "alert_margins": margins,
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
            "mode": mode,
            "alert_distance_m": alert_distance,
            "data": data,
            "threads": torch.get_num_threads(),
            "methods": {m: sum(r["method"] == m for r in measured) for m in METHODS},
        },
        "_frames": rows,
    }
