"""Confidence intervals of the evaluations' figures, and `eval compare`'s pairing."""

import json

import numpy as np
import pytest

from micro_perception.errors import InputError
from micro_perception.training.distance_eval import compare_frames
from micro_perception.training.stats import (
    binomial_ci,
    bootstrap_ci,
    p95,
    paired_bootstrap_ci,
)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_frames():
    rng = np.random.default_rng(1)
    small, large = rng.exponential(50.0, 50), rng.exponential(50.0, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert lo_l < 50.0 < hi_l  # the true mean of the distribution
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)
    assert bootstrap_ci(np.full(30, 7.0)) == (7.0, 7.0)
    lo, hi = bootstrap_ci(large, p95)
    assert lo < np.percentile(large, 95) < hi
    assert bootstrap_ci([1.0]) is None
    assert bootstrap_ci(small) == bootstrap_ci(small)  # a fixed seed: reproducible


def test_paired_interval_sees_a_small_shift_that_unpaired_intervals_hide():
    rng = np.random.default_rng(2)
    a = rng.exponential(50.0, 250)  # frames differ a lot from each other ...
    b = a - 2.0 + rng.normal(0.0, 0.5, a.size)  # ... the new method gains 2 um on each
    lo, hi = paired_bootstrap_ci(a, b)
    assert -2.5 < lo < hi < -1.5
    ia, ib = bootstrap_ci(a), bootstrap_ci(b)
    assert ib[1] > ia[0]  # unpaired, the two intervals overlap
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, b[:-1])


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (0, 178, 0.0, 1 - 0.025 ** (1 / 178)),  # closed form for no event
        (178, 178, 0.025 ** (1 / 178), 1.0),
        (6, 178, 0.012469, 0.071921),  # scipy.stats.beta quantiles
        (2, 122, 0.001992, 0.057964),
        (5, 10, 0.187086, 0.812914),
    ],
)
def test_binomial_interval_is_the_exact_clopper_pearson_one(k, n, lo, hi):
    got = binomial_ci(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-6)


def test_binomial_interval_rejects_impossible_counts():
    assert binomial_ci(0, 0) is None
    with pytest.raises(ValueError):
        binomial_ci(5, 4)


def _row(name, true_um, measured_um, kind="needle"):
    return {
        "frame": name,
        "instrument": kind,
        "true_m": true_um * 1e-6,
        "measured_m": measured_um * 1e-6,
        "method": "silhouette",
    }


def _frames(n=120, seed=3):
    rng = np.random.default_rng(seed)
    true = rng.uniform(60, 2900, n)
    return [_row(f"{i:05d}", t, t + rng.normal(0, 60)) for i, t in enumerate(true)]


def test_compare_pairs_frames_and_names_the_alerts_that_changed():
    base = _frames()
    better = [
        dict(r, measured_m=r["true_m"] + 0.5 * (r["measured_m"] - r["true_m"])) for r in base
    ]
    # One close frame the base missed and the new one catches, one far frame it now alarms on.
    base.append(_row("close", 450, 530))
    better.append(_row("close", 450, 470))
    base.append(_row("far", 700, 690))
    better.append(_row("far", 700, 480))
    out = compare_frames(base, better)
    assert out["verdict"] == "better" and out["mae_diff_ci95_um"][1] < 0
    assert out["alert_fixed"] == ["close"] and out["alert_broken"] == ["far"]
    base_alert, new_alert = out["alert"]["base"], out["alert"]["new"]
    assert new_alert["missed"] == base_alert["missed"] - 1
    assert new_alert["false_alarms"] == base_alert["false_alarms"] + 1
    assert out["most_worsened"][0]["frame"] == "far"
    same = compare_frames(base, base)
    assert same["verdict"] == "no difference shown" and same["mae_diff_um"] == 0.0
    assert same["alert_fixed"] == same["alert_broken"] == []
    assert same["most_improved"] == same["most_worsened"] == []
    worse = compare_frames(better, base)
    assert worse["verdict"] == "worse"


def test_compare_refuses_frames_of_different_data(tmp_path):
    base = _frames()
    other = [dict(r, true_m=r["true_m"] + 1e-5) for r in base]
    with pytest.raises(InputError, match="different data"):
        compare_frames(base, other)
    with pytest.raises(InputError, match="no frame in common"):
        compare_frames(base, [_row("elsewhere", 100, 100)])


def test_eval_compare_command(tmp_path, cli_json, run_cli):
    base = _frames()
    new = [dict(r, measured_m=r["true_m"]) for r in base]  # exact: better on every frame
    new[0] = dict(new[0], measured_m=float("inf"))  # and one frame only the base measured
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base))
    b.write_text(json.dumps(new))
    out = cli_json("eval", "compare", str(a), str(b))
    assert out["verdict"] == "better" and out["paired"] == len(base) - 1
    assert out["measured_by_base_only"] == 1 and out["measured_by_new_only"] == 0
    assert out["new_mae_um"] == 0.0
    text = run_cli("eval", "compare", str(a), str(b)).stdout
    assert "better" in text and "MAE" in text
    (tmp_path / "bad.json").write_text('{"not": "frames"}')
    bad = run_cli("eval", "compare", str(a), str(tmp_path / "bad.json"), check=False)
    assert bad.returncode == 2 and "eval distance --frames" in bad.stderr


def _ar1(n, phi, sigma, seed):
    """A slowly wandering series, as a filtered distance is: x[t] = phi x[t-1] + noise."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    e = rng.normal(0.0, sigma * np.sqrt(1 - phi**2), n)
    x[0] = rng.normal(0.0, sigma)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_block_bootstrap_widens_the_interval_of_a_correlated_series():
    from micro_perception.training.stats import block_bootstrap_ci, correlation_length

    x = _ar1(300, 0.9, 20.0, seed=5)  # correlation over ~20 frames
    assert 10 <= correlation_length(x) <= 40
    assert correlation_length(np.random.default_rng(0).normal(size=300)) == 1

    def std(a):
        return a.std(-1)

    iid = bootstrap_ci(x, std)
    blocks = block_bootstrap_ci(x, std)
    assert (blocks[1] - blocks[0]) > 1.5 * (iid[1] - iid[0])
    # Over many such series, the block interval holds the true std (20) far more often.
    held_iid = held_blocks = 0
    for seed in range(40):
        y = _ar1(300, 0.9, 20.0, seed=100 + seed)
        lo, hi = bootstrap_ci(y, std, resamples=400)
        held_iid += lo <= 20.0 <= hi
        lo, hi = block_bootstrap_ci(y, std, resamples=400)
        held_blocks += lo <= 20.0 <= hi
    # (30 and 16 of 40 here: short correlated series read a low std, so blocks hold it less
    # often than 95 %, but far more often than resampling frames one by one.)
    assert held_blocks >= 26 and held_blocks > held_iid + 8
    assert block_bootstrap_ci([1.0, 2.0, 3.0]) is None
    assert block_bootstrap_ci(x, std, block=300) is None
