"""The depth pipeline's fused depth and distance, and the measure / eval distance commands."""

import json

import numpy as np
import pytest

from micro_perception.depth.pipeline import DepthPipeline, PipelineConfig
from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import render_sample
from micro_perception.sim.scene import SceneConfig, make_scene
from micro_perception.training.depth_eval import depth_metrics

OPTICS = MicroscopeOptics().scaled_to(384, 384)
NO_VIGNETTE = SceneConfig(p_vignette=0.0)


@pytest.fixture(scope="module")
def needle():
    scene = make_scene(3, OPTICS, config=NO_VIGNETTE, kind="needle", gap=0.4e-3)
    return render_sample(scene, OPTICS, slices=2)


def test_fused_depth_beats_stereo_on_the_instrument_and_its_edges(needle):
    pair = OPTICS.stereo()
    masks = (needle.left.mask, needle.right.mask)
    scores = {}
    for estimator in ("stereo", "combined"):
        pipe = DepthPipeline(PipelineConfig(estimator=estimator), seg_weights=None, device="cpu")
        res = pipe(needle.left.aif, needle.right.aif, pair, masks=masks)
        assert res.depth.dtype == np.float32 and res.depth.shape == needle.left.depth.shape
        scores[estimator] = depth_metrics(
            res.depth.astype(np.float64), needle.left.depth, needle.left.mask > 0
        )
    fused, stereo = scores["combined"], scores["stereo"]
    assert fused["rmse_instrument_um"] < 100 < stereo["rmse_instrument_um"]
    assert fused["rmse_boundary_um"] < 2 * fused["rmse_interior_um"]
    assert fused["rmse_boundary_um"] < stereo["rmse_boundary_um"] / 3
    assert fused["coverage"] > 0.7


def test_distance_through_the_pipeline_and_its_mask_sources(needle):
    pair = OPTICS.stereo()
    pipe = DepthPipeline(seg_weights=None, device="cpu")
    assert pipe.mask_source == "height"
    res = pipe(
        needle.left.aif, needle.right.aif, pair, masks=(needle.left.mask, needle.right.mask)
    )
    m = res.measurement
    assert m.ok and m.distance_normal == pytest.approx(needle.scene.gap_normal, abs=50e-6)
    assert set(res.ms) >= {"stereo", "geometry", "fuse"}
    # Without the depth image (nobody subscribed to it), the same distance and no fuse work.
    lean = pipe(
        needle.left.aif,
        needle.right.aif,
        pair,
        masks=(needle.left.mask, needle.right.mask),
        dense=False,
    )
    assert lean.depth is None and "fuse" not in lean.ms
    assert lean.measurement.distance_normal == m.distance_normal
    # With no network at all, the mask is what stands above the retina: the needle is found.
    alone = pipe(needle.left.aif, needle.right.aif, pair)
    left = needle.left.mask > 0
    iou = (alone.mask & left).sum() / (alone.mask | left).sum()
    assert iou > 0.5 and alone.right_mask is None
    with pytest.raises(InputError, match="RGB"):
        pipe(needle.left.aif[..., 0], needle.right.aif[..., 0], pair)
    with pytest.raises(InputError, match="estimator net needs"):
        DepthPipeline(PipelineConfig(estimator="net"), seg_weights=None)
    with pytest.raises(InputError, match="estimator must be"):
        PipelineConfig(estimator="guess")


