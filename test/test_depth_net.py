"""The depth network and its losses on analytic depth."""

import math

import pytest
import torch
import torchvision

from micro_perception.depth.network import DepthNet, DepthNetConfig
from micro_perception.errors import InputError
from micro_perception.training.depth_losses import (
    DepthLossWeights,
    depth_loss,
    depth_terms,
    mask_loss,
)


def plane(a_mm_per_px=0.0, b_mm_per_px=0.0, size=32, z0=0.2):
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    return (z0 + 1e-3 * (a_mm_per_px * x + b_mm_per_px * y)).view(1, 1, size, size)


def interior(size=32, border=2):
    w = torch.zeros(1, 1, size, size, dtype=torch.float64)
    w[..., border:-border, border:-border] = 1
    return w


def test_a_plane_against_itself_costs_nothing():
    z = plane(0.3, -0.1)
    terms = depth_terms(z, z.clone(), interior())
    for name in ("depth", "grad", "normal"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-9)


def test_a_known_offset_gives_the_known_value():
    z = plane(0.2, 0.1)
    terms = depth_terms(z + 0.25e-3, z, interior(), alpha=0.5)
    assert terms["depth"].item() == pytest.approx(math.log(1 + 0.25 / 0.5))
    assert terms["grad"].item() == pytest.approx(0.0, abs=1e-9)  # same slope everywhere
    assert terms["normal"].item() == pytest.approx(0.0, abs=1e-9)


def test_a_tilt_gives_the_analytic_normal_error():
    flat, tilted = plane(), plane(0.5)
    terms = depth_terms(tilted, flat, interior())
    assert terms["normal"].item() == pytest.approx(1 - 1 / math.sqrt(1 + 0.5**2), rel=1e-6)
    assert terms["grad"].item() == pytest.approx(math.log(1 + 0.5 / 0.5), rel=1e-6)


def test_unknown_and_unweighted_pixels_do_not_count():
    z = plane(0.1)
    truth = z.clone()
    truth[..., :8] = float("nan")
    pred = z.clone()
    pred[..., :8] += 5e-3  # wrong only where the truth is unknown
    assert depth_terms(pred, truth)["depth"].item() == pytest.approx(0.0, abs=1e-9)
    weight = torch.ones_like(z)
    weight[..., 20:] = 0
    pred = z.clone()
    pred[..., 20:] += 5e-3
    assert depth_terms(pred, z, weight)["depth"].item() == pytest.approx(0.0, abs=1e-9)


def test_mask_loss_prefers_the_right_mask():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    right = mask_loss((target * 2 - 1) * 8, target)
    wrong = mask_loss((1 - target * 2) * 8, target)
    assert right < 0.01 < 1.0 < wrong


def test_network_shapes_units_and_gradients():
    torch.manual_seed(0)
    net = DepthNet()
    image = torch.rand(2, 3, 70, 90)
    depth, mask = net(image)
    assert depth.shape == mask.shape == (2, 1, 70, 90)
    # Offsets are millimetres around z_ref: an untrained net stays within centimetres of it.
    assert (depth - 0.2).abs().max() < 0.05
    truth = torch.full_like(depth, 0.199)
    loss, terms = depth_loss(depth, truth, mask, torch.zeros_like(mask), DepthLossWeights())
    loss.backward()
    assert all(p.grad is not None for p in net.refine.parameters())
    assert set(terms) == {"depth", "grad", "normal", "mask"}
    extra = DepthNet(DepthNetConfig(extra_channels=2))
    assert extra(torch.rand(1, 5, 64, 64))[0].shape == (1, 1, 64, 64)
    with pytest.raises(ValueError):
        extra(torch.rand(1, 3, 64, 64))


def test_imagenet_weights_only_from_a_local_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    DepthNet(imagenet_weights=str(path))
    with pytest.raises(InputError, match="ImageNet weights"):
        DepthNet(imagenet_weights=str(tmp_path / "missing.pth"))
