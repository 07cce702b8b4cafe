"""Tiny analytic stand-in frames for plumbing tests of the classifiers (not for accuracy figures).

Sphere form factors on a 64x64 beam-centred grid with Poisson noise: blanks (background only),
single spheres, two coherently scattering spheres, and rod-like "other" scatter.
"""

import numpy as np

Q_PER_PIXEL_NM = 0.0345  # 6 keV, 0.705 m, 4x4-binned 200 um pixels


def _sphere_amplitude(q_nm, radius_nm):
    x = np.maximum(q_nm * radius_nm, 1e-6)
    return 3 * (np.sin(x) - x * np.cos(x)) / x**3 * radius_nm**3


def synthetic_frames(n, seed, size=64, photons=(2e3, 2e4)):
    """(patterns, valid, labels) with labels 0 blank, 1 single, 2 multiple, 3 other."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.indices((size, size)) - size // 2) * Q_PER_PIXEL_NM
    q = np.hypot(yy, xx)
    valid = np.ones((size, size), bool)
    valid[size // 2 - 3 : size // 2 + 4, :] = False  # a horizontal gap through the centre
    valid[q < 3 * Q_PER_PIXEL_NM] = False  # beam stop
    labels = rng.integers(0, 4, n)
    patterns = np.empty((n, size, size), np.float32)
    for i, label in enumerate(labels):
        r = rng.uniform(20, 60)
        if label == 0:
            intensity = np.zeros_like(q)
        elif label == 1:
            intensity = _sphere_amplitude(q, r) ** 2
        elif label == 2:
            d = rng.normal(size=2) * 3 * r
            phase = yy * d[0] + xx * d[1]
            intensity = np.abs(_sphere_amplitude(q, r) + _sphere_amplitude(q, r * rng.uniform(0.7, 1.0)) * np.exp(1j * phase)) ** 2
        else:
            a = rng.uniform(0, np.pi)
            along, across = np.cos(a) * xx + np.sin(a) * yy, -np.sin(a) * xx + np.cos(a) * yy
            intensity = np.sinc(along * 4 * r / np.pi) ** 2 * np.exp(-((across * r / 2) ** 2))
        total = intensity[valid].sum()
        scale = rng.uniform(*photons) / total if total > 0 else 0.0
        patterns[i] = rng.poisson(intensity * scale + 0.01) * valid
    return patterns, np.broadcast_to(valid, patterns.shape).copy(), labels
