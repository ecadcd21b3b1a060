"""The GPU machines' scripts in tools/, dry-run on the CPU at toy size: a GPU session is
scarce, and a script that breaks there wastes it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_seg_script(tmp_path, **settings):
    env = dict(os.environ)
    env.update(
        OUT=str(tmp_path / "out"),
        WORK=str(tmp_path / "work"),
        DEVICE="cpu",
        SAMPLES="3",
        VAL="1",
        TEST="2",
        SIZE="128 128",
        CROP="64",
        BATCH="4",
        TRAIN_BUDGET="3",
        EDGE_BUDGET="3",
        # The script runs python3: this interpreter's, with the package.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(settings)
    done = subprocess.run(
        ["bash", "tools/device_seg_train.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = tmp_path / "out"
    log = (out / "log.txt").read_text()
    assert "done" in log.splitlines()[-1], log[-2000:]
    assert "Traceback" not in log, log[-2000:]
    assert "frames in both" in log  # eval compare's verdict on the two runs
    assert done.returncode == 0
    return out, log


def _refiner_of(out: Path, which: str):
    result = json.loads((out / f"eval_distance_{which}.json").read_text())
    assert result["_meta"]["frames"] == 2 and "alert_margins" in result
    return result["_meta"]["edge_refiner"]


def test_the_segmentation_training_script_runs_end_to_end_on_the_cpu(tmp_path):
    # Two candidates from scratch side by side, as a GPU run trains them.
    out, _ = _run_seg_script(tmp_path, CANDIDATES="new:4 8;deep:4 8 8", TIP_WEIGHT="5")
    for which in ("new", "deep"):
        assert (out / f"seg_{which}.pt").stat().st_size > 0
        assert json.loads((out / f"train_{which}.json").read_text())["train_loss_first_last"]
        assert _refiner_of(out, which) is None
        # Seconds from scratch find little instrument, maybe no edges to learn: then the
        # judging goes on without that candidate's refiner.
        refined = (out / f"eval_distance_{which}_refined.json").exists()
        assert refined == (out / f"edges_{which}.pt").exists()
    # Candidates are judged against the shipped network without its edge refiner.
    assert _refiner_of(out, "shipped") is None
    assert _refiner_of(out, "shipped_refined").endswith("edge_refiner.pt")


def test_the_segmentation_script_gives_a_candidate_an_edge_refiner_of_its_own(tmp_path):
    out, log = _run_seg_script(
        tmp_path,
        SAMPLES="6",
        INIT="models/segmentation.pt",  # fine-tuned: it finds the instrument at once
        CANDIDATES="ft:8 16 24 32 48",
        LR="1e-4",
        EDGE_VAL_EVERY="3",
        EDGE_BATCH="64",
    )
    assert json.loads((out / "train_edges_ft.json").read_text())["train_loss_first_last"]
    assert (out / "edges_ft.pt").stat().st_size > 0
    assert _refiner_of(out, "ft") is None
    assert _refiner_of(out, "ft_refined").endswith("edges_ft.pt")
    assert "ft_refined against shipped_refined" in log
