"""What every trainer shares: device choice, DDP (torchrun), checkpoints, in-memory data."""

from __future__ import annotations

import itertools
import os
import random
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from micro_perception.errors import InputError
from micro_perception.inference import pick_device


@dataclass
class TrainConfigBase:
    """What every trainer's dataclass config shares: the data, the optimisation and the
    bookkeeping fields (a trainer redeclares those whose default differs), the checkpoint beside
    ``out`` and a JSON-ready dict (the network config flattened by its own ``to_dict``)."""

    data: str = ""
    val: str | None = None
    out: str = "weights.pt"
    epochs: int = 20
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    crop: int = 128
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    grad_clip: float = 1.0
    val_limit: int = 20  # validation items evaluated per epoch
    log_dir: str | None = None
    resume: str | None = None
    amp: bool = False  # bf16 autocast on CUDA (ignored on the CPU)
    # > 0: after the first epoch, fit the plan (and its one-cycle schedule) to this many seconds
    time_budget_s: float = 0.0

    @property
    def checkpoint(self) -> str:
        return f"{self.out}.ckpt"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d


@dataclass
class Distributed:
    """Where this process stands in a torchrun job (world of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        d = cls(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world)
        if device.type == "cuda":
            torch.cuda.set_device(d.local_rank)
        return d

    def device(self, base: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if base.type == "cuda" else base

    def all_mean(self, value: float, device: torch.device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], device=device, dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            # Every rank finishes its last epoch (rank 0 writes the checkpoint) before the group
            # goes: a rank tearing gloo down while its peer still talks aborted (SIGABRT).
            dist.barrier()
            dist.destroy_process_group()


def read_ahead(fn, items, workers: int | None = None):
    """``fn(item)`` for each item, in order, computed by a thread pool a few items ahead.
    Decoding PNG and .npy files releases the GIL; one file at a time, loading 1000 frames took
    over two minutes of a GPU session (models/segmentation.md). At most 2 x ``workers`` results
    wait in memory, so a slow consumer (fusing on the CPU) does not read the whole set."""
    workers = workers or min(8, os.cpu_count() or 1)
    items = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(fn, item) for item in itertools.islice(items, 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(items, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path, **state) -> None:
    """One dict: model, optimizer, scheduler, config, epoch, step, best metric."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    # Checkpoints hold optimizer state and dataclass configs as dicts: plain containers only.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint {path} cannot be read safely: {exc}") from None


@dataclass
class TrainJob:
    """What a network's trainer gives the shared loop."""

    kind: str  # the weights file kind ("fusion", "depth")
    net: torch.nn.Module
    net_config: dict
    data: torch.utils.data.Dataset  # may have an ``epoch`` attribute, set every epoch
    step: object  # (model, batch, rng) -> (loss tensor, {term: float})
    validate: object | None  # (net) -> {metric: float}, or None
    score: str  # the validation metric to maximise; the best network is written to --out


