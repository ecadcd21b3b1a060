"""Training the fusion network: ``micro-perception train fusion`` (torchrun-ready, no ROS).

    micro-perception train fusion --data DIR --val DIR --out fusion.pt
    torchrun --nproc_per_node=N -m micro_perception.cli train fusion --data DIR --out fusion.pt

The checkpoint (``--out``, e.g. fusion.pt.ckpt beside it) holds model, optimizer, scheduler,
config and progress, and ``--resume`` continues from it. The best network by validation PSNR is
written to ``--out`` as a weights file (see micro_perception.model_io). TensorBoard logs go to
``--log-dir`` (default: beside ``--out``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import kornia
import numpy as np
import torch

from micro_perception.errors import InputError
from micro_perception.fusion.network import FusionNet, FusionNetConfig
from micro_perception.sim.dataset import find_stacks, read_ground_truth, read_rgb
from micro_perception.training.common import (
    RandomCrops,
    TrainConfigBase,
    TrainJob,
    run_training,
)
from micro_perception.training.losses import FusionLoss, FusionLossWeights


@dataclass
class FusionTrainConfig(TrainConfigBase):
    out: str = "fusion.pt"
    lr: float = 2e-3
    crops_per_stack: int = 4  # random crops drawn from each stack per epoch
    min_slices: int = 2
    workers: int = 2
    val_limit: int = 40  # validation stacks evaluated per epoch
    vgg_weights: str | None = None
    loss: FusionLossWeights = field(default_factory=FusionLossWeights)
    net: FusionNetConfig = field(default_factory=FusionNetConfig)


def load_stacks(root: str, eyes=("left", "right"), threads: int = 4) -> list[tuple]:
    """Every (slices (K, H, W, 3) uint8, aif (H, W, 3) uint8) pair of a dataset, decoded."""
    records = find_stacks(Path(root))

    def one(rec_eye):
        rec, eye = rec_eye
        gt = read_ground_truth(rec.root / eye)
        if "aif" not in gt:
            raise InputError(f"{rec.root / eye} has no aif.* target to train the fusion on")
        return np.stack([read_rgb(p) for p in rec.slices[eye]]), gt["aif"]

    jobs = [(r, e) for r in records for e in eyes if e in r.slices]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, jobs))


class StackCrops(RandomCrops):
    """Random aligned crops of in-memory stacks, flipped and rotated alike."""

    def size_of(self, item) -> tuple[int, int]:
        return item[1].shape[:2]

    def __getitem__(self, i: int):
        rng, (slices, aif), rows, cols = self.draw(i)
        s, a = slices[:, rows, cols], aif[rows, cols]
        k = int(rng.integers(0, 4))
        s, a = np.rot90(s, k, axes=(1, 2)), np.rot90(a, k, axes=(0, 1))
        if rng.uniform() < 0.5:
            s, a = s[:, :, ::-1], a[:, ::-1]
        stack = torch.from_numpy(np.ascontiguousarray(s)).permute(0, 3, 1, 2).float() / 255
        target = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255
        return stack, target


def psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mse = ((out - target) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def validate(net: torch.nn.Module, stacks: list[tuple], device: torch.device) -> dict:
    net.eval()
    scores_p, scores_s = [], []
    for slices, aif in stacks:
        stack = torch.from_numpy(slices).permute(0, 3, 1, 2).float().div(255)[None].to(device)
        target = torch.from_numpy(aif).permute(2, 0, 1).float().div(255)[None].to(device)
        out = net(stack).clamp(0, 1)
        scores_p.append(float(psnr(out, target)))
        scores_s.append(1 - 2 * float(kornia.losses.ssim_loss(out, target, 11)))
    net.train()
    return {"psnr": float(np.mean(scores_p)), "ssim": float(np.mean(scores_s))}


def train_fusion(cfg: FusionTrainConfig, progress: bool = True) -> dict:
    def build(device: torch.device) -> TrainJob:
        stacks = load_stacks(cfg.data)
        val_stacks = load_stacks(cfg.val, eyes=("left",))[: cfg.val_limit] if cfg.val else []
        loss_fn = FusionLoss(cfg.loss, cfg.vgg_weights).to(device)
        use_amp = device.type == "cuda"

        def step(model, batch, rng):
            stack, target = batch
            # Variable stack length and order: the network must not depend on either.
            k = int(rng.integers(cfg.min_slices, stack.shape[1] + 1))
            stack = stack[:, torch.from_numpy(rng.permutation(stack.shape[1])[:k])]
            with torch.autocast(device.type, enabled=use_amp):
                out = model(stack)
            return loss_fn(out.float(), target)

        return TrainJob(
            kind="fusion",
            net=FusionNet(cfg.net),
            net_config=cfg.net.to_dict(),
            data=StackCrops(stacks, cfg.crop, cfg.crops_per_stack, cfg.seed),
            step=step,
            validate=(lambda net: validate(net, val_stacks, device)) if val_stacks else None,
            score="psnr",
        )

    result = run_training(cfg, build, progress)
    return {"out": result["out"], "best_val_psnr": result["best"], "history": result["history"]}
