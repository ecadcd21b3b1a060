"""Datasets on disk: the simulate command, the loader, users' own recordings, splits."""

import json

import cv2
import numpy as np
import pytest
import torch

from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.dataset import SPLITS, find_stacks, jaw_reach, scene_seed
from micro_perception.sim.render import render_sample
from micro_perception.sim.scene import make_scene
from micro_perception.training.datasets import FocalStackDataset


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, simulate):
    out = tmp_path_factory.mktemp("sim") / "ds"
    done = simulate(
        out, "--workers", "2", "--preview", str(out.parent / "preview.png"), check=False
    )
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def test_simulate_writes_the_documented_layout(simulated):
    out, summary = simulated
    assert summary["samples"] == 3
    header = json.loads((out / "dataset.json").read_text())
    assert header["format"] == "micro_perception.focal_stacks/1"
    assert header["optics"]["width"] == 64 and header["slices"] == 3
    assert header["camera_info"]["right"]["P"][3] < 0  # -fx * B
    for i in range(3):
        sample = out / f"{i:05d}"
        meta = json.loads((sample / "meta.json").read_text())
        assert meta["scene_seed"] == scene_seed(5, "train", i)
        assert len(meta["focus_distances_m"]) == 3
        for eye in ("left", "right"):
            names = sorted(p.name for p in (sample / eye).iterdir())
            assert names == [
                "aif.png",
                "depth.npy",
                "mask.png",
                "slice_00.png",
                "slice_01.png",
                "slice_02.png",
            ]
    preview = cv2.imread(str(out.parent / "preview.png"))
    assert preview.shape == (48, 64 * 5, 3)


def test_jaw_reach_is_recorded_and_drawn_again_for_older_sets(simulated):
    """The told-tool evaluation reads each sample's jaw reach from meta.json; a set written
    before it was recorded there draws it again from its seed and dataset.json."""
    out, _ = simulated
    reaches = []
    for i in range(3):
        meta = json.loads((out / f"{i:05d}" / "meta.json").read_text())
        reach = jaw_reach(out / f"{i:05d}", meta)
        assert (reach > 0) is (meta["instrument"] in ("forceps", "scissors"))
        assert reach == (meta["jaw_reach_m"] or 0.0)
        older = {k: v for k, v in meta.items() if k != "jaw_reach_m"}
        assert jaw_reach(out / f"{i:05d}", older) == pytest.approx(reach, abs=1e-12)
        reaches.append(reach)
    assert sum(r > 0 for r in reaches) == 2  # a forceps and a scissors among the three


def test_loader_returns_what_the_renderer_made(simulated):
    out, _ = simulated
    ds = FocalStackDataset(out, eyes=("left", "right"))
    assert len(ds) == 3
    item = ds[1]
    assert item["left_slices"].shape == (3, 3, 48, 64)
    assert item["left_slices"].dtype == torch.float32
    assert item["left_slices"].min() >= 0.0 and item["left_slices"].max() <= 1.0
    # Rendering the same seed here gives the very pixels the worker processes wrote.
    spec_optics = MicroscopeOptics().scaled_to(48, 64)
    scene = make_scene(scene_seed(5, "train", 1), spec_optics)
    again = render_sample(scene, spec_optics, 3)
    np.testing.assert_array_equal(
        (item["left_slices"][2].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
        again.left.slices[2],
    )
    np.testing.assert_array_equal(item["right_depth"][0].numpy(), again.right.depth)
    np.testing.assert_array_equal(item["left_mask"][0].numpy() > 0.5, again.left.mask > 0)
    np.testing.assert_allclose(item["focus"].numpy(), again.focus_distances, rtol=1e-6)
    if scene.instrument is not None:
        assert item["gap_normal"].item() == pytest.approx(scene.gap_normal, rel=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["left_aif"].shape == (3, 3, 48, 64)


def test_resume_and_refusal_to_mix_settings(simulated, simulate):
    out, _ = simulated
    before = (out / "00000" / "left" / "slice_00.png").stat().st_mtime_ns
    done = simulate(out, check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "00000" / "left" / "slice_00.png").stat().st_mtime_ns == before
    clash = simulate(out, "--slices", "4", check=False)  # the later value wins
    assert clash.returncode != 0 and "other settings (slices)" in clash.stderr


def test_splits_never_share_a_scene():
    seeds = {
        split: {scene_seed(3, split, i) for i in range(0, 3_000_000, 997)} for split in SPLITS
    }
    assert not seeds["train"] & seeds["val"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]
    with pytest.raises(InputError):
        scene_seed(3, "train", 3_000_000)


def write_user_stack(folder, slices=4, stereo=True, focus=True, size=(20, 30)):
    rng = np.random.default_rng(0)
    for eye in ("left", "right") if stereo else ("left",):
        (folder / eye).mkdir(parents=True)
        for k in range(slices):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            cv2.imwrite(
                str(folder / eye / f"frame_{k:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
    if focus:
        (folder / "focus.txt").write_text(
            "# metres\n" + "\n".join(str(0.198 + 0.001 * k) for k in range(slices))
        )


def test_user_recordings_load_without_code_changes(tmp_path):
    write_user_stack(tmp_path / "rec" / "stack_a")
    write_user_stack(tmp_path / "rec" / "stack_b", focus=False)
    ds = FocalStackDataset(tmp_path / "rec", eyes=("left", "right"))
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["left_slices"].shape == (4, 3, 20, 30)
    np.testing.assert_allclose(a["focus"].numpy(), [0.198, 0.199, 0.2, 0.201], rtol=1e-6)
    assert torch.isnan(b["focus"]).all()
    assert "left_depth" not in a and torch.isnan(a["gap_normal"])
    # A single stack folder and a mono recording load too.
    write_user_stack(tmp_path / "mono", stereo=False)
    assert len(FocalStackDataset(tmp_path / "mono")) == 1
    with pytest.raises(InputError, match="right"):
        FocalStackDataset(tmp_path / "mono", eyes=("left", "right"))


@pytest.mark.parametrize("problem", ["empty", "count", "focus_count", "bad_focus"])
def test_broken_recordings_are_named(tmp_path, problem):
    stack = tmp_path / "s"
    write_user_stack(stack)
    if problem == "empty":
        for p in (stack / "right").iterdir():
            p.unlink()
        match = "no slice images"
    elif problem == "count":
        next((stack / "right").iterdir()).unlink()
        match = "different numbers of slices"
    elif problem == "focus_count":
        (stack / "focus.txt").write_text("0.2\n")
        match = "1 focus distances for 4 slices"
    else:
        (stack / "focus.txt").write_text("near\nfar\n")
        match = "focus.txt"
    with pytest.raises(InputError, match=match):
        find_stacks(stack)
    with pytest.raises(InputError, match="does not exist"):
        find_stacks(tmp_path / "nowhere")
