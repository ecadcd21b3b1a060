"""Torch datasets over focal stacks on disk: simulated datasets and users' own recordings alike.

See :mod:`micro_perception.sim.dataset` for the layouts. Each item is a flat dict of tensors:

* ``{eye}_slices``: (K, 3, H, W) float32 sRGB in [0, 1], in sweep order;
* ``focus``: (K,) float32 focal distances in metres (NaN when not recorded);
* where recorded: ``{eye}_aif`` (3, H, W), ``{eye}_depth`` (1, H, W) metres with NaN unknown,
  ``{eye}_mask`` (1, H, W) in {0, 1}; ``gap_normal`` and ``gap_axial`` (metres, NaN if none).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from micro_perception.errors import InputError
from micro_perception.sim.dataset import find_stacks, iter_stack_images, read_ground_truth


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0


class FocalStackDataset(Dataset):
    def __init__(
        self,
        root: str | Path,
        eyes: Sequence[str] = ("left",),
        ground_truth: bool = True,
        transform: Callable[[dict], dict] | None = None,
    ):
        self.root = Path(root)
        self.records = find_stacks(self.root)
        self.eyes = tuple(eyes)
        for rec in self.records:
            missing = [e for e in self.eyes if e not in rec.slices]
            if missing:
                raise InputError(f"{rec.root} has no {missing[0]}/ folder, but eyes={self.eyes}")
        self.ground_truth = ground_truth
        self.transform = transform
        header = self.root / "dataset.json"
        self.header = json.loads(header.read_text()) if header.is_file() else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        item: dict[str, torch.Tensor] = {}
        shape = None
        for eye in self.eyes:
            slices = torch.stack([_chw(img) for img in iter_stack_images(rec, eye)])
            if shape is None:
                shape = slices.shape[-2:]
            elif slices.shape[-2:] != shape:
                raise InputError(f"{rec.root}: left and right images differ in size")
            item[f"{eye}_slices"] = slices
            if self.ground_truth:
                gt = read_ground_truth(rec.root / eye)
                if "aif" in gt:
                    item[f"{eye}_aif"] = _chw(gt["aif"])
                if "depth" in gt:
                    item[f"{eye}_depth"] = torch.from_numpy(gt["depth"])[None]
                if "mask" in gt:
                    item[f"{eye}_mask"] = torch.from_numpy(gt["mask"].astype(np.float32))[None]
        count = item[f"{self.eyes[0]}_slices"].shape[0]
        focus = rec.focus_distances
        item["focus"] = (
            torch.full((count,), float("nan"))
            if focus is None
            else torch.from_numpy(focus.astype(np.float32))
        )
        for key in ("gap_normal", "gap_axial"):
            value = rec.meta.get(f"{key}_m")
            item[key] = torch.tensor(float("nan") if value is None else float(value))
        return self.transform(item) if self.transform else item
