"""The edge refiner: corrections of the segmentation network's edges, their training and their
use by the geometry and the depth pipeline."""

import json

import numpy as np
import pytest
from shapes import covered_bar

from micro_perception.depth.edge_refine import FEATURES, edge_features, load_edge_refiner
from micro_perception.errors import InputError
from micro_perception.geometry import EdgeShift, mask_runs, measure
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import render_layers
from micro_perception.sim.scene import make_scene
from micro_perception.training.edge_train import frame_samples


def _slant(v):
    return 100.3 + 0.2 * v


def test_corrections_move_the_rows_edges_and_only_at_the_runs_ends():
    soft = covered_bar((60, 200), _slant, 10.0)
    rows, first, last, left, right = mask_runs(soft)
    assert len(rows) == 60 and np.allclose(right - left, 20.0, atol=0.05)
    shift_first, shift_last = np.zeros_like(soft), np.zeros_like(soft)
    shift_first[rows, first] = 0.3  # left edges 0.3 px outward
    shift_last[rows, last] = -0.1  # right edges 0.1 px inward
    moved = EdgeShift(shift_first, shift_last).apply(rows, first, last, left, right)
    assert np.allclose(moved[0], left - 0.3) and np.allclose(moved[1], right - 0.1)
    # A run that ends elsewhere (a zone's cut) keeps its edges.
    kept = EdgeShift(shift_first, shift_last).apply(rows, first + 3, last - 3, left, right)
    assert np.allclose(kept[0], left) and np.allclose(kept[1], right)


def test_corrected_edges_move_the_shafts_depth_by_their_disparity():
    """The right view's rows moved 0.2 px left: 0.2 px more disparity along the whole shaft,
    which lifts the needle toward the camera by about 38 um at this scale (189 um a pixel)."""
    optics = MicroscopeOptics().scaled_to(384, 384)
    scene = make_scene(3, optics, kind="needle", gap=0.3e-3)
    left, right = (render_layers(scene, optics, eye) for eye in ("left", "right"))
    # Hard masks as floats: their edges are the soft path's, at the pixels' boundaries.
    masks = left.mask.astype(np.float32), right.mask.astype(np.float32)
    depth = left.depth.astype(np.float64)
    pair = optics.stereo()
    plain = measure(pair, depth, *masks)
    zero = np.zeros(masks[0].shape, np.float32)
    rows, first, last, _, _ = mask_runs(masks[1])
    shift_first, shift_last = zero.copy(), zero.copy()
    shift_first[rows, first], shift_last[rows, last] = 0.2, -0.2
    moved = measure(pair, depth, *masks, edge_shift=(None, EdgeShift(shift_first, shift_last)))
    same = measure(pair, depth, *masks, edge_shift=(EdgeShift(zero, zero), None))
    assert plain.ok and moved.ok and plain.method == moved.method == "silhouette"
    assert same.distance_normal == plain.distance_normal
    lift = moved.distance_normal - plain.distance_normal
    assert 20e-6 < lift < 60e-6, lift
    assert moved.tip_xyz[2] < plain.tip_xyz[2]


def test_samples_are_each_edges_outward_error_on_rows_of_one_run():
    """A network mask 0.4 px wider on each side than the true outline: every edge's label is
    about +0.4 px (the true mask is whole pixels: +-0.5 px each, unbiased over the rows). Rows
    where the network holds two runs are left out."""
    shape = (80, 200)
    true = covered_bar(shape, _slant, 10.0) >= 0.5
    soft = covered_bar(shape, _slant, 10.4)
    soft[20:30, 160:170] = 1.0  # a second run on ten rows
    image = np.zeros((*shape, 3), np.uint8)
    image[true] = 200
    x, y = frame_samples(soft, image, true)
    assert x.shape == (2 * 70, FEATURES) and y.shape == (140,)
    assert np.mean(y) == pytest.approx(0.4, abs=0.05)
    assert np.all(np.abs(y - 0.4) <= 0.55)
    # The profile about an edge: 8 px inside are the instrument's grey, 10 px outside black.
    f = edge_features(image, soft, np.array([50]), np.array([90.0 + 0.2 * 50]), -1.0, np.ones(1))
    assert f.shape == (1, FEATURES)
    assert f[0, 0:3] == pytest.approx([200 / 255] * 3)  # offset -8 (inside), R G B
    assert f[0, 54:57] == pytest.approx([0.0] * 3)  # offset +10 (outside)


