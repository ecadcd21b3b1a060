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
    summed = F.avg_pool2d(x, window, stride=1) * (window * window)
    return summed.reshape(shape)
