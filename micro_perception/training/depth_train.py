"""Training the depth network: ``micro-perception train depth`` (torchrun-ready, no ROS).

Supervision:

* ``gt``: the simulator's exact depth and instrument mask;
* ``stereo``: the stereo teacher's depth on each stereo pair, weighted by its confidence, and no
  mask: knowledge distillation from binocular to monocular, for a user's own recordings;
* ``mixed``: both, where ground truth exists.

The input is the left all-in-focus image: the ground-truth one (``--input aif``) or the shipped
fusion network's output on the sweep (``--input fused``, what the depth node sees). Crops and
flips keep the monocular geometry valid (depth does not depend on where a crop sits); photometric
jitter changes only the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from micro_perception.depth.network import DepthNet, DepthNetConfig
from micro_perception.depth.stereo import stereo_depth
from micro_perception.errors import InputError
from micro_perception.fusion.fuser import Fuser
from micro_perception.sim.dataset import (
    dataset_stereo_pair,
    find_stacks,
    read_ground_truth,
    read_rgb,
)
from micro_perception.training.common import (
    RandomCrops,
    TrainConfigBase,
    TrainJob,
    read_ahead,
    run_training,
)
from micro_perception.training.depth_eval import depth_metrics
from micro_perception.training.depth_losses import DepthLossWeights, depth_loss, depth_terms

SUPERVISION = ("gt", "stereo", "mixed")


@dataclass
class DepthTrainConfig(TrainConfigBase):
    out: str = "depth.pt"
    supervision: str = "gt"
    input: str = "aif"
    batch: int = 4
    crop: int = 256
    crops_per_frame: int = 2
    teacher_weight: float = 1.0
    imagenet_weights: str | None = None
    loss: DepthLossWeights = field(default_factory=DepthLossWeights)
    net: DepthNetConfig = field(default_factory=DepthNetConfig)

    def __post_init__(self):
        if self.supervision not in SUPERVISION:
            raise InputError(
                f"supervision must be one of {list(SUPERVISION)}, got {self.supervision!r}"
            )
        if self.input not in ("aif", "fused"):
            raise InputError(f"input must be aif or fused, got {self.input!r}")


def read_eye(rec, eye: str, fused: bool) -> tuple[dict, np.ndarray | None]:
    """One eye's ground truth and, for fused inputs, its focal sweep ((S, H, W, 3) uint8): the
    files, read apart from the fusing (``read_ahead`` runs this on its threads)."""
    sweep = np.stack([read_rgb(p) for p in rec.slices[eye]]) if fused else None
    return read_ground_truth(rec.root / eye), sweep


def input_image(
    rec, eye: str, gt: dict, fuser: Fuser | None, sweep: np.ndarray | None
) -> np.ndarray:
    """The all-in-focus image a network sees: the fusion network's output on the sweep
    (``read_eye``'s), the ground-truth one, or (a recording without either) the sweep's middle
    slice."""
    if fuser is not None:
        return fuser(sweep)
    if "aif" in gt:
        return gt["aif"]
    return read_rgb(rec.slices[eye][len(rec.slices[eye]) // 2])


def load_frames(root: str, cfg: DepthTrainConfig, supervision: str) -> list[dict]:
    """Every frame's input image and targets, in memory."""
    root = Path(root)
    use_gt = supervision in ("gt", "mixed")
    use_teacher = supervision in ("stereo", "mixed")
    pair = dataset_stereo_pair(root) if use_teacher else None
    fuser = Fuser("net", "cpu") if cfg.input == "fused" else None
    eyes = ("left", "right") if use_teacher else ("left",)

    def read(rec):
        return rec, {e: read_eye(rec, e, fuser is not None) for e in eyes}

    frames = []
    for rec, files in read_ahead(read, find_stacks(root)):
        gts = {e: files[e][0] for e in eyes}
        images = {e: input_image(rec, e, gts[e], fuser, files[e][1]) for e in eyes}
        frame = {
            "image": images["left"],
            "depth": None,
            "mask": None,
            "teacher": None,
            "confidence": None,
        }
        if use_gt:
            if "depth" not in gts["left"]:
                raise InputError(
                    f"{rec.root / 'left'} has no depth.npy for --supervision {supervision}"
                )
            frame["depth"] = gts["left"]["depth"]
            frame["mask"] = gts["left"].get("mask")
        if use_teacher:
            result = stereo_depth(images["left"], images["right"], pair)
            frame["teacher"], frame["confidence"] = result.depth, result.confidence
        frames.append(frame)
    return frames


class DepthCrops(RandomCrops):
    """Random crops of in-memory frames, flipped alike, with photometric jitter on the image."""

    def __getitem__(self, i: int):
        rng, f, rows, cols = self.draw(i)
        flip_x, flip_y = rng.uniform() < 0.5, rng.uniform() < 0.5

        def take(a, fill=np.nan):
            if a is None:
                return np.full((self.crop, self.crop), fill, np.float32)
            a = a[rows, cols]
            a = a[:, ::-1] if flip_x else a
            a = a[::-1] if flip_y else a
            return np.ascontiguousarray(a, dtype=np.float32)

        image = take(f["image"]) / 255.0
        gain, gamma = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.25)
        image = np.clip(image * gain, 0, 1) ** gamma
        # Sensor noise as the fused images keep it (ground-truth all-in-focus images have none).
        sigma = rng.uniform(0.0, 0.01)
        image = np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 1).astype(np.float32)
        tensors = [
            image.transpose(2, 0, 1),
            take(f["depth"])[None],
            take(f["mask"])[None],
            take(f["teacher"])[None],
            take(f["confidence"], 0.0)[None],
        ]
        return tuple(torch.from_numpy(np.ascontiguousarray(t)) for t in tensors)


