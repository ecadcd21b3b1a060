"""Fusion algorithms on arrays: focus measure, baselines, depth from focus, network, buffer."""

import numpy as np
import pytest
import torch

from micro_perception.errors import InputError
from micro_perception.fusion.buffer import FocalBuffer, Slice
from micro_perception.fusion.classical import METHODS, guided_filter
from micro_perception.fusion.focus import (
    box_filter,
    depth_from_focus,
    modified_laplacian,
    sum_modified_laplacian,
)
from micro_perception.fusion.network import FusionNet, FusionNetConfig, load_fusion_net
from micro_perception.model_io import save_weights
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import render_sample, srgb8_to_linear
from micro_perception.sim.scene import make_scene


def test_modified_laplacian_matches_its_definition():
    img = torch.rand(9, 11, dtype=torch.float64)
    ml = modified_laplacian(img, step=2)
    y, x = 4, 5
    expect = abs(2 * img[y, x] - img[y, x - 2] - img[y, x + 2]) + abs(
        2 * img[y, x] - img[y - 2, x] - img[y + 2, x]
    )
    assert ml[y, x].item() == pytest.approx(expect.item())
    sml = sum_modified_laplacian(img, step=2, threshold=0.0, window=3)
    assert sml[y, x].item() == pytest.approx(ml[y - 1 : y + 2, x - 1 : x + 2].sum().item())
    thresholded = sum_modified_laplacian(img, 2, threshold=10.0, window=3)
    assert thresholded.abs().max().item() == 0.0


def test_box_filter_is_the_window_mean():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    ref = torch.nn.functional.avg_pool2d(x, 7, 1, 3, count_include_pad=False)
    torch.testing.assert_close(box_filter(x, 3), ref)


def test_guided_filter_preserves_a_constant_and_follows_edges():
    guide = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    guide[..., 16:] = 1.0
    const = torch.full_like(guide, 0.3)
    torch.testing.assert_close(guided_filter(guide, const, 4, 1e-6), const)
    out = guided_filter(guide, guide.clone(), 4, 1e-6)
    assert (out - guide).abs().max() < 1e-3  # an edge in the guide survives


@pytest.fixture(scope="module")
def sim_stack():
    optics = MicroscopeOptics().scaled_to(96, 96)
    sample = render_sample(make_scene(4, optics, kind="forceps", gap=0.3e-3), optics, slices=6)
    stack = torch.from_numpy(sample.left.slices).permute(0, 3, 1, 2).float().div(255)[None]
    aif = torch.from_numpy(sample.left.aif).permute(2, 0, 1).float().div(255)[None]
    return stack, aif, sample


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_baseline_beats_every_single_slice(method, sim_stack):
    stack, aif, _ = sim_stack
    fused = METHODS[method](stack).clamp(0, 1)
    assert fused.shape == aif.shape
    best_slice = max(psnr(stack[:, k], aif) for k in range(stack.shape[1]))
    assert psnr(fused, aif) > best_slice + 1.0


@pytest.mark.parametrize("method", list(METHODS))
def test_baselines_reject_bad_stacks(method):
    with pytest.raises(ValueError):
        METHODS[method](torch.rand(1, 1, 3, 16, 16))
    with pytest.raises(ValueError):
        METHODS[method](torch.rand(1, 4, 1, 16, 16))


def test_depth_from_focus_on_the_simulator(sim_stack):
    sample = sim_stack[2]
    volume = sum_modified_laplacian(
        torch.from_numpy(srgb8_to_linear(sample.left.slices)).permute(0, 3, 1, 2)[None], window=9
    )
    depth, conf = depth_from_focus(volume, torch.from_numpy(sample.focus_distances)[None])
    gt = sample.left.depth
    spacing = np.diff(sample.focus_distances).mean()
    sure = conf[0].numpy() > 0.5
    assert sure.mean() > 0.05
    err = np.abs(depth[0].numpy() - gt)[sure]
    # Confident pixels are placed well within one slice spacing.
    assert np.median(err) < 0.5 * spacing


def test_depth_from_focus_interpolates_between_slices():
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    true = 2.3
    focus = torch.exp(-0.5 * ((z[0] - true) / 0.7) ** 2).view(1, 4, 1, 1)
    depth, conf = depth_from_focus(focus, z)
    assert depth.item() == pytest.approx(true, abs=1e-6)  # exact for a Gaussian profile
    assert 0 < conf.item() <= 1


def test_network_is_slice_order_invariant_and_takes_any_count():
    torch.manual_seed(0)
    net = FusionNet().eval()
    stack = torch.rand(2, 5, 3, 40, 56)
    with torch.no_grad():
        out = net(stack)
        shuffled = net(stack[:, torch.tensor([3, 0, 4, 1, 2])])
        assert net(stack[:, :2]).shape == (2, 3, 40, 56)
        assert net(torch.rand(1, 16, 3, 32, 32)).shape == (1, 3, 32, 32)
    torch.testing.assert_close(out, shuffled, atol=1e-5, rtol=1e-5)


