"""Learned correction of the segmentation network's edges along the image rows (no ROS).

The distance comes from the disparity of the silhouettes' rows, and a tenth of a pixel of it is
14 um of depth at the virtual microscope's scale. The network places an instrument's edge where
the image steps from steel to retina, and where that step lies depends on what is behind the
edge: against a brighter retina its edges sit a third of a pixel inside the true outline,
against a darker one a tenth outside. The two views see different retina behind the same edge,
so their errors differ, and the rows' disparity carries a per-frame offset (docs/distance.md).

``EdgeNet`` reads each edge's surroundings along its row (the image and the probability, 8 px
inside to 10 px outside the 0.5 crossing, the edge's steepness and the run's width) and gives
the edge's outward error in pixels, learned from simulated frames against their true masks
(``micro-perception train edges``). ``EdgeRefiner`` turns one view's probability and image into
the geometry's ``EdgeShift``: the correction of every run's two edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from micro_perception.errors import InputError
from micro_perception.geometry import EdgeShift, mask_runs

OFFSETS = np.arange(-8, 11)  # px outward of the edge (negative: inside the instrument)
_AT_EDGE = int(np.nonzero(OFFSETS == 0)[0][0])
FEATURES = 7 * len(OFFSETS) + 3  # RGB, RGB less its value at the edge, probability; 3 scalars
# A crop this far beyond the runs reads every feature as the whole image does: the farthest
# sample, and the 1 px blur's reach about the edge's pixel for its lean.
_MARGIN = int(OFFSETS.max()) + 6


@dataclass(frozen=True)
class EdgeNetConfig:
    hidden: int = 64
    max_shift_px: float = 1.5  # a correction is clipped to this: past it the mask is wrong

    def __post_init__(self):
        if self.hidden < 1 or self.max_shift_px <= 0:
            raise InputError(
                f"hidden must be >= 1 and max_shift_px > 0, got {self.hidden} and "
                f"{self.max_shift_px}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EdgeNetConfig:
        return cls(**d)


class EdgeNet(nn.Module):
    """Features of one edge -> its outward error (px): where the network put it, less where
    the instrument's outline is. The features' mean and spread are part of the weights."""

    def __init__(self, cfg: EdgeNetConfig | None = None):
        super().__init__()
        self.cfg = cfg or EdgeNetConfig()
        self.register_buffer("mean", torch.zeros(FEATURES))
        self.register_buffer("std", torch.ones(FEATURES))
        h = self.cfg.hidden
        self.mlp = nn.Sequential(
            nn.Linear(FEATURES, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1)
        )

    def set_normalisation(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) / self.std)[:, 0]


def _along_rows(image: np.ndarray, rows: np.ndarray, u: np.ndarray, col0: int = 0) -> np.ndarray:
    """``image`` (H, W, C) sampled at columns ``u`` (N, K) of ``rows`` (N,): (N, K, C). The
    image may be a crop starting at column ``col0`` of the one ``u`` counts in: the integer is
    taken off in float32, which keeps the same sub-pixel bits (remap steps in 1/32 px)."""
    w = image.shape[1]
    mapx = np.clip(u.astype(np.float32) - np.float32(col0), 0, w - 1)
    mapy = np.repeat(rows.astype(np.float32)[:, None], u.shape[1], 1)
    out = cv2.remap(image, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(rows), u.shape[1], -1)


def edge_features(
    image: np.ndarray,
    soft: np.ndarray,
    rows: np.ndarray,
    edges: np.ndarray,
    outward: float,
    width: np.ndarray,
    gradient: tuple[np.ndarray, np.ndarray] | None = None,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """(N, FEATURES) float32 of the edges at columns ``edges`` on ``rows``; ``outward`` -1 for
    runs' left edges, +1 for their right ones; ``width`` the runs' widths (px). ``image`` RGB
    (uint8 or float in [0, 1]), ``soft`` the probability, both possibly a crop whose first row
    and column are ``origin`` in the coordinates of ``rows`` and ``edges``; ``gradient``
    (d/drow, d/dcol) of the probability blurred by 1 px, when the caller has it."""
    n = len(rows)
    if n == 0:
        return np.zeros((0, FEATURES), np.float32)
    im = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    u = edges[:, None] + outward * OFFSETS[None, :]
    rows = rows - origin[0]
    colour = _along_rows(im, rows, u, origin[1])
    prob = _along_rows(soft.astype(np.float32)[..., None], rows, u, origin[1])[..., 0]
    if gradient is None:
        gradient = np.gradient(cv2.GaussianBlur(soft.astype(np.float32), (0, 0), 1.0))
    col = np.clip(np.round(edges).astype(int) - origin[1], 0, soft.shape[1] - 1)
    gy, gx = np.abs(gradient[0][rows, col]), np.abs(gradient[1][rows, col])
    # How far the edge leans from the columns: a row crosses a leaning edge obliquely, and its
    # profile along the row is stretched.
    lean = np.where(gx > 1e-6, gy / np.maximum(gx, 1e-6), 5.0)
    parts = [
        colour.reshape(n, -1),
        (colour - colour[:, _AT_EDGE : _AT_EDGE + 1]).reshape(n, -1),
        prob,
        np.minimum(lean, 5.0)[:, None],
        np.minimum(width, 80.0)[:, None] / 40.0,
        np.full((n, 1), outward),
    ]
    return np.concatenate(parts, 1).astype(np.float32)


def view_edges(soft: np.ndarray, image: np.ndarray):
    """Every run's two edges in one view, with their features: (rows, first, last, left, right,
    left features, right features)."""
    rows, first, last, left, right = mask_runs(soft)
    width = right - left
    r0 = c0 = 0
    if len(rows):  # only about the runs: 45 -> 22 ms a frame at 512x512 on 2 cores
        h, w = soft.shape
        r0, r1 = max(int(rows.min()) - _MARGIN, 0), min(int(rows.max()) + _MARGIN + 1, h)
        c0, c1 = max(int(first.min()) - _MARGIN, 0), min(int(last.max()) + _MARGIN + 1, w)
        soft, image = soft[r0:r1, c0:c1], image[r0:r1, c0:c1]
    gradient = np.gradient(cv2.GaussianBlur(soft.astype(np.float32), (0, 0), 1.0))
    f_left = edge_features(image, soft, rows, left, -1.0, width, gradient, (r0, c0))
    f_right = edge_features(image, soft, rows, right, 1.0, width, gradient, (r0, c0))
    return rows, first, last, left, right, f_left, f_right


class EdgeRefiner:
    """``refiner(soft, image)`` -> the geometry's ``EdgeShift`` for one view."""

    def __init__(self, net: EdgeNet):
        self.net = net.eval()
        self.cfg = net.cfg

    @torch.inference_mode()
    def predict(self, features: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.zeros(0, np.float32)
        return self.net(torch.from_numpy(features)).numpy()

    def __call__(self, soft: np.ndarray, image: np.ndarray) -> EdgeShift:
        if soft.shape != image.shape[:2]:
            raise InputError(f"probability {soft.shape} and image {image.shape} differ in size")
        rows, first, last, _, _, f_left, f_right = view_edges(soft, image)
        limit = self.cfg.max_shift_px
        shift_first = np.zeros(soft.shape, np.float32)
        shift_last = np.zeros(soft.shape, np.float32)
        # The network gives each edge's outward error; the correction is its opposite.
        error = np.clip(self.predict(np.concatenate([f_left, f_right])), -limit, limit)
        shift_first[rows, first], shift_last[rows, last] = -error[: len(rows)], -error[len(rows) :]
        return EdgeShift(shift_first, shift_last)


def load_edge_net(path: str | Path) -> EdgeNet:
    from micro_perception.model_io import load_into, load_weights

    config, state, _ = load_weights(path, "edges")
    net = EdgeNet(EdgeNetConfig.from_dict(config))
    load_into(net, state, path)
    return net.eval()


def load_edge_refiner(path: str | Path) -> EdgeRefiner:
    return EdgeRefiner(load_edge_net(path))
