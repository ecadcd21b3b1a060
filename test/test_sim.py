"""The virtual microscope: optics, exact stereo geometry, thin-lens defocus, ground truth."""

import cv2
import numpy as np
import pytest
import torch

from micro_perception.errors import InputError
from micro_perception.fusion.focus import sum_modified_laplacian
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import (
    ViewLayers,
    render_layers,
    render_sample,
    render_slice,
    srgb8_to_linear,
)
from micro_perception.sim.scene import INSTRUMENT_KINDS, SceneConfig, make_scene

SMALL = MicroscopeOptics().scaled_to(160, 160)


def test_default_optics_are_an_ophthalmic_microscope():
    o = MicroscopeOptics()
    assert (o.width, o.height) == (512, 512)
    assert o.fx == pytest.approx(512 * 0.2 / 0.008)
    # DOF = lambda / NA^2 + e / (M NA): a few tenths of a millimetre.
    assert o.depth_of_field == pytest.approx(0.55e-6 / 0.05**2 + 5.5e-6 / (0.352 * 0.05))
    assert 0.2e-3 < o.depth_of_field < 0.8e-3
    pair = o.stereo()
    assert pair.baseline == pytest.approx(0.022)
    assert pair.convergence_distance == pytest.approx(0.2)
    assert pair.doffs == pytest.approx(o.fx * 0.022 / 0.2)
    # In focus: no blur; 1 mm behind the focal plane: A * fx * dZ / (Z * Zf) pixels.
    assert o.coc_diameter_px(0.2, 0.2) == 0
    assert o.coc_diameter_px(0.201, 0.2) == pytest.approx(0.02 * o.fx * 0.001 / (0.201 * 0.2))


@pytest.mark.parametrize("field", ["baseline", "numerical_aperture", "width"])
def test_bad_optics_are_refused(field):
    with pytest.raises(InputError, match=field):
        MicroscopeOptics(**{field: 0})


