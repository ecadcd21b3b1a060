"""Losses of the fusion network (no ROS).

* all-in-focus reconstruction: L1 and 1 - SSIM against the ground-truth all-in-focus image;
* edge: L1 between Sobel gradient magnitudes, weighted up on the target's Canny edges (the
  report's remedy for blurry vessels);
* identity/colour: L1 between the per-channel means (the blend cannot invent colours, but it can
  still shift the balance between slices);
* perceptual: L1 between VGG-16 features, only when the user names a local weights file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from micro_perception.errors import InputError


@dataclass
class FusionLossWeights:
    l1: float = 1.0
    ssim: float = 0.5
    edge: float = 0.5
    canny_boost: float = 4.0  # extra weight of the edge loss on the target's Canny edges
    colour: float = 0.1
    perceptual: float = 0.0


class VGGPerceptual(nn.Module):
    """VGG-16 features up to relu3_3 from a local state-dict file (nothing is downloaded)."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        import torchvision

        path = Path(weights_path)
        if not path.is_file():
            raise InputError(
                f"VGG weights {path} not found: give a local torchvision "
                "vgg16 state dict, or leave the perceptual loss off"
            )
        vgg = torchvision.models.vgg16(weights=None)
        vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.features = vgg.features[:16].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f = self.features
        return F.l1_loss(f((out - self.mean) / self.std), f((target - self.mean) / self.std))


class FusionLoss(nn.Module):
    def __init__(self, weights: FusionLossWeights, vgg_weights: str | None = None):
        super().__init__()
        self.w = weights
        self.perceptual = VGGPerceptual(vgg_weights) if vgg_weights else None

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        w = self.w
        terms = {
            "l1": F.l1_loss(out, target),
            "ssim": kornia.losses.ssim_loss(out, target, window_size=11, max_val=1.0),
        }
        grad_out = kornia.filters.sobel(out)
        grad_target = kornia.filters.sobel(target)
        with torch.no_grad():
            _, edges = kornia.filters.canny(
                target.float(), low_threshold=0.05, high_threshold=0.15
            )
        edge_weight = 1.0 + w.canny_boost * edges
        terms["edge"] = ((grad_out - grad_target).abs() * edge_weight).mean()
        terms["colour"] = F.l1_loss(out.mean(dim=(2, 3)), target.mean(dim=(2, 3)))
        total = (
            w.l1 * terms["l1"]
            + w.ssim * terms["ssim"]
            + w.edge * terms["edge"]
            + w.colour * terms["colour"]
        )
        if self.perceptual is not None and w.perceptual > 0:
            terms["perceptual"] = self.perceptual(out, target)
            total = total + w.perceptual * terms["perceptual"]
        return total, {k: float(v.detach()) for k, v in terms.items()}
