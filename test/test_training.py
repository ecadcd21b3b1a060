"""Training runs for real on tiny simulated data: checkpoints, resume, TensorBoard, torchrun."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from micro_perception.errors import InputError
from micro_perception.fusion.network import load_fusion_net
from micro_perception.training.common import load_checkpoint, read_ahead


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, simulate):
    root = tmp_path_factory.mktemp("train")
    simulate(root / "data", samples=2, seed=3, size=(48, 48))
    return root


def train(tiny, out, *extra, launcher=(sys.executable, "-m", "micro_perception.cli")):
    cmd = [
        *launcher,
        "train",
        "fusion",
        "--data",
        str(tiny / "data"),
        "--val",
        str(tiny / "data"),
        "--out",
        str(out),
        "--batch",
        "2",
        "--size",
        "32",
        "--crops-per-stack",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)


def test_train_checkpoint_and_resume(tiny):
    out = tiny / "run" / "fusion.pt"
    first = train(tiny, out, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    ck = load_checkpoint(f"{out}.ckpt")
    # 2 stacks x 2 eyes x 2 crops = 8 crops: 4 steps of batch 2 per epoch.
    assert ck["epoch"] == 1 and ck["step"] == 4
    assert {"model", "optimizer", "scheduler", "config", "best"} <= set(ck)
    assert ck["config"]["net"]["kernel_mode"] == "affine"
    resumed = train(tiny, out, "--epochs", "2", "--resume", f"{out}.ckpt")
    assert resumed.returncode == 0, resumed.stderr
    ck2 = load_checkpoint(f"{out}.ckpt")
    assert ck2["epoch"] == 2 and ck2["step"] == 8
    assert not torch.equal(ck["model"]["stem.0.weight"], ck2["model"]["stem.0.weight"])
    net = load_fusion_net(out)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 3, 32, 32)).shape == (1, 3, 32, 32)
    logs = list((tiny / "run").glob("fusion_tb/events.out.tfevents.*"))
    assert logs, "no TensorBoard log written"
    assert json.loads(resumed.stdout)["best_val_psnr"] > 10


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
    reason="torchrun not installed beside this python",
)
def test_torchrun_two_processes(tiny):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tiny / "ddp" / "fusion.pt"
    done = train(
        tiny,
        out,
        "--epochs",
        "1",
        launcher=(torchrun, "--standalone", "--nproc_per_node=2", "-m", "micro_perception.cli"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ck = load_checkpoint(f"{out}.ckpt")
    # Two ranks share the 8 crops of an epoch: each takes 4, two steps of batch 2.
    assert ck["epoch"] == 1 and ck["step"] == 2
    load_fusion_net(out)


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory, simulate):
    root = tmp_path_factory.mktemp("depth")
    simulate(root / "data", seed=2, size=(96, 96), slices=2)
    return root


def train_depth_cli(run_cli, root, out, *extra):
    return json.loads(
        run_cli(
            "train",
            "depth",
            "--data",
            root / "data",
            "--val",
            root / "data",
            "--out",
            out,
            "--batch",
            "2",
            "--size",
            "64",
            "--device",
            "cpu",
            *extra,
        ).stdout
    )


def test_depth_training_lowers_the_loss_and_resumes(depth_data, run_cli):
    from micro_perception.depth.network import DepthNet, DepthNetConfig
    from micro_perception.model_io import load_into, load_weights

    out = depth_data / "run" / "depth.pt"
    first = train_depth_cli(run_cli, depth_data, out, "--epochs", "4")
    start, end = first["train_loss_first_last"]
    assert end < start
    ck = load_checkpoint(f"{out}.ckpt")
    assert ck["epoch"] == 4 and ck["config"]["supervision"] == "gt"
    resumed = train_depth_cli(run_cli, depth_data, out, "--epochs", "5", "--resume", f"{out}.ckpt")
    assert load_checkpoint(f"{out}.ckpt")["epoch"] == 5 and resumed["score"] == "neg_rmse_um"
    config, state, info = load_weights(out, "depth")
    net = DepthNet(DepthNetConfig.from_dict(config))
    load_into(net, state, out)
    assert "rmse_retina_um" in info["val"]


def test_stereo_distillation_needs_no_ground_truth(depth_data, run_cli):
    result = train_depth_cli(
        run_cli,
        depth_data,
        depth_data / "stereo" / "d.pt",
        "--epochs",
        "2",
        "--supervision",
        "stereo",
    )
    assert all(np.isfinite(result["train_loss_first_last"]))


def test_segmentation_training_lowers_the_loss_and_scores(depth_data, run_cli, cli_json):
    from micro_perception.depth.segmentation import load_seg_net

    out = depth_data / "seg" / "seg.pt"
    common = ("--data", depth_data / "data", "--out", out, "--batch", "2", "--size", "64")
    common += ("--input", "aif", "--device", "cpu", "--crops-per-frame", "4")
    done = run_cli(
        "train", "segment", *common, "--val", depth_data / "data", "--epochs", "3",
        "--widths", "6", "10", "14",
    )  # fmt: skip
    start, end = json.loads(done.stdout)["train_loss_first_last"]
    assert end < start
    ck = load_checkpoint(f"{out}.ckpt")
    assert ck["epoch"] == 3 and ck["config"]["input"] == "aif"
    net = load_seg_net(out)
    assert net.cfg.widths == (6, 10, 14)
    assert net(torch.zeros(1, 3, 40, 52)).shape == (1, 1, 40, 52)  # any size
    # A fine-tune takes its starting weights' architecture.
    tuned = depth_data / "seg" / "tuned.pt"
    run_cli("train", "segment", *common[:3], tuned, *common[4:], "--epochs", "1", "--init", out)
    assert load_seg_net(tuned).cfg.widths == (6, 10, 14)
    scores = cli_json(
        "eval",
        "segment",
        "--data",
        str(depth_data / "data"),
        "--weights",
        str(out),
        "--input",
        "aif",
    )
    assert {"iou", "edge_1px", "ms"} <= set(scores) and scores["_meta"]["images"] == 6


def test_tip_crops_centre_the_instrument_working_end():
    import cv2

    from micro_perception.errors import InputError
    from micro_perception.training.segment_train import SegmentCrops, SegmentTrainConfig

    mask = np.zeros((256, 256), np.float32)
    cv2.line(mask, (255, 20), (150, 180), 1.0, 14)  # enters at the right border, tip low left
    item = {"image": np.zeros((256, 256, 3), np.uint8), "mask": mask}

    def tip_inside(crops):
        inside = []
        for i in range(len(crops)):
            _, _, rows, cols = crops.draw(i)
            inside.append(rows.start <= 180 < rows.stop and cols.start <= 150 < cols.stop)
        return inside

    assert all(tip_inside(SegmentCrops([item], 64, 40, seed=0, tip_crops=1.0)))
    assert not all(tip_inside(SegmentCrops([item], 64, 40, seed=0)))
    with pytest.raises(InputError, match="tip_crops"):
        SegmentTrainConfig(data="d", bright_crops=0.5, tip_crops=0.6)


def test_tip_weight_stresses_the_disc_around_the_working_end_only():
    import cv2

    from micro_perception.errors import InputError
    from micro_perception.training.segment_train import SegmentCrops, SegmentTrainConfig

    mask = np.zeros((64, 64), np.float32)
    cv2.rectangle(mask, (28, 0), (35, 40), 1.0, -1)  # enters at the top, ends at row 40
    item = {"image": np.zeros((64, 64, 3), np.uint8), "mask": mask}
    crops = SegmentCrops([item], 64, 4, seed=0, tip_weight=5.0, tip_radius=6)
    tip = crops.tips[0]
    assert abs(tip[1] - 40) <= 1.5 and abs(tip[0] - 31.5) <= 1.5
    for i in range(4):
        _, target, weight = crops[i]
        target, weight = target[0].numpy(), weight[0].numpy()
        # Turned and flipped with the mask: the heavy disc stays at the shaft's free end.
        heavy = np.argwhere(weight == 5.0)
        assert 100 <= len(heavy) <= 130 and np.all((weight == 1.0) | (weight == 5.0))
        centre = heavy.mean(axis=0)
        ends = np.argwhere(target > 0)
        assert np.linalg.norm(ends - centre, axis=1).min() <= 2.0  # centred on the end
        far = ends[np.argmax(np.linalg.norm(ends - centre, axis=1))]
        assert np.linalg.norm(far - centre) > 30  # the disc is at one end, not the middle
        assert np.any(target[heavy[:, 0], heavy[:, 1]] == 0)  # background beyond the end too
    empty = {"image": item["image"], "mask": np.zeros_like(mask)}
    _, _, plain = SegmentCrops([empty], 64, 1, seed=0, tip_weight=5.0)[0]
    assert torch.all(plain == 1.0)
    with pytest.raises(InputError, match="tip_weight"):
        SegmentTrainConfig(data="d", tip_weight=0.5)


def test_edge_weight_stresses_the_outline_band_only():
    import cv2

    from micro_perception.errors import InputError
    from micro_perception.training.segment_train import SegmentCrops, SegmentTrainConfig

    mask = np.zeros((64, 64), np.float32)
    cv2.rectangle(mask, (20, 10), (40, 60), 1.0, -1)
    item = {"image": np.zeros((64, 64, 3), np.uint8), "mask": mask}
    _, target, weight = SegmentCrops([item], 64, 1, seed=0, edge_weight=4.0, edge_band=2)[0]
    target, weight = target[0].numpy(), weight[0].numpy()
    # The same quarter turn and flip apply to mask and weight: the band follows the outline.
    inside = cv2.erode(target.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    outside = cv2.dilate(target.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    band = ~inside & ~outside
    assert np.all(weight[band] == 4.0)
    assert np.all(weight[inside | outside] == 1.0)
    _, _, plain = SegmentCrops([item], 64, 1, seed=0)[0]
    assert torch.all(plain == 1.0)
    with pytest.raises(InputError, match="edge_weight"):
        SegmentTrainConfig(data="d", edge_weight=0.5)


def test_read_ahead_keeps_order_reads_a_bounded_window_and_passes_errors_on():
    calls = []

    def square(i):
        calls.append(i)
        if i == 7:
            raise InputError("frame 7 is unreadable")
        return i * i

    it = read_ahead(square, range(7), workers=2)
    assert next(it) == 0
    time.sleep(0.2)  # give the pool time to run past its window if it would
    assert len(calls) <= 5  # 2 x workers ahead, plus the one submitted after the first result
    assert list(it) == [i * i for i in range(1, 7)]
    with pytest.raises(InputError, match="frame 7"):
        list(read_ahead(square, range(10), workers=3))
