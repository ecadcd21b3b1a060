"""Fusing stacks of 8/16-bit images with any method on any device (no ROS).

Used by the fusion node and ``micro-perception fuse`` alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from micro_perception.errors import InputError
from micro_perception.fusion.classical import METHODS as CLASSICAL
from micro_perception.fusion.focus import depth_from_focus, sum_modified_laplacian
from micro_perception.fusion.network import load_fusion_net
from micro_perception.inference import Runtime, RuntimeConfig, pick_device

METHODS = ("net", *CLASSICAL)
DFF_WINDOW = 9


def default_fusion_weights() -> Path | None:
    from micro_perception.resources import shipped_model

    return shipped_model("fusion.pt")


class Fuser:
    """``fuser(images)``: (K, H, W, 3|1) or (K, H, W) uint8/uint16 -> fused image, same dtype."""

    def __init__(
        self,
        method: str = "net",
        device: str = "auto",
        weights: str | Path | None = None,
        runtime: RuntimeConfig | None = None,
        warn=None,
    ):
        """``runtime`` (backend, precision, device, ...) overrides ``device`` when given."""
        if method not in METHODS:
            raise InputError(f"fusion method must be one of {list(METHODS)}, got {method!r}")
        self.method = method
        runtime = runtime or RuntimeConfig(device=device)
        self.device = pick_device(runtime.device)
        self.runtime = None
        if method == "net":
            weights = weights or default_fusion_weights()
            if weights is None:
                raise InputError(
                    "no fusion weights: models/fusion.pt is not installed; pass a "
                    "weights file or choose method sml, laplacian or guided"
                )
            self.weights = Path(weights)
            self.runtime = Runtime(load_fusion_net(self.weights), "fusion", runtime, warn)
            self._fn = self.runtime
        else:
            self.weights = None
            self._fn = CLASSICAL[method]

    def _tensor(self, images: np.ndarray) -> tuple[torch.Tensor, float, bool]:
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise InputError(f"a stack must be (K, H, W[, 1|3]), got {images.shape}")
        if images.shape[0] < 2:
            raise InputError("a focal stack needs at least 2 slices")
        if images.dtype not in (np.uint8, np.uint16):
            raise InputError(f"slices must be 8- or 16-bit, got {images.dtype}")
        scale = 255.0 if images.dtype == np.uint8 else 65535.0
        mono = images.shape[-1] == 1
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(scale)
        if mono:
            x = x.expand(-1, 3, -1, -1)
        return x[None], scale, mono

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x, scale, mono = self._tensor(images)
        out = self._fn(x).clamp_(0, 1)[0]
        out = out[:1] if mono else out
        arr = (out * scale).round_().permute(1, 2, 0).cpu().numpy().astype(images.dtype)
        return arr[..., 0] if images.ndim == 3 else arr

    @torch.inference_mode()
    def focus_depth(
        self, images: np.ndarray, focus: np.ndarray, min_confidence: float = 0.5
    ) -> np.ndarray:
        """Depth from focus (units of ``focus``) as float32, NaN where not confident."""
        x, _, _ = self._tensor(images)
        if len(focus) != x.shape[1]:
            raise InputError(f"{len(focus)} focus distances for {x.shape[1]} slices")
        volume = sum_modified_laplacian(x, window=DFF_WINDOW)
        z = torch.as_tensor(np.asarray(focus, np.float64), device=self.device)[None]
        depth, conf = depth_from_focus(volume, z)
        depth = depth[0].float()
        depth[conf[0] < min_confidence] = float("nan")
        return depth.cpu().numpy()
