"""The stereo teacher on rendered pairs of the converging microscope."""

import numpy as np
import pytest

from micro_perception.camera import CameraIntrinsics, StereoPair
from micro_perception.depth.stereo import StereoConfig, disparity_range, stereo_depth
from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import render_sample
from micro_perception.sim.scene import SceneConfig, make_scene

OPTICS = MicroscopeOptics().scaled_to(256, 256)


@pytest.fixture(scope="module")
def retina_pair():
    scene = make_scene(3, OPTICS, config=SceneConfig(p_no_instrument=1.0, p_vignette=0.0))
    return render_sample(scene, OPTICS, slices=2)


def test_search_range_covers_signed_disparities_of_the_depth_range():
    pair = OPTICS.stereo()
    cfg = StereoConfig()
    d_min, n = disparity_range(pair, cfg)
    near, far = pair.disparity_from_depth(np.array([cfg.z_near, cfg.z_far]))
    assert d_min <= far < 0 < near < d_min + n and n % 16 == 0


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_recovers_the_retina_within_the_claimed_precision(retina_pair, backend):
    pair = OPTICS.stereo()
    cfg = StereoConfig(backend=backend)
    result = stereo_depth(retina_pair.left.aif, retina_pair.right.aif, pair, cfg)
    gt = retina_pair.left.depth
    confident = result.confidence > 0.5
    assert np.isfinite(result.depth).mean() > 0.7 and confident.mean() > 0.5
    error = np.abs(result.depth - gt)[confident]
    tolerance = result.depth_tolerance(pair, cfg.disparity_precision)[confident]
    assert np.median(error / tolerance) < 1.0
    assert np.mean(error <= tolerance) > 0.8
    # Unknown is NaN in depth and disparity alike, and has no confidence.
    unknown = ~np.isfinite(result.depth)
    assert np.isnan(result.disparity[unknown]).all() and (result.confidence[unknown] == 0).all()


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_noisy_slices_still_give_the_retina(retina_pair, backend):
    pair = OPTICS.stereo()
    cfg = StereoConfig(backend=backend)
    result = stereo_depth(retina_pair.left.slices[-1], retina_pair.right.slices[-1], pair, cfg)
    ok = result.confidence > 0.5
    assert ok.mean() > 0.3
    assert np.median(np.abs(result.depth - retina_pair.left.depth)[ok]) < 150e-6


def test_inconsistent_input_is_refused(retina_pair):
    pair = OPTICS.stereo()
    with pytest.raises(InputError, match="differ in size"):
        stereo_depth(retina_pair.left.aif, retina_pair.right.aif[:, :-1], pair)
    small = StereoPair(
        CameraIntrinsics.from_pinhole(128, 128, 100.0, 100.0, 63.5, 63.5),
        CameraIntrinsics.from_pinhole(128, 128, 100.0, 100.0, 70.0, 63.5, tx=-2.2),
    )
    with pytest.raises(InputError, match="camera_info says"):
        stereo_depth(retina_pair.left.aif, retina_pair.right.aif, small)
    with pytest.raises(InputError, match="z_near"):
        StereoConfig(z_near=0.3, z_far=0.2)
    with pytest.raises(InputError, match="stereo backend"):
        StereoConfig(backend="cuda")
    with pytest.raises(InputError, match="sgm_p1"):
        StereoConfig(sgm_p1=50, sgm_p2=40)
    with pytest.raises(InputError, match="8- or 16-bit"):
        stereo_depth(retina_pair.left.aif.astype(np.float32), retina_pair.right.aif, pair)


def test_depth_metrics_on_known_errors():
    from micro_perception.training.depth_eval import depth_metrics

    gt = np.full((40, 40), 0.2)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    gt[mask] = 0.199  # an instrument 1 mm above the retina
    pred = gt + 50e-6  # everything 50 um too deep
    pred[0, 0] = np.nan  # one unknown pixel
    m = depth_metrics(pred, gt, mask)
    assert m["rmse_retina_um"] == pytest.approx(50.0)
    assert m["rmse_instrument_um"] == pytest.approx(50.0)
    assert m["rmse_boundary_um"] == pytest.approx(50.0)
    # Heights above the retina: 1 mm predicted as 0.95 mm, 5 % off.
    assert m["absrel_from_retina"] == pytest.approx(0.05)
    assert m["coverage"] == pytest.approx(1 - 1 / 1600)


