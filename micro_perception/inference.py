"""One place that decides where networks run (no ROS). Issue 7 grows this into the full runtime
(Torch-TensorRT, fp16, engine cache); today: device choice."""

from __future__ import annotations

import torch

from micro_perception.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "device cuda was asked for, but torch sees no CUDA device (use device auto or cpu)"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)
