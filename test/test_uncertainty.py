"""The distance's calibrated sigma: fitting, the file, coverage, the filter and the pipeline."""

import json
import math

import numpy as np
import pytest

from micro_perception.errors import InputError
from micro_perception.resources import shipped_model
from micro_perception.tracking import DistanceFilter
from micro_perception.uncertainty import (
    DistanceUncertainty,
    coverage,
    normal_quantile,
)


def rows_of(kind: str, sigma: float, n: int, seed: int, true: float = 1e-3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"frame": f"{kind}{i}", "kind": kind, "true_m": true, "measured_m": true + e}
        for i, e in enumerate(rng.normal(0.0, sigma, n))
    ]


def test_normal_quantile():
    assert normal_quantile(0.95) == pytest.approx(1.95996, abs=1e-4)
    assert normal_quantile(0.6827) == pytest.approx(1.0, abs=1e-3)


def test_a_kinds_sigma_is_recovered_and_rare_kinds_fall_back():
    rows = rows_of("silhouette/round", 10e-6, 4000, 0) + rows_of("tip/jaws", 60e-6, 4000, 1)
    rows += rows_of("silhouette/jaws", 30e-6, 5, 2)  # too few of its own
    # Out of the calibrated range, unmeasured or without a kind: not counted.
    rows += [
        {"frame": "far", "kind": "tip/round", "true_m": 5e-3, "measured_m": 9e-3},
        {"frame": "lost", "kind": "", "true_m": 1e-3, "measured_m": math.inf},
    ]
    model = DistanceUncertainty.fit(rows, min_frames=20)
    assert model.sigma("silhouette/round") == pytest.approx(10e-6, rel=0.06)
    assert model.sigma("tip/jaws") == pytest.approx(60e-6, rel=0.06)
    assert "silhouette/jaws" not in model.sigma_m
    # Its end's frames pool both jaws' kinds; a kind with an end never seen takes all frames'.
    assert 30e-6 < model.sigma("silhouette/jaws") == model.by_end_m["jaws"] < 62e-6
    assert model.sigma("silhouette/reach") == model.fallback_m
    # A method never calibrated (the depth map's axis): not vouched for.
    assert math.isnan(model.sigma("depth/round")) and math.isnan(model.sigma(""))
    assert model.calibration["frames"] == 8005
    assert model.calibration["counts"]["silhouette/jaws"] == 5


def test_steep_shafts_get_their_own_scale():
    flat = rows_of("silhouette/round", 20e-6, 4000, 5)
    steep = rows_of("silhouette/round", 40e-6, 1000, 6)
    for r in flat:
        r["tilt_deg"] = 45.0
    for r in steep:
        r["tilt_deg"] = 20.0
    model = DistanceUncertainty.fit(flat + steep)
    assert model.sigma("silhouette/round", 20.0) == pytest.approx(40e-6, rel=0.08)
    assert model.sigma("silhouette/round", 45.0) == pytest.approx(20e-6, rel=0.08)
    assert model.sigma("silhouette/round", None) == model.sigma("silhouette/round")
    # Without tilts (an older frames file), both scales stay 1.
    bare = DistanceUncertainty.fit(rows_of("silhouette/round", 20e-6, 200, 7))
    assert bare.steep_factor == bare.flat_factor == 1.0


def test_fit_refuses_too_few_frames_and_bad_settings():
    with pytest.raises(InputError, match="need at least 20"):
        DistanceUncertainty.fit(rows_of("tip/round", 1e-5, 10, 0))
    with pytest.raises(InputError, match="quantile"):
        DistanceUncertainty.fit(rows_of("tip/round", 1e-5, 100, 0), quantile=1.0)


def test_the_file_round_trips_and_bad_files_name_themselves(tmp_path):
    model = DistanceUncertainty.fit(rows_of("silhouette/round", 2e-5, 200, 0), min_frames=20)
    path = tmp_path / "u.json"
    model.save(path)
    back = DistanceUncertainty.load(path)
    assert back.sigma_m == model.sigma_m and back.fallback_m == model.fallback_m
    assert back.calibration["frames"] == 200
    assert (back.steep_deg, back.steep_factor) == (model.steep_deg, model.steep_factor)
    bad = tmp_path / "bad.json"
    for text, match in (
        ("not json", "cannot read"),
        (json.dumps({"format": "other"}), "is not a distance uncertainty file"),
        (json.dumps(model.to_json() | {"sigma_m": {"tip/round": -1.0}}), "sigma_m must map"),
        (json.dumps(model.to_json() | {"fallback_m": "x"}), "fallback_m"),
        (json.dumps(model.to_json() | {"steep": {"factor": 0}}), "steep must hold"),
    ):
        bad.write_text(text)
        with pytest.raises(InputError, match=match) as exc:
            DistanceUncertainty.load(bad)
        assert "bad.json" in str(exc.value) and "train uncertainty" in str(exc.value)
    with pytest.raises(InputError, match="does not exist"):
        DistanceUncertainty.load(tmp_path / "missing.json")


