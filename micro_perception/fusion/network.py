"""The fusion network: a Focus Measure Block feeding an AiFNet-style, slice-symmetric network that
predicts how to blend the input pixels into the all-in-focus image (no ROS).

* **Focus Measure Block (FMB).** Each slice's Sum-Modified-Laplacian (thresholded, window-summed)
  is concatenated to its RGB, twice: relative to the stack's sharpest slice at that pixel, and
  on a log scale.
* **Shared encoder.** Every slice goes through the same convolutional encoder (slices fold
  into the batch), so K can be anything from 2 to 16.
* **Cross-slice comparison.** At each scale, every slice's features are joined with the max and
  the mean over all slices. This is symmetric, so the order of the slices does not matter.
* **Blend of input pixels.** The decoder predicts per-pixel softmax weights over the K slices
  (sharpened at full resolution by the focus maps) and a per-pixel 5x5 kernel applied to that
  blend, its weights summing to one. Flat colours are reproduced exactly (the report's identity
  loss holds by construction), the sharp slice is selected at edges, flat areas average away
  sensor noise, and negative taps sharpen what no slice shows in focus (an instrument shaft
  between two focal planes). ``kernel_mode="convex"`` keeps every weight positive instead: a
  pure convex blend that can smooth but never sharpen (models/fusion.md compares the two).
* **Cheap at full resolution.** The trunk runs at 1/4 to 1/16 of the image size; full
  resolution only sees the focus maps, a 1x1 guide, two upsamplings and the blend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from micro_perception.fusion.focus import sum_modified_laplacian


@dataclass(frozen=True)
class FusionNetConfig:
    widths: tuple[int, int, int] = (16, 32, 48)  # at 1/4, 1/8, 1/16 resolution
    kernel: int = 5  # spatial neighbourhood of the per-pixel kernel
    # convex: softmax weights (smooths, never overshoots); affine: weights summing to one that
    # may be negative, so the kernel can also sharpen residual defocus (flat colours stay exact).
    kernel_mode: str = "affine"
    sml_window: int = 5
    sml_threshold: float = 0.002
    sml_log_scale: float = 200.0

    def __post_init__(self):
        if self.kernel_mode not in ("convex", "affine"):
            raise ValueError(f"kernel_mode must be convex or affine, got {self.kernel_mode!r}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {self.kernel}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FusionNetConfig:
        # Files written before kernel_mode existed hold convex networks.
        return cls(**{"kernel_mode": "convex", **d, "widths": tuple(d.get("widths", cls.widths))})


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class CrossSlice(nn.Module):
    """Join each slice's features with the max and mean over the slices (B, K, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(3 * channels, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, c, h, w = x.shape
        pooled = torch.cat([x.amax(dim=1), x.mean(dim=1)], dim=1)
        joined = torch.cat([x, pooled.unsqueeze(1).expand(b, k, 2 * c, h, w)], dim=2)
        return self.mix(joined.reshape(b * k, 3 * c, h, w)).reshape(b, k, c, h, w)