def test_convex_network_output_is_a_blend_of_input_pixels():
    net = FusionNet(FusionNetConfig(kernel=3, kernel_mode="convex")).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
        stack = torch.rand(1, 4, 3, 32, 32)
        out = net(stack)
        # Every output value lies within the range of the inputs around it.
        lo = torch.nn.functional.max_pool2d(-stack.amin(dim=1), 3, 1, 1).neg()
        hi = torch.nn.functional.max_pool2d(stack.amax(dim=1), 3, 1, 1)
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
        grey = torch.full((1, 4, 3, 32, 32), 0.42)
        torch.testing.assert_close(net(grey), torch.full((1, 3, 32, 32), 0.42))


def test_weights_round_trip_and_refusals(tmp_path):
    net = FusionNet(FusionNetConfig(widths=(8, 16, 16)))
    path = tmp_path / "f.pt"
    save_weights(path, "fusion", net.cfg.to_dict(), net.state_dict())
    loaded = load_fusion_net(path)
    x = torch.rand(1, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
    save_weights(tmp_path / "d.pt", "depth", {}, net.state_dict())
    with pytest.raises(InputError, match="holds 'depth' weights"):
        load_fusion_net(tmp_path / "d.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot be read safely"):
        load_fusion_net(tmp_path / "trunc.pt")
    torch.save(
        {
            "format": "micro_perception.weights/1",
            "kind": "fusion",
            "config": {},
            "state_dict": {"nope": torch.zeros(1)},
        },
        tmp_path / "other.pt",
    )
    with pytest.raises(InputError, match="does not fit"):
        load_fusion_net(tmp_path / "other.pt")
    with pytest.raises(InputError, match="not found"):
        load_fusion_net(tmp_path / "missing.pt")


def img(value=0, shape=(4, 4, 3)):
    return np.full(shape, value, np.uint8)


def test_buffer_completes_on_count_and_on_reversal():
    buf = FocalBuffer(slices_per_stack=4, max_buffered=8)
    out = [buf.push(Slice(i, img(), focus=0.19 + 0.001 * i))[0] for i in range(4)]
    assert out[:3] == [None] * 3 and out[3].complete_because == "count"
    assert len(out[3].slices) == 4 and out[3].stamp_ns == 3
    # A sweep that turns back after 3 slices ends there.
    focus = [0.19, 0.191, 0.192, 0.191, 0.190]
    done = [buf.push(Slice(10 + i, img(), focus=f))[0] for i, f in enumerate(focus)]
    stack = next(s for s in done if s is not None)
    assert stack.complete_because == "reversal"
    np.testing.assert_allclose(stack.focus, [0.19, 0.191, 0.192])
    assert len(buf) == 2


def test_buffer_without_focus_groups_by_count():
    buf = FocalBuffer(slices_per_stack=3)
    stacks = [buf.push(Slice(i, img(i)))[0] for i in range(7)]
    complete = [s for s in stacks if s is not None]
    assert [len(s.slices) for s in complete] == [3, 3]
    assert complete[0].focus is None


def test_buffer_drops_a_stack_whose_size_changes_and_resets_on_time_jumps():
    buf = FocalBuffer(slices_per_stack=4)
    buf.push(Slice(0, img()))
    buf.push(Slice(1, img()))
    stack, note = buf.push(Slice(2, img(shape=(5, 4, 3))))
    assert stack is None and "mid-stack" in note and len(buf) == 1 and buf.dropped == 2
    _, note = buf.push(Slice(1, img(shape=(5, 4, 3))))
    assert "backwards" in note and buf.resets == 1 and len(buf) == 1
    _, note = buf.push(Slice(5, img(shape=(5, 4, 3)), focus=float("nan")))
    assert "not finite" in note


def test_buffer_parameters_are_checked():
    with pytest.raises(InputError):
        FocalBuffer(slices_per_stack=1)
    with pytest.raises(InputError):
        FocalBuffer(slices_per_stack=8, max_buffered=4)


def test_affine_kernels_sum_to_one_keep_flat_colours_and_may_sharpen():
    torch.manual_seed(1)
    net = FusionNet(FusionNetConfig(kernel=5, kernel_mode="affine")).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)  # moderate logits, as a trained network has
        stack = torch.rand(1, 4, 3, 32, 32)
        slice_w, kernel = net.weights(stack)
        torch.testing.assert_close(slice_w.sum(dim=1), torch.ones_like(slice_w[:, 0]))
        torch.testing.assert_close(kernel.sum(dim=1), torch.ones_like(kernel[:, 0]))
        assert kernel.shape[1] == 25 and kernel.min() < 0  # negative taps: sharpening
        grey = torch.full((1, 4, 3, 32, 32), 0.42)
        torch.testing.assert_close(net(grey), torch.full((1, 3, 32, 32), 0.42))
    with pytest.raises(ValueError):
        FusionNetConfig(kernel_mode="magic")
