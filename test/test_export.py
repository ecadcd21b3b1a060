"""Exported networks compute what eager PyTorch computes (on the CPU)."""

import json

import numpy as np
import pytest
import torch

from micro_perception.cli import main
from micro_perception.depth.network import DepthNet
from micro_perception.depth.segmentation import load_seg_net
from micro_perception.errors import InputError
from micro_perception.export import example_input, export_model, load_exported
from micro_perception.fusion.network import load_fusion_net
from micro_perception.resources import shipped_model

ort = pytest.importorskip("onnxruntime")


def eager(net, x):
    with torch.no_grad():
        out = net(x)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def test_onnx_segmentation_with_dynamic_size_matches_eager(tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    rc = main(
        [
            "export",
            "--model",
            "segmentation",
            "--format",
            "onnx",
            "--out",
            str(out),
            "--size",
            "64",
            "64",
            "--dynamic",
            "--json",
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bytes"] == out.stat().st_size and [p.name for p in tmp_path.iterdir()] == [
        "seg.onnx"
    ]
    net = load_seg_net(shipped_model("segmentation.pt"))
    session = ort.InferenceSession(str(out))
    for h, w in ((64, 64), (96, 160)):  # the second size was not the example's
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        got = session.run(None, {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, eager(net, x)[0], atol=1e-4, rtol=1e-4)


def test_fusion_exports_match_eager_in_both_formats(tmp_path):
    net = load_fusion_net(shipped_model("fusion.pt"))
    x = example_input("fusion", (64, 96), slices=4)
    want = eager(net, x)[0]
    export_model(net, "fusion", "onnx", tmp_path / "f.onnx", (64, 96), slices=4)
    got = ort.InferenceSession(str(tmp_path / "f.onnx")).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    export_model(net, "fusion", "exported-program", tmp_path / "f.pt2", (64, 96), slices=4)
    with torch.no_grad():
        (got,) = load_exported(tmp_path / "f.pt2")(x)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_depth_exported_program_keeps_both_heads(tmp_path):
    torch.manual_seed(0)
    net = DepthNet().eval()
    x = example_input("depth", (64, 64))
    export_model(net, "depth", "exported-program", tmp_path / "d.pt2", (64, 64))
    with torch.no_grad():
        depth, logits = load_exported(tmp_path / "d.pt2")(x)
    want_depth, want_logits = eager(net, x)
    np.testing.assert_allclose(depth.numpy(), want_depth, atol=1e-6)  # metres near 0.2
    np.testing.assert_allclose(logits.numpy(), want_logits, atol=1e-4)


def test_tensorrt_export_without_cuda_says_what_it_needs(tmp_path):
    net = load_seg_net(shipped_model("segmentation.pt"))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="CUDA"):
        export_model(net, "segmentation", "tensorrt", tmp_path / "s.ep", (64, 64))


def test_size_must_suit_the_networks():
    with pytest.raises(InputError, match="multiple of 32"):
        example_input("segmentation", (100, 64))
