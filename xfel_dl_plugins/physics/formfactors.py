"""Analytic scattering amplitudes (in electrons) of homogeneous spheres and spheroids."""

from __future__ import annotations

import numpy as np

from .rotation import to_body_frame


def sphere_shape_factor(x):
    """3 (sin x - x cos x) / x^3, the normalised amplitude of a sphere at x = qR (1 at x = 0).

    Computed in the precision of ``x`` (float32 input stays float32); below |x| = 0.05, where the
    closed form cancels, the Taylor series 1 - x^2/10 + x^4/280 is used.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    xs = np.where(np.abs(x) < 0.05, np.asarray(1.0, x.dtype), x)
    out = np.sin(xs)
    out -= xs * np.cos(xs)
    out *= 3
    out /= xs * xs * xs
    small = np.abs(x) < 0.05
    if small.any():
        x2 = x[small] * x[small]
        out[small] = 1 - x2 / 10 + x2 * x2 / 280
    return out


def sphere_amplitude(q_abs, radius_m: float, density_e_m3: float):
    """Amplitude F(q) = rho V 3 j1(qR)/(qR) of a homogeneous sphere centred at the origin."""
    volume = 4.0 / 3.0 * np.pi * radius_m**3
    return (density_e_m3 * volume) * sphere_shape_factor(np.asarray(q_abs) * radius_m)


def spheroid_amplitude(q, semi_axis_a_m: float, semi_axis_c_m: float, rotation, density_e_m3: float):
    """Amplitude of a homogeneous spheroid (semi-axes a, a, c along body x, y, z) at lab-frame ``q`` (..., 3).

    The body frame is rotated into the lab by ``rotation`` (3x3); c > a is prolate, c < a oblate.
    """
    qb = to_body_frame(np.asarray(q), np.asarray(rotation))
    x = np.sqrt(semi_axis_a_m**2 * (qb[..., 0] ** 2 + qb[..., 1] ** 2) + semi_axis_c_m**2 * qb[..., 2] ** 2)
    volume = 4.0 / 3.0 * np.pi * semi_axis_a_m**2 * semi_axis_c_m
    return (density_e_m3 * volume) * sphere_shape_factor(x)