@pytest.fixture(scope="module")
def fused_frame():
    """A needle on the virtual microscope at 512x512 as the node sees it: fused 8-slice
    sweeps, segmented by the shipped network (mirror images averaged)."""
    from micro_perception.depth.pipeline import DepthPipeline
    from micro_perception.fusion.fuser import Fuser
    from micro_perception.sim.render import render_sample

    optics = MicroscopeOptics()
    scene = make_scene(4, optics, kind="needle", gap=0.6e-3)
    sample = render_sample(scene, optics, slices=8)
    fuser = Fuser("net", "cpu")
    images = [fuser(sample.left.slices), fuser(sample.right.slices)]
    pipe = DepthPipeline(device="cpu")
    return sample, images, pipe


def test_the_shipped_refiner_brings_the_networks_edges_nearer_the_outline(fused_frame):
    sample, images, pipe = fused_frame
    assert pipe.edges is not None and pipe.edge_weights.name == "edge_refiner.pt"
    probs = pipe.segment(images)
    before, after = [], []
    for prob, image, eye in zip(probs, images, (sample.left, sample.right), strict=True):
        x, y = frame_samples(prob, image, eye.mask > 0)
        before.append(y)
        after.append(y - pipe.edges.predict(x))
    before, after = np.concatenate(before), np.concatenate(after)
    rms = lambda e: float(np.sqrt(np.mean(e**2)))  # noqa: E731
    assert len(before) > 200
    # Both carry the true mask's whole-pixel rounding (0.29 px rms) and more of it after.
    assert rms(after) < rms(before) - 0.05, (rms(before), rms(after))


def test_the_refiner_goes_with_the_segmentation_network_it_learned(tmp_path):
    from micro_perception.depth.pipeline import DepthPipeline
    from micro_perception.depth.segmentation import SegNet
    from micro_perception.model_io import save_weights
    from micro_perception.resources import shipped_model

    assert DepthPipeline(device="cpu", edge_weights=None).edges is None
    other = tmp_path / "seg.pt"
    save_weights(other, "segmentation", SegNet().cfg.to_dict(), SegNet().state_dict())
    assert DepthPipeline(seg_weights=other, device="cpu").edges is None
    chosen = DepthPipeline(seg_weights=other, edge_weights=shipped_model("edge_refiner.pt"))
    assert chosen.edges is not None
    with pytest.raises(InputError, match=r"edge refiner .* there is none"):
        DepthPipeline(seg_weights=None, edge_weights=shipped_model("edge_refiner.pt"))
    with pytest.raises(InputError, match="not found"):
        DepthPipeline(device="cpu", edge_weights=tmp_path / "missing.pt")
    with pytest.raises(InputError, match="holds 'segmentation' weights"):
        load_edge_refiner(other)


def test_train_edges_command_learns_and_keeps_its_samples(tmp_path, simulate, run_cli):
    from micro_perception.training.common import load_checkpoint

    data, out, cache = tmp_path / "data", tmp_path / "edges.pt", tmp_path / "cache"
    simulate(data, samples=2, seed=6, size=(512, 512), slices=2)
    args = ("train", "edges", "--data", data, "--out", out, "--cache", cache, "--input", "aif")
    args += ("--val-every", "2", "--device", "cpu", "--quiet", "--batch", "64")
    result = json.loads(run_cli(*args, "--epochs", "3").stdout)
    assert result["score"] == "gain_px" and np.isfinite(result["best"])
    ck = load_checkpoint(f"{out}.ckpt")
    assert ck["epoch"] == 3 and "state" in ck["optimizer"] and ck["config"]["seg_flips"] == 2
    assert load_edge_refiner(out).cfg.max_shift_px == 1.5
    assert (cache / "data.npz").is_file()
    # The kept samples are read back: a second run on them needs no network.
    again = json.loads(run_cli(*args, "--epochs", "1", "--out", tmp_path / "b.pt").stdout)
    assert again["score"] == "gain_px"


def test_features_read_about_the_runs_are_the_whole_images():
    """view_edges reads a crop about the runs (half the time): the same features as the whole
    image gives, also for a bar that runs off the image's side."""
    from micro_perception.depth.edge_refine import view_edges

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 300, 3)).astype(np.uint8)
    for centre_at in (lambda v: 150.3 + 0.2 * v, lambda v: 6.0 + 0.3 * v):
        soft = covered_bar(image.shape[:2], centre_at, 9.7)
        rows, _, _, left, right, f_left, f_right = view_edges(soft, image)
        width = right - left
        assert np.allclose(f_left, edge_features(image, soft, rows, left, -1.0, width), atol=1e-3)
        assert np.allclose(f_right, edge_features(image, soft, rows, right, 1.0, width), atol=1e-3)
