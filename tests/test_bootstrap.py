"""Bootstrap intervals resample (seeded, by scan), shrink with n, and cover a known AUC."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from silverclip.eval.bootstrap import bootstrap, group_members, resample_indices
from silverclip.eval.metrics import fast_auc

# Scores: negatives ~ N(0, 1), positives ~ N(d, 1) -> true AUC = Phi(d / sqrt(2)).
D = 1.0
TRUE_AUC = float(norm.cdf(D / np.sqrt(2)))


def _draw(rng, n):
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    s = rng.normal(D * y, 1.0)
    return y, s


def _auc_ci(y, s, n_boot=200, seed=0, groups=None):
    return bootstrap(lambda i: {"auc": fast_auc(y[i], s[i])}, len(y), groups=groups, n_boot=n_boot, seed=seed)


def test_seeded_and_really_resampling():
    rng = np.random.default_rng(0)
    y, s = _draw(rng, 200)
    a, b = _auc_ci(y, s, seed=3), _auc_ci(y, s, seed=3)
    assert a.lower == b.lower and a.upper == b.upper
    assert a.upper["auc"] - a.lower["auc"] > 0.02  # CT-CLIP's non-resampling loop gives width 0
    assert np.std(a.replicates["auc"]) > 0
    c = _auc_ci(y, s, seed=4)
    assert c.lower != a.lower


def test_intervals_shrink_with_more_samples():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 400, 1600):
        y, s = _draw(rng, n)
        r = _auc_ci(y, s)
        widths.append(r.upper["auc"] - r.lower["auc"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 2.5  # ~ sqrt(16) = 4 in theory


def test_coverage_of_known_auc():
    rng = np.random.default_rng(2)
    covered = 0
    trials = 60
    for t in range(trials):
        y, s = _draw(rng, 150)
        r = _auc_ci(y, s, n_boot=150, seed=t)
        covered += r.lower["auc"] <= TRUE_AUC <= r.upper["auc"]
    # nominal 95%; binomial sd over 60 trials ~ 2.8%; allow a generous margin
    assert covered / trials >= 0.85


def test_scans_resampled_as_units():
    groups = np.array(["s1", "s1", "s1", "s2", "s3", "s3"])
    members = group_members(groups, len(groups))
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = resample_indices(members, rng)
        for m in members:  # every unit appears entirely or not at all, with equal multiplicity
            counts = [np.sum(idx == i) for i in m]
            assert len(set(counts)) == 1


def test_clustered_intervals_wider_than_naive_on_duplicated_volumes():
    # Each scan reconstructed 4 times with (near) identical predictions: treating volumes as
    # independent understates the uncertainty.
    rng = np.random.default_rng(5)
    y, s = _draw(rng, 100)
    y4, s4 = np.repeat(y, 4), np.repeat(s, 4) + rng.normal(0, 1e-3, 400)
    groups = np.repeat(np.arange(100), 4)
    naive = _auc_ci(y4, s4, n_boot=300)
    clustered = _auc_ci(y4, s4, n_boot=300, groups=groups)
    w = lambda r: r.upper["auc"] - r.lower["auc"]  # noqa: E731
    assert w(clustered) > 1.5 * w(naive)