def test_seg_flips_average_the_mirrored_images_probabilities(needle):
    from micro_perception.resources import shipped_model

    images = [needle.left.aif, needle.right.aif]
    plain = DepthPipeline(
        PipelineConfig(seg_flips=1), seg_weights=shipped_model("segmentation.pt"), device="cpu"
    )
    p1 = plain.segment(images)
    mirrored = plain.segment([np.ascontiguousarray(i[:, ::-1]) for i in images])[:, :, ::-1]
    upside = plain.segment([np.ascontiguousarray(i[::-1]) for i in images])[:, ::-1]
    both = plain.segment([np.ascontiguousarray(i[::-1, ::-1]) for i in images])[:, ::-1, ::-1]
    assert np.abs(p1 - mirrored).max() > 1e-3  # the network is not mirror-symmetric
    for n, want in ((2, (p1 + mirrored) / 2), (4, (p1 + mirrored + upside + both) / 4)):
        pipe = DepthPipeline(
            PipelineConfig(seg_flips=n), seg_weights=shipped_model("segmentation.pt"), device="cpu"
        )
        got = pipe.segment(images)
        assert got.shape == p1.shape and np.abs(got - want).max() < 1e-5
    with pytest.raises(InputError, match="seg_flips"):
        PipelineConfig(seg_flips=3)
    # The commands' --seg-flips spells out the pipeline's choices and default (no torch import).
    from micro_perception.cli import _pipeline_config, build_parser
    from micro_perception.depth.pipeline import SEG_FLIPS

    for argv in (["eval", "distance", "--data", "d"], ["eval", "hover"]):
        assert build_parser().parse_args(argv).seg_flips == PipelineConfig().seg_flips
        assert build_parser().parse_args(argv).seg_px_per_mm == PipelineConfig().seg_px_per_mm
    args = build_parser().parse_args(["measure", "l", "r", "--camera-info", "a", "b"])
    assert _pipeline_config(args).seg_px_per_mm == PipelineConfig().seg_px_per_mm
    args = build_parser().parse_args(["eval", "distance", "--data", "d", "--seg-px-per-mm", "0"])
    assert _pipeline_config(args).seg_px_per_mm == 0.0
    # --symmetric-jaws reaches the geometry; off unless given.
    for flag in ([], ["--symmetric-jaws"]):
        args = build_parser().parse_args(["eval", "hover", *flag])
        assert _pipeline_config(args).geometry.symmetric_jaws is bool(flag)
    for flag, reach in (([], 0.0), (["--jaw-reach", "1.1e-3"], 1.1e-3)):
        args = build_parser().parse_args(["measure", "l", "r", "--camera-info", "a", "b", *flag])
        assert _pipeline_config(args).geometry.jaw_reach == reach
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "distance", "--data", "d", "--seg-flips", "3"])
    assert all(
        build_parser().parse_args(["eval", "hover", "--seg-flips", str(n)]).seg_flips == n
        for n in SEG_FLIPS
    )
    # The same for --stereo-backend: the stereo module's choices, its default.
    from micro_perception.depth.stereo import STEREO_BACKENDS, StereoConfig

    assert all(
        build_parser().parse_args(["eval", "hover", "--stereo-backend", b]).stereo_backend == b
        for b in STEREO_BACKENDS
    )
    assert build_parser().parse_args(["eval", "hover"]).stereo_backend == StereoConfig().backend
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "hover", "--stereo-backend", "cuda"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, needle):
    import cv2

    from micro_perception.camera import camera_yaml

    d = tmp_path_factory.mktemp("measure")
    cv2.imwrite(str(d / "l.png"), needle.left.aif[..., ::-1])
    cv2.imwrite(str(d / "r.png"), needle.right.aif[..., ::-1])
    (d / "l.yaml").write_text(camera_yaml(OPTICS.left_camera(), "left"))
    (d / "r.yaml").write_text(camera_yaml(OPTICS.right_camera(), "right"))
    return d


def test_measure_command_prints_the_documented_keys(files, cli_json, run_cli):
    import cv2

    args = ("measure", files / "l.png", files / "r.png")
    args += ("--camera-info", files / "l.yaml", files / "r.yaml", "--device", "cpu")
    out = cli_json(*args, "--overlay", str(files / "o.png"))
    assert {"tip_pixel", "tip_xyz_m", "distance_normal_m", "distance_axis_m", "alert"} <= set(out)
    assert isinstance(out["notes"], list)  # what the geometry did: rows measured, a sleeve
    assert cv2.imread(str(files / "o.png")).shape == (384, 384, 3)
    if out["masks"] == "segmentation":  # the shipped network: the distance must be right
        assert out["distance_normal_m"] == pytest.approx(0.4e-3, abs=100e-6)
        assert len(out["tip_pixel"]) == 2 and len(out["tip_xyz_m"]) == 3
        assert out["alert"] is True and out["method"] in ("silhouette", "tip")
        # The shipped calibration's sigma for how this frame was measured.
        from micro_perception.resources import shipped_model
        from micro_perception.uncertainty import DistanceUncertainty

        model = DistanceUncertainty.load(shipped_model("distance_uncertainty.json"))
        assert out["kind"].startswith(out["method"] + "/")
        sigma = model.sigma(out["kind"], out["tilt_deg"])
        assert out["distance_sigma_m"] == pytest.approx(sigma)
        # The GPU stereo teacher's code, run on the CPU, measures the same pair as well.
        torch_stereo = cli_json(*args, "--stereo-backend", "torch")
        assert torch_stereo["distance_normal_m"] == pytest.approx(0.4e-3, abs=100e-6)
        assert torch_stereo["retina_fit_residual_m"] < 50e-6
    elif out["distance_normal_m"] is None:
        assert out["reason"] and out["alert"] is False
    else:  # masks from height alone: biased, and flagged so
        assert out["method"] == "depth" and out["distance_normal_m"] >= 0.0
    text = run_cli(*args).stdout
    assert "mm" in text
    bad = run_cli(
        "measure", files / "l.png", files / "r.png", "--camera-info", files / "l.yaml", check=False
    )
    assert bad.returncode != 0


