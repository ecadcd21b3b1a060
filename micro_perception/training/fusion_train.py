"""Training the fusion network: ``micro-perception train fusion`` (torchrun-ready, no ROS).

    micro-perception train fusion --data DIR --val DIR --out fusion.pt
    torchrun --nproc_per_node=N -m micro_perception.cli train fusion --data DIR --out fusion.pt

The checkpoint (``--out``, e.g. fusion.pt.ckpt beside it) holds model, optimizer, scheduler,
config and progress, and ``--resume`` continues from it. The best network by validation PSNR is
written to ``--out`` as a weights file (see micro_perception.model_io). TensorBoard logs go to
``--log-dir`` (default: beside ``--out``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import kornia
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from micro_perception.errors import InputError
from micro_perception.fusion.network import FusionNet, FusionNetConfig
from micro_perception.model_io import save_weights
from micro_perception.sim.dataset import find_stacks, read_ground_truth, read_rgb
from micro_perception.training.common import (
    Distributed,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
)
from micro_perception.training.losses import FusionLoss, FusionLossWeights


@dataclass
class FusionTrainConfig:
    data: str = ""
    val: str | None = None
    out: str = "fusion.pt"
    epochs: int = 20
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crop: int = 128
    crops_per_stack: int = 4  # random crops drawn from each stack per epoch
    min_slices: int = 2
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    grad_clip: float = 1.0
    val_limit: int = 40  # validation stacks evaluated per epoch
    log_dir: str | None = None
    resume: str | None = None
    vgg_weights: str | None = None
    loss: FusionLossWeights = field(default_factory=FusionLossWeights)
    net: FusionNetConfig = field(default_factory=FusionNetConfig)

    @property
    def checkpoint(self) -> str:
        return f"{self.out}.ckpt"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d


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


class StackCrops(Dataset):
    """Random aligned crops of in-memory stacks, flipped and rotated alike."""

    def __init__(self, stacks: list[tuple], crop: int, crops_per_stack: int, seed: int):
        self.stacks = stacks
        self.crop = crop
        self.repeat = crops_per_stack
        self.seed = seed
        self.epoch = 0
        h, w = stacks[0][1].shape[:2]
        if crop > min(h, w):
            raise InputError(f"crop {crop} is larger than the images ({h}x{w})")

    def __len__(self) -> int:
        return len(self.stacks) * self.repeat

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        slices, aif = self.stacks[i % len(self.stacks)]
        h, w = aif.shape[:2]
        y = int(rng.integers(0, h - self.crop + 1))
        x = int(rng.integers(0, w - self.crop + 1))
        s = slices[:, y : y + self.crop, x : x + self.crop]
        a = aif[y : y + self.crop, x : x + self.crop]
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
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    base_device = pick_device(cfg.device)
    dd = Distributed.setup(base_device)
    device = dd.device(base_device)
    seed_everything(cfg.seed + dd.rank)
    stacks = load_stacks(cfg.data)
    val_stacks = load_stacks(cfg.val, eyes=("left",))[: cfg.val_limit] if cfg.val else []
    data = StackCrops(stacks, cfg.crop, cfg.crops_per_stack, cfg.seed)
    sampler = DistributedSampler(data, dd.world, dd.rank, seed=cfg.seed) if dd.world > 1 else None
    loader = DataLoader(
        data,
        batch_size=cfg.batch,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        persistent_workers=cfg.workers > 0,
    )
    net = FusionNet(cfg.net).to(device)
    model = torch.nn.parallel.DistributedDataParallel(net) if dd.world > 1 else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.lr, total_steps=total_steps, pct_start=0.1
    )
    loss_fn = FusionLoss(cfg.loss, cfg.vgg_weights).to(device)
    use_amp = device.type == "cuda"
    epoch, step, best = 0, 0, -math.inf
    if cfg.resume:
        ck = load_checkpoint(cfg.resume)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        epoch, step, best = ck["epoch"], ck["step"], ck["best"]
        if ck["config"]["epochs"] == cfg.epochs:
            scheduler.load_state_dict(ck["scheduler"])
        else:  # a longer or shorter plan: the same one-cycle shape over the new total
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, cfg.lr, total_steps=total_steps, pct_start=0.1, last_epoch=step - 1
            )
    writer = None
    if dd.main:
        log_dir = cfg.log_dir or str(Path(cfg.out).with_suffix("")) + "_tb"
        writer = SummaryWriter(log_dir)
        writer.add_text("config", json.dumps(cfg.to_dict(), indent=1))
    rng = np.random.default_rng(cfg.seed)
    history = []
    while epoch < cfg.epochs:
        data.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and dd.main)
        )
        t0 = time.time()
        for stack, target in bar:
            stack, target = stack.to(device), target.to(device)
            # Variable stack length and order: the network must not depend on either.
            k = int(rng.integers(cfg.min_slices, stack.shape[1] + 1))
            stack = stack[:, torch.from_numpy(rng.permutation(stack.shape[1])[:k])]
            with torch.autocast(device.type, enabled=use_amp):
                out = model(stack)
            loss, terms = loss_fn(out.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            if writer is not None and step % 10 == 0:
                for name, value in terms.items():
                    writer.add_scalar(f"train/{name}", value, step)
                writer.add_scalar("train/loss", float(loss), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.set_postfix(loss=f"{float(loss):.4f}")
        epoch += 1
        metrics = validate(net, val_stacks, device) if val_stacks else {}
        metrics = {k: dd.all_mean(v, device) for k, v in metrics.items()}
        record = {"epoch": epoch, "step": step, "seconds": time.time() - t0, **metrics}
        history.append(record)
        if dd.main:
            for name, value in metrics.items():
                writer.add_scalar(f"val/{name}", value, step)
            score = metrics.get("psnr", -float(loss))
            if score > best:
                best = score
                save_weights(
                    cfg.out,
                    "fusion",
                    cfg.net.to_dict(),
                    net.state_dict(),
                    {"epoch": epoch, "step": step, "val": metrics, "train_config": cfg.to_dict()},
                )
            save_checkpoint(
                cfg.checkpoint,
                model=net.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                config=cfg.to_dict(),
                epoch=epoch,
                step=step,
                best=best,
            )
            if progress:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                tqdm.write(f"epoch {epoch}: {shown or 'no validation set'}", file=sys.stderr)
    if writer is not None:
        writer.close()
    dd.close()
    return {"out": cfg.out, "best_val_psnr": best, "history": history}
