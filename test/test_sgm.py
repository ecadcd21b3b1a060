"""Semi-global matching in torch (the GPU stereo teacher), checked on the CPU: its parts, its
Triton kernel against the tensor loop under Triton's interpreter, and a known shift."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from micro_perception.depth import sgm
from micro_perception.depth.stereo import StereoConfig, resolve_backend


def test_popcount_and_census_codes():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << 55, 1000)
    counts = sgm.popcount(torch.from_numpy(values))
    assert counts.tolist() == [bin(int(v)).count("1") for v in values]
    grey = torch.zeros(5, 5)
    grey[2, 2] = 1.0  # a bright centre: every neighbour is darker
    code = sgm.census(grey, radius=1)
    assert int(code[2, 2]) == 0xFF
    assert int(code[0, 0]) == 0  # nothing darker than a dark pixel


def test_triton_kernels_match_the_tensor_code():
    """Cost volume and path sums bit for bit, disparities to float rounding (CUDA divides
    approximately), run by Triton's interpreter on CPU tensors."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from micro_perception.depth import sgm\n"
        "g = torch.Generator().manual_seed(0)\n"
        "cost = torch.randint(0, 49, (7, 11, 21), generator=g).to(torch.int16)\n"
        "a, b = sgm.aggregate_torch(cost, 6, 48), sgm.aggregate_triton(cost, 6, 48)\n"
        "assert a.dtype == b.dtype == torch.int16 and torch.equal(a, b)\n"
        "grey = torch.rand((12, 40), generator=g) * 255\n"
        "codes = sgm.census(grey), sgm.census(torch.roll(grey, -2, 1))\n"
        "ct = sgm.cost_volume_torch(*codes, -5, 16, 3)\n"
        "cr = sgm.cost_volume_triton(*codes, -5, 16, 3)\n"
        "assert torch.equal(ct, cr)\n"
        "total = sgm.aggregate_torch(ct, 32, 400)\n"
        "for t, r in zip(sgm.winners_torch(total, -5, 5), sgm.winners_triton(total, -5, 5)):\n"
        "    assert torch.equal(t.isnan(), r.isnan()) and t.isfinite().sum() > 100\n"
        "    assert torch.allclose(t[t.isfinite()], r[r.isfinite()], atol=1e-5)\n"
        "print('equal')\n"
    )
    # The interpreter runs the kernels on CPU tensors; it must be chosen before Triton loads.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "equal" in done.stdout, done.stderr[-2000:]


def test_aggregation_prefers_smooth_disparities():
    """One pixel whose own cost points elsewhere takes its neighbours' disparity."""
    cost = torch.full((1, 9, 5), 20, dtype=torch.int16)
    cost[0, :, 2] = 0  # every pixel matches best at disparity 2 ...
    cost[0, 4] = 20
    cost[0, 4, 0] = 15  # ... but one, slightly, at 0
    total = sgm.aggregate_torch(cost, 6, 48)
    assert int(total[0, 4].argmin()) == 2
    assert int(cost[0, 4].argmin()) == 0


@pytest.mark.parametrize("shift", [-3, 4])
def test_a_shifted_texture_gives_its_shift_in_both_views(shift):
    rng = np.random.default_rng(1)
    base = torch.from_numpy(rng.uniform(0, 255, (40, 90)).astype(np.float32))
    # d = u_left - u_right: the right view sees left pixel x at x - d.
    left = base[:, 10:80]
    right = base[:, 10 + shift : 80 + shift]
    disp_l, disp_r = sgm.sgm_disparity(left, right, -8, 16, 6, 48, 5, use_triton=False)
    inner = (slice(5, 35), slice(12, 58))
    assert torch.nanmedian(disp_l[inner]).item() == pytest.approx(shift, abs=0.05)
    assert torch.nanmedian(disp_r[inner]).item() == pytest.approx(shift, abs=0.05)
    assert torch.isfinite(disp_l[inner]).float().mean() > 0.9


def test_auto_backend_is_torch_on_cuda_and_opencv_elsewhere():
    auto = StereoConfig()
    assert resolve_backend(auto, torch.device("cuda")) == "torch"
    assert resolve_backend(auto, torch.device("cpu")) == "opencv"
    assert resolve_backend(auto, None) == "opencv"
    assert resolve_backend(StereoConfig(backend="torch"), None) == "torch"


def test_failing_kernels_warn_once_and_the_tensor_code_takes_over(monkeypatch):
    """Triton kernels launched on CPU tensors without the interpreter fail, as they would on a
    GPU Triton cannot build for: one warning naming the cause, then the same disparities."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(sgm, "_TRITON_FAILED", None)
    rng = np.random.default_rng(2)
    base = torch.from_numpy(rng.uniform(0, 255, (24, 60)).astype(np.float32))
    left, right = base[:, 5:50], base[:, 7:52]
    said = []
    args = (left, right, -4, 16, 6, 48, 5)
    got = sgm.sgm_disparity(*args, use_triton=True, warn=said.append)
    want = sgm.sgm_disparity(*args, use_triton=False)
    assert len(said) == 1 and "Triton kernels failed" in said[0] and sgm._TRITON_FAILED
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    # From then on the kernels are not tried again: no second warning.
    sgm.sgm_disparity(*args, warn=said.append)
    assert len(said) == 1
