"""The segmentation network sees images at the pixel scale it learned: a camera with finer
pixels over the same field is resized for it, and its probabilities back."""

import numpy as np
import pytest

from micro_perception.depth.pipeline import DepthPipeline, PipelineConfig
from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.resources import shipped_model
from micro_perception.sim.render import render_sample
from micro_perception.sim.scene import make_scene


def _iou(prob: np.ndarray, truth: np.ndarray) -> float:
    mask, truth = prob >= 0.5, truth > 0
    return float((mask & truth).sum() / (mask | truth).sum())


@pytest.fixture(scope="module")
def pipe():
    return DepthPipeline(device="cpu")


def test_the_scale_is_the_shipped_networks_over_the_cameras(pipe):
    assert pipe.seg_px_per_mm == 64.0
    assert pipe.seg_scale(MicroscopeOptics().stereo()) == 1.0  # the scale it learned at
    finer = MicroscopeOptics().scaled_to(768, 768).stereo()
    assert pipe.seg_scale(finer) == pytest.approx(2 / 3, rel=1e-6)
    # The working distance is read from the depth where there is one: twice as far, half the
    # pixels per mm.
    depth = np.full((768, 768), 2 * finer.convergence_distance)
    depth[:10] = np.nan
    assert pipe.seg_scale(finer, depth) == pytest.approx(4 / 3, rel=1e-6)
    # Told nothing, other weights are taken at their own scale; 0 never resizes.
    other = DepthPipeline(seg_weights=shipped_model("segmentation.pt"), device="cpu")
    assert other.seg_px_per_mm == 0.0 and other.seg_scale(finer) == 1.0
    told = DepthPipeline(
        PipelineConfig(seg_px_per_mm=96.0),
        seg_weights=shipped_model("segmentation.pt"),
        device="cpu",
    )
    assert told.seg_scale(finer) == 1.0
    off = DepthPipeline(PipelineConfig(seg_px_per_mm=0.0), device="cpu")
    assert off.seg_scale(finer) == 1.0
    with pytest.raises(InputError, match="seg_px_per_mm"):
        PipelineConfig(seg_px_per_mm=float("nan"))


def test_a_finer_camera_is_segmented_as_the_network_learned(pipe):
    optics = MicroscopeOptics().scaled_to(768, 768)
    pair = optics.stereo()
    scale = pipe.seg_scale(pair)
    as_is, resized = [], []
    for seed, kind in ((3, "needle"), (4, "vitrector"), (5, "light_pipe"), (6, "forceps")):
        sample = render_sample(make_scene(seed, optics, kind=kind, gap=0.3e-3), optics, 2)
        images = [sample.left.aif, sample.right.aif]
        probs = pipe.segment(images, scale)
        assert probs.shape == (2, 768, 768) and probs.dtype == np.float32
        resized.append(_iou(probs[0], sample.left.mask))
        as_is.append(_iou(pipe.segment(images)[0], sample.left.mask))
        if kind == "forceps":  # the node's pipeline segments so too
            result = pipe(*images, pair, dense=False)
            assert _iou(result.mask.astype(np.float32), sample.left.mask) > as_is[-1]
    # 0.975 as the images come, 0.987 resized (a light pipe 0.950 -> 0.974)
    assert np.mean(resized) > np.mean(as_is) + 0.005, (as_is, resized)


def test_warmup_segments_at_the_size_the_frames_will_be_segmented_at(pipe, monkeypatch):
    sizes = []
    real = pipe._segment

    def spy(images):
        sizes.append(images[0].shape)
        return real(images)

    monkeypatch.setattr(pipe, "_segment", spy)
    pipe.warmup(768, 768)  # a 768x768 camera of the virtual microscope's field
    assert sizes == [(512, 512, 3)]
