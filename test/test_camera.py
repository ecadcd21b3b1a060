"""Rectified stereo geometry of a converging microscope (no ROS)."""

import numpy as np
import pytest

from micro_perception.camera import CameraIntrinsics, StereoPair
from micro_perception.errors import InputError

FX, B, Z0 = 48000.0, 0.022, 0.2


def microscope_pair(**right_changes) -> StereoPair:
    left = CameraIntrinsics.from_pinhole(512, 512, FX, FX, 255.5, 255.5)
    args = {"fx": FX, "fy": FX, "cx": 255.5 + FX * B / Z0, "cy": 255.5, "tx": -FX * B}
    args.update(right_changes)
    right = CameraIntrinsics.from_pinhole(512, 512, **args)
    return StereoPair(left, right)


def test_converging_pair_geometry():
    pair = microscope_pair()
    assert pair.baseline == pytest.approx(B)
    assert pair.doffs == pytest.approx(FX * B / Z0)
    assert pair.convergence_distance == pytest.approx(Z0)
    # Zero disparity at the convergence distance; a point 1 mm closer has positive disparity.
    np.testing.assert_allclose(pair.depth_from_disparity(np.array([0.0])), [Z0])
    d = pair.disparity_from_depth(np.array([Z0 - 1e-3, Z0, Z0 + 1e-3]))
    assert d[0] > 0 and d[1] == pytest.approx(0.0, abs=1e-9) and d[2] < 0
    # Z = fx B / (d + doffs) both ways.
    z = np.array([0.19, 0.2, 0.21])
    np.testing.assert_allclose(pair.depth_from_disparity(pair.disparity_from_depth(z)), z)
    np.testing.assert_allclose(
        pair.depth_from_disparity(np.array([10.0])), FX * B / (10.0 + FX * B / Z0)
    )


def test_unusable_disparities_give_nan():
    pair = microscope_pair()
    z = pair.depth_from_disparity(np.array([np.nan, -pair.doffs, -pair.doffs - 5.0]))
    assert np.isnan(z).all()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"fx": FX * 1.01}, "fx"),
        ({"cy": 250.0}, "cy"),
        ({"tx": 0.0}, "baseline"),
        ({"tx": FX * B}, "baseline"),
    ],
)
def test_inconsistent_pairs_are_refused(changes, match):
    with pytest.raises(InputError, match=match):
        microscope_pair(**changes)


def test_size_mismatch_and_distortion_are_refused():
    left = CameraIntrinsics.from_pinhole(512, 512, FX, FX, 255.5, 255.5)
    right = CameraIntrinsics.from_pinhole(640, 512, FX, FX, 255.5, 255.5, tx=-FX * B)
    with pytest.raises(InputError, match="sizes differ"):
        StereoPair(left, right)
    distorted = CameraIntrinsics(512, 512, left.K, right.P, D=[0.1, 0, 0, 0, 0])
    with pytest.raises(InputError, match="not rectified"):
        StereoPair(left, distorted)


def test_scaling_keeps_the_projection_of_pixel_centres():
    cam = CameraIntrinsics.from_pinhole(640, 480, 800.0, 800.0, 319.5, 239.5)
    half = cam.scaled(320, 240)
    point = np.array([0.01, -0.02, 0.2])
    u, v = cam.fx * point[0] / point[2] + cam.cx, cam.fy * point[1] / point[2] + cam.cy
    u2, v2 = half.fx * point[0] / point[2] + half.cx, half.fy * point[1] / point[2] + half.cy
    assert u2 == pytest.approx((u + 0.5) * 0.5 - 0.5)
    assert v2 == pytest.approx((v + 0.5) * 0.5 - 0.5)