def test_eval_depth_json_on_a_small_set(tmp_path, simulate, cli_json):
    data = tmp_path / "d"
    simulate(data, samples=2, seed=1, size=(96, 96))
    result = cli_json("eval", "depth", "--data", str(data), "--input", "aif")
    for method in ("stereo", "dff"):
        assert {"rmse_retina_um", "rmse_instrument_um", "rmse_boundary_um", "ms"} <= set(
            result[method]
        )
    assert result["_meta"]["frames"] == 2


def test_ros_calibration_yaml_round_trip_and_errors(tmp_path):
    from micro_perception.camera import camera_yaml, load_camera_yaml

    cam = OPTICS.right_camera()
    path = tmp_path / "right.yaml"
    path.write_text(camera_yaml(cam, "right"))
    back = load_camera_yaml(path)
    np.testing.assert_allclose(back.P, cam.P)
    np.testing.assert_allclose(back.K, cam.K)
    assert back.baseline == pytest.approx(0.022)
    (tmp_path / "bad.yaml").write_text("image_width: 10\nimage_height: 10\n")
    with pytest.raises(InputError, match="lacks camera_matrix"):
        load_camera_yaml(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match=r"missing\.yaml"):
        load_camera_yaml(tmp_path / "missing.yaml")


def test_depth_command_on_image_files(tmp_path, retina_pair, run_cli, simulate, cli_json):
    import cv2

    from micro_perception.camera import camera_yaml
    from micro_perception.depth.network import DepthNet
    from micro_perception.model_io import save_weights

    cv2.imwrite(str(tmp_path / "l.png"), retina_pair.left.aif[..., ::-1])
    cv2.imwrite(str(tmp_path / "r.png"), retina_pair.right.aif[..., ::-1])
    (tmp_path / "l.yaml").write_text(camera_yaml(OPTICS.left_camera()))
    (tmp_path / "r.yaml").write_text(camera_yaml(OPTICS.right_camera()))
    run_cli(
        "depth",
        tmp_path / "l.png",
        tmp_path / "r.png",
        "--camera-info",
        tmp_path / "l.yaml",
        tmp_path / "r.yaml",
        "--out",
        tmp_path / "d.npy",
        "--png",
        tmp_path / "d.png",
    )
    depth = np.load(tmp_path / "d.npy")
    ok = np.isfinite(depth)
    assert ok.mean() > 0.7
    assert np.median(np.abs(depth - retina_pair.left.depth)[ok]) < 100e-6
    assert cv2.imread(str(tmp_path / "d.png")).shape == (256, 256, 3)
    only_left = run_cli(
        "depth",
        tmp_path / "l.png",
        "--camera-info",
        tmp_path / "l.yaml",
        "--out",
        tmp_path / "x.npy",
        check=False,
    )
    assert only_left.returncode == 2 and "needs RIGHT" in only_left.stderr
    wrong = run_cli(
        "depth",
        tmp_path / "l.png",
        tmp_path / "r.png",
        "--camera-info",
        tmp_path / "l.yaml",
        tmp_path / "r.yaml",
        "--out",
        tmp_path / "x.png",
        check=False,
    )
    assert wrong.returncode == 2 and ".npy or .tiff" in wrong.stderr
    # A network weights file plugs into the command and into eval depth alike.
    save_weights(tmp_path / "depth.pt", "depth", DepthNet().cfg.to_dict(), DepthNet().state_dict())
    run_cli(
        "depth",
        tmp_path / "l.png",
        "--camera-info",
        tmp_path / "l.yaml",
        "--out",
        tmp_path / "n.tiff",
        "--method",
        "net",
        "--weights",
        tmp_path / "depth.pt",
    )
    assert cv2.imread(str(tmp_path / "n.tiff"), cv2.IMREAD_UNCHANGED).dtype == np.float32
    data = tmp_path / "sim"
    simulate(data, samples=1, seed=4, size=(64, 64), slices=2)
    result = cli_json(
        "eval",
        "depth",
        "--data",
        str(data),
        "--input",
        "aif",
        "--methods",
        "net",
        "stereo",
        "--weights",
        str(tmp_path / "depth.pt"),
    )
    assert {"net", "stereo"} <= set(result) and result["net"]["coverage"] == 1.0
