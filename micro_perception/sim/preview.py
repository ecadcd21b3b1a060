"""A montage of one rendered sample for people to look at (README, demo output)."""

from __future__ import annotations

import cv2
import numpy as np

from micro_perception.sim.render import StereoSample


def depth_colour(depth: np.ndarray) -> np.ndarray:
    """Turbo colour map of depth (near = red); NaN shown black."""
    finite = np.isfinite(depth)
    lo, hi = np.percentile(depth[finite], [1, 99]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-9), 0, 1)
    img = cv2.applyColorMap(
        ((1 - np.nan_to_num(scaled)) * 255).astype(np.uint8), cv2.COLORMAP_TURBO
    )[..., ::-1].copy()
    img[~finite] = 0
    return img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    scale = max(img.shape[1] / 700, 0.35)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    out[: th + base + 8, : tw + 10] //= 3  # darken a box behind the text
    cv2.putText(
        out, text, (5, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return out


def sample_montage(sample: StereoSample) -> np.ndarray:
    """Left eye: all-in-focus, nearest and farthest focus slice, depth, mask; one RGB row."""
    left = sample.left
    z = sample.focus_distances
    scene = sample.scene
    if scene.instrument is not None:
        gap = f"{scene.instrument.kind}, gap {scene.gap_normal * 1e3:.2f} mm"
    else:
        gap = "no instrument"
    mask = np.repeat(left.mask[..., None], 3, -1)
    panels = [
        _label(left.aif, "all in focus"),
        _label(left.slices[0], f"focus {z[0] * 1e3:.2f} mm"),
        _label(left.slices[-1], f"focus {z[-1] * 1e3:.2f} mm"),
        _label(depth_colour(left.depth), "depth"),
        _label(mask, gap),
    ]
    return np.concatenate(panels, axis=1)
