"""The phasing state: many patterns x many random starts iterated as one batched array.

Arrays on the device have shape ``(patterns, starts, *spatial)`` (2D or 3D spatial); measured
data have ``(patterns, 1, *spatial)`` and broadcast over the starts. Diffraction arrays are
FFT-centred (zero frequency at index 0); the model intensity is ``|fftn(x)|**2`` (unnormalised
forward FFT), so an object's scale is that of the photon counts.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputDataError
from . import kernels
from .backend import ArrayBackend, FourierConstraint, Support, get_backend
from .metrics import poisson_deviance
from .support import autocorrelation_support, free_pixel_mask, gaussian_transfer


class PhasingState:
    """Iterates, current supports and running figures of merit of a batch of reconstructions.

    Parameters
    ----------
    iobs, valid : (patterns, *spatial) photon counts (FFT-centred) and measured-pixel mask.
    n_starts : random starts per pattern.
    free_fraction : fraction of valid pixels held out for the free LLK (0 disables).
    positivity, reality : object constraints inside the support.
    calc_llk : compute LLK every this many iterations (0: only at the end).
    support_threshold, support_sigma : autocorrelation support: threshold relative to its maximum, or a
        (low, high) range drawn per start for diversity; Gaussian smoothing in px (0: none).
    initial_support, initial_object : optional (patterns[, starts], *spatial) starting points
        (e.g. from a learned phase retriever); they replace the autocorrelation support / random starts.
    """

    def __init__(self, iobs: np.ndarray, valid: np.ndarray | None = None, *, n_starts: int = 8,
                 backend: ArrayBackend | str = "auto", ndim: int | None = None, free_fraction: float = 0.05,
                 positivity: bool = False, reality: bool = False, calc_llk: int = 50,
                 support_threshold: float | tuple = (0.08, 0.2), support_sigma: float = 0.0, seed: int = 0,
                 initial_support: np.ndarray | None = None, initial_object: np.ndarray | None = None):
        iobs = np.asarray(iobs, np.float32)
        ndim = ndim or (iobs.ndim - 1 if iobs.ndim in (3, 4) else iobs.ndim)
        if iobs.ndim == ndim:
            iobs = iobs[None]
        if iobs.ndim != ndim + 1 or ndim not in (2, 3):
            raise InputDataError(f"patterns must be (n, ny, nx) or (n, nz, ny, nx), got shape {iobs.shape}")
        valid = np.ones(iobs.shape, bool) if valid is None else np.asarray(valid, bool).reshape(iobs.shape)
        valid = valid & np.isfinite(iobs) & (iobs >= 0)
        if not valid.any(axis=tuple(range(1, iobs.ndim))).all():
            raise InputDataError("a pattern has no valid pixel: cannot phase it")
        if n_starts < 1:
            raise InputDataError(f"n_starts must be >= 1, got {n_starts}")
        self.iobs_host = np.where(valid, iobs, 0).astype(np.float32)
        self.valid_host = valid
        self.n_patterns, self.n_starts = iobs.shape[0], int(n_starts)
        self.spatial = iobs.shape[1:]
        self.batch_shape = (self.n_patterns, self.n_starts) + self.spatial
        self.backend = backend if isinstance(backend, ArrayBackend) else get_backend(backend, ndim)
        self.xp = self.backend.xp
        self.axes = self.backend.spatial_axes(len(self.batch_shape))
        self.positivity, self.reality = bool(positivity), bool(reality or positivity)
        self.calc_llk = int(calc_llk)
        self.rng = np.random.default_rng(seed)
        self.iteration = 0

        self.free_host = np.stack([free_pixel_mask(v, free_fraction, rng=self.rng) for v in valid])
        self.constrained_host = valid & ~self.free_host
        xp = self.xp
        data = self.iobs_host[:, None]
        self.constraint = FourierConstraint(self.backend, np.sqrt(data), ~self.constrained_host[:, None],
                                            self.batch_shape)
        self.iobs = xp.asarray(data)
        self.w_constrained = xp.asarray(self.constrained_host[:, None].astype(np.float32))
        self.w_free = xp.asarray(self.free_host[:, None].astype(np.float32))
        self.n_constrained = self.constrained_host.sum(axis=tuple(range(1, iobs.ndim)))
        self.n_free = self.free_host.sum(axis=tuple(range(1, iobs.ndim)))

        if initial_support is None:
            initial_support = self._autocorrelation_supports(support_threshold, support_sigma, ndim)
        self.support = Support(self.backend, xp.asarray(self._per_start(initial_support, bool)))
        if initial_object is None:
            self.x = self._random_starts()
        else:
            self.x = xp.asarray(self._per_start(initial_object, np.complex64)) * self.support.mask
        self.y = xp.empty_like(self.x)
        self.llk = np.full((self.n_patterns, self.n_starts), np.nan)
        self.llk_free = np.full((self.n_patterns, self.n_starts), np.nan)

    # -- set-up ----------------------------------------------------------------------------------
    def _per_start(self, array, dtype) -> np.ndarray:
        """Broadcast a (patterns, *spatial) or (patterns, starts, *spatial) array to the batch shape."""
        array = np.asarray(array)
        if array.shape == (self.n_patterns,) + self.spatial:
            array = array[:, None]
        if array.shape[0] != self.n_patterns or array.shape[2:] != self.spatial or array.shape[1] not in (1, self.n_starts):
            raise InputDataError(f"initial array of shape {array.shape} does not match the batch {self.batch_shape}")
        return np.ascontiguousarray(np.broadcast_to(array, self.batch_shape), dtype=dtype)

    def _autocorrelation_supports(self, threshold, sigma: float, ndim: int) -> np.ndarray:
        """Autocorrelation support per start; a (low, high) threshold is drawn uniformly per start."""
        if np.ndim(threshold) == 0:
            return autocorrelation_support(self.iobs_host, self.valid_host, float(threshold), sigma, ndim)
        low, high = threshold
        draws = self.rng.uniform(low, high, (self.n_patterns, self.n_starts) + (1,) * ndim)
        iobs = np.broadcast_to(self.iobs_host[:, None], self.batch_shape)
        valid = np.broadcast_to(self.valid_host[:, None], self.batch_shape)
        return autocorrelation_support(iobs, valid, draws, sigma, ndim)

    def _random_starts(self):
        """Measured amplitudes with uniformly random phases, back-transformed, inside the support."""
        xp = self.xp
        phase = self.rng.uniform(0, 2 * np.pi, self.batch_shape).astype(np.float32)
        f0 = xp.asarray(np.sqrt(self.iobs_host)[:, None] * np.exp(1j * phase).astype(np.complex64))
        x = self.backend.ifft_(f0.astype(np.complex64))
        return (x * self.support.mask).astype(np.complex64)

    # -- iterations ----------------------------------------------------------------------------
    def _project_modulus(self, src, scale: float = 1.0):
        """scale * P_M src into the scratch buffer (records the LLK first when it is due)."""
        y = self.backend.fft_(self.backend.copy_(self.y, src))
        if self.calc_llk and self.iteration % self.calc_llk == 0:
            self._record_llk(y)
        y = self.backend.fourier_project_(y, self.constraint, scale)
        self.y = self.backend.ifft_(y)
        return self.y

    def iterate(self, rule: str, beta: float) -> None:
        """One iteration of ER ('er'), HIO ('hio') or RAAR ('raar')."""
        if self.reality:
            y = self._project_modulus(self.x)
            self.x = self.backend.constrained_update(rule, self.x, y, self.support, beta, self.positivity, self.reality)
        elif rule == "er":
            self.x = self.backend.er_(self.x, self._project_modulus(self.x), self.support)
        else:
            scale = self.backend.feedback_scale(rule, beta)
            y = self._project_modulus(self.x, scale)
            self.x = getattr(self.backend, rule + "_")(self.x, y, self.support, beta, y_scale=scale)
        self.iteration += 1

    def iterate_dm(self, beta: float) -> None:
        """One difference-map iteration (two modulus projections)."""
        s = self.support.mask.astype(np.float32)
        y = self._project_modulus(self.x)
        ps_fm, f_s = kernels.dm_support_step(self.x, y, s, np.float32(beta))
        if self.reality:
            ps_fm = ps_fm.real.astype(np.complex64) * s
        f_s = f_s.astype(np.complex64)
        pm_fs = self._project_modulus(f_s)
        self.x = kernels.dm_combine(self.x, ps_fm, pm_fs, np.float32(beta)).astype(np.complex64)
        self.iteration += 1

    def shrink_wrap(self, threshold: float, sigma: float, method: str, force_shrink: bool) -> None:
        """New support where the Gaussian-smoothed |x| exceeds threshold x (rms in support | max)."""
        xp = self.xp
        y = self.backend.copy_(self.y, abs(self.x).astype(np.complex64))
        y = self.backend.fft_(y)
        y *= gaussian_transfer(self.spatial, sigma, xp)
        smooth = self.backend.ifft_(y).real
        if method == "max":
            ref = smooth.max(axis=self.axes, keepdims=True)
        else:
            inside = self.support.mask
            n_in = xp.maximum(inside.sum(axis=self.axes, keepdims=True), 1)
            ref = xp.sqrt((smooth * smooth * inside).sum(axis=self.axes, keepdims=True) / n_in)
        new = smooth > np.float32(threshold) * ref
        if force_shrink:
            new &= self.support.mask
        empty = ~new.any(axis=self.axes, keepdims=True)  # keep the old support rather than none
        new = xp.where(empty, self.support.mask, new)
        self.support = Support(self.backend, new)
        self.y = y

    # -- figures of merit ----------------------------------------------------------------------
    def _record_llk(self, f) -> None:
        """Poisson LLK (constrained pixels, per degree of freedom) and free LLK of the current F."""
        xp = self.xp
        dev = poisson_deviance(self.iobs, self.backend.intensity(f), xp)
        n_sup = self.backend.to_numpy(self.support.size)
        dof = np.maximum(self.n_constrained[:, None] - n_sup, 1)
        self.llk = self.backend.to_numpy((dev * self.w_constrained).sum(axis=self.axes)) / dof
        free = self.backend.to_numpy((dev * self.w_free).sum(axis=self.axes))
        self.llk_free = free / np.maximum(self.n_free[:, None], 1) if self.n_free.any() else free * np.nan

    def update_llk(self) -> None:
        """Figures of merit of the current iterates themselves (no projection)."""
        f = self.backend.fft_(self.backend.copy_(self.y, self.x))
        self._record_llk(f)

    # -- results -------------------------------------------------------------------------------
    def objects(self) -> np.ndarray:
        """Current iterates (patterns, starts, *spatial) as NumPy complex64."""
        return self.backend.to_numpy(self.x)

    def supports(self) -> np.ndarray:
        return self.backend.to_numpy(self.support.mask)
