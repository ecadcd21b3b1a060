"""Masks drawn as each pixel's covered fraction of a shape: what a probability mask's edges
should read to sub-pixel precision."""

import numpy as np


def covered(shape, inside, oversample=8):
    """Each pixel's covered fraction of the region ``inside(u, v)`` (sub-pixel samples)."""
    h, w = shape
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    v = np.arange(h)[:, None, None, None] + sub[None, :, None, None]
    u = np.arange(w)[None, None, :, None] + sub[None, None, None, :]
    return inside(u, v).mean((1, 3)).astype(np.float32)


def covered_bar(shape, centre_at, half_width):
    """Each pixel's covered fraction of the band |u - centre_at(v)| <= half_width."""
    return covered(shape, lambda u, v: np.abs(u - centre_at(v)) <= half_width)
