"""Measurement effects: photon counting, readout noise, saturation."""

from __future__ import annotations

import numpy as np


#: Frames with more pixels than this are sampled as a Poisson process (faster for sparse megapixel frames).
PLACEMENT_MIN_PIXELS = 1 << 18


def poisson_counts(rng: np.random.Generator, expected: np.ndarray, bright: float = 0.5) -> np.ndarray:
    """Independent Poisson counts with means ``expected`` (float32 array of the same shape).

    Small frames get one Poisson draw per pixel. On large frames, pixels expecting more than ``bright`` photons get a Poisson draw each; the photons of all the
    others are sampled as a Poisson process: their total N ~ Poisson(sum) photons, each placed in a
    pixel with probability expected_i / sum (splitting a Poisson variable multinomially gives
    independent Poisson counts). Sparse frames thus cost one pass over the pixels plus O(N log P).
    """
    if expected.size < PLACEMENT_MIN_PIXELS:
        return rng.poisson(expected).astype(np.float32)
    flat = expected.ravel()
    counts = np.zeros(flat.shape, np.float32)
    lit = np.flatnonzero(flat > bright)
    if len(lit):
        counts[lit] = rng.poisson(flat[lit])
        flat = flat.copy()
        flat[lit] = 0.0
    cumulative = np.cumsum(flat, dtype=np.float64)
    total = float(cumulative[-1]) if len(cumulative) else 0.0
    n = int(rng.poisson(total)) if total > 0 else 0
    if n:
        where = np.sort(rng.random(n)) * total
        hits = np.searchsorted(cumulative, where, side="right")
        np.minimum(hits, len(flat) - 1, out=hits)  # guards the (measure-zero) u*total == total case
        counts += np.bincount(hits, minlength=len(flat))
    return counts.reshape(expected.shape)


def add_readout_noise(rng: np.random.Generator, counts: np.ndarray, sigma: float) -> None:
    """Add Gaussian readout noise of rms ``sigma`` photons in place (calibrated detector data)."""
    if sigma > 0:
        noise = rng.standard_normal(counts.shape, dtype=np.float32)
        noise *= np.float32(sigma)
        counts += noise


def saturate(counts: np.ndarray, limit: float) -> np.ndarray | None:
    """Clip ``counts`` at ``limit`` in place; return the saturated pixels (or None if there are none)."""
    if counts.max(initial=0.0) < limit:
        return None
    saturated = counts >= limit
    np.minimum(counts, np.float32(limit), out=counts)
    return saturated
