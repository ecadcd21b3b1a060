"""What every trainer shares: device choice, DDP (torchrun), checkpoints, in-memory data."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from micro_perception.errors import InputError
from micro_perception.inference import pick_device  # noqa: F401 - re-exported


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
            dist.destroy_process_group()


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