def test_left_depth_predicts_right_pixels_within_a_quarter_pixel():
    optics = SMALL
    scene = make_scene(11, optics, kind="needle", gap=0.5e-3)
    left = render_layers(scene, optics, "left")
    right = render_layers(scene, optics, "right")
    pair = optics.stereo()
    h, w = optics.height, optics.width
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    # Disparity from the left depth alone, as a stereo consumer of camera_info would compute it.
    disparity = pair.disparity_from_depth(left.retina_depth)
    u_right = u - disparity
    inside = (u_right > 1) & (u_right < w - 2)
    # Where the right camera's own ray hits the retina at that position, it must be the same 3D
    # point as the left pixel's.
    sampled = cv2.remap(
        right.retina_points, u_right.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR
    )
    error_px = np.linalg.norm((sampled - left.retina_points)[..., :2], axis=-1) / optics.pixel_size
    assert inside.mean() > 0.9
    assert np.percentile(error_px[inside], 99.9) < 0.25
    # The instrument agrees too, where it is seen by both eyes away from its edges.
    d_inst = pair.disparity_from_depth(left.inst_depth)
    interior = cv2.erode(left.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ur = np.round(np.nan_to_num(u - d_inst, nan=-1.0)).astype(int)
    ok = interior & (ur >= 0) & (ur < w)
    assert ok.sum() > 20
    rows, cols = np.nonzero(ok)
    z_right = right.inst_depth[rows, ur[rows, cols]]
    dz_per_px = left.inst_depth[rows, cols] ** 2 / (optics.fx * optics.baseline)
    assert np.median(np.abs(z_right - left.inst_depth[rows, cols]) / dz_per_px) < 0.6


# Disc radii of about 2.4, 4.8, 9.6 and 19 px: full, half and quarter resolution paths.
@pytest.mark.parametrize("defocus_mm", [1.5, 3.0, 6.0, 12.0])
def test_fronto_parallel_point_blurs_into_the_analytic_disc(defocus_mm):
    optics = MicroscopeOptics().scaled_to(256, 256)
    h, w = optics.height, optics.width
    plane = 0.2
    focus = plane - defocus_mm * 1e-3
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[h // 2, w // 2] = 1.0
    layers = ViewLayers(
        rgb,
        np.full((h, w), plane, np.float32),
        np.zeros((h, w, 3), np.float32),
        np.zeros((h, w, 3), np.float32),
        np.zeros((h, w), np.float32),
        np.full((h, w), np.inf, np.float32),
    )
    out = render_slice(layers, optics, focus)[..., 0].astype(np.float64)
    assert out.sum() == pytest.approx(1.0, rel=1e-3)
    y, x = np.mgrid[0:h, 0:w]
    var_x = (out * (x - w // 2) ** 2).sum() / out.sum()
    var_y = (out * (y - h // 2) ** 2).sum() / out.sum()
    radius = float(optics.coc_diameter_px(plane, focus)) / 2
    # A uniform disc of radius rho has variance rho^2 / 4 along each axis; pixels add 1/12.
    measured = 2 * np.sqrt((var_x + var_y) / 2 - 1 / 12)
    assert measured == pytest.approx(radius, rel=0.08)


def test_slice_focused_at_a_depth_is_sharpest_there():
    optics = SMALL
    scene = make_scene(5, optics, config=SceneConfig(p_no_instrument=1.0, p_vignette=0.0))
    assert scene.instrument is None
    sample = render_sample(scene, optics, slices=6, noise=False)
    focus = sample.focus_distances
    slices = torch.from_numpy(srgb8_to_linear(sample.left.slices)).permute(0, 3, 1, 2)
    sml = sum_modified_laplacian(slices, window=7).numpy()
    sharpest = sml.argmax(axis=0)
    depth = sample.left.depth
    nearest = np.abs(depth[None] - focus[:, None, None]).argmin(axis=0)
    spacing = np.diff(focus).mean()
    # Pixels clearly inside one slice's depth band and with texture to measure.
    clear = np.abs(depth - focus[nearest]) < spacing / 4
    aif = torch.from_numpy(srgb8_to_linear(sample.left.aif)).permute(2, 0, 1)
    textured = sum_modified_laplacian(aif, window=7).numpy() > 0.05
    judged = clear & textured
    assert judged.sum() > 500
    assert (sharpest[judged] == nearest[judged]).mean() > 0.9


def test_same_seed_same_pixels_and_different_seeds_differ():
    a = render_sample(make_scene(3, SMALL), SMALL, slices=3)
    b = render_sample(make_scene(3, SMALL), SMALL, slices=3)
    for eye in ("left", "right"):
        ea, eb = getattr(a, eye), getattr(b, eye)
        for name in ("aif", "slices", "depth", "mask"):
            np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name))
    c = render_sample(make_scene(4, SMALL), SMALL, slices=3)
    assert not np.array_equal(a.left.aif, c.left.aif)


def test_a_scene_drawn_without_its_texture_has_the_same_geometry():
    for seed in range(6):
        full, bare = make_scene(seed, SMALL), make_scene(seed, SMALL, texture=False)
        assert bare.texture is None and full.texture is not None
        assert (bare.gap_normal, bare.gap_axial) == (full.gap_normal, full.gap_axial)
        assert bare.has_instrument == full.has_instrument
        if full.has_instrument:
            np.testing.assert_array_equal(bare.instrument.tip, full.instrument.tip)
            for cb, cf in zip(bare.instrument.capsules, full.instrument.capsules, strict=True):
                np.testing.assert_array_equal(np.stack([cb.a, cb.b]), np.stack([cf.a, cf.b]))
        np.testing.assert_array_equal(bare.retina.centre, full.retina.centre)
        np.testing.assert_array_equal(bare.white_balance, full.white_balance)


@pytest.mark.parametrize("kind", INSTRUMENT_KINDS)
def test_every_instrument_renders_with_exact_gap(kind):
    scene = make_scene(7, SMALL, kind=kind, gap=0.4e-3)
    assert scene.gap_normal == pytest.approx(0.4e-3, abs=1e-9)
    assert scene.gap_axial >= scene.gap_normal - 1e-9
    layers = render_layers(scene, SMALL, "left")
    assert layers.mask.sum() > 30
    assert np.isfinite(layers.inst_rgb).all() and np.isfinite(layers.retina_rgb).all()
    # The instrument is above the retina wherever it is seen.
    assert (layers.inst_depth[layers.mask] < layers.retina_depth[layers.mask]).all()


def test_ground_truth_is_the_underside_not_the_visible_top():
    optics = MicroscopeOptics().scaled_to(256, 256)
    scene = make_scene(2, optics, kind="needle", gap=0.3e-3)
    radius = scene.instrument.shaft_radius
    layers = render_layers(scene, optics, "left")
    tip = scene.instrument.tip
    u = optics.fx * tip[0] / tip[2] + optics.left_camera().cx
    v = optics.fx * tip[1] / tip[2] + optics.left_camera().cy
    yy, xx = np.nonzero(layers.mask)
    near = np.hypot(xx - u, yy - v) < radius / optics.pixel_size * 2
    # The naive figure: retina depth minus the visible top of the tip, near the tip.
    naive = np.min(layers.retina_depth[yy[near], xx[near]] - layers.inst_depth[yy[near], xx[near]])
    assert naive > scene.gap_axial + radius  # off by at least the needle's radius
    # The nearest point really is on the surface at the stated gap from the retina sphere.
    retina = scene.retina
    assert retina.radius - np.linalg.norm(scene.nearest_point - retina.centre) == pytest.approx(
        scene.gap_normal, abs=1e-9
    )


def test_contact_and_absence():
    touching = make_scene(9, SMALL, kind="forceps", gap=0.0)
    assert touching.gap_normal == pytest.approx(0.0, abs=1e-9)
    seeds = [s for s in range(200) if make_scene(s, SMALL).instrument is None]
    assert 0.03 < len(seeds) / 200 < 0.2  # p_no_instrument = 0.1
    empty = make_scene(seeds[0], SMALL)
    assert empty.gap_normal == np.inf and empty.nearest_point is None
    assert not render_layers(empty, SMALL, "left").mask.any()


def test_gaps_cover_small_distances_log_uniformly():
    gaps = np.array([make_scene(s, SMALL).gap_normal for s in range(300)])
    gaps = gaps[np.isfinite(gaps) & (gaps > 1e-9)]  # drop absent and touching
    logs = np.log10(gaps * 1e3)  # mm
    # Log-uniform on [0.05, 3] mm: about a third of draws per decade-ish band.
    assert 0.2 < np.mean(logs < np.log10(0.2)) < 0.5
    assert gaps.min() >= 0.05e-3 - 1e-9 and gaps.max() <= 3e-3 + 1e-9


def test_sensor_noise_of_a_sweep_does_not_repeat_within_a_long_run():
    from types import SimpleNamespace

    from micro_perception.sim.sequence import SequencePlayer

    # A stand-in sequence: one pose of four flat grey 32x32 slices per eye.
    slices = np.full((4, 32, 32, 3), 128, np.uint8)
    pose = SimpleNamespace(left_slices=slices, right_slices=slices)
    seq = SimpleNamespace(
        poses=[pose], config=SimpleNamespace(slices=4), focus_distances=np.zeros(4)
    )

    def player(seed):
        return SequencePlayer(seq, sweep_rate=1.0, period=1e6, frame_noise=1.5, seed=seed)

    first = player(0)
    # 300 sweeps, as in `eval hover`: every sweep's noise is its own (fixed shift strides used
    # to repeat it every 8 sweeps at this size, every 128 at 512x512).
    sweeps = {
        b"".join(first.frame(4 * s + i).left.tobytes() for i in range(4)) for s in range(300)
    }
    assert len(sweeps) == 300
    f = first.frame(77)
    assert not np.array_equal(f.left, f.right)  # the eyes' sensors are not the same
    assert np.array_equal(player(0).frame(77).left, f.left)  # deterministic per seed
    assert not np.array_equal(player(1).frame(77).left, f.left)