def test_eval_distance_json_on_a_small_set(tmp_path, simulate, cli_json):
    data = tmp_path / "sim"
    simulate(data, seed=4, size=(256, 256), slices=2)
    frames = tmp_path / "frames.json"
    result = cli_json(
        "eval",
        "distance",
        "--data",
        str(data),
        "--input",
        "aif",
        "--oracle-masks",
        "--known-instrument",
        "--frames",
        str(frames),
    )
    assert {"mae_um", "p95_um", "by_range", "false_alarm", "miss", "tip_detect"} <= set(result)
    assert set(result["by_range"]) == {"<0.5mm", "0.5-1.5mm", ">1.5mm"}
    rows = json.loads(frames.read_text())
    kinds = {r["instrument"] for r in rows if 0.05e-3 <= r["true_m"] <= 3e-3}
    assert set(result["by_instrument"]) == {str(k) for k in kinds}
    n_ranges = sum(r["n"] for r in result["by_range"].values())
    assert sum(r["n"] for r in result["by_instrument"].values()) == n_ranges
    assert result["_meta"]["frames"] == 3 and result["_meta"]["masks"] == "oracle"
    assert result["_meta"]["instrument_known"] is True
    assert len(rows) == 3 and {"true_m", "measured_m", "method", "kind"} <= set(rows[0])
    # The shipped sigma was calibrated on the network's masks: an oracle's frames get none.
    assert all(r["sigma_m"] is None for r in rows) and result["uncertainty"] == {"n": 0}
    assert result["_meta"]["uncertainty"] is None


def eval_row(true_mm, measured_mm, **extra) -> dict:
    """One frame's row as `eval distance` writes it."""
    row = {
        "frame": "f",
        "instrument": "needle",
        "true_m": true_mm * 1e-3,
        "measured_m": measured_mm * 1e-3,
        "method": "silhouette",
        "reason": "",
        "tip_error_um": None,
        "ms": 1.0,
    }
    return row | extra


def test_the_alert_guard_band_trades_misses_for_false_alarms():
    from types import SimpleNamespace

    from micro_perception.training.distance_eval import summarise

    row = eval_row
    rows = [row(0.45, 0.52), row(0.30, 0.30), row(0.60, 0.56), row(np.inf, np.inf)]
    out = summarise(rows, 0.5e-3, "aif", False, "normal", SimpleNamespace(mask_source="x"), "d")
    m = out["alert_margins"]
    assert (out["miss"], out["false_alarm"]) == (0.5, 0.0)
    assert (m["0"]["miss"], m["0"]["false_alarm"]) == (0.5, 0.0)
    assert (m["25"]["miss"], m["25"]["false_alarm"]) == (0.0, 0.0)  # 0.52 < 0.525
    assert (m["75"]["miss"], m["75"]["false_alarm"]) == (0.0, 0.5)  # 0.56 < 0.575
    assert out["margin_for_no_miss_um"] == pytest.approx(20.0)
    assert out["alert_counts"] == {"close": 2, "missed": 1, "not_close": 2, "false_alarms": 0}
    assert out["miss_ci95"][0] < 0.5 < out["miss_ci95"][1] and out["false_alarm_ci95"][0] == 0.0
    lo, hi = out["mae_ci95_um"]
    assert lo <= out["mae_um"] <= hi and out["p95_ci95_um"] is not None
    assert out["alert_sigma_margins"] == {}  # no frame has a sigma
    rows.append(row(0.2, np.inf))  # a close frame without a distance: no margin catches it
    out = summarise(rows, 0.5e-3, "aif", False, "normal", SimpleNamespace(mask_source="x"), "d")
    assert out["margin_for_no_miss_um"] == np.inf and out["alert_margins"]["200"]["miss"] > 0


def test_each_frames_sigma_as_the_alerts_guard_band():
    from types import SimpleNamespace

    from micro_perception.training.distance_eval import summarise

    def row(true_mm, measured_mm, sigma_um):
        return eval_row(true_mm, measured_mm, kind="silhouette/jaws", sigma_m=sigma_um * 1e-6)

    # Missed at 0 sigma; caught at 1 sigma (0.54 - 0.06 < 0.5); the sure one stays right.
    rows = [row(0.45, 0.54, 60.0), row(0.60, 0.597, 5.0), row(0.70, 0.61, 60.0)]
    out = summarise(rows, 0.5e-3, "aif", False, "normal", SimpleNamespace(mask_source="x"), "d")
    m = out["alert_sigma_margins"]
    assert (m["0.5"]["miss"], m["0.5"]["false_alarm"]) == (1.0, 0.0)
    assert (m["1"]["miss"], m["1"]["false_alarm"]) == (0.0, 0.0)
    assert (m["2"]["miss"], m["2"]["false_alarm"]) == (0.0, 0.5)  # 0.61 - 0.12 < 0.5
    assert m["1"]["mean_margin_um"] == pytest.approx(125.0 / 3)
    cov = out["uncertainty"]
    assert cov["n"] == 3 and cov["within_1_sigma"] == pytest.approx(1 / 3)
    assert cov["within_2_sigma"] == 1.0  # 1.5, 0.6 and 1.5 sigmas off
