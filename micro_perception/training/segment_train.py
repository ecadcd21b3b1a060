"""Training the instrument segmentation network: ``micro-perception train segment``
(torchrun-ready, no ROS).

Items are both eyes of every simulated frame with their exact instrument masks. Crops are
flipped and rotated by quarter turns (a mask has no preferred orientation), with photometric
jitter, a little blur (the fused image is softer than the ideal one) and sensor-like noise.
Validation scores the intersection over union and the share of mask edge pixels within one
pixel of the true edge, the figure the silhouette geometry depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from micro_perception.depth.segmentation import SegNet, SegNetConfig
from micro_perception.errors import InputError
from micro_perception.fusion.fuser import Fuser
from micro_perception.sim.dataset import find_stacks
from micro_perception.training.common import (
    RandomCrops,
    TrainConfigBase,
    TrainJob,
    read_ahead,
    run_training,
)
from micro_perception.training.depth_losses import mask_loss
from micro_perception.training.depth_train import input_image, read_eye


@dataclass
class SegmentTrainConfig(TrainConfigBase):
    out: str = "segmentation.pt"
    input: str = "fused"
    lr: float = 3e-3
    crop: int = 192
    crops_per_frame: int = 1
    val_limit: int = 40  # images (both eyes count)
    init: str | None = None  # weights to start from (fine-tuning), else random
    # Hard negatives: bright background (a light pipe's glow, the optic disc) looks like a lit
    # instrument end. Their BCE weight, and the share of crops centred on one.
    bright_weight: float = 1.0
    bright_crops: float = 0.0
    bright_level: float = 0.8  # luminance in [0, 1] above which background counts as bright
    # Share of crops centred near the instrument's working end: the distance is read from the
    # silhouette there (jaws, blades, a light pipe's end against its glow), a small part of
    # a random crop.
    tip_crops: float = 0.0
    # BCE weight of pixels within edge_band px of the true outline: the distance is read from
    # where the edges lie, a thin share of any crop's pixels.
    edge_weight: float = 1.0
    edge_band: int = 2
    # BCE weight of every pixel within tip_radius px of the true working end, instrument and
    # background alike: where the mask stops there is the distance (a light pipe's white end
    # face against its glow), a few hundred pixels that neither crops nor the outline band
    # made count.
    tip_weight: float = 1.0
    tip_radius: int = 24
    net: SegNetConfig = field(default_factory=SegNetConfig)

    def __post_init__(self):
        if self.input not in ("aif", "fused"):
            raise InputError(f"input must be aif or fused, got {self.input!r}")
        if self.bright_weight < 1.0 or not 0.0 <= self.bright_crops <= 1.0:
            raise InputError(
                f"bright_weight must be >= 1 and bright_crops in [0, 1], got "
                f"{self.bright_weight} and {self.bright_crops}"
            )
        if self.edge_weight < 1.0 or self.edge_band < 1:
            raise InputError(
                f"edge_weight must be >= 1 and edge_band >= 1 px, got {self.edge_weight} and "
                f"{self.edge_band}"
            )
        if self.tip_weight < 1.0 or self.tip_radius < 1:
            raise InputError(
                f"tip_weight must be >= 1 and tip_radius >= 1 px, got {self.tip_weight} and "
                f"{self.tip_radius}"
            )
        if not 0.0 <= self.tip_crops <= 1.0 - self.bright_crops:
            raise InputError(
                f"tip_crops must be in [0, 1 - bright_crops], got {self.tip_crops} with "
                f"bright_crops {self.bright_crops}"
            )


def load_masked_images(
    root: str, input_kind: str, limit: int | None = None, device: str = "cpu"
) -> list[dict]:
    """Both eyes' input images and instrument masks, in memory (fused on ``device``)."""
    fuser = Fuser("net", device) if input_kind == "fused" else None

    def read(rec):
        eyes = [e for e in ("left", "right") if e in rec.slices]
        return rec, [(e, *read_eye(rec, e, fuser is not None)) for e in eyes]

    items = []
    for rec, eyes in read_ahead(read, find_stacks(Path(root))):
        for eye, gt, sweep in eyes:
            if "mask" not in gt:
                raise InputError(f"{rec.root / eye} has no mask.png to learn the instrument from")
            image = input_image(rec, eye, gt, fuser, sweep)
            items.append({"image": image, "mask": (gt["mask"] > 0).astype(np.float32)})
            if limit is not None and len(items) >= limit:
                return items
    return items


