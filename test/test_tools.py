"""The GPU machines' scripts in tools/, dry-run on the CPU at toy size: a GPU session is
scarce, and a script that breaks there wastes it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_segmentation_training_script_runs_end_to_end_on_the_cpu(tmp_path):
    env = dict(
        os.environ,
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
        # Two candidates side by side, as a GPU run trains them.
        CANDIDATES="new:4 8;deep:4 8 8",
        TIP_WEIGHT="5",
        # The script runs python3: this interpreter's, with the package.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
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
    for which in ("new", "deep"):
        assert (out / f"seg_{which}.pt").stat().st_size > 0
        assert json.loads((out / f"train_{which}.json").read_text())["train_loss_first_last"]
    for which in ("new", "deep", "shipped", "shipped_refined"):
        result = json.loads((out / f"eval_distance_{which}.json").read_text())
        assert result["_meta"]["frames"] == 2 and "alert_margins" in result
        # Candidates are judged against the shipped network without its edge refiner.
        refiner = result["_meta"]["edge_refiner"]
        assert (refiner is not None) == (which == "shipped_refined"), (which, refiner)
    assert "frames in both" in log  # eval compare's verdict on the two runs
    assert done.returncode == 0
