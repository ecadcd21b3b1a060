"""Exporting the networks for other runtimes (no ROS): ``micro-perception export``.

* ``exported-program``: ``torch.export`` saved with ``torch.export.save`` (a ``.pt2`` file that
  ``torch.export.load(path).module()`` runs without this package's Python classes);
* ``onnx``: the same graph through torch's ONNX exporter, for ONNX Runtime or TensorRT's
  ``trtexec``;
* ``tensorrt``: compiled by Torch-TensorRT for this machine's GPU (needs CUDA and
  torch_tensorrt), saved as an exported program.

Shapes are fixed by ``size`` (and ``slices`` for fusion) unless ``dynamic`` is asked: then the
height and width (and the slice count) may vary at run time, in multiples of 32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from micro_perception.errors import InputError

FORMATS = ("onnx", "exported-program", "tensorrt")
MODELS = ("fusion", "depth", "segmentation")


class _Outputs(torch.nn.Module):
    """The network with a plain tuple of outputs (named below), as exporters want."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


OUTPUT_NAMES = {
    "fusion": ["fused"],
    "depth": ["depth_m", "mask_logits"],
    "segmentation": ["mask_logits"],
}


def example_input(model: str, size: tuple[int, int], slices: int = 8) -> torch.Tensor:
    h, w = size
    if h % 32 or w % 32:
        raise InputError(f"export size must be a multiple of 32, got {h}x{w}")
    g = torch.Generator().manual_seed(0)
    shape = (1, slices, 3, h, w) if model == "fusion" else (1, 3, h, w)
    return torch.rand(*shape, generator=g)


def dynamic_shapes(model: str):
    """torch.export dims: height and width in multiples of 32 (and the slice count)."""
    from torch.export import Dim

    hh, ww = Dim("h32", min=2, max=128), Dim("w32", min=2, max=128)
    dims = {-2: 32 * hh, -1: 32 * ww}
    if model == "fusion":
        return ({1: Dim("slices", min=2, max=32), 3: dims[-2], 4: dims[-1]},)
    return ({2: dims[-2], 3: dims[-1]},)


def export_model(
    net: torch.nn.Module,
    model: str,
    fmt: str,
    out: str | Path,
    size: tuple[int, int] = (512, 512),
    slices: int = 8,
    dynamic: bool = False,
    precision: str = "fp32",
) -> dict:
    """Write ``net`` to ``out`` in ``fmt``; returns what was written."""
    if model not in MODELS:
        raise InputError(f"model must be one of {list(MODELS)}, got {model!r}")
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Outputs(net.float()).eval()
    x = example_input(model, size, slices)
    shapes = dynamic_shapes(model) if dynamic else None
    info = {
        "model": model,
        "format": fmt,
        "out": str(out),
        "input_shape": list(x.shape),
        "dynamic": dynamic,
        "outputs": OUTPUT_NAMES[model],
    }
    if fmt == "exported-program":
        with torch.no_grad():
            program = torch.export.export(wrapped, (x,), dynamic_shapes=shapes)
        torch.export.save(program, str(out))
    elif fmt == "onnx":
        with torch.no_grad():
            torch.onnx.export(
                wrapped,
                (x,),
                str(out),
                input_names=["image"],
                output_names=OUTPUT_NAMES[model],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,  # one self-contained file: these networks are small
                verbose=False,
            )
    else:
        if dynamic:
            raise InputError("--format tensorrt builds for one shape: leave out --dynamic")
        from micro_perception.inference import Runtime, RuntimeConfig

        rt = Runtime(wrapped, model, RuntimeConfig("tensorrt", precision, "cuda"))
        if rt.backend != "tensorrt":
            raise InputError(
                "--format tensorrt needs CUDA and torch_tensorrt (pip install "
                "'micro_perception[tensorrt]'); use onnx or exported-program here"
            )
        rt.warmup(x.to(rt.device), runs=1)
        import shutil

        shutil.copyfile(rt.engine["engine_path"], out)
        info["precision"] = precision
    info["bytes"] = out.stat().st_size
    return info


def load_exported(path: str | Path):
    """A callable of an ``exported-program`` file: tensors in, a tuple of tensors out."""
    return torch.export.load(str(path)).module()