def working_end(item: dict) -> np.ndarray | None:
    """The true mask's tip (u, v) in px, or None without an instrument."""
    from micro_perception.geometry import find_instrument

    # px_per_m only scales the working end's radius, unused here: a typical value.
    inst = find_instrument(item["mask"] > 0, 64000.0)
    return None if inst is None else inst.tip_px


def bright_background(item: dict, level: float) -> np.ndarray:
    """Background pixels brighter than ``level`` (luminance in [0, 1]): the hard negatives."""
    grey = item["image"].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return (grey >= level * 255.0) & (item["mask"] <= 0)


class SegmentCrops(RandomCrops):
    """Random crops of in-memory images and their masks, turned and flipped alike, with
    photometric jitter, blur and noise on the image, and a per-pixel loss weight. A share
    ``bright_crops`` of the crops is centred on bright background where an image has some, a
    share ``tip_crops`` near the instrument's tip (within a quarter crop) where it has one.
    The loss weight is raised on bright background, the outline band and the disc around the
    tip by ``bright_weight``, ``edge_weight`` and ``tip_weight``."""

    def __init__(
        self,
        items,
        crop,
        repeat,
        seed,
        bright_weight=1.0,
        bright_crops=0.0,
        bright_level=0.8,
        tip_crops=0.0,
        edge_weight=1.0,
        edge_band=2,
        tip_weight=1.0,
        tip_radius=24,
    ):
        super().__init__(items, crop, repeat, seed)
        self.tip_weight = tip_weight
        self.tip_radius = tip_radius
        self.bright_weight = bright_weight
        self.edge_weight = edge_weight
        self.edge_band = edge_band
        self.bright_crops = bright_crops
        self.tip_crops = tip_crops
        self.bright = [bright_background(it, bright_level) for it in items]
        self.bright_px = [np.argwhere(b)[::7] for b in self.bright]  # centres to draw from
        wants_tip = tip_crops > 0 or tip_weight > 1
        self.tips = [working_end(it) if wants_tip else None for it in items]

    def _centred(self, item, y, x):
        h, w = self.size_of(item)
        y0 = int(np.clip(round(y) - self.crop // 2, 0, h - self.crop))
        x0 = int(np.clip(round(x) - self.crop // 2, 0, w - self.crop))
        return slice(y0, y0 + self.crop), slice(x0, x0 + self.crop)

    def draw(self, i: int):
        rng, item, rows, cols = super().draw(i)
        k = i % len(self.items)
        u = rng.uniform()
        if u < self.bright_crops and len(self.bright_px[k]):
            y, x = self.bright_px[k][int(rng.integers(len(self.bright_px[k])))]
            rows, cols = self._centred(item, y, x)
        elif self.bright_crops <= u < self.bright_crops + self.tip_crops and (
            self.tips[k] is not None
        ):
            x, y = self.tips[k] + rng.uniform(-0.25, 0.25, 2) * self.crop
            rows, cols = self._centred(item, y, x)
        return rng, item, rows, cols

    def __getitem__(self, i: int):
        rng, item, rows, cols = self.draw(i)
        image = item["image"][rows, cols].astype(np.float32) / 255.0
        mask = item["mask"][rows, cols]
        weight = 1.0 + (self.bright_weight - 1.0) * self.bright[i % len(self.items)][rows, cols]
        if self.edge_weight > 1.0:
            weight = weight + (self.edge_weight - 1.0) * outline_band(mask, self.edge_band)
        tip = self.tips[i % len(self.items)]
        if self.tip_weight > 1.0 and tip is not None:
            dy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - tip[1]
            dx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - tip[0]
            weight = weight + (self.tip_weight - 1.0) * (dx * dx + dy * dy <= self.tip_radius**2)
        turns = int(rng.integers(0, 4))
        image, mask, weight = (np.rot90(a, turns) for a in (image, mask, weight))
        if rng.uniform() < 0.5:
            image, mask, weight = image[:, ::-1], mask[:, ::-1], weight[:, ::-1]
        image = np.ascontiguousarray(image)
        sigma = rng.uniform(0.0, 1.0)
        if sigma > 0.3:
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        gain = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
        image = np.clip(image * gain, 0, 1) ** rng.uniform(0.8, 1.25)
        image = image + rng.normal(0, rng.uniform(0, 0.02), image.shape).astype(np.float32)
        image = np.clip(image, 0, 1).transpose(2, 0, 1)
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))[None],
        )


def outline_band(mask: np.ndarray, band: int) -> np.ndarray:
    """Pixels within ``band`` px of a mask's outline, on either side."""
    m = (mask > 0).astype(np.uint8)
    k = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    return cv2.dilate(m, k) != cv2.erode(m, k)


def _edges(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))) > 0