def run_training(cfg, build, progress: bool = True) -> dict:
    """The loop every trainer shares: device and DDP, AdamW with a one-cycle schedule, gradient
    clipping, TensorBoard, validation each epoch, the best weights to ``cfg.out``, a checkpoint
    (model, optimizer, scheduler, config, progress) each epoch, and ``cfg.resume``."""
    import json
    import sys
    import time
    from pathlib import Path

    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from micro_perception.model_io import save_weights

    base_device = pick_device(cfg.device)
    dd = Distributed.setup(base_device)
    device = dd.device(base_device)
    seed_everything(cfg.seed + dd.rank)
    job: TrainJob = build(device)
    net = job.net.to(device)
    data = job.data
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
    if len(loader) == 0:
        raise InputError(f"{len(data)} training samples make no batch of {cfg.batch}")
    model = torch.nn.parallel.DistributedDataParallel(net) if dd.world > 1 else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(loader)

    def one_cycle(last_step: int = -1):
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            cfg.lr,
            total_steps=total_steps,
            # OneCycleLR divides by (pct_start * total - 1): keep that away from zero on short
            # runs (10 steps at 0.1 was exactly zero).
            pct_start=min(0.75, max(0.1, 2.5 / total_steps)),
            last_epoch=last_step,
        )

    scheduler = one_cycle()
    epoch, step, best = 0, 0, -float("inf")
    if cfg.resume:
        ck = load_checkpoint(cfg.resume)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        epoch, step, best = ck["epoch"], ck["step"], ck["best"]
        if ck["config"]["epochs"] == cfg.epochs:
            scheduler.load_state_dict(ck["scheduler"])
        else:  # a longer or shorter plan: the same one-cycle shape over the new total
            scheduler = one_cycle(step - 1)
    writer = None
    if dd.main:
        writer = SummaryWriter(cfg.log_dir or str(Path(cfg.out).with_suffix("")) + "_tb")
        writer.add_text("config", json.dumps(cfg.to_dict(), indent=1))
    rng = np.random.default_rng(cfg.seed)
    history = []
    epochs = cfg.epochs
    amp = cfg.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once
    started = time.time()
    while epoch < epochs:
        if hasattr(data, "epoch"):
            data.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and dd.main))
        t0 = time.time()
        net.train()
        losses = []
        for batch in bar:
            batch = [b.to(device) for b in batch]
            with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                loss, terms = job.step(model, batch, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            if writer is not None and step % 10 == 0:
                for name, value in terms.items():
                    writer.add_scalar(f"train/{name}", value, step)
                writer.add_scalar("train/loss", float(loss.detach()), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        epoch += 1
        if cfg.time_budget_s > 0 and epoch == 1 and epochs > 1:
            # Every rank takes the same decision from the mean first-epoch time.
            per_epoch = dd.all_mean(time.time() - started, device)
            fit = max(1, min(epochs, int(cfg.time_budget_s // max(per_epoch, 1e-6))))
            if fit != epochs:
                epochs, total_steps = fit, fit * len(loader)
                scheduler = one_cycle(step - 1)
                if dd.main:
                    tqdm.write(
                        f"{per_epoch:.1f} s per epoch: {epochs} epochs fit "
                        f"{cfg.time_budget_s:.0f} s",
                        file=sys.stderr,
                    )
        metrics = {}
        if job.validate is not None:
            net.eval()
            with torch.no_grad():
                metrics = job.validate(net)
        metrics = {k: dd.all_mean(v, device) for k, v in metrics.items()}
        history.append(
            {
                "epoch": epoch,
                "step": step,
                "seconds": time.time() - t0,
                "train_loss": float(np.mean(losses)),
                **metrics,
            }
        )
        if dd.main:
            for name, value in metrics.items():
                writer.add_scalar(f"val/{name}", value, step)
            score = metrics.get(job.score, -losses[-1])
            if score > best:
                best = score
                save_weights(
                    cfg.out,
                    job.kind,
                    job.net_config,
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
    return {"out": cfg.out, "best": best, "score": job.score, "history": history}


class RandomCrops(torch.utils.data.Dataset):
    """Each item ``repeat`` times per epoch at a random square crop. A draw depends only on
    (seed, epoch, index), so runs repeat and DDP ranks need not share state. Subclasses give the
    item's image size (by default that of its ``"image"``) and build the sample from
    :meth:`draw`."""

    def __init__(self, items: list, crop: int, repeat: int, seed: int):
        self.items, self.crop, self.repeat, self.seed = items, crop, repeat, seed
        self.epoch = 0
        h, w = self.size_of(items[0])
        if crop > min(h, w):
            raise InputError(f"crop {crop} is larger than the images ({h}x{w})")

    def size_of(self, item) -> tuple[int, int]:
        return item["image"].shape[:2]

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def draw(self, i: int):
        """(rng, item, rows, cols): the generator for this draw, the item and its crop."""
        rng = np.random.default_rng((self.seed, self.epoch, i))
        item = self.items[i % len(self.items)]
        h, w = self.size_of(item)
        y = int(rng.integers(0, h - self.crop + 1))
        x = int(rng.integers(0, w - self.crop + 1))
        return rng, item, slice(y, y + self.crop), slice(x, x + self.crop)
