"""Focus measures on batched image stacks (torch; CPU or CUDA, no ROS).

Sum-Modified-Laplacian (Nayar and Nakagawa): the modified Laplacian
``ML = |2I - I(x-s, y) - I(x+s, y)| + |2I - I(x, y-s) - I(x, y+s)|`` with step s, kept where it is
at least a threshold, summed over a square window around each pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> (..., H, W); (..., H, W) passes through."""
    if images.dim() >= 3 and images.shape[-3] == 3:
        w = images.new_tensor(_LUMA).view(3, 1, 1)
        return (images * w).sum(dim=-3)
    return images


def modified_laplacian(gray: torch.Tensor, step: int = 1) -> torch.Tensor:
    """(..., H, W) -> (..., H, W), replicate-padded at the borders."""
    shape = gray.shape
    x = gray.reshape(-1, 1, shape[-2], shape[-1])
    p = F.pad(x, (step, step, step, step), mode="replicate")
    centre = p[..., step:-step, step:-step]
    horizontal = (
        2 * centre - p[..., step:-step, : -2 * step] - p[..., step:-step, 2 * step :]
    ).abs()
    vertical = (
        2 * centre - p[..., : -2 * step, step:-step] - p[..., 2 * step :, step:-step]
    ).abs()
    return (horizontal + vertical).reshape(shape)


def sum_modified_laplacian(
    images: torch.Tensor, step: int = 1, threshold: float = 0.0, window: int = 5
) -> torch.Tensor:
    """SML focus level of each pixel of (..., [3,] H, W) images, as (..., H, W)."""
    if step < 1 or window < 1 or window % 2 == 0:
        raise ValueError(f"step must be >= 1 and window odd and >= 1, got {step}, {window}")
    ml = modified_laplacian(luminance(images.float()), step)
    if threshold > 0:
        ml = torch.where(ml >= threshold, ml, torch.zeros_like(ml))
    shape = ml.shape
    x = ml.reshape(-1, 1, shape[-2], shape[-1])
    x = F.pad(x, (window // 2,) * 4, mode="replicate")
    # Separable window sum: two 1-D passes instead of window^2 additions per pixel.
    summed = F.avg_pool2d(F.avg_pool2d(x, (window, 1), stride=1), (1, window), stride=1)
    return (summed * (window * window)).reshape(shape)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of (N, C, H, W), edges averaging only pixels inside the image.

    Integral images: O(1) per pixel whatever the radius (guided filters use r = 45).
    """
    if radius <= 0:
        return x
    h, w = x.shape[-2:]

    def cum(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
        pad = [0, 0, 0, 0]
        pad[2 * (3 - dim) + 0] = 1  # one leading zero along dim
        s = F.pad(t.cumsum(dim), pad)
        idx = torch.arange(size, device=t.device)
        hi = (idx + radius + 1).clamp(max=size)
        lo = (idx - radius).clamp(min=0)
        return s.index_select(dim, hi) - s.index_select(dim, lo)

    ones = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
    total = cum(cum(x, 2, h), 3, w)
    count = cum(cum(ones, 2, h), 3, w)
    return total / count


def depth_from_focus(
    focus_volume: torch.Tensor, focus_distances: torch.Tensor, texture_threshold: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel depth (m) and confidence in [0, 1] from a (..., K, H, W) focus volume.

    The peak slice is refined by a Gaussian fit through the peak and its two neighbours (a
    parabola on log focus), and mapped onto the (possibly uneven) focal distances (..., K).
    Confidence is how much the peak stands above the stack's median focus, scaled down where
    there is no texture to judge by.
    """
    k = focus_volume.shape[-3]
    if k < 2:
        raise ValueError("depth from focus needs at least 2 slices")
    fv = focus_volume.clamp_min(1e-12)
    peak = fv.argmax(dim=-3, keepdim=True)
    lo = (peak - 1).clamp(min=0)
    hi = (peak + 1).clamp(max=k - 1)
    log_fv = fv.log()
    l0, l1, l2 = (log_fv.gather(-3, i) for i in (lo, peak, hi))
    denom = l0 - 2 * l1 + l2
    offset = torch.where(denom < -1e-12, 0.5 * (l0 - l2) / denom, torch.zeros_like(denom))
    interior = (peak > 0) & (peak < k - 1)
    offset = torch.where(interior, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
    z = focus_distances.to(fv.dtype)
    z = z.reshape(*z.shape, 1, 1).expand(*z.shape, *fv.shape[-2:])
    z_peak = z.gather(-3, peak)
    step_up = z.gather(-3, hi) - z_peak
    step_down = z_peak - z.gather(-3, lo)
    depth = z_peak + torch.where(offset >= 0, offset * step_up, offset * step_down)
    f_max = l1.exp()
    median = fv.median(dim=-3, keepdim=True).values
    texture = f_max / (f_max + texture_threshold)
    confidence = ((f_max - median) / f_max) * texture
    return depth.squeeze(-3), confidence.squeeze(-3)
