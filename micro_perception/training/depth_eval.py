"""Evaluating depth estimators: ``micro-perception eval depth`` (no ROS).

Per method, over a simulated set with ground truth (left camera):

* ``rmse_retina_um`` and ``rmse_instrument_um``: RMSE over retina and instrument pixels;
* ``rmse_boundary_um`` and ``rmse_interior_um``: within 3 px of an instrument edge, and elsewhere;
* ``absrel_from_retina``: AbsRel of the height above the retina's mean depth (a plain AbsRel at
  200 mm says nothing), over pixels at least 100 um away from that mean;
* ``coverage``: the fraction of pixels given a depth (the rest are unknown, NaN);
* ``ms``: median milliseconds per frame on this machine.

Inputs are the all-in-focus pair the depth node would see: the shipped fusion network's output
on each eye's sweep (``input="fused"``) or the ground-truth all-in-focus images (``"aif"``).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from micro_perception.depth.stereo import stereo_depth
from micro_perception.errors import InputError
from micro_perception.fusion.fuser import Fuser
from micro_perception.sim.dataset import (
    dataset_stereo_pair,
    find_stacks,
    read_ground_truth,
    read_rgb,
)

METHODS = ("combined", "net", "stereo", "dff")
BOUNDARY_PX = 3
ABSREL_MIN_HEIGHT = 100e-6


def _rmse_um(err: np.ndarray) -> float | None:
    err = err[np.isfinite(err)]
    return float(np.sqrt(np.mean(err**2)) * 1e6) if err.size else None


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    """The documented metrics of one frame (lists are averaged over frames by the caller)."""
    err = pred - gt
    inst = mask.astype(bool)
    kernel = np.ones((2 * BOUNDARY_PX + 1,) * 2, np.uint8)
    m8 = inst.astype(np.uint8)
    boundary = (cv2.dilate(m8, kernel) > 0) & ~(cv2.erode(m8, kernel) > 0)
    retina_mean = float(np.nanmean(gt[~inst]))
    height_gt = retina_mean - gt
    height_pred = retina_mean - pred
    far = np.abs(height_gt) >= ABSREL_MIN_HEIGHT
    rel = np.abs(height_pred - height_gt)[far] / np.abs(height_gt)[far]
    return {
        "rmse_retina_um": _rmse_um(err[~inst]),
        "rmse_instrument_um": _rmse_um(err[inst]) if inst.any() else None,
        "rmse_boundary_um": _rmse_um(err[boundary]) if boundary.any() else None,
        "rmse_interior_um": _rmse_um(err[~boundary]),
        "absrel_from_retina": float(np.nanmean(rel)) if np.isfinite(rel).any() else None,
        "coverage": float(np.isfinite(pred).mean()),
    }


def eval_frame(rec, fuser: Fuser | None):
    """(ground truth, slices, input images) of both eyes of one simulated frame; the input is
    the fusion network's output on each sweep, or with no fuser the ground-truth all-in-focus."""
    gts = {e: read_ground_truth(rec.root / e) for e in ("left", "right")}
    slices = {e: np.stack([read_rgb(p) for p in rec.slices[e]]) for e in ("left", "right")}
    if fuser is not None:
        images = {e: fuser(slices[e]) for e in ("left", "right")}
    else:
        if "aif" not in gts["left"]:
            raise InputError(f"{rec.root / 'left'} has no aif.png for input aif")
        images = {e: gts[e]["aif"] for e in ("left", "right")}
    return gts, slices, images


def evaluate_depth(
    data: str | Path,
    methods=("stereo", "dff"),
    input_kind: str = "fused",
    limit: int | None = None,
    progress: bool = True,
    weights: str | Path | None = None,
    seg_weights: str | Path | None = "default",
    edge_weights: str | Path | None = "default",
) -> dict:
    from tqdm import tqdm

    root = Path(data)
    pair = dataset_stereo_pair(root)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise InputError(f"unknown depth methods {sorted(unknown)}; known: {list(METHODS)}")
    if input_kind not in ("fused", "aif"):
        raise InputError(f"input must be fused or aif, got {input_kind!r}")
    fuser = Fuser("net", "cpu") if input_kind == "fused" else None
    net = None
    if "net" in methods:
        if weights is None:
            raise InputError("method net needs --weights (a depth network weights file)")
        from micro_perception.depth.network import load_depth_net

        net = load_depth_net(weights)
    combined = None
    if "combined" in methods:
        from micro_perception.depth.pipeline import DepthPipeline

        combined = DepthPipeline(seg_weights=seg_weights, device="cpu", edge_weights=edge_weights)
    dff = Fuser("sml", "cpu")
    records = find_stacks(root)[:limit]
    per = {m: {"ms": []} for m in methods}
    for rec in tqdm(records, desc="eval depth", unit="frame", disable=not progress):
        gts, slices, images = eval_frame(rec, fuser)
        if "depth" not in gts["left"]:
            raise InputError(f"{rec.root / 'left'} has no depth.npy ground truth")
        gt = gts["left"]["depth"]
        mask = gts["left"].get("mask", np.zeros(gt.shape, bool))
        for m in methods:
            t0 = time.perf_counter()
            if m == "net":
                with torch.inference_mode():
                    x = torch.from_numpy(images["left"]).permute(2, 0, 1).float().div(255)
                    pred = net(x[None])[0][0, 0].numpy()
            elif m == "combined":
                pred = combined(images["left"], images["right"], pair).depth
            elif m == "stereo":
                pred = stereo_depth(images["left"], images["right"], pair).depth
            else:
                if rec.focus_distances is None:
                    raise InputError(f"{rec.root} has no focus distances for depth from focus")
                pred = dff.focus_depth(slices["left"], rec.focus_distances)
            per[m]["ms"].append((time.perf_counter() - t0) * 1e3)
            for k, v in depth_metrics(pred.astype(np.float64), gt, mask).items():
                per[m].setdefault(k, []).append(v)
    result = {}
    for m, values in per.items():
        row = {}
        for k, v in values.items():
            v = [x for x in v if x is not None]
            row[k] = (float(np.median(v)) if k == "ms" else float(np.mean(v))) if v else None
        result[m] = row
    result["_meta"] = {
        "frames": len(records),
        "input": input_kind,
        "data": str(root),
        "threads": torch.get_num_threads(),
        "masks": combined.mask_source if combined is not None else None,
    }
    return result
