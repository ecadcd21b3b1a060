"""Semi-global matching in torch: the stereo teacher where the frames already are, on the GPU
(no ROS).

The same job as OpenCV's StereoSGBM in ``stereo.py``, which runs on the CPU and takes most of
a GPU machine's frame (69 ms of 197 at 512x512 on an H100 machine, 1.4 s at 1080p):

* matching cost: the Hamming distance between 7x7 census codes, which a highlight that differs
  between the two views changes less than it changes intensities;
* aggregation along four scanline paths (left, right, down, up) with the penalties P1 for a
  one-pixel disparity step and P2 for a larger one (Hirschmueller 2008);
* winner-take-all with a uniqueness ratio and a parabola through the neighbouring costs for the
  sub-pixel disparity;
* the right view's disparity from the same aggregated volume (the cost of right pixel x at
  disparity d is the left volume's at x + d), checked against the left's.

The path recurrence is sequential along each path. On CUDA with Triton, one kernel program runs
one scanline with its disparities in registers; elsewhere a loop of tensor operations over all
scanlines at once does the same integer arithmetic, bit for bit (tested against each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BIG = 1 << 20  # a cost no path can reach: padding outside the disparity range
_OUTSIDE = 32767  # the right view's cost where its left pixel is outside the image


def census(grey: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """(H, W) float -> (H, W) int64 codes: bit k set where neighbour k is darker than the
    centre, over the (2 radius + 1)^2 - 1 neighbours (48 bits for radius 3)."""
    if radius < 1 or (2 * radius + 1) ** 2 - 1 > 62:
        raise ValueError(f"census radius must be 1..3, got {radius}")
    h, w = grey.shape
    k = 2 * radius + 1
    pad = F.pad(grey[None, None], (radius,) * 4, mode="replicate")
    # All neighbours at once (a few kernels, not one per neighbour), row by row of the window.
    patches = F.unfold(pad, k)[0].view(k * k, h, w)
    centre = k * k // 2
    darker = torch.cat([patches[:centre], patches[centre + 1 :]]) < grey
    bits = torch.arange(k * k - 1, device=grey.device, dtype=torch.int64).view(-1, 1, 1)
    return (darker.to(torch.int64) << bits).sum(0)


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of non-negative int64 values below 2^56 (SWAR; no multiply that could
    overflow)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    total = x & 0xFF
    for shift in range(8, 56, 8):
        total = total + ((x >> shift) & 0xFF)
    return total


def cost_volume_torch(
    code_left: torch.Tensor,
    code_right: torch.Tensor,
    d_min: int,
    n_disp: int,
    radius: int,
    chunk: int = 16,
) -> torch.Tensor:
    """(H, W, D) int16 census distances of left pixel x and right pixel x - d, for d from
    d_min; the largest distance where x - d leaves the image. Disparities innermost, so that a
    scanline's disparities are one contiguous vector."""
    h, w = code_left.shape
    worst = (2 * radius + 1) ** 2 - 1
    dev = code_left.device
    # Right codes padded so that every x - d is a column; -1 marks outside the image.
    pad = max(0, d_min + n_disp - 1)
    padded = torch.full((h, pad + w + max(0, -d_min)), -1, dtype=torch.int64, device=dev)
    padded[:, pad : pad + w] = code_right
    cost = torch.empty((h, w, n_disp), dtype=torch.int16, device=dev)
    x = torch.arange(w, device=dev)[:, None]
    for i0 in range(0, n_disp, chunk):
        d = d_min + torch.arange(i0, min(n_disp, i0 + chunk), device=dev)[None, :]
        right = padded[:, x - d + pad]
        counts = popcount(code_left[:, :, None] ^ right)
        cost[:, :, i0 : i0 + d.shape[1]] = torch.where(right < 0, worst, counts).to(torch.int16)
    return cost


def _paths(shape: tuple[int, int, int]):
    """The four paths as (lines, positions, line stride, position stride) over an (H, W, D)
    contiguous volume, each forward then backward."""
    h, w, nd = shape
    for lines, positions, line_stride, pos_stride in ((h, w, w * nd, nd), (w, h, nd, w * nd)):
        yield lines, positions, line_stride, pos_stride, False
        yield lines, positions, line_stride, pos_stride, True


