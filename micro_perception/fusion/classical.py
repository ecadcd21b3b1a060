"""Classical multi-focus fusion baselines (torch, batched, CPU or CUDA; no ROS).

Each takes a stack (B, K, 3, H, W) of images in [0, 1] and returns (B, 3, H, W):

* :func:`fuse_sml` - spatial domain: per-pixel choice of the slice with the highest
  Sum-Modified-Laplacian, a majority (consistency) filter on the decision map, and a smooth
  blend of the chosen slices.
* :func:`fuse_laplacian` - transform domain: Laplacian pyramids of all slices, detail
  coefficients taken from the slice with the largest absolute value, base averaged.
* :func:`fuse_guided` - guided-filter fusion of Li, Kang and Hu (IEEE TIP 2013): two-scale
  decomposition, Laplacian saliency, binary weight maps refined by guided filtering with the
  source image as guide (large radius for the base layer, small for the detail layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from micro_perception.fusion.focus import box_filter, luminance, sum_modified_laplacian


def _check(stack: torch.Tensor) -> None:
    if stack.dim() != 5 or stack.shape[2] != 3:
        raise ValueError(f"expected a (B, K, 3, H, W) stack, got {tuple(stack.shape)}")
    if stack.shape[1] < 2:
        raise ValueError("fusion needs at least 2 slices")


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), replicate padding."""
    k = _gaussian_kernel(sigma, x.device, x.dtype)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fuse_sml(
    stack: torch.Tensor,
    step: int = 1,
    threshold: float = 0.0,
    window: int = 9,
    consistency: int = 9,
    blend_sigma: float = 1.5,
) -> torch.Tensor:
    _check(stack)
    k = stack.shape[1]
    sml = sum_modified_laplacian(stack, step, threshold, window)  # (B, K, H, W)
    choice = F.one_hot(sml.argmax(dim=1), k).permute(0, 3, 1, 2).to(stack.dtype)
    # Consistency verification: each pixel takes the slice most of its neighbours chose.
    votes = box_filter(choice, consistency // 2)
    choice = F.one_hot(votes.argmax(dim=1), k).permute(0, 3, 1, 2).to(stack.dtype)
    weights = gaussian_blur(choice, blend_sigma)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return (weights.unsqueeze(2) * stack).sum(dim=1)


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur5(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = _BINOMIAL.to(x.device, x.dtype)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect" if min(x.shape[-2:]) > 2 else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur5(x)[..., ::2, ::2]


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = torch.zeros(
        *x.shape[:2], x.shape[-2] * 2, x.shape[-1] * 2, device=x.device, dtype=x.dtype
    )
    up[..., ::2, ::2] = x
    return (4 * _blur5(up))[..., : size[0], : size[1]]


def fuse_laplacian(stack: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    _check(stack)
    b, k, c, h, w = stack.shape
    if levels is None:
        levels = max(1, min(6, int(torch.log2(torch.tensor(min(h, w) / 8.0)).item())))
    current = stack.reshape(b * k, c, h, w)
    details = []
    for _ in range(levels):
        smaller = _down(current)
        details.append(current - _up(smaller, current.shape[-2:]))
        current = smaller
    fused = current.reshape(b, k, c, *current.shape[-2:]).mean(dim=1)
    for detail in reversed(details):
        d = detail.reshape(b, k, c, *detail.shape[-2:])
        # One choice per pixel for all channels (no colour fringes): the largest |detail|.
        pick = d.abs().sum(dim=2, keepdim=True).argmax(dim=1, keepdim=True)
        chosen = d.gather(1, pick.expand(-1, 1, c, -1, -1)).squeeze(1)
        fused = _up(fused, detail.shape[-2:]) + chosen
    return fused


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float):
    """He et al.'s guided filter; guide (N, 1, H, W), src (N, C, H, W)."""
    mean_i = box_filter(guide, radius)
    mean_p = box_filter(src, radius)
    cov_ip = box_filter(guide * src, radius) - mean_i * mean_p
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    bias = mean_p - a * mean_i
    return box_filter(a, radius) * guide + box_filter(bias, radius)


def fuse_guided(
    stack: torch.Tensor,
    base_radius: int = 15,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
    saliency_sigma: float = 5.0,
) -> torch.Tensor:
    _check(stack)
    b, k, c, h, w = stack.shape
    flat = stack.reshape(b * k, c, h, w)
    base = box_filter(flat, base_radius)  # 31x31 average filter
    detail = flat - base
    gray = luminance(flat).unsqueeze(1)
    lap = torch.tensor(
        [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
        device=stack.device,
        dtype=stack.dtype,
    ).view(1, 1, 3, 3)
    saliency = gaussian_blur(
        F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), lap).abs(), saliency_sigma
    ).reshape(b, k, h, w)
    p = F.one_hot(saliency.argmax(dim=1), k).permute(0, 3, 1, 2).to(stack.dtype)
    p = p.reshape(b * k, 1, h, w)
    w_base = guided_filter(gray, p, r1, eps1).reshape(b, k, 1, h, w)
    w_detail = guided_filter(gray, p, r2, eps2).reshape(b, k, 1, h, w)

    def normalise(wt):
        wt = wt.clamp_min(0)
        return wt / wt.sum(dim=1, keepdim=True).clamp_min(1e-8)

    fused_base = (normalise(w_base) * base.reshape(b, k, c, h, w)).sum(dim=1)
    fused_detail = (normalise(w_detail) * detail.reshape(b, k, c, h, w)).sum(dim=1)
    return fused_base + fused_detail


METHODS = {"sml": fuse_sml, "laplacian": fuse_laplacian, "guided": fuse_guided}
