"""Losses of the depth network (no ROS): Hu et al.'s l_depth + l_grad + l_normal, and BCE + Dice
on the instrument mask.

Hu et al. use F(x) = ln(x + alpha) on the absolute depth error, on the errors of its x and y
gradients (Sobel) and, for normals n = (-dz/dx, -dz/dy, 1), 1 - cos(n_pred, n_true). Here
F(x) = ln(1 + x / alpha), which is Hu's F minus the constant ln(alpha): the same gradients, and
exactly zero for a perfect prediction. Depth enters in millimetres. Pixels without ground truth
(NaN), or with zero weight (the stereo teacher's confidence), do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F


@dataclass
class DepthLossWeights:
    depth: float = 1.0
    grad: float = 1.0
    normal: float = 1.0
    mask: float = 0.5
    alpha: float = 0.5  # mm


def _log_error(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.log1p(x / alpha)


def _weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x * weight).sum() / weight.sum().clamp_min(1e-8)


def depth_terms(
    pred_m: torch.Tensor,
    true_m: torch.Tensor,
    weight: torch.Tensor | None = None,
    alpha: float = 0.5,
) -> dict[str, torch.Tensor]:
    """l_depth, l_grad and l_normal of (B, 1, H, W) depths in metres."""
    valid = torch.isfinite(true_m)
    w = valid.float() if weight is None else weight * valid
    pred = pred_m * 1e3
    true = torch.where(valid, true_m, pred_m.detach()) * 1e3
    g_pred = kornia.filters.spatial_gradient(pred, mode="sobel", normalized=True)[:, 0]
    g_true = kornia.filters.spatial_gradient(true, mode="sobel", normalized=True)[:, 0]
    # Gradients need all 3x3 neighbours known.
    w_grad = -F.max_pool2d(-w, 3, 1, 1)
    l_depth = _weighted_mean(_log_error((pred - true).abs(), alpha), w)
    l_grad = _weighted_mean(
        _log_error((g_pred[:, 0:1] - g_true[:, 0:1]).abs(), alpha)
        + _log_error((g_pred[:, 1:2] - g_true[:, 1:2]).abs(), alpha),
        w_grad,
    )
    ones = torch.ones_like(pred)
    n_pred = torch.cat([-g_pred[:, 0:1], -g_pred[:, 1:2], ones], dim=1)
    n_true = torch.cat([-g_true[:, 0:1], -g_true[:, 1:2], ones], dim=1)
    cos = F.cosine_similarity(n_pred, n_true, dim=1, eps=1e-8).unsqueeze(1)
    l_normal = _weighted_mean(1 - cos, w_grad)
    return {"depth": l_depth, "grad": l_grad, "normal": l_normal}


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE + Dice of instrument-mask logits against a {0, 1} target; ``weight`` (per pixel,
    mean-normalised) stresses the BCE on pixels that matter more, e.g. hard negatives."""
    if weight is None:
        bce = F.binary_cross_entropy_with_logits(logits, target)
    else:
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (per * weight).sum() / weight.sum().clamp_min(1e-6)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def depth_loss(pred_m, true_m, mask_logits, mask_true, w: DepthLossWeights, weight=None):
    terms = depth_terms(pred_m, true_m, weight, w.alpha)
    total = w.depth * terms["depth"] + w.grad * terms["grad"] + w.normal * terms["normal"]
    if mask_true is not None:
        terms["mask"] = mask_loss(mask_logits, mask_true)
        total = total + w.mask * terms["mask"]
    return total, {k: float(v.detach()) for k, v in terms.items()}