def test_coverage_of_gaussian_errors_with_their_sigma():
    rows = rows_of("silhouette/round", 20e-6, 20000, 3)
    for r in rows:
        r["sigma_m"] = 20e-6
    rows.append({"frame": "x", "kind": "", "true_m": 1e-3, "measured_m": math.inf})
    cov = coverage(rows)
    assert cov["n"] == 20000
    assert cov["within_1_sigma"] == pytest.approx(0.683, abs=0.01)
    assert cov["within_2_sigma"] == pytest.approx(0.954, abs=0.01)
    assert cov["by_kind"]["silhouette/round"]["sigma_median_um"] == pytest.approx(20.0)
    assert coverage([{"kind": "tip/round", "true_m": 1e-3, "measured_m": 1e-3}]) == {"n": 0}


def test_the_filter_carries_the_sigma_of_the_measurement_it_rests_on():
    f = DistanceFilter()
    assert f.update(0.0, 1e-3, 30e-6) == pytest.approx(1e-3) and f.sigma == 30e-6
    f.update(0.1, 1.01e-3, 50e-6)
    assert f.sigma == 50e-6
    f.update(0.2, 3e-3, 10e-6)  # an outlier, skipped: the estimate rests on the last one
    assert f.outliers == 1 and f.sigma == 50e-6
    f.update(0.3, 1.0e-3, float("nan"))  # no sigma known for this one
    assert f.outliers == 0 and f.sigma is None
    f.update(0.4, 1.0e-3, 20e-6)
    assert f.sigma == 20e-6
    f.update(2.0, None)  # stale: unknown, and so is its sigma
    assert f.sigma is None and not f.known


def test_the_shipped_file_loads_and_covers_every_kind():
    from micro_perception.geometry import ENDS, METHODS

    path = shipped_model("distance_uncertainty.json")
    assert path is not None, "models/distance_uncertainty.json is not installed"
    model = DistanceUncertainty.load(path)
    for method in METHODS:
        for end in ENDS:
            sigma = model.sigma(f"{method}/{end}")
            if method == "depth":  # rare, and off by millimetres when it comes
                assert math.isnan(sigma)
            else:
                assert 1e-6 < sigma < 2e-3
    # A round end whose axis both silhouettes measured reads better than jaws on an assumed one.
    assert model.sigma("silhouette/round") < model.sigma("tip/jaws")


def test_the_pipeline_gives_a_sigma_with_the_shipped_networks_only():
    from micro_perception.depth.pipeline import DepthPipeline

    shipped = DepthPipeline(device="cpu")
    assert shipped.uncertainty is not None
    assert shipped.uncertainty_file == shipped_model("distance_uncertainty.json")
    # Other segmentation weights, or no edge refiner: the calibration is not theirs.
    other = DepthPipeline(seg_weights=shipped_model("segmentation.pt"), device="cpu")
    assert other.uncertainty is None
    assert DepthPipeline(device="cpu", edge_weights=None).uncertainty is None
    assert DepthPipeline(device="cpu", uncertainty=None).uncertainty is None


def test_the_alert_can_take_the_gap_its_sigmas_nearer():
    from micro_perception.tracking import ProximityAlert

    plain, banded = ProximityAlert(0.5e-3, 0.1e-3), ProximityAlert(0.5e-3, 0.1e-3, sigmas=1.0)
    assert not plain.update(0.55e-3, 60e-6)
    assert banded.update(0.55e-3, 60e-6)  # 0.49 mm at one sigma nearer
    assert banded.update(0.62e-3, 60e-6)  # 0.56: within the hysteresis, stays on
    assert not banded.update(0.62e-3, 10e-6)  # a surer reading: 0.61, off
    assert not banded.update(0.55e-3, None)  # no sigma known: the gap as read
    assert not banded.update(None, 60e-6)
    with pytest.raises(InputError, match="sigmas"):
        ProximityAlert(0.5e-3, 0.1e-3, sigmas=-1.0)


def test_train_uncertainty_reproduces_the_shipped_file(tmp_path, cli_json, run_cli):
    """The command on the calibration runs the card names writes the shipped table."""
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs" / "eval"
    frames = [str(docs / f"cpu_uncertainty_calib{seed}_frames.json") for seed in (37, 41)]
    out = tmp_path / "u.json"
    report = cli_json("train", "uncertainty", "--frames", *frames, "--out", str(out))
    shipped = DistanceUncertainty.load(shipped_model("distance_uncertainty.json"))
    mine = DistanceUncertainty.load(out)
    assert report["calibration"]["frames"] == 657
    assert mine.sigma_m == pytest.approx(shipped.sigma_m) and mine.by_end_m == shipped.by_end_m
    assert mine.steep_factor == pytest.approx(shipped.steep_factor)
    assert mine.steep_factor > 1.0 > mine.flat_factor  # steep shafts err more
    text = run_cli("train", "uncertainty", "--frames", frames[0], "--out", str(out)).stdout
    assert "silhouette/round" in text and "not known" in text  # its one depth-map frame
    bad = run_cli("train", "uncertainty", "--frames", str(out), "--out", str(out), check=False)
    assert bad.returncode != 0 and "eval distance --frames" in bad.stderr
