"""The multi-scale depth network of Hu et al. (WACV 2019), with an instrument-mask head (no ROS).

* **Encoder**: a torchvision ResNet-18. Random initialisation, or ImageNet weights from a local
  file the user names; nothing is downloaded.
* **Decoder**: up-projection blocks from 1/32 to 1/2 resolution.
* **Multi-scale feature fusion (MFF)**: the four encoder stages, each up-sampled to 1/2
  resolution and reduced to 16 channels, concatenated.
* **Refinement**: the decoder output and the MFF features through three 5x5 convolutions to the
  depth, and a parallel head to the instrument mask.

Depth is predicted as a millimetre offset from the working distance ``z_ref`` (depth varies by
millimetres around 200 mm), and returned in metres. Extra input channels (e.g. depth from focus
and its confidence) are accepted after the RGB ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from micro_perception.errors import InputError


@dataclass(frozen=True)
class DepthNetConfig:
    extra_channels: int = 0  # inputs beyond RGB, e.g. depth from focus and its confidence
    z_ref: float = 0.2  # m, the depth the offsets are relative to
    mff_channels: int = 16  # per encoder stage
    decoder_width: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DepthNetConfig:
        return cls(**d)


class UpProjection(nn.Module):
    """Laina et al.'s up-projection: 2x upsampling with a two-branch residual."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(cin, cout, 5, 1, 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.conv2 = nn.Sequential(nn.Conv2d(cin, cout, 5, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.relu(self.conv1(x) + self.conv2(x))


def _block(cin: int, cout: int, k: int = 5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DepthNet(nn.Module):
    STAGES = (64, 128, 256, 512)  # ResNet-18 stage widths

    def __init__(self, cfg: DepthNetConfig | None = None, imagenet_weights: str | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DepthNetConfig()
        resnet = torchvision.models.resnet18(weights=None)
        if imagenet_weights:
            try:
                state = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
                resnet.load_state_dict(state)
            except (OSError, RuntimeError) as exc:
                raise InputError(f"ImageNet weights {imagenet_weights}: {exc}") from None
        if cfg.extra_channels:
            old = resnet.conv1
            conv = nn.Conv2d(3 + cfg.extra_channels, 64, 7, 2, 3, bias=False)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[:, :3] = old.weight
            resnet.conv1 = conv
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layers = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        w = cfg.decoder_width
        self.bottleneck = _block(512, w * 2, 1)
        self.up = nn.ModuleList(
            [
                UpProjection(w * 2, w * 2),
                UpProjection(w * 2, w),
                UpProjection(w, w),
                UpProjection(w, w),
            ]
        )
        m = cfg.mff_channels
        self.mff = nn.ModuleList([_block(c, m) for c in self.STAGES])
        self.mff_mix = _block(4 * m, 4 * m)
        self.refine = nn.Sequential(_block(w + 4 * m, w), _block(w, w), nn.Conv2d(w, 1, 5, 1, 2))
        self.mask_head = nn.Sequential(_block(w + 4 * m, w // 2, 3), nn.Conv2d(w // 2, 1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3 + extra, H, W) in [0, 1] -> depth (B, 1, H, W) in m, mask logits (B, 1, H, W)."""
        want = 3 + self.cfg.extra_channels
        if image.dim() != 4 or image.shape[1] != want:
            raise ValueError(f"expected (B, {want}, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        x = torch.cat([(image[:, :3] - self.mean) / self.std, image[:, 3:]], dim=1)
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        half = ((h + 1) // 2, (w + 1) // 2)
        sizes = [f.shape[-2:] for f in feats[-2::-1]] + [half]
        d = self.bottleneck(feats[-1])
        for up, size in zip(self.up, sizes, strict=True):
            d = up(d, size)
        mff = torch.cat(
            [
                m(F.interpolate(f, size=half, mode="bilinear", align_corners=False))
                for m, f in zip(self.mff, feats, strict=True)
            ],
            dim=1,
        )
        joined = torch.cat([d, self.mff_mix(mff)], dim=1)
        # fp32 from here: near 0.2 m, fp16 steps are 0.1 mm and bf16 steps 1 mm.
        offset_mm = F.interpolate(
            self.refine(joined).float(), size=(h, w), mode="bilinear", align_corners=False
        )
        mask = F.interpolate(
            self.mask_head(joined).float(), size=(h, w), mode="bilinear", align_corners=False
        )
        return self.cfg.z_ref + offset_mm * 1e-3, mask


def load_depth_net(path, device: str | torch.device = "cpu") -> DepthNet:
    """A DepthNet with the weights of ``path``, in eval mode, on ``device``."""
    from micro_perception.model_io import load_into, load_weights

    config, state, _ = load_weights(path, "depth")
    net = DepthNet(DepthNetConfig.from_dict(config))
    load_into(net, state, path)
    return net.to(device).eval()
