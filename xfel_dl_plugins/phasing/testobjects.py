"""Synthetic test objects and their noisy diffraction patterns, for tests and benchmarks.

Objects fill at most ``1/oversampling`` of each dimension (oversampling >= 2 per dimension makes
the phase problem well posed). Patterns are Poisson-sampled at a given total photon count, with
a central beam-stop hole (and optionally a detector gap) marked invalid, FFT-centred.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

KINDS = ("blobs", "cell", "polygon", "complex_blobs")


def make_object(shape: tuple[int, ...] = (256, 256), kind: str = "blobs", oversampling: float = 2.5,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A complex64 test density centred in ``shape``, extent ~ size/oversampling per dimension.

    kinds: 'blobs' (overlapping random ellipsoids with texture, real >= 0), 'cell' (a membrane
    ring with inner organelles, real >= 0), 'polygon' (a random convex polygon/polyhedron of
    uniform density with a smooth gradient), 'complex_blobs' (blobs with a smooth phase map).
    """
    rng = rng or np.random.default_rng()
    ndim = len(shape)
    extent = np.array(shape) / oversampling
    grids = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    coords = np.stack(grids, -1) / (extent / 2)  # object fits in the unit ball
    r = np.sqrt((coords ** 2).sum(-1))
    if kind in ("blobs", "complex_blobs"):
        rho = np.zeros(shape)
        for _ in range(12):
            c = rng.uniform(-0.5, 0.5, ndim)
            axes = rng.uniform(0.15, 0.45, ndim)
            d = np.sqrt((((coords - c) / axes) ** 2).sum(-1))
            rho += rng.uniform(0.3, 1.0) * (d < 1)
        rho *= r < 0.98
        rho = ndimage.gaussian_filter(rho, 1.0) * (1 + 0.3 * ndimage.gaussian_filter(rng.standard_normal(shape), 2))
        rho = np.clip(rho, 0, None) * (r < 1)
        if kind == "complex_blobs":
            phase = ndimage.gaussian_filter(rng.standard_normal(shape), 12)
            phase *= 2.0 / max(np.abs(phase).max(), 1e-12)
            return (rho * np.exp(1j * phase)).astype(np.complex64)
    elif kind == "cell":
        rho = 0.5 * (r < 0.95) + 0.3 * ((r > 0.85) & (r < 0.95))
        for _ in range(6):
            c = rng.uniform(-0.45, 0.45, ndim)
            rho += rng.uniform(0.3, 0.9) * (np.sqrt(((coords - c) ** 2).sum(-1)) < rng.uniform(0.08, 0.2))
        rho = ndimage.gaussian_filter(rho * (r < 0.95), 0.8)
    elif kind == "polygon":
        normals = rng.standard_normal((9, ndim))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        inside = np.all(coords @ normals.T < rng.uniform(0.55, 0.95, 9), axis=-1)
        rho = inside * (1 + 0.4 * coords[..., 0]) * (r < 1)
        rho = ndimage.gaussian_filter(rho.astype(float), 0.7)
    else:
        raise ValueError(f"unknown test object kind {kind!r} (known: {', '.join(KINDS)})")
    return rho.astype(np.complex64)


def beam_stop_mask(shape: tuple[int, ...], radius: float = 4.0, gap_width: int = 0) -> np.ndarray:
    """Valid-pixel mask (FFT-centred): False inside a central disc of ``radius`` px and an optional
    horizontal detector gap of ``gap_width`` rows through the centre."""
    grids = np.meshgrid(*[np.fft.fftfreq(n) * n for n in shape], indexing="ij")
    valid = np.sqrt(sum(g * g for g in grids)) > radius
    if gap_width:
        valid &= np.abs(grids[0]) >= gap_width / 2
    return valid


def diffraction(obj: np.ndarray, photons: float, valid: np.ndarray | None = None,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson-noisy FFT-centred pattern of ``obj`` with ``photons`` expected photons in total.

    Returns (counts float32, valid bool, scaled truth) where ``|fftn(scaled truth)|**2`` is the
    expected intensity: the truth in the units a reconstruction comes out in.
    """
    rng = rng or np.random.default_rng()
    f = sfft.fftn(obj.astype(np.complex128))
    intensity = np.abs(f) ** 2
    scale = photons / intensity.sum()
    counts = rng.poisson(intensity * scale).astype(np.float32)
    if valid is None:
        valid = np.ones(obj.shape, bool)
    return np.where(valid, counts, 0).astype(np.float32), valid, (obj * np.sqrt(scale)).astype(np.complex64)
