"""The GPU stereo teacher on a CUDA machine (run by tools/device_gpu_stereo.sh): is the Triton
kernel the tensor loop, bit for bit; is the whole matcher on CUDA what it is on the CPU; how
close to the rendered ground truth is it, against OpenCV; and where its time goes."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import torch

from micro_perception.depth import sgm
from micro_perception.depth.stereo import StereoConfig, _grey, disparity_range, stereo_depth
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import render_sample
from micro_perception.sim.scene import make_scene

# DEVICE=cpu TRITON_INTERPRET=1 SIZES=96x128 runs it here as a dry run of the script itself.
cuda = torch.device(os.environ.get("DEVICE", "cuda"))
SIZES = [
    tuple(map(int, s.split("x"))) for s in os.environ.get("SIZES", "512x512,1080x1920").split(",")
]


def sync():
    if cuda.type == "cuda":
        torch.cuda.synchronize()


def ms(fn, runs=10):
    fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


g = torch.Generator().manual_seed(0)
cost = torch.randint(0, 49, (16, 24, 40) if cuda.type == "cpu" else (64, 96, 128), generator=g).to(
    torch.int16
)
same = torch.equal(
    sgm.aggregate_torch(cost, 6, 48), sgm.aggregate_triton(cost.to(cuda), 6, 48).cpu()
)
print(f"triton kernel on {cuda} == tensor loop on CPU {tuple(cost.shape)}:", same)


def check(h: int, w: int) -> None:
    optics = MicroscopeOptics().scaled_to(h, w)
    pair = optics.stereo()
    sample = render_sample(make_scene(6_000_000, optics), optics, 2)
    left, right = sample.left.aif, sample.right.aif
    cfg = StereoConfig(backend="torch")
    if cuda.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gpu = stereo_depth(left, right, pair, cfg, cuda)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda.type == "cuda" else float("nan")
    ocv = stereo_depth(left, right, pair, StereoConfig(backend="opencv"))
    gt = sample.left.depth
    # The retina: away from the instrument, whose depth comes from its silhouettes.
    near = cv2.dilate((sample.left.mask > 0).astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
    for name, r in (("opencv", ocv), (f"torch@{cuda}", gpu)):
        ok = np.isfinite(r.depth) & (r.confidence > 0.2) & ~near
        err = np.abs(r.depth - gt)[ok] * 1e6
        print(
            f"{h}x{w} {name:11s} coverage {ok.mean():.2f} retina median |error| "
            f"{np.median(err):.1f} um, p90 {np.percentile(err, 90):.1f} um"
        )
    if h * w <= 512 * 512:
        cpu = stereo_depth(left, right, pair, cfg, torch.device("cpu"))
        both = np.isfinite(cpu.disparity) & np.isfinite(gpu.disparity)
        print(
            "torch stereo CUDA vs CPU: unknown pixels differ",
            int((np.isfinite(cpu.disparity) != np.isfinite(gpu.disparity)).sum()),
            "max disparity difference",
            float(np.abs(cpu.disparity - gpu.disparity)[both].max()),
        )
    d_min, n_disp = disparity_range(pair, cfg)
    gl = torch.from_numpy(_grey(left)).to(cuda).float()
    gr = torch.from_numpy(_grey(right)).to(cuda).float()
    codes = sgm.census(gl), sgm.census(gr)
    vol = sgm.cost_volume_triton(*codes, d_min, n_disp, 3)
    total = sgm.aggregate_triton(vol, 6, 48)
    parts = {
        "census": ms(lambda: (sgm.census(gl), sgm.census(gr))),
        "cost volume (triton)": ms(lambda: sgm.cost_volume_triton(*codes, d_min, n_disp, 3)),
        "aggregation (triton)": ms(lambda: sgm.aggregate_triton(vol, 6, 48), runs=3),
        "winners, both views (triton)": ms(lambda: sgm.winners_triton(total, d_min, 5)),
        "stereo_depth (all, to numpy)": ms(lambda: stereo_depth(left, right, pair, cfg, cuda)),
        "opencv stereo_depth (CPU)": ms(lambda: stereo_depth(left, right, pair), runs=3),
        "torch stereo_depth (CPU)": ms(
            lambda: stereo_depth(left, right, pair, cfg, torch.device("cpu")), runs=1
        )
        if h * w <= 512 * 512
        else float("nan"),
    }
    print(f"{h}x{w}, {n_disp} disparities, peak GPU memory {peak:.0f} MB, median ms:")
    for k, v in parts.items():
        print(f"  {k:30s} {v:8.2f}")


for h, w in SIZES:
    check(h, w)
