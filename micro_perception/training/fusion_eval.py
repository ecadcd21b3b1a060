"""Evaluating fusion methods: ``micro-perception eval fusion`` (no ROS).

For every method (the network and each classical baseline): mean SSIM and PSNR of the fused
left image against the ground-truth all-in-focus image, with scikit-image's metrics on float RGB
in [0, 1] (``data_range=1.0``, SSIM over colour channels), and the median milliseconds per stack
on this machine (torch's threads, the chosen device). Where the data has depth, depth from focus
is scored too: RMSE against ground-truth depth in micrometres, over all pixels and over the
pixels it is confident about.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from micro_perception.errors import InputError
from micro_perception.fusion.classical import METHODS as CLASSICAL
from micro_perception.fusion.focus import depth_from_focus, sum_modified_laplacian
from micro_perception.fusion.network import load_fusion_net
from micro_perception.sim.dataset import find_stacks, read_ground_truth, read_rgb

ALL_METHODS = ("net", *CLASSICAL)
DFF_CONFIDENCE = 0.5  # pixels above this confidence count as "confident"


def fusers(methods, weights: str | Path | None, device: torch.device) -> dict[str, Callable]:
    out = {}
    for m in methods:
        if m == "net":
            if weights is None:
                raise InputError(
                    "method net needs weights: pass --weights or ship models/fusion.pt"
                )
            out[m] = load_fusion_net(weights, device)
        elif m in CLASSICAL:
            out[m] = CLASSICAL[m]
        else:
            raise InputError(f"unknown fusion method {m!r}; known: {list(ALL_METHODS)}")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate_fusion(
    data: str | Path,
    methods=ALL_METHODS,
    weights=None,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    device = torch.device(device)
    records = find_stacks(Path(data))[:limit]
    fuse = fusers(methods, weights, device)
    scores = {m: {"ssim": [], "psnr": [], "ms": []} for m in fuse}
    dff = {"rmse_um": [], "rmse_um_confident": [], "confident_fraction": []}
    warm = set()
    for rec in tqdm(records, desc="eval fusion", unit="stack", disable=not progress):
        gt = read_ground_truth(rec.root / "left")
        if "aif" not in gt:
            raise InputError(f"{rec.root / 'left'} has no aif.* ground truth to score against")
        slices = np.stack([read_rgb(p) for p in rec.slices["left"]])
        stack = torch.from_numpy(slices).permute(0, 3, 1, 2).float().div(255)[None].to(device)
        target = gt["aif"].astype(np.float64) / 255
        for name, fn in fuse.items():
            if name not in warm:  # first call pays for allocation and kernel selection
                fn(stack)
                warm.add(name)
            _sync(device)
            t0 = time.perf_counter()
            out = fn(stack)
            _sync(device)
            scores[name]["ms"].append((time.perf_counter() - t0) * 1e3)
            img = out.clamp(0, 1)[0].permute(1, 2, 0).double().cpu().numpy()
            scores[name]["ssim"].append(
                structural_similarity(target, img, channel_axis=2, data_range=1.0)
            )
            scores[name]["psnr"].append(peak_signal_noise_ratio(target, img, data_range=1.0))
        if "depth" in gt and rec.focus_distances is not None:
            volume = sum_modified_laplacian(stack, window=9)
            z = torch.from_numpy(rec.focus_distances).to(device)[None]
            depth, conf = depth_from_focus(volume, z)
            depth, conf = depth[0].double().cpu().numpy(), conf[0].cpu().numpy()
            valid = np.isfinite(gt["depth"])
            err_um = (depth - gt["depth"])[valid] * 1e6
            sure = conf[valid] > DFF_CONFIDENCE
            dff["rmse_um"].append(float(np.sqrt(np.mean(err_um**2))))
            if sure.any():
                dff["rmse_um_confident"].append(float(np.sqrt(np.mean(err_um[sure] ** 2))))
            dff["confident_fraction"].append(float(sure.mean()))
    result = {
        name: {
            "ssim": float(np.mean(s["ssim"])),
            "psnr": float(np.mean(s["psnr"])),
            "ms": float(np.median(s["ms"])),
        }
        for name, s in scores.items()
    }
    if dff["rmse_um"]:
        result["depth_from_focus"] = {k: float(np.mean(v)) if v else None for k, v in dff.items()}
    result["_meta"] = {
        "stacks": len(records),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data": str(data),
    }
    return result