class FocusMeasureBlock(nn.Module):
    """RGB plus relative and log-scaled SML focus maps for every slice: (B, K, 5, H, W)."""

    def __init__(self, cfg: FusionNetConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        sml = sum_modified_laplacian(stack, 1, self.cfg.sml_threshold, self.cfg.sml_window)
        relative = sml / sml.amax(dim=1, keepdim=True).clamp_min(1e-6)
        log_scaled = torch.log1p(self.cfg.sml_log_scale * sml)
        return torch.cat([stack, relative.unsqueeze(2), log_scaled.unsqueeze(2)], dim=2)


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FusionNet(nn.Module):
    def __init__(self, cfg: FusionNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FusionNetConfig()
        c1, c2, c3 = cfg.widths
        self.fmb = FocusMeasureBlock(cfg)
        self.stem = nn.Sequential(nn.Conv2d(5, c1, 4, 4), nn.ReLU(inplace=True), _conv(c1, c1))
        self.cross1 = CrossSlice(c1)
        self.enc2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))  # 1/8
        self.cross2 = CrossSlice(c2)
        self.enc3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))  # 1/16
        self.cross3 = CrossSlice(c3)
        self.dec2 = _conv(c3 + c2, c2)
        self.cross_d2 = CrossSlice(c2)
        self.dec1 = _conv(c2 + c1, c1)
        self.cross_d1 = CrossSlice(c1)
        self.slice_head = nn.Conv2d(c1, 1, 3, 1, 1)
        self.kernel_head = nn.Conv2d(c1, cfg.kernel * cfg.kernel, 3, 1, 1)
        # Full resolution, per slice: a weighted sum of the FMB channels (a 1x1 convolution with
        # one output, written out because conv2d's CPU path is ten times slower for it).
        self.guide_weight = nn.Parameter(torch.zeros(5))
        self.guide_bias = nn.Parameter(torch.zeros(1))

    def weights(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice weights (B, K, 1, H, W), softmaxed, and the per-pixel kernel (B, taps, H, W),
        summing to one."""
        b, k, _, h, w = stack.shape
        x = self.fmb(stack)
        flat = x.reshape(b * k, 5, h, w)
        e1 = self.cross1(self.stem(flat).unflatten(0, (b, k))).flatten(0, 1)
        e2 = self.cross2(self.enc2(e1).unflatten(0, (b, k))).flatten(0, 1)
        e3 = self.cross3(self.enc3(e2).unflatten(0, (b, k))).flatten(0, 1)
        d2 = self.dec2(torch.cat([_up(e3, e2.shape[-2:]), e2], dim=1))
        d2 = self.cross_d2(d2.unflatten(0, (b, k))).flatten(0, 1)
        d1 = self.dec1(torch.cat([_up(d2, e1.shape[-2:]), e1], dim=1))
        d1 = self.cross_d1(d1.unflatten(0, (b, k)))
        guide = torch.einsum("nchw,c->nhw", flat, self.guide_weight).unsqueeze(1)
        slice_logits = _up(self.slice_head(d1.flatten(0, 1)), (h, w)) + guide + self.guide_bias
        slice_w = torch.softmax(slice_logits.reshape(b, k, 1, h, w), dim=1)
        kernel = _up(self.kernel_head(d1.mean(dim=1)), (h, w))
        if self.cfg.kernel_mode == "affine":
            taps = kernel.shape[1]
            return slice_w, kernel - kernel.mean(dim=1, keepdim=True) + 1.0 / taps
        return slice_w, torch.softmax(kernel, dim=1)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) in [0, 1] -> (B, 3, H, W) all-in-focus."""
        if stack.dim() != 5 or stack.shape[2] != 3:
            raise ValueError(f"expected (B, K, 3, H, W), got {tuple(stack.shape)}")
        if stack.shape[1] < 2:
            raise ValueError("fusion needs at least 2 slices")
        h, w = stack.shape[-2:]
        slice_w, kernel = self.weights(stack)
        blended = (slice_w * stack).sum(dim=1)
        r = self.cfg.kernel // 2
        padded = F.pad(blended, (r, r, r, r), mode="replicate")
        out = torch.zeros_like(blended)
        tap = 0
        for dy in range(self.cfg.kernel):
            for dx in range(self.cfg.kernel):
                out = out + kernel[:, tap : tap + 1] * padded[..., dy : dy + h, dx : dx + w]
                tap += 1
        return out


def load_fusion_net(path, device: str | torch.device = "cpu") -> FusionNet:
    """A FusionNet with the weights of ``path``, in eval mode, on ``device``."""
    from micro_perception.model_io import load_into, load_weights

    config, state, _ = load_weights(path, "fusion")
    net = FusionNet(FusionNetConfig.from_dict(config))
    load_into(net, state, path)
    return net.to(device).eval()