def mask_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """IoU (None without instrument in either) and edge accuracy within one pixel."""
    pred, true = pred.astype(bool), true.astype(bool)
    union = (pred | true).sum()
    out = {"iou": float((pred & true).sum() / union) if union else None, "edge_1px": None}
    ep, et = _edges(pred), _edges(true)
    if ep.any() and et.any():
        near_t = cv2.dilate(et.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        near_p = cv2.dilate(ep.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        precision = (ep & near_t).sum() / ep.sum()
        recall = (et & near_p).sum() / et.sum()
        out["edge_1px"] = float(2 * precision * recall / max(precision + recall, 1e-9))
    # Pixels claimed on a frame without an instrument (None where there is one).
    out["false_px"] = None if true.any() else int(pred.sum())
    return out


@torch.no_grad()
def predict_masks(net, items: list[dict], device="cpu", progress: bool = False):
    """Each item's scores (mask_scores) and the network's milliseconds per image."""
    import time

    from tqdm import tqdm

    rows, ms = [], []
    for item in tqdm(items, desc="eval segment", unit="image", disable=not progress):
        x = torch.from_numpy(item["image"]).permute(2, 0, 1).float().div(255)[None].to(device)
        t0 = time.perf_counter()
        pred = (net(x)[0, 0] > 0).cpu().numpy()
        ms.append((time.perf_counter() - t0) * 1e3)
        rows.append(mask_scores(pred, item["mask"] > 0))
    return rows, ms


def summarise_masks(rows: list[dict], missing=None) -> dict:
    """Mean IoU and edge accuracy over the images that have them, and the mean false pixels
    over the images without an instrument; ``missing`` where no image has a figure."""
    out = {}
    for key in ("iou", "edge_1px", "false_px"):
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = float(np.mean(values)) if values else missing
    out["false_px_empty"] = out.pop("false_px")
    return out


def train_segment(cfg: SegmentTrainConfig, progress: bool = True) -> dict:
    def build(device: torch.device) -> TrainJob:
        items = load_masked_images(cfg.data, cfg.input, device=str(device))
        val = load_masked_images(cfg.val, cfg.input, cfg.val_limit, str(device)) if cfg.val else []

        weighted = cfg.bright_weight > 1 or cfg.edge_weight > 1 or cfg.tip_weight > 1

        def step(model, batch, rng):
            image, mask, weight = batch
            loss = mask_loss(model(image), mask, weight if weighted else None)
            return loss, {"mask": float(loss.detach())}

        def validate(net) -> dict:
            return summarise_masks(predict_masks(net, val, device)[0], missing=0.0)

        net = SegNet(cfg.net)
        if cfg.init:
            from micro_perception.model_io import load_into, load_weights

            config, state, _ = load_weights(cfg.init, "segmentation")
            if SegNetConfig.from_dict(config) != cfg.net:
                raise InputError(f"{cfg.init} is another segmentation architecture: {config}")
            load_into(net, state, cfg.init)

        return TrainJob(
            kind="segmentation",
            net=net,
            net_config=cfg.net.to_dict(),
            data=SegmentCrops(
                items,
                cfg.crop,
                cfg.crops_per_frame,
                cfg.seed,
                bright_weight=cfg.bright_weight,
                bright_crops=cfg.bright_crops,
                bright_level=cfg.bright_level,
                tip_crops=cfg.tip_crops,
                edge_weight=cfg.edge_weight,
                edge_band=cfg.edge_band,
                tip_weight=cfg.tip_weight,
                tip_radius=cfg.tip_radius,
            ),
            step=step,
            validate=validate if val else None,
            score="iou",
        )

    return run_training(cfg, build, progress)


def evaluate_segment(
    data: str, weights, input_kind: str = "fused", limit: int | None = None, progress=True
) -> dict:
    """IoU, edge accuracy within 1 px, false pixels on frames without an instrument, and ms per
    image, over both eyes of a simulated set."""
    from micro_perception.depth.segmentation import load_seg_net

    net = load_seg_net(weights)
    items = load_masked_images(data, input_kind, limit)
    rows, ms = predict_masks(net, items, progress=progress)
    out = summarise_masks(rows)
    out["ms"] = float(np.median(ms)) if ms else None
    out["_meta"] = {
        "images": len(items),
        "data": str(data),
        "input": input_kind,
        "threads": torch.get_num_threads(),
    }
    return out
