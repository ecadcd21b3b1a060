"""Saving and loading network weights safely (no ROS).

A weights file is a plain dict of tensors and JSON-like values, read with
``torch.load(weights_only=True)``: nothing is unpickled but tensors and containers. It names the
network kind and carries the architecture's config, so a file from another architecture is
refused with a message naming the file, not loaded into the wrong shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from micro_perception.errors import InputError

FORMAT = "micro_perception.weights/1"


def save_weights(
    path: str | Path, kind: str, config: dict, state_dict: dict, info: dict | None = None
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "kind": kind,
        "config": config,
        "info": info or {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_weights(path: str | Path, kind: str) -> tuple[dict, dict, dict]:
    """(config, state_dict, info) of a ``kind`` weights file; InputError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"weights file {path} cannot be read safely: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path} is not a micro_perception weights file (format {FORMAT})")
    if blob.get("kind") != kind:
        raise InputError(f"{path} holds {blob.get('kind')!r} weights, expected {kind!r}")
    return blob["config"], blob["state_dict"], blob.get("info", {})


def load_into(module: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    """Load a state dict strictly, naming the file on any mismatch."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path} does not fit this network: {str(exc).splitlines()[0]}") from None
