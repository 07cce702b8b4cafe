"""The adaptive threshold on lit-pixel scores, with hit rates from rare to dominant."""

import numpy as np
import pytest

from xfel_dl_plugins.stages.base import FrameBatch
from xfel_dl_plugins.stages.hitfinding import LitPixelHitFinder, densest_mode


def scores_batch(lit_counts):
    """Frames whose lit-pixel count is exactly ``lit_counts`` (1 photon in that many pixels)."""
    n, npix = len(lit_counts), 20000
    data = np.zeros((n, npix), np.float32)
    for i, k in enumerate(lit_counts):
        data[i, :k] = 1.0
    return FrameBatch({"data": data, "valid": np.ones_like(data, bool), "train_id": np.arange(n)})


def test_densest_mode_finds_the_dense_peak_under_a_broad_majority():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1000, 30, 300), rng.uniform(1500, 10000, 700)])
    assert densest_mode(values) == pytest.approx(1000, abs=15)


@pytest.mark.parametrize("hit_rate", [0.02, 0.3, 0.7])
def test_mode_threshold_separates_blanks_and_hits_at_any_hit_rate(hit_rate):
    rng = np.random.default_rng(1)
    n = 1000
    is_hit = rng.random(n) < hit_rate
    lit = np.where(is_hit, rng.uniform(1400, 8000, n), rng.normal(1000, 32, n)).astype(int)
    finder = LitPixelHitFinder(statistic="mode", k_sigma=5.0)
    finder.setup()
    found = np.concatenate([finder.process(scores_batch(lit[i:i + 100]))["is_hit"] for i in range(0, n, 100)])
    assert (found == is_hit).mean() > 0.99


def test_median_threshold_breaks_down_when_hits_dominate():
    """Why 'mode' is the default: with 70 % hits the median sits among the hits."""
    rng = np.random.default_rng(1)
    n = 500
    is_hit = rng.random(n) < 0.7
    lit = np.where(is_hit, rng.uniform(1400, 8000, n), rng.normal(1000, 32, n)).astype(int)
    finder = LitPixelHitFinder(statistic="robust", k_sigma=5.0)
    finder.setup()
    found = finder.process(scores_batch(lit))["is_hit"]
    assert (found == is_hit).mean() < 0.8
