"""Deterministic stereo test images that carry their frame index, to check transport bit-exactly.

The first 8 bytes of the left image's first row hold the frame index (little-endian uint64); the
rest of both images is a fixed-seed texture shifted by the index, the right one displaced by a
constant disparity. A receiver regenerates the expected pair from the index alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from micro_perception.errors import InputError

_INDEX_BYTES = 8
CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


@lru_cache(maxsize=4)
def _texture(height: int, width: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(20261125)
    tex = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    tex.setflags(write=False)
    return tex


def stereo_pattern(
    index: int, height: int, width: int, encoding: str = "rgb8", disparity: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The (left, right) uint8 images of frame ``index``."""
    if encoding not in CHANNELS:
        raise InputError(f"pattern encoding must be one of {list(CHANNELS)}, got {encoding!r}")
    channels = CHANNELS[encoding]
    if width * channels < _INDEX_BYTES or height < 1:
        raise InputError(f"pattern image {width}x{height} is too small to carry a frame index")
    base = _texture(height, width, channels) + np.uint8(index % 256)
    left = base.copy()
    right = np.roll(base, -disparity, axis=1)
    left.reshape(-1)[:_INDEX_BYTES] = np.frombuffer(
        int(index).to_bytes(_INDEX_BYTES, "little"), np.uint8
    )
    if channels == 1:
        return left[:, :, 0], right[:, :, 0]
    return left, right


def pattern_index(left: np.ndarray) -> int:
    """The frame index a left pattern image carries."""
    head = np.ascontiguousarray(left.reshape(-1)[:_INDEX_BYTES])
    return int.from_bytes(head.tobytes(), "little")
