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

from ..io.geometry import q_from_radius
from ..io.grid import radial_profiles
from ..physics.constants import HC_EV_M
from ..physics.formfactors import sphere_shape_factor
from .base import Field, FrameBatch, Param, Stage

SUB_BINS = 4  # sub-bins per radial bin for the mask-aware model


def sphere_form_factor(x: np.ndarray) -> np.ndarray:
    """Normalised sphere intensity [3 (sin x - x cos x) / x^3]^2 (1 at x = 0)."""
    return sphere_shape_factor(np.asarray(x, dtype=np.float64)) ** 2


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
        """Radial bins of the grid, split into quarter-pixel sub-bins, and for every trial radius the
        model averaged over the q values met in each sub-bin (2x2 sub-pixels per grid pixel)."""
        size = grid.q.shape[0]
        yy, xx = np.indices(grid.q.shape, dtype=np.float64)
        yy -= size // 2
        xx -= size // 2
        radius = np.hypot(yy, xx).ravel()
        self.radius_bin = np.rint(radius).astype(np.int64)
        self.n_bins = size // 2
        sub = np.clip(np.floor((radius - self.radius_bin + 0.5) * SUB_BINS), 0, SUB_BINS - 1).astype(np.int64)
        self.fine_bin = self.radius_bin * SUB_BINS + sub
        n_fine = self.n_bins * SUB_BINS
        inside = self.fine_bin < n_fine
        q_sub = np.stack([q_from_radius(np.hypot(yy + dy, xx + dx).ravel()[inside] * grid.pixel_size_m,
                                        grid.distance_m, HC_EV_M / grid.wavelength_m)
                          for dy in (-0.25, 0.25) for dx in (-0.25, 0.25)]).ravel()
        fine = np.broadcast_to(self.fine_bin[inside], (4, int(inside.sum()))).ravel()
        # Radii whose fringes (period pi/R in q) are finer than two grid pixels cannot be told apart.
        nyquist = np.pi / (2 * grid.q_per_pixel)
        self.radii = self.radii_m[self.radii_m <= nyquist] if np.any(self.radii_m <= nyquist) else self.radii_m[:2]
        # The q values met in each sub-bin, summarised by 8 quantiles (exact enough, and fast).
        order = np.argsort(fine, kind="stable")
        fine_sorted, q_sorted = fine[order], q_sub[order]
        bounds = np.searchsorted(fine_sorted, np.arange(n_fine + 1))
        levels = np.linspace(0, 1, 8)
        q_fine = np.zeros((n_fine, len(levels)))
        for b in range(n_fine):
            if bounds[b + 1] > bounds[b]:
                q_fine[b] = np.quantile(q_sorted[bounds[b] : bounds[b + 1]], levels)
        models = sphere_form_factor(self.radii[:, None, None] * q_fine[None]).mean(axis=2)
        self.fine_models = models.reshape(len(self.radii), self.n_bins, SUB_BINS)
        self._grid_key = id(grid)

    def _frame_models(self, valid: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per-frame model (n, n_radii, n_bins): sub-bin models weighted by that frame's valid pixels,
        so a beam stop or gap covering part of a radial bin biases model and data alike."""
        n, n_fine = valid.shape[0], self.n_bins * SUB_BINS
        inside = self.fine_bin < n_fine
        index = (np.arange(n)[:, None] * n_fine + self.fine_bin[inside][None, :]).ravel()
        hist = np.bincount(index, weights=valid[:, inside].ravel(), minlength=n * n_fine)
        hist = hist.reshape(n, self.n_bins, SUB_BINS)
        return np.einsum("rbk,nbk->nrb", self.fine_models, hist) / np.maximum(counts, 1)[:, None, :]

    def process(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        grid = batch.meta["grid"]
        if self._grid_key != id(grid):
            self._prepare(grid)
        n = len(batch)
        patterns = batch["pattern"].reshape(n, -1).astype(np.float64)
        valid = batch["pattern_valid"].reshape(n, -1)
        profile, counts = radial_profiles(patterns, valid, self.radius_bin, self.n_bins)
        m = self._frame_models(valid, counts)  # (n, n_radii, n_bins)
        counts[:, : self.p.min_radius_px] = 0
        w = counts / (profile + 0.5)  # Poisson: var(mean of c pixels) = mean / c
        s_mm, s_m1 = np.einsum("nb,nrb->nr", w, m**2), np.einsum("nb,nrb->nr", w, m)
        s_pm = np.einsum("nb,nrb->nr", w * profile, m)
        s_p1 = (w * profile).sum(axis=1, keepdims=True)
        s_11 = w.sum(axis=1, keepdims=True)
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
