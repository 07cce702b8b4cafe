"""The phasing state: many patterns x many random starts iterated as one batched array.

Iterates have shape ``(patterns, starts, *spatial)`` (2D or 3D spatial) and are updated chunk by
chunk along the flattened (patterns x starts) axis (cache-sized chunks on the CPU, the whole
batch on the GPU). Diffraction arrays are FFT-centred (zero frequency at index 0); the model
intensity is ``|fftn(x)|**2`` (unnormalised forward FFT), so an object's scale is that of the
photon counts.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputDataError
from .backend import ArrayBackend, FourierConstraint, Support, get_backend
from .defaults import SUPPORT_CAP
from .metrics import poisson_deviance
from .support import autocorrelation_amplitude, ball_transfer, free_pixel_mask, gaussian_transfer, support_size_cap


class PhasingState:
    """Iterates, current supports and running figures of merit of a batch of reconstructions.

    Parameters
    ----------
    iobs, valid : (patterns, *spatial) photon counts (FFT-centred) and measured-pixel mask; a 3D
        array is a stack of 2D patterns unless ``ndim=3`` (then it is one volume). Non-finite pixels
        are unmeasured; negative readings of measured pixels (detector noise) count as zero photons.
    n_starts : random starts per pattern.
    free_fraction : fraction of valid pixels held out for the free LLK (0 disables).
    modelled : (patterns, *spatial) or None: valid pixels whose intensities come from a model (e.g. a
        central hole filled from a sphere fit). They are constrained like measured ones but never held
        out, so that the free LLK measures the fit to data only.
    positivity, reality : object constraints inside the support.
    calc_llk : compute LLK every this many iterations (0: only at the end).
    support_threshold, support_sigma : autocorrelation support: threshold relative to its maximum, or a
        (low, high) range drawn per start for diversity; Gaussian smoothing in px (0: none).
    support_cap : no support may hold more than ``support_cap`` x the object size bound that the
        autocorrelation gives (:func:`~.support.support_size_cap`); a shrink-wrap step that would
        exceed it keeps the brightest pixels of its smoothed amplitude. Without the cap, supports of
        dense objects and of low-photon patterns run away to most of the array. None or 0: no cap.
    support_jitter : each start multiplies every shrink-wrap threshold by its own factor drawn
        uniformly in [1 - jitter, 1 + jitter] (0: all starts alike). Different objects need different
        thresholds; the (free) LLK then selects among the starts.
    initial_support, initial_object : optional (patterns[, starts], *spatial) starting points
        (e.g. from a learned phase retriever); they replace the autocorrelation support / random starts.
    seed, pattern_keys : every pattern draws its free pixels, thresholds and random starts from its own
        stream, ``SeedSequence(seed, spawn_key=key)``; ``pattern_keys`` gives one key (a tuple of
        non-negative ints, e.g. (train_id, pulse_id)) per pattern, default (index,). A pattern's
        result then depends on the seed and its key, not on the other patterns of the batch.
    run : which independent run of the patterns this is (:func:`~.multistart.phase`'s ``n_runs``): the
        free pixels are the same in every run; run 0 draws its thresholds and random starts from the
        pattern's stream after them, run k > 0 from ``SeedSequence([seed, k], spawn_key=key)``.
    """

    def __init__(self, iobs: np.ndarray, valid: np.ndarray | None = None, *, n_starts: int = 8,
                 backend: ArrayBackend | str = "auto", ndim: int | None = None, free_fraction: float = 0.05,
                 positivity: bool = False, reality: bool = False, calc_llk: int = 50,
                 support_threshold: float | tuple = (0.08, 0.2), support_sigma: float = 0.0,
                 support_jitter: float = 0.2, support_cap: float | None = SUPPORT_CAP, seed: int = 0, pattern_keys=None,
                 initial_support: np.ndarray | None = None, initial_object: np.ndarray | None = None,
                 modelled: np.ndarray | None = None, run: int = 0):
        iobs = np.asarray(iobs, np.float32)
        ndim = ndim or (iobs.ndim - 1 if iobs.ndim in (3, 4) else iobs.ndim)
        if iobs.ndim == ndim:
            iobs = iobs[None]
        if iobs.ndim != ndim + 1 or ndim not in (2, 3):
            raise InputDataError(f"patterns must be (n, ny, nx) or (n, nz, ny, nx), got shape {iobs.shape}")
        if valid is None:
            valid = np.ones(iobs.shape, bool)
        elif np.shape(valid) not in (iobs.shape, iobs.shape[1:]):
            raise InputDataError(f"valid mask of shape {np.shape(valid)} does not match patterns {iobs.shape}")
        valid = np.broadcast_to(np.asarray(valid, bool), iobs.shape)
        valid = valid & np.isfinite(iobs)
        if not valid.any(axis=tuple(range(1, iobs.ndim))).all():
            raise InputDataError("a pattern has no valid pixel: cannot phase it")
        if n_starts < 1:
            raise InputDataError(f"n_starts must be >= 1, got {n_starts}")
        # a measured pixel reading below zero (readout noise, background subtraction) measured no photon:
        # masking it instead frees 30-45 % of a weak pattern's pixels and biases the rest upwards
        self.iobs_host = np.where(valid, np.maximum(iobs, 0), 0).astype(np.float32)
        self.valid_host = valid
        self.n_patterns, self.n_starts = iobs.shape[0], int(n_starts)
        self.spatial = iobs.shape[1:]
        self.batch_shape = (self.n_patterns, self.n_starts) + self.spatial
        self.backend = backend if isinstance(backend, ArrayBackend) else get_backend(backend, ndim)
        self.xp = self.backend.xp
        self.axes = self.backend.spatial_axes(len(self.batch_shape))
        self.positivity, self.reality = bool(positivity), bool(reality or positivity)
        self.calc_llk = int(calc_llk)
        self.rngs = self._pattern_generators(seed, pattern_keys)
        self.iteration = 0
        self.generation_start = 0  # iteration at which the current generation began (see restart_from)
        self.guided = []  # per GUIDE, what it saw of the starts it pulled together (multistart.GuidedStarts)
        self.keep_guided_starts = False  # whether those records also keep the starts' objects and supports
        self.guided_ranked = None  # how many ranked starts (lead included) those records keep (None: all)

        if modelled is not None and np.shape(modelled) not in (iobs.shape, iobs.shape[1:]):
            raise InputDataError(f"modelled mask of shape {np.shape(modelled)} does not match patterns {iobs.shape}")
        measured = valid if modelled is None else valid & ~np.broadcast_to(np.asarray(modelled, bool), iobs.shape)
        self.free_host = np.stack([free_pixel_mask(m, free_fraction, rng=rng) for m, rng in zip(measured, self.rngs)])
        if run:  # another draw of thresholds and starts, the same free pixels
            self.rngs = self._pattern_generators([seed, run], pattern_keys)
        self.constrained_host = valid & ~self.free_host
        xp = self.xp
        self.iobs = xp.asarray(self.iobs_host)
        self.w_constrained = xp.asarray(self.constrained_host.astype(np.float32))
        self.w_free = xp.asarray(self.free_host.astype(np.float32))
        self.n_constrained = self.constrained_host.sum(axis=tuple(range(1, iobs.ndim)))
        self.n_free = self.free_host.sum(axis=tuple(range(1, iobs.ndim)))

        # The batch is iterated in chunks of the flattened (patterns x starts) axis.
        n_arrays = self.n_patterns * self.n_starts
        step = self.backend.chunk_length(int(np.prod(self.spatial)))
        self.chunks = [slice(i, min(i + step, n_arrays)) for i in range(0, n_arrays, step)]
        self.pattern_of = np.repeat(np.arange(self.n_patterns), self.n_starts)  # flat array -> pattern
        self.measured_amplitude = xp.sqrt(self.iobs)  # per pattern, on the device
        fixed = xp.asarray(~self.constrained_host)
        self.constraints = []
        for c in self.chunks:
            rows = xp.asarray(self.pattern_of[c])
            self.constraints.append(FourierConstraint(self.backend, self.measured_amplitude[rows], fixed[rows]))

        if not 0 <= support_jitter < 1:
            raise InputDataError(f"support_jitter must be in [0, 1), got {support_jitter}")
        jitter = np.stack([rng.uniform(1 - support_jitter, 1 + support_jitter, self.n_starts) for rng in self.rngs])
        self.threshold_factor = xp.asarray(jitter.reshape(jitter.shape + (1,) * ndim).astype(np.float32))
        self.odd_starts = xp.asarray((np.arange(self.n_starts) % 2 == 1).reshape((1, -1) + (1,) * ndim))
        if support_cap is not None and not support_cap >= 0:
            raise InputDataError(f"support_cap must be >= 0 (0 or None: no cap), got {support_cap}")
        amplitude = (autocorrelation_amplitude(self.iobs_host, self.valid_host, 0.0, ndim)
                     if support_cap or initial_support is None else None)
        self.max_support = support_size_cap(amplitude, ndim, support_cap) if support_cap else None
        if initial_support is None:
            initial_support = self._autocorrelation_supports(support_threshold, support_sigma, ndim, amplitude)
        self.set_support(xp.asarray(self._per_start(initial_support, bool)))
        if initial_object is None:
            self.x = self._random_starts()
        else:
            self.x = xp.asarray(self._per_start(initial_object, np.complex64)) * self.support_mask
        self.y = self.backend.scratch_like(self.x)  # the CPU's FFT-in-place buffer; None on the GPU
        self._dm_scratch = None  # a second one, for the difference map (allocated on its first iteration)
        self.llk = np.full((self.n_patterns, self.n_starts), np.nan)
        self.llk_free = np.full((self.n_patterns, self.n_starts), np.nan)

    # -- set-up ----------------------------------------------------------------------------------
    def _pattern_generators(self, seed: int | list, keys) -> list[np.random.Generator]:
        """One random generator per pattern, from the seed (an int, or ints) and the pattern's key."""
        keys = [(i,) for i in range(self.n_patterns)] if keys is None else [tuple(np.atleast_1d(k)) for k in keys]
        if len(keys) != self.n_patterns:
            raise InputDataError(f"{len(keys)} pattern keys for {self.n_patterns} patterns")
        try:
            entropy = [int(v) for v in seed] if isinstance(seed, list) else int(seed)
            return [np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=tuple(int(v) for v in k)))
                    for k in keys]
        except (TypeError, ValueError) as exc:
            raise InputDataError(f"seed and pattern keys must be non-negative integers: {exc}") from None

    def _per_start(self, array, dtype) -> np.ndarray:
        """Broadcast a (patterns, *spatial) or (patterns, starts, *spatial) array to the batch shape."""
        array = np.asarray(array)
        if array.shape == (self.n_patterns,) + self.spatial:
            array = array[:, None]
        if array.shape[0] != self.n_patterns or array.shape[2:] != self.spatial or array.shape[1] not in (1, self.n_starts):
            raise InputDataError(f"initial array of shape {array.shape} does not match the batch {self.batch_shape}")
        return np.ascontiguousarray(np.broadcast_to(array, self.batch_shape), dtype=dtype)

    def _autocorrelation_supports(self, threshold, sigma: float, ndim: int, amplitude: np.ndarray) -> np.ndarray:
        """Autocorrelation support per start; a (low, high) threshold is drawn uniformly per start.
        ``amplitude``: the unsmoothed autocorrelation amplitude (recomputed when ``sigma`` > 0)."""
        if sigma > 0:
            amplitude = autocorrelation_amplitude(self.iobs_host, self.valid_host, sigma, ndim)
        if np.ndim(threshold) == 0:
            draws = np.full((self.n_patterns, self.n_starts), float(threshold))
        else:
            low, high = threshold
            draws = np.stack([rng.uniform(low, high, self.n_starts) for rng in self.rngs])
        amplitude = amplitude[:, None]
        peak = amplitude.max(axis=tuple(range(2, 2 + ndim)), keepdims=True)
        return amplitude > draws.reshape(draws.shape + (1,) * ndim) * peak

    def _random_starts(self):
        """Measured amplitudes with uniformly random phases, back-transformed, inside the support."""
        xp = self.xp
        phase = np.empty(self.batch_shape, np.float32)  # drawn on the host: the same starts on every device
        for pattern, rng in enumerate(self.rngs):
            phase[pattern] = rng.uniform(0, 2 * np.pi, self.batch_shape[1:])
        f0 = xp.exp(xp.asarray(phase) * np.complex64(1j))  # complex64, on the device
        f0 *= self.measured_amplitude[:, None]
        x = self.backend.ifft_(f0)
        x *= self.support_mask
        return x

    def set_support(self, mask) -> None:
        """Install a new support (batch-shaped bool array on the device)."""
        self.support_mask = mask
        flat = mask.reshape((-1,) + self.spatial)
        self.chunk_supports = [Support(self.backend, flat[c]) for c in self.chunks]
        self.support_size = self.backend.to_numpy(mask.sum(axis=self.axes))

    def restart_from(self, x) -> None:
        """Begin a new generation from the batch-shaped iterates ``x``, as a new run from them would:
        the support is the whole array until the next shrink-wrap, whose widths restart their decay.
        Free pixels, per-start thresholds and the iteration count carry on."""
        self.x = self.xp.asarray(np.ascontiguousarray(x, np.complex64).reshape(self.batch_shape))
        self.set_support(self.xp.ones(self.batch_shape, bool))
        self.generation_start = self.iteration
        self.llk[:] = np.nan
        self.llk_free[:] = np.nan

    def snapshot(self, copy: bool = True) -> dict:
        """What a schedule changes: iterates, supports, figures of merit, iteration count
        (:class:`~.operators.Choice` runs its branches from one and keeps parts of theirs); without
        ``copy`` the state's own arrays, for a state that will not iterate again before they are read."""
        keep = (lambda a: a.copy()) if copy else (lambda a: a)
        return dict(x=keep(self.x), support=keep(self.support_mask), llk=keep(self.llk),
                    llk_free=keep(self.llk_free), iteration=self.iteration)

    def restore(self, snapshot: dict) -> None:
        """Go back to a :meth:`snapshot` (which stays as it is)."""
        self.x = snapshot["x"].copy()
        self.set_support(snapshot["support"].copy())
        self.llk, self.llk_free = snapshot["llk"].copy(), snapshot["llk_free"].copy()
        self.iteration = snapshot["iteration"]

    def restore_per_pattern(self, snapshots: list[dict], choice: np.ndarray) -> None:
        """Pattern i's starts from ``snapshots[choice[i]]``; the iteration count the highest of them."""
        xp, rows = self.xp, np.arange(self.n_patterns)
        pick = xp.asarray(np.asarray(choice).reshape((-1, 1) + (1,) * len(self.spatial)))
        x, support = snapshots[0]["x"], snapshots[0]["support"]
        for k, snap in enumerate(snapshots[1:], 1):
            x, support = xp.where(pick == k, snap["x"], x), xp.where(pick == k, snap["support"], support)
        self.x = xp.ascontiguousarray(x)
        self.set_support(xp.ascontiguousarray(support))
        self.llk = np.stack([snap["llk"] for snap in snapshots])[choice, rows]
        self.llk_free = np.stack([snap["llk_free"] for snap in snapshots])[choice, rows]
        self.iteration = max(snap["iteration"] for snap in snapshots)

    def _flat(self, a):
        return a.reshape((-1,) + self.spatial)

    def _scratch(self, chunk: slice):
        """The chunk's part of the scratch array (None where the backend's FFT is out of place)."""
        return None if self.y is None else self._flat(self.y)[chunk]

    # -- iterations ----------------------------------------------------------------------------
    def _llk_due(self) -> bool:
        return bool(self.calc_llk) and self.iteration % self.calc_llk == 0

    def _project_chunk(self, k: int, y, scale: float, record_llk: bool):
        """scale * P_M of the chunk already copied into ``y`` (in place on the CPU)."""
        y = self.backend.fft_(y)
        if record_llk:
            self._record_llk(y, self.chunks[k])
        y = self.backend.fourier_project_(y, self.constraints[k], scale)
        return self.backend.ifft_(y)

    def _store_chunk(self, x, new) -> None:
        """Make ``new`` the iterate of the chunk whose current view is ``x`` (one chunk: the whole batch)."""
        if len(self.chunks) == 1:
            self.x = new.reshape(self.batch_shape)
        elif new is not x:
            x[...] = new

    def iterate(self, rule: str, beta: float) -> None:
        """One iteration of ER ('er'), HIO ('hio') or RAAR ('raar'), chunk by chunk."""
        record = self._llk_due()
        x_f = self._flat(self.x)
        scale = 1.0 if self.reality else self.backend.feedback_scale(rule, beta)

        def chunk_iteration(k: int) -> None:
            c = self.chunks[k]
            x, support = x_f[c], self.chunk_supports[k]
            # ER discards x after its projection: transform x itself, no copy into the scratch array
            source = x if rule == "er" else self.backend.projection_input(self._scratch(c), x)
            y = self._project_chunk(k, source, scale, record)
            if self.reality:
                new = self.backend.real_update_(rule, x, y, support, beta, self.positivity)
            elif rule == "er":
                new = self.backend.er_(x, y, support)
            else:
                new = getattr(self.backend, rule + "_")(x, y, support, beta, y_scale=scale)
            self._store_chunk(x, new)

        self.backend.map_chunks(chunk_iteration, len(self.chunks))
        self.iteration += 1

    def iterate_dm(self, beta: float) -> None:
        """One difference-map iteration (two modulus projections), chunk by chunk."""
        record = self._llk_due()
        x_f = self._flat(self.x)
        if self.y is not None and self._dm_scratch is None:  # the CPU's buffer for f_S(x)
            self._dm_scratch = self.backend.scratch_like(self.x)

        def chunk_iteration(k: int) -> None:
            c = self.chunks[k]
            x, support = x_f[c], self.chunk_supports[k]
            p_m = self._project_chunk(k, self.backend.projection_input(self._scratch(c), x), 1.0, record)
            scratch = None if self._dm_scratch is None else self._flat(self._dm_scratch)[c]
            ps_fm, f_s = self.backend.dm_split_(x, p_m, scratch, support, beta, self.reality)
            pm_fs = self._project_chunk(k, f_s, 1.0, False)  # the LLK of f_S(x) means nothing
            new = self.backend.dm_combine_(x, ps_fm, pm_fs, beta)
            self._store_chunk(x, new)

        self.backend.map_chunks(chunk_iteration, len(self.chunks))
        self.iteration += 1

    def shrink_wrap(self, threshold: float, threshold_rms: float, sigma: float, method: str,
                    force_shrink: bool) -> None:
        """New support where the Gaussian-smoothed |x| exceeds threshold x max (or threshold_rms x rms
        in the current support); ``method='both'``: the rms rule for every other start."""
        xp = self.xp
        y = self.backend.fft_(abs(self.x).astype(np.complex64))
        y *= gaussian_transfer(self.spatial, sigma, xp)
        smooth = self.backend.ifft_(y).real
        level = np.float32(threshold) * smooth.max(axis=self.axes, keepdims=True)
        if method != "max":
            inside = self.support_mask
            n_in = xp.maximum(inside.sum(axis=self.axes, keepdims=True), 1)
            rms_level = np.float32(threshold_rms) * xp.sqrt((smooth * smooth * inside).sum(axis=self.axes, keepdims=True) / n_in)
            level = rms_level if method == "rms" else xp.where(self.odd_starts, rms_level, level)
        new = smooth > level * self.threshold_factor
        if force_shrink:
            new &= self.support_mask
        self._cap_support(new, smooth)
        empty = ~new.any(axis=self.axes, keepdims=True)  # keep the old support rather than none
        self.set_support(xp.where(empty, self.support_mask, new))

    def grow_support(self, radius: float) -> None:
        """Every start's support dilated by a ball of ``radius`` px (periodic; :class:`~.operators.GROW`)."""
        y = self.backend.fft_(self.support_mask.astype(np.complex64))
        y *= ball_transfer(self.spatial, radius, self.xp)
        self.set_support(self.backend.ifft_(y).real > 0.5)

    def smooth_outside(self, sigma: float) -> None:
        """Outside the support, x becomes its Gaussian smoothing of ``sigma`` px (:class:`~.operators.OSS`)."""
        transfer = gaussian_transfer(self.spatial, sigma, self.xp)
        x_f = self._flat(self.x)

        def chunk_smoothing(k: int) -> None:
            c = self.chunks[k]
            x = x_f[c]
            y = self.backend.fft_(self.backend.projection_input(self._scratch(c), x))
            y *= transfer
            y = self.backend.ifft_(y)
            self.xp.copyto(x, y, where=~self.chunk_supports[k].mask)

        self.backend.map_chunks(chunk_smoothing, len(self.chunks))

    def _cap_support(self, new, smooth) -> None:
        """Trim, in place, every support of ``new`` larger than its pattern's cap to the cap's
        brightest pixels of ``smooth`` (the arrays over the cap are few: a loop over them is cheap)."""
        if self.max_support is None:
            return
        xp = self.xp
        sizes = self.backend.to_numpy(new.sum(axis=self.axes)).reshape(-1)
        caps = np.repeat(self.max_support, self.n_starts)
        n_pixels = int(np.prod(self.spatial))
        flat_new, flat_smooth = new.reshape(-1, n_pixels), smooth.reshape(-1, n_pixels)
        for k in np.flatnonzero(sizes > caps):
            values = xp.where(flat_new[k], flat_smooth[k], -np.inf)
            kth = n_pixels - int(caps[k])  # the cap-th largest value sits at this ascending index
            flat_new[k] &= values >= xp.partition(values, kth)[kth]

    # -- figures of merit ----------------------------------------------------------------------
    def _record_llk(self, f, chunk: slice) -> None:
        """Poisson LLK (constrained pixels, per degree of freedom) and free LLK of the arrays F of a chunk."""
        xp = self.xp
        patterns = self.pattern_of[chunk]
        rows = xp.asarray(patterns)
        # float64: the deviance is a small difference of terms ~I (1e5 photons per pixel is common)
        dev = poisson_deviance(self.iobs[rows].astype(np.float64), self.backend.intensity(f).astype(np.float64), xp)
        axes = tuple(range(1, dev.ndim))
        n_sup = self.support_size.reshape(-1)[chunk]
        dof = np.maximum(self.n_constrained[patterns] - n_sup, 1)
        self.llk.reshape(-1)[chunk] = self.backend.to_numpy((dev * self.w_constrained[rows]).sum(axis=axes)) / dof
        free = self.backend.to_numpy((dev * self.w_free[rows]).sum(axis=axes))
        self.llk_free.reshape(-1)[chunk] = free / np.maximum(self.n_free[patterns], 1) if self.n_free.any() else np.nan

    def update_llk(self) -> None:
        """Figures of merit of the current iterates themselves (no projection)."""
        x_f = self._flat(self.x)
        for c in self.chunks:
            self._record_llk(self.backend.fft_(self.backend.projection_input(self._scratch(c), x_f[c])), c)

    # -- results -------------------------------------------------------------------------------
    def objects(self) -> np.ndarray:
        """Current iterates (patterns, starts, *spatial) as NumPy complex64."""
        return self.backend.to_numpy(self.x)

    def supports(self) -> np.ndarray:
        return self.backend.to_numpy(self.support_mask)
