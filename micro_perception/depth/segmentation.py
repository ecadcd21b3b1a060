"""The instrument segmentation network (no ROS): a small U-Net whose full-resolution mask
feeds the silhouette geometry.

The instrument's distance comes from where its silhouette edges lie in both views (geometry.py),
so the mask must be right to the pixel; the depth network's mask head works at half resolution
and is ~14M parameters. This network keeps a full-resolution skip path and has 124k parameters;
see models/segmentation.md for its speed and scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from micro_perception.errors import InputError


@dataclass(frozen=True)
class SegNetConfig:
    widths: tuple[int, ...] = (8, 16, 24, 32, 48)  # per scale, full resolution first

    def __post_init__(self):
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise InputError(f"widths must be >= 2 positive channel counts, got {self.widths}")

    def to_dict(self) -> dict:
        return {"widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> SegNetConfig:
        return cls(widths=tuple(d.get("widths", asdict(cls())["widths"])))


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) instrument logits; any H, W."""

    # The inference runtime runs it channels-last on the CPU too: NCHW inputs take twice as long.
    channels_last_on_cpu = True

    def __init__(self, cfg: SegNetConfig | None = None):
        super().__init__()
        self.cfg = cfg or SegNetConfig()
        w = self.cfg.widths
        self.down = nn.ModuleList(
            [_double(3, w[0])] + [_double(w[i - 1], w[i]) for i in range(1, len(w))]
        )
        self.up = nn.ModuleList([_double(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1)])
        self.head = nn.Conv2d(w[0], 1, 1)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W), got {tuple(image.shape)}")
        x = (image - self.mean) / self.std
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            skip = skips[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skip], dim=1))
        return self.head(x)


def load_seg_net(path, device: str | torch.device = "cpu") -> SegNet:
    """A SegNet with the weights of ``path``, in eval mode, on ``device``."""
    from micro_perception.model_io import load_into, load_weights

    config, state, _ = load_weights(path, "segmentation")
    net = SegNet(SegNetConfig.from_dict(config))
    load_into(net, state, path)
    return net.to(device).eval()