def aggregate_torch(cost: torch.Tensor, p1: int, p2: int) -> torch.Tensor:
    """Sum over the four paths of the SGM path costs, (H, W, D) int16 -> int16 (each path cost
    is at most the largest cost + p2, so four fit)."""
    c = cost.to(torch.int32)
    total = torch.zeros_like(c)
    for transpose in (False, True):
        cc = c.transpose(0, 1) if transpose else c
        tt = total.transpose(0, 1) if transpose else total
        big = torch.full((cc.shape[0], 1), _BIG, dtype=torch.int32, device=c.device)
        for reverse in (False, True):
            order = range(cc.shape[1] - 1, -1, -1) if reverse else range(cc.shape[1])
            prev = None
            for x in order:
                cur = cc[:, x]
                if prev is None:
                    step = cur
                else:
                    low = prev.min(1, keepdim=True).values
                    below = torch.cat([big, prev[:, :-1]], 1)
                    above = torch.cat([prev[:, 1:], big], 1)
                    jump = torch.minimum(prev, low + p2)
                    step = cur + torch.minimum(jump, torch.minimum(below, above) + p1) - low
                tt[:, x] += step
                prev = step
    return total.to(torch.int16)


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda" and not _interpreting():
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


_KERNELS = None


def _kernels():
    """The Triton kernels, built on first use (Triton is imported only here)."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    from types import SimpleNamespace

    import triton
    import triton.language as tl

    @triton.jit
    def cost_kernel(
        left_ptr,
        right_ptr,
        cost_ptr,
        w,
        d_min,
        n_disp,
        worst,
        BLOCK_X: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        y = tl.program_id(0)
        x = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
        d = tl.arange(0, BLOCK_D)
        in_x = x < w
        xr = x[:, None] - (d_min + d[None, :])
        seen = in_x[:, None] & (xr >= 0) & (xr < w)
        a = tl.load(left_ptr + y * w + x, mask=in_x, other=0)
        b = tl.load(right_ptr + y * w + xr, mask=seen, other=0)
        v = a[:, None] ^ b
        v = v - ((v >> 1) & 0x5555555555555555)
        v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
        v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
        count = v & 0xFF
        for shift in tl.static_range(8, 56, 8):
            count += (v >> shift) & 0xFF
        count = tl.where(seen, count, worst)
        store = in_x[:, None] & (d[None, :] < n_disp)
        offset = (y * w + x[:, None]) * n_disp + d[None, :]
        tl.store(cost_ptr + offset, count.to(tl.int16), mask=store)

    @triton.jit
    def path_kernel(
        cost_ptr,
        total_ptr,
        scratch_ptr,
        positions,
        line_stride,
        pos_stride,
        start,
        n_disp,
        p1,
        p2,
        BLOCK: tl.constexpr,
    ):
        line = tl.program_id(0)
        d = tl.arange(0, BLOCK)
        valid = d < n_disp
        base = line * line_stride + start
        scratch = scratch_ptr + line * (BLOCK + 2)
        prev = tl.load(cost_ptr + base + d, mask=valid, other=0).to(tl.int32)
        prev = tl.where(valid, prev, 1 << 20)
        acc = tl.load(total_ptr + base + d, mask=valid, other=0).to(tl.int32)
        tl.store(total_ptr + base + d, (acc + prev).to(tl.int16), mask=valid)
        for i in range(1, positions):
            off = base + i * pos_stride + d
            # Neighbouring disparities' costs through memory: a vector cannot be shifted.
            tl.store(scratch + 1 + d, prev)
            tl.debug_barrier()
            below = tl.load(scratch + d)
            above = tl.load(scratch + 2 + d)
            tl.debug_barrier()
            low = tl.min(prev, axis=0)
            cur = tl.load(cost_ptr + off, mask=valid, other=0).to(tl.int32)
            jump = tl.minimum(tl.minimum(prev, low + p2), tl.minimum(below, above) + p1)
            step = tl.where(valid, cur + jump - low, 1 << 20)
            acc = tl.load(total_ptr + off, mask=valid, other=0).to(tl.int32)
            tl.store(total_ptr + off, (acc + step).to(tl.int16), mask=valid)
            prev = step

    @triton.jit
    def winner_kernel(
        total_ptr,
        sub_ptr,
        ok_ptr,
        w,
        n_disp,
        d_min,
        uniqueness,
        RIGHT: tl.constexpr,
        BLOCK_X: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        y = tl.program_id(0)
        x = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
        d = tl.arange(0, BLOCK_D)
        in_x = x < w
        in_d = d < n_disp
        # For the right view (RIGHT 1), right pixel x at disparity d is left pixel x + d.
        xs = x[:, None] + RIGHT * (d_min + d[None, :])
        seen = in_x[:, None] & in_d[None, :] & (xs >= 0) & (xs < w)
        offset = (y * w + xs) * n_disp + d[None, :]
        s = tl.load(total_ptr + offset, mask=seen, other=32767).to(tl.int32)
        s = tl.where(in_d[None, :], s, 1 << 20)
        best = tl.min(s, axis=1)
        idx = tl.argmin(s, axis=1)
        step = d[None, :] - idx[:, None]
        second = tl.min(tl.where((step >= -1) & (step <= 1), 1 << 20, s), axis=1)
        lo = tl.sum(tl.where(step == -1, s, 0), axis=1).to(tl.float32)
        hi = tl.sum(tl.where(step == 1, s, 0), axis=1).to(tl.float32)
        unique = second.to(tl.int64) * (100 - uniqueness) >= best.to(tl.int64) * 100
        curve = tl.maximum(lo + hi - 2 * best.to(tl.float32), 1.0)
        sub = idx.to(tl.float32) + (lo - hi) / (2 * curve)
        ok = unique & (idx > 0) & (idx < n_disp - 1)
        tl.store(sub_ptr + y * w + x, sub, mask=in_x)
        tl.store(ok_ptr + y * w + x, ok.to(tl.int8), mask=in_x)

    _KERNELS = SimpleNamespace(
        cost=cost_kernel,
        path=path_kernel,
        winner=winner_kernel,
        next_pow2=triton.next_power_of_2,
    )
    return _KERNELS


def _tile(kernels, n_disp: int) -> tuple[int, int]:
    """Columns and disparities one program of the cost and winner kernels holds (about 4096
    values: all of a pixel's disparities, padded to a power of two)."""
    block_d = max(16, kernels.next_pow2(n_disp))
    return max(1, 4096 // block_d), block_d


def cost_volume_triton(code_left, code_right, d_min: int, n_disp: int, radius: int):
    """``cost_volume_torch`` with one Triton program per row and block of columns."""
    kernels = _kernels()
    h, w = code_left.shape
    cost = torch.empty((h, w, n_disp), dtype=torch.int16, device=code_left.device)
    block_x, block_d = _tile(kernels, n_disp)
    kernels.cost[(h, (w + block_x - 1) // block_x)](
        code_left.contiguous(),
        code_right.contiguous(),
        cost,
        w,
        d_min,
        n_disp,
        (2 * radius + 1) ** 2 - 1,
        BLOCK_X=block_x,
        BLOCK_D=block_d,
    )
    return cost


def aggregate_triton(cost: torch.Tensor, p1: int, p2: int) -> torch.Tensor:
    """``aggregate_torch`` with one Triton program per scanline."""
    kernels = _kernels()
    cost = cost.contiguous()
    total = torch.zeros_like(cost)
    block = max(16, kernels.next_pow2(cost.shape[2]))
    for lines, positions, line_stride, pos_stride, reverse in _paths(tuple(cost.shape)):
        scratch = torch.full((lines, block + 2), _BIG, dtype=torch.int32, device=cost.device)
        start = (positions - 1) * pos_stride if reverse else 0
        step = -pos_stride if reverse else pos_stride
        kernels.path[(lines,)](
            cost,
            total,
            scratch,
            positions,
            line_stride,
            step,
            start,
            cost.shape[2],
            p1,
            p2,
            BLOCK=block,
        )
    return total


def right_volume(total: torch.Tensor, d_min: int) -> torch.Tensor:
    """The right view's costs, (D, H, W), from the left's (H, W, D): right pixel x at
    disparity d is left pixel x + d. Where x + d leaves the image, the cost is the largest."""
    h, w, nd = total.shape
    by_disp = total.permute(2, 0, 1)
    out = torch.full((nd, h, w), _OUTSIDE, dtype=total.dtype, device=total.device)
    for i in range(nd):
        d = d_min + i
        lo, hi = max(0, -d), min(w, w - d)
        if hi > lo:
            out[i, :, lo:hi] = by_disp[i, :, lo + d : hi + d]
    return out


def winner(volume: torch.Tensor, uniqueness: int) -> torch.Tensor:
    """Sub-pixel disparity index (H, W) float from a (D, H, W) volume: NaN where an end of the
    range wins or the minimum is not unique by ``uniqueness`` percent (OpenCV's rule: every
    disparity more than one step away costs at least best * 100 / (100 - uniqueness))."""
    s = volume.to(torch.int32)
    nd = s.shape[0]
    idx = s.argmin(0, keepdim=True)
    best = s.gather(0, idx)
    lo = s.gather(0, (idx - 1).clamp(min=0)).float()
    hi = s.gather(0, (idx + 1).clamp(max=nd - 1)).float()
    near = (torch.arange(nd, device=s.device).view(nd, 1, 1) - idx).abs() <= 1
    second = s.masked_fill_(near, _BIG).min(0, keepdim=True).values
    unique = second.long() * (100 - uniqueness) >= best.long() * 100
    curve = (lo + hi - 2 * best.float()).clamp(min=1.0)
    sub = idx.float() + (lo - hi) / (2 * curve)
    inner = (idx > 0) & (idx < nd - 1)
    return torch.where(unique & inner, sub, torch.nan)[0]


def winners_torch(total: torch.Tensor, d_min: int, uniqueness: int):
    """Left and right disparities (px, NaN unknown) from the aggregated (H, W, D) volume."""
    left = winner(total.permute(2, 0, 1), uniqueness)
    right = winner(right_volume(total, d_min), uniqueness)
    return left + d_min, right + d_min


def winners_triton(total: torch.Tensor, d_min: int, uniqueness: int):
    """``winners_torch`` with one Triton program per row and block of columns."""
    kernels = _kernels()
    h, w, nd = total.shape
    block_x, block_d = _tile(kernels, nd)
    out = []
    for right in (False, True):
        sub = torch.empty((h, w), dtype=torch.float32, device=total.device)
        ok = torch.empty((h, w), dtype=torch.int8, device=total.device)
        grid = (h, (w + block_x - 1) // block_x)
        kernels.winner[grid](
            total,
            sub,
            ok,
            w,
            nd,
            d_min,
            uniqueness,
            RIGHT=int(right),
            BLOCK_X=block_x,
            BLOCK_D=block_d,
        )
        out.append(torch.where(ok.bool(), sub + d_min, torch.nan))
    return out[0], out[1]


_TRITON_FAILED: str | None = None  # why the kernels failed once: the tensor code from then on


def sgm_disparity(
    grey_left: torch.Tensor,
    grey_right: torch.Tensor,
    d_min: int,
    n_disp: int,
    p1: int,
    p2: int,
    uniqueness: int,
    radius: int = 3,
    use_triton: bool | None = None,
    warn=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right disparities (H, W) float px, NaN unknown, of a rectified grey pair.
    Should the Triton kernels fail (a GPU or a Triton they cannot build for), ``warn`` hears
    why, once, and the tensor code on the same device takes over."""
    global _TRITON_FAILED
    if use_triton is None:
        use_triton = triton_available(grey_left.device) and _TRITON_FAILED is None
    codes = census(grey_left, radius), census(grey_right, radius)
    if use_triton:
        try:
            cost = cost_volume_triton(*codes, d_min, n_disp, radius)
            total = aggregate_triton(cost, p1, p2)
            del cost
            return winners_triton(total, d_min, uniqueness)
        except Exception as exc:  # any build or launch failure falls back
            _TRITON_FAILED = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            if warn is not None:
                warn(
                    f"GPU stereo: the Triton kernels failed ({_TRITON_FAILED}); semi-global "
                    f"matching runs as tensor code on {grey_left.device} instead (slower)"
                )
    cost = cost_volume_torch(*codes, d_min, n_disp, radius)
    total = aggregate_torch(cost, p1, p2)
    del cost
    return winners_torch(total, d_min, uniqueness)


def sobel_texture(grey: torch.Tensor, block: int) -> torch.Tensor:
    """Mean absolute horizontal gradient (grey levels / px) over block x block pixels."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=grey.device)
    x = F.pad(grey[None, None], (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(x, k.view(1, 1, 3, 3)).abs() / 8.0
    r = block // 2
    return F.avg_pool2d(F.pad(gx, (r, r, r, r), mode="reflect"), block, stride=1)[0, 0]
