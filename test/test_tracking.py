"""The distance filter and the proximity alert."""

import numpy as np
import pytest

from micro_perception.errors import InputError
from micro_perception.tracking import DistanceFilter, FilterConfig, ProximityAlert


def test_filter_steadies_a_hovering_instrument():
    rng = np.random.default_rng(0)
    f = DistanceFilter()
    raw = 0.8e-3 + rng.normal(0, 25e-6, 300)
    out = np.array([f.update(i / 30, z) for i, z in enumerate(raw)])
    assert np.std(out[60:]) < np.std(raw[60:]) / 1.6
    assert abs(np.mean(out[60:]) - 0.8e-3) < 10e-6


def test_filter_follows_a_descent_and_rejects_a_single_outlier():
    f = DistanceFilter()
    t = np.arange(90) / 30
    truth = 2e-3 - 0.5e-3 * t  # 0.5 mm/s towards the retina
    out = [f.update(ti, zi) for ti, zi in zip(t, truth, strict=True)]
    assert abs(out[-1] - truth[-1]) < 30e-6
    before = f.update(3.0, truth[-1] - 0.5e-3 / 30)
    spike = f.update(3.0 + 1 / 30, 2.5e-3)  # one wild frame
    assert abs(spike - before) < 100e-6
    # Three wild frames in a row are a real jump: the filter follows.
    for i in range(3):
        last = f.update(3.1 + i / 30, 2.5e-3)
    assert last == pytest.approx(2.5e-3)


def test_filter_forgets_after_silence_and_when_time_goes_back():
    f = DistanceFilter(FilterConfig(stale_after=0.5))
    assert f.update(0.0, None) is None
    assert f.update(0.1, 1e-3) == pytest.approx(1e-3)
    assert f.update(0.3, float("inf")) is not None  # coasting
    assert f.update(0.7, None) is None and not f.known
    f.update(1.0, 1e-3)
    assert f.update(0.5, 2e-3) == pytest.approx(2e-3)  # restarted from the measurement
    with pytest.raises(InputError):
        FilterConfig(measurement_noise=0.0)


def test_measurements_further_apart_than_stale_after_each_restart_the_filter():
    """A node slower than stale_after (1 s a pair on a loaded CPU) saw the instrument jump
    between poses: the filter learnt a rate across the gap, extrapolated it past the retina and
    gated the true 0.77 mm as an outlier, publishing contact (0). Each such measurement is now
    taken as it is."""
    seq = [(34.749, 0.801e-3), (35.749, 0.684e-3), (36.751, 2.566e-3), (38.751, 0.758e-3)]
    seq += [(39.749, 0.770e-3), (40.757, 0.228e-3)]
    f = DistanceFilter(FilterConfig(stale_after=0.5))
    assert [f.update(t, z) for t, z in seq] == [pytest.approx(z) for _, z in seq]


def test_alert_has_hysteresis_and_is_off_when_unknown():
    a = ProximityAlert(0.5e-3, 0.1e-3)
    seq = [1e-3, 0.49e-3, 0.55e-3, 0.59e-3, 0.61e-3, 0.45e-3, None, 0.45e-3]
    assert [a.update(d) for d in seq] == [False, True, True, True, False, True, False, True]
    with pytest.raises(InputError):
        ProximityAlert(0.0)
