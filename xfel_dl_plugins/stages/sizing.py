"""Sphere-model size fit of the radial profile: the non-learned baseline for particle sizing.

The model is I(q) = A [3 (sin x - x cos x) / x^3]^2 + b with x = q R (Assalauova 2020). For every
frame and every radius of a log-spaced grid, the best amplitude A >= 0 and background b >= 0 follow
in closed form from weighted least squares (Poisson weights); the radius with the smallest chi^2 is
refined by a parabola through its neighbours. All frames of a batch are fitted at once. Radii
whose fringes the grid cannot sample (period pi/R below two grid pixels) are not tried: use less
binning for large particles.
"""

from __future__ import annotations

import numpy as np

from ..io.geometry import HC_EV_M, q_from_radius
from .base import Field, FrameBatch, Param, Stage


def sphere_form_factor(x: np.ndarray) -> np.ndarray:
    """Normalised sphere intensity [3 (sin x - x cos x) / x^3]^2 (1 at x = 0)."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-3
    xs = np.where(small, 1.0, x)
    amplitude = np.where(small, 1 - x**2 / 10, 3 * (np.sin(xs) - xs * np.cos(xs)) / xs**3)
    return amplitude**2


def radial_profiles(patterns: np.ndarray, valid: np.ndarray, radius_bin: np.ndarray, n_bins: int):
    """Mean intensity and valid-pixel count per integer radius bin, for every frame: ``(n, n_bins)``."""
    n = patterns.shape[0]
    inside = radius_bin < n_bins
    index = (np.arange(n)[:, None] * n_bins + radius_bin[inside][None, :]).ravel()
    weights = np.where(valid, patterns, 0)[:, inside].ravel()
    sums = np.bincount(index, weights=weights, minlength=n * n_bins).reshape(n, n_bins)
    counts = np.bincount(index, weights=valid[:, inside].ravel(), minlength=n * n_bins).reshape(n, n_bins)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0), counts


class SphereSizeFit(Stage):
    description = "Fits a sphere form factor to each frame's radial profile (vectorised over frames)"
    kind = "size_shape"
    params = {
        "radius_min_nm": Param(10.0, float, "smallest radius tried", unit="nm", min=0.1),
        "radius_max_nm": Param(300.0, float, "largest radius tried", unit="nm", min=0.2),
        "n_radii": Param(400, int, "radii on the log-spaced search grid", min=10),
        "min_radius_px": Param(3, int, "radial bins closer to the beam are ignored (beam stop)", min=0),
    }
    inputs = ("pattern", "pattern_valid")
    outputs = (
        Field("radius_nm", "float32", doc="fitted sphere radius", unit="nm"),
        Field("scale", "float32", doc="fitted forward intensity A", unit="photons/pixel"),
        Field("background", "float32", doc="fitted constant background b", unit="photons/pixel"),
        Field("fit_quality", "float32", doc="1 - chi2(sphere)/chi2(constant): 1 = perfect, 0 = no better than flat"),
        Field("reduced_chi2", "float32", doc="chi2 per degree of freedom with Poisson weights (~1 for a good fit)"),
    )

    def setup(self) -> None:
        if self.p.radius_max_nm <= self.p.radius_min_nm:
            raise ValueError("radius_max_nm must be larger than radius_min_nm")
        self.radii_m = np.geomspace(self.p.radius_min_nm, self.p.radius_max_nm, self.p.n_radii) * 1e-9
        self._grid_key = None

    def _prepare(self, grid) -> None:
        """Radial bins of the grid and, for every trial radius, the model averaged exactly as the
        data are: over 2x2 sub-pixels of each grid pixel, then over the pixels of each radial bin."""
        size = grid.q.shape[0]
        yy, xx = np.indices(grid.q.shape, dtype=np.float64)
        yy -= size // 2
        xx -= size // 2
        self.radius_bin = np.rint(np.hypot(yy, xx)).astype(np.int64).ravel()
        self.n_bins = size // 2
        inside = self.radius_bin < self.n_bins
        bins, counts = self.radius_bin[inside], np.bincount(self.radius_bin[inside], minlength=self.n_bins)
        q_sub = np.stack([q_from_radius(np.hypot(yy + dy, xx + dx).ravel()[inside] * grid.pixel_size_m,
                                        grid.distance_m, HC_EV_M / grid.wavelength_m)
                          for dy in (-0.25, 0.25) for dx in (-0.25, 0.25)])
        # Radii whose fringes (period pi/R in q) are finer than two grid pixels cannot be told apart.
        nyquist = np.pi / (2 * grid.q_per_pixel)
        self.radii = self.radii_m[self.radii_m <= nyquist] if np.any(self.radii_m <= nyquist) else self.radii_m[:2]
        # The q values met in each radial bin, summarised by 32 quantiles (exact enough, and fast).
        levels = np.linspace(0, 1, 32)
        q_bins = np.zeros((self.n_bins, len(levels)))
        sub_bins = np.broadcast_to(bins, q_sub.shape).ravel()
        for b in np.flatnonzero(counts):
            q_bins[b] = np.quantile(q_sub.ravel()[sub_bins == b], levels)
        self.models = sphere_form_factor(self.radii[:, None, None] * q_bins[None]).mean(axis=2)
        self._grid_key = id(grid)

    def process(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        grid = batch.meta["grid"]
        if self._grid_key != id(grid):
            self._prepare(grid)
        n = len(batch)
        patterns = batch["pattern"].reshape(n, -1).astype(np.float64)
        valid = batch["pattern_valid"].reshape(n, -1)
        profile, counts = radial_profiles(patterns, valid, self.radius_bin, self.n_bins)
        counts[:, : self.p.min_radius_px] = 0
        w = counts / (profile + 0.5)  # Poisson: var(mean of c pixels) = mean / c
        m = self.models.T  # (n_bins, n_radii)
        s_mm, s_m1 = w @ m**2, w @ m
        s_11 = w.sum(axis=1, keepdims=True)
        s_pm, s_p1 = (w * profile) @ m, (w * profile).sum(axis=1, keepdims=True)
        s_pp = (w * profile**2).sum(axis=1, keepdims=True)
        det = s_mm * s_11 - s_m1**2
        with np.errstate(divide="ignore", invalid="ignore"):
            amp = (s_pm * s_11 - s_p1 * s_m1) / det
            bkg = (s_mm * s_p1 - s_m1 * s_pm) / det
            no_bkg = ~(bkg >= 0) | ~np.isfinite(det) | (det <= 0)  # refit with b = 0
            amp = np.where(no_bkg, s_pm / s_mm, amp)
            bkg = np.where(no_bkg, 0.0, bkg)
        amp = np.maximum(np.nan_to_num(amp), 0.0)
        chi2 = s_pp - 2 * amp * s_pm - 2 * bkg * s_p1 + amp**2 * s_mm + 2 * amp * bkg * s_m1 + bkg**2 * s_11
        best = np.argmin(chi2, axis=1)
        rows = np.arange(n)
        log_r = np.log(self.radii)
        inner = np.clip(best, 1, len(self.radii) - 2)
        c0, c1, c2 = chi2[rows, inner - 1], chi2[rows, inner], chi2[rows, inner + 1]
        curvature = c0 - 2 * c1 + c2
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(curvature > 0, 0.5 * (c0 - c2) / curvature, 0.0)
        step = log_r[1] - log_r[0]
        radius = np.exp(log_r[inner] + np.clip(shift, -1, 1) * step)
        radius = np.where(best == inner, radius, self.radii[best])
        chi2_flat = s_pp[:, 0] - s_p1[:, 0] ** 2 / np.maximum(s_11[:, 0], 1e-12)
        chi2_best = chi2[rows, best]
        dof = np.maximum(np.count_nonzero(counts, axis=1) - 3, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            quality = np.where(chi2_flat > 0, 1 - chi2_best / chi2_flat, 0.0)
        return {
            "radius_nm": (radius * 1e9).astype(np.float32),
            "scale": amp[rows, best].astype(np.float32),
            "background": bkg[rows, best].astype(np.float32),
            "fit_quality": np.clip(quality, 0, 1).astype(np.float32),
            "reduced_chi2": (chi2_best / dof).astype(np.float32),
        }