def train_depth(cfg: DepthTrainConfig, progress: bool = True) -> dict:
    def build(device: torch.device) -> TrainJob:
        frames = load_frames(cfg.data, cfg, cfg.supervision)
        val = load_frames(cfg.val, cfg, "gt")[: cfg.val_limit] if cfg.val else []
        use_gt = cfg.supervision in ("gt", "mixed")
        use_teacher = cfg.supervision in ("stereo", "mixed")
        w = cfg.loss

        def step(model, batch, rng):
            image, depth, mask, teacher, confidence = batch
            pred, logits = model(image)
            total = pred.new_zeros(())
            terms = {}
            if use_gt:
                known_mask = torch.isfinite(mask).all()
                loss, terms = depth_loss(pred, depth, logits, mask if known_mask else None, w)
                total = total + loss
            if use_teacher:
                t = depth_terms(pred, teacher, confidence, w.alpha)
                total = total + cfg.teacher_weight * (
                    w.depth * t["depth"] + w.grad * t["grad"] + w.normal * t["normal"]
                )
                terms.update({f"teacher_{k}": float(v.detach()) for k, v in t.items()})
            return total, terms

        def validate(net) -> dict:
            rows = []
            for f in val:
                image = torch.from_numpy(f["image"]).permute(2, 0, 1).float().div(255)[None]
                pred = net(image.to(device))[0][0, 0].double().cpu().numpy()
                mask = f["mask"] if f["mask"] is not None else np.zeros(pred.shape, bool)
                rows.append(depth_metrics(pred, f["depth"], mask))
            out = {}
            for key in ("rmse_retina_um", "rmse_instrument_um", "rmse_boundary_um"):
                values = [r[key] for r in rows if r[key] is not None]
                if values:
                    out[key] = float(np.mean(values))
            out["neg_rmse_um"] = -float(np.mean([r["rmse_interior_um"] for r in rows]))
            return out

        return TrainJob(
            kind="depth",
            net=DepthNet(cfg.net, cfg.imagenet_weights),
            net_config=cfg.net.to_dict(),
            data=DepthCrops(frames, cfg.crop, cfg.crops_per_frame, cfg.seed),
            step=step,
            validate=validate if val else None,
            score="neg_rmse_um",
        )

    return run_training(cfg, build, progress)
