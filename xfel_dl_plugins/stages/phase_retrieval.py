"""Stage ``phase_retriever``: iterative phase retrieval of every pattern of a chain.

Reads the ``pattern`` / ``pattern_valid`` fields of the ``reciprocal_grid`` stage (FFT-centred
after ifftshift: beam centre at [size//2, size//2] before the shift is undone here), runs a recipe
of ER/HIO/RAAR/DM, shrink-wrap and oversampling smoothness (OSS, the default's first HIO stage) from
``n_starts`` random starts per pattern (drawn from the seed
and the frame's trainId and pulseId; with ``positivity = "auto"``, the default, half of them phase a
real, non-negative density and half a complex object, and per frame the data choose), picks the
start with the lowest Bayesian information criterion among those that fit the held-out pixels (or
another rule: ``selection``), averages it
with up to ``n_keep - 1`` starts nearest to it after removing translation, twin and global phase,
does all that ``runs`` times from other random starts (default 2) keeping the run with the lowest BIC,
and writes the reconstruction (amplitude and phase), its support and figures of merit per frame.
Valid pixels that read below zero (a calibrated detector's readout noise) count as zero photons.

With ``fill_centre``, unmeasured pixels near the beam (a detector's central hole) first take the
intensity of a sphere fitted to the frame's measured rings (the ``sphere_sizer`` model): without
its first speckles, a compact particle's low frequencies are free and its image comes out hollow.
The filled pixels are constrained like measured ones but never held out as free pixels: the free
LLK stays a fit to the data alone.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputDataError, StageError
from ..io.grid import radial_profiles, ring_index
from ..phasing.defaults import DEFAULT_RECIPE as _DEFAULT_RECIPE, DEFAULT_RUNS, SELECTIONS, SUPPORT_CAP
from .base import Field, FrameBatch, Param, Stage
from .sizing import SphereSizeFit, sphere_form_factor

#: fill_centre leaves a frame as measured when its sphere fit explains less of the profile than this
#: (``fit_quality`` of :class:`SphereSizeFit`: 1 - chi2(sphere) / chi2(constant)).
FILL_MIN_FIT_QUALITY = 0.5

#: A support mode with more than this fraction of its power in unmeasured pixels is hidden: the data
#: do not determine it (metrics.missing_mode_fractions). On the test objects most patterns with a
#: mode hidden at 0.96-0.99 failed in both codes, while with at most 0.80 hidden ours reconstructed
#: 224 of 240 draws (docs/benchmarks.md, "Where the misses are").
HIDDEN_FRACTION = 0.95

#: The hidden modes counted are those of the unmeasured pixels within this fraction of the array
#: side from the beam (the beam stop, the gaps near it: the low resolution, which no later data
#: supply); unmeasured pixels further out limit the resolution, which the PRTF reports.
HIDDEN_MODES_RADIUS = 1 / 8

#: The hidden modes are measured on one support per batch, over those unmeasured pixels (an
#: eigenproblem of their number cubed: 0.6 s for 1,400, 7.5 s for 3,200); more and the batch is not measured.
HIDDEN_MODES_MAX_PIXELS = 2048


class PhaseRetriever(Stage):
    description = ("Iterative phase retrieval (ER/HIO/RAAR/DM, shrink-wrap, OSS) from many random starts, "
                   "best starts aligned and averaged; PRTF resolution")
    kind = "phase_retriever"
    devices = ("cpu", "cuda")
    params = {
        "size": Param(256, int, "side of the input patterns (must equal the reciprocal_grid size)", "px", min=8),
        "recipe": Param(_DEFAULT_RECIPE, str, "schedule, run left to right: ER, HIO, RAAR, DM, SW, OSS (smoothing "
                        "outside the support, after HIO), GROW(px=...) (the support dilated), GUIDE (every start "
                        "halfway to the selected one, then a new generation; SW must follow); '*' then, "
                        "'**n' repeat, '(A | B)' both from the same iterates and per pattern the one with the "
                        "lower BIC, e.g. '(SW*HIO**50)**10 * RAAR**500 * ER**100'"),
        "n_starts": Param(8, int, "random starts per pattern", min=1, max=1024),
        "runs": Param(DEFAULT_RUNS, int, "independent runs of the recipe per pattern, each from its own random starts (the "
                      "same free pixels); per frame the run whose result has the lowest BIC is kept (cost x runs)",
                      min=1, max=16),
        "n_keep": Param(4, int, "starts aligned and averaged (the selected one and those nearest to it)",
                        min=1, max=1024),
        "selection": Param("bic", str, "start to trust: bic (lowest deviance + ln(n) x parameters; a start that "
                           "misses the free pixels competes only with a smaller support, and only for a "
                           "complex object), consensus (the one most others reproduce within "
                           "max_difference, unless one fits the free pixels significantly better) or llk (lowest "
                           "free LLK)", choices=SELECTIONS),
        "max_difference": Param(0.15, float, "starts differing from the selected one by more (relative norm, "
                                "after alignment) are not averaged", min=0.0, max=2.0),
        "support_threshold": Param(0.15, float, "shrink-wrap threshold relative to the maximum (SW steps that "
                                   "do not set one)", min=0.0, max=1.0),
        "support_threshold_rms": Param(0.25, float, "shrink-wrap threshold relative to the rms in the support",
                                       min=0.0, max=10.0),
        "support_method": Param("both", str, "shrink-wrap rule: max, rms, or both (alternating over starts)",
                                choices=("max", "rms", "both")),
        "support_sigma": Param(None, float, "shrink-wrap smoothing width at the start (default: 1/64 of size, "
                               "4 px at 256)", "px", min=0.0),
        "support_sigma_end": Param(None, float, "shrink-wrap smoothing width after the decay (default: 1/128 "
                                   "of size, 2 px at 256)", "px", min=0.0),
        "support_init": Param([0.08, 0.2], list, "autocorrelation support threshold range (relative to its "
                              "maximum), drawn per start"),
        "support_cap": Param(SUPPORT_CAP, float, "no support holds more than this x the object size bound from "
                             "the autocorrelation (stops runaway supports; 0: no cap)", min=0.0, max=100.0),
        "fill_centre": Param(False, bool, "unmeasured pixels near the beam (up to the first ring that is at least "
                             "half measured) take the intensity of a sphere fitted to the frame's measured rings; "
                             "for sphere-like particles whose first speckles fall in a central hole (needs the "
                             "reciprocal_grid stage's q grid)"),
        "positivity": Param("auto", bool, "real, non-negative density inside the support; 'auto': half the starts "
                            "with it, half as a complex object, and per frame the data choose (the lower BIC of "
                            "the two selected starts)", also=("auto",)),
        "reality": Param(False, bool, "real density inside the support"),
        "free_fraction": Param(0.05, float, "fraction of valid pixels held out for the free LLK", min=0.0, max=0.3),
        "calc_llk": Param(50, int, "compute the LLK every this many iterations (0: at the end only)", min=0),
        "seed": Param(0, int, "random seed (added to the chain seed)"),
    }
    inputs = ("pattern", "pattern_valid")
    outputs = (
        Field("amplitude", "float32", ("size", "size"), "|reconstruction|, centred in the array", "sqrt(photons)"),
        Field("phase", "float32", ("size", "size"), "phase of the reconstruction", "rad"),
        Field("support", "uint8", ("size", "size"), "support of the best start (1 = inside)"),
        Field("llk", "float32", (), "Poisson log-likelihood per degree of freedom (~1 at the noise floor)"),
        Field("llk_free", "float32", (), "Poisson log-likelihood over held-out free pixels"),
        Field("r_factor", "float32", (), "amplitude R-factor over constrained pixels"),
        Field("resolution_px", "float32", (), "half-period resolution where the PRTF falls below 1/e", "px"),
        Field("resolution_nm", "float32", (), "the same in nm (NaN without a reciprocal grid)", "nm"),
        Field("prtf", "float32", ("size",), "PRTF per shell of width 1/size cycles/px (NaN: no data)"),
        Field("starts_averaged", "uint8", (), "starts averaged into the reconstruction: the selected one and those "
              "within max_difference of it (0: not phased; after a GUIDE the starts were pulled towards the "
              "selected one: see starts_agreeing)"),
        Field("starts_agreeing", "uint8", (), "independent starts that reproduce the selected one within "
              "max_difference, itself included, among the n_keep the PRTF is taken from (before a GUIDE "
              "pulled them together; 1: no other start reproduced it; 0: not phased)"),
        Field("positivity", "uint8", (), "1: phased as a real, non-negative density (positivity = true, or chosen "
              "by the data with 'auto'); 0: as a complex object, or not phased"),
        Field("centre_filled", "int32", (), "unmeasured pixels near the beam filled from the sphere fit (fill_centre)",
              "pixels"),
    )

    def setup(self) -> None:
        from ..phasing import get_backend, parse_recipe
        from ..phasing.multistart import check_positivity

        if self.p.n_keep > self.p.n_starts:
            raise StageError(f"n_keep ({self.p.n_keep}) must be <= n_starts ({self.p.n_starts})")
        try:
            check_positivity(self.p.positivity, self.p.n_starts, self.p.reality)
        except InputDataError as exc:
            raise StageError(f"phase_retriever: {exc}") from None
        init = self.p.support_init
        if len(init) != 2 or not all(isinstance(v, (int, float)) for v in init) or not 0 < init[0] <= init[1] < 1:
            raise StageError(f"parameter 'support_init' must be [low, high] with 0 < low <= high < 1, got {init!r}")
        sw_defaults = dict(threshold=self.p.support_threshold, threshold_rms=self.p.support_threshold_rms,
                           method=self.p.support_method,
                           sigma=self.p.support_sigma, sigma_end=self.p.support_sigma_end)
        self.schedule = parse_recipe(self.p.recipe, sw_defaults=sw_defaults)
        self.backend = get_backend(self.context.device, ndim=2)
        self._resolutions: list[np.ndarray] = []
        self._phased = self._reproduced = self._positive = self._unphased = self._not_filled = 0
        self._hidden: tuple[int, float] | None = None  # the most hidden modes a batch's median support showed, its largest fraction
        self._sphere_fit = None
        if self.p.fill_centre:
            self._sphere_fit = SphereSizeFit(self.context)
            self._sphere_fit.setup()

    def process(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        from ..phasing import phase

        patterns = np.asarray(batch["pattern"], np.float32)
        valid = np.asarray(batch["pattern_valid"], bool)
        n, size = len(patterns), self.p.size
        if patterns.shape[1:] != (size, size) or valid.shape != patterns.shape:
            raise StageError(f"phase_retriever: expected pattern and pattern_valid of shape (n, {size}, {size}), got "
                             f"{patterns.shape} and {valid.shape} (set size = the reciprocal_grid size)")
        out = self._empty_outputs(n)
        if n == 0:
            return out
        filled = None  # pixels whose intensity comes from the sphere fit (fill_centre)
        if self._sphere_fit is not None:
            patterns, filled = self._fill_centre(batch, patterns, valid)
            valid = valid | filled
            out["centre_filled"] = filled.sum(axis=(1, 2)).astype(np.int32)
            filled = np.fft.ifftshift(filled, axes=(-2, -1))
        # reciprocal_grid centres the beam at [size//2, size//2]: undo that for FFT-centred phasing.
        patterns, valid = (np.fft.ifftshift(a, axes=(-2, -1)) for a in (patterns, valid))
        # a frame with no photon on its valid pixels (blank, or all masked) has nothing to phase
        usable = (np.where(valid, patterns, 0) > 0).any(axis=(1, 2))
        if usable.any():
            # each frame's random starts come from (seed, trainId, pulseId): the same result whatever
            # the batch size, the other frames of its batch, or the Dask partition it ran in
            keys = np.stack([batch["train_id"], batch["pulse_id"]], axis=1)[usable]
            result = phase(patterns[usable], valid[usable], recipe=self.schedule, n_starts=self.p.n_starts,
                           n_runs=self.p.runs, n_keep=self.p.n_keep, selection=self.p.selection,
                           max_difference=self.p.max_difference, backend=self.backend,
                           seed=self.context.seed + self.p.seed, pattern_keys=keys,
                           support_threshold=tuple(self.p.support_init), support_cap=self.p.support_cap,
                           positivity=self.p.positivity,
                           reality=self.p.reality, free_fraction=self.p.free_fraction, calc_llk=self.p.calc_llk,
                           modelled=None if filled is None else filled[usable])
            recon = result.reconstruction
            out["amplitude"][usable] = np.abs(recon)
            out["phase"][usable] = np.angle(recon)
            out["support"][usable] = result.support
            for name in ("llk", "llk_free", "r_factor", "resolution_px"):
                out[name][usable] = getattr(result, name)
            curves = result.prtf[:, :size]
            out["prtf"][usable, :curves.shape[1]] = curves
            out["resolution_nm"][usable] = out["resolution_px"][usable] * self._real_space_pixel_nm(batch, size)
            out["starts_averaged"][usable] = [len(p.kept) for p in result.patterns]
            out["starts_agreeing"][usable] = result.agreeing
            out["positivity"][usable] = result.positivity
            self._note_hidden_modes(result.support, valid[usable])
        self._resolutions.append(out["resolution_px"])
        self._reproduced += int((out["starts_agreeing"] > 1).sum())
        self._positive += int(out["positivity"].sum())
        self._phased += int(usable.sum())
        self._unphased += int((~usable).sum())
        return out

    def _note_hidden_modes(self, supports: np.ndarray, valid: np.ndarray) -> None:
        """How many modes of the batch's median-size support the unmeasured pixels near the beam hide
        (``valid`` FFT-centred; one measurement per batch: supports of one sample are alike, the cost
        is not small)."""
        from ..phasing.metrics import missing_mode_fractions
        from ..phasing.support import frequency_squared

        i = int(np.argsort(supports.sum(axis=(1, 2)), kind="stable")[len(supports) // 2])
        near_beam = np.sqrt(frequency_squared(valid.shape[1:], dtype=np.float64)) <= HIDDEN_MODES_RADIUS
        considered = valid[i] | ~near_beam  # unmeasured pixels further out: not counted here
        if (~considered).sum() > HIDDEN_MODES_MAX_PIXELS:
            return
        fractions = missing_mode_fractions(supports[i], considered)
        hidden = (int((fractions > HIDDEN_FRACTION).sum()), float(fractions[0]) if len(fractions) else 0.0)
        self._hidden = hidden if self._hidden is None else max(self._hidden, hidden)

    def _fill_centre(self, batch: FrameBatch, patterns: np.ndarray, valid: np.ndarray):
        """Patterns with the central hole filled from each frame's sphere fit, and the pixels filled
        (none where the fit is poor: the frame is left as measured)."""
        grid = batch.meta.get("grid")
        if grid is None:
            raise StageError("phase_retriever: fill_centre needs the q grid of a reciprocal_grid stage before it")
        fit = self._sphere_fit.process(batch)
        ring = ring_index(patterns.shape[1:])
        n_rings = patterns.shape[-1] // 2
        _, measured = radial_profiles(patterns.reshape(len(patterns), -1), valid.reshape(len(valid), -1),
                                      ring.ravel(), n_rings)
        per_ring = np.bincount(ring[ring < n_rings], minlength=n_rings)
        half_measured = measured >= 0.5 * per_ring  # (n, n_rings)
        first_ring = np.where(half_measured.any(axis=1), half_measured.argmax(axis=1), 0)
        hole = ~valid & (ring[None] < first_ring[:, None, None])
        good = fit["fit_quality"] >= FILL_MIN_FIT_QUALITY
        has_photons = (np.where(valid, patterns, 0) > 0).any(axis=(1, 2))  # blanks are not phased anyway
        self._not_filled += int((hole.any(axis=(1, 2)) & ~good & has_photons).sum())
        hole &= good[:, None, None]
        radius_m = fit["radius_nm"].astype(np.float64)[:, None, None] * 1e-9
        model = fit["scale"][:, None, None] * sphere_form_factor(np.asarray(grid.q, np.float64)[None] * radius_m)
        return np.where(hole, model, patterns).astype(np.float32), hole

    def _empty_outputs(self, n: int) -> dict[str, np.ndarray]:
        out = {}
        for f in self.outputs:
            shape = (n,) + f.resolved_shape(self.p)
            integer = np.issubdtype(np.dtype(f.dtype), np.integer)
            out[f.name] = np.zeros(shape, f.dtype) if integer else np.full(shape, np.nan, f.dtype)
        return out

    @staticmethod
    def _real_space_pixel_nm(batch: FrameBatch, size: int) -> float:
        """Real-space pixel of the reconstruction, lambda D / (N p), from the reciprocal grid (NaN if absent)."""
        grid = batch.meta.get("grid")
        try:
            wavelength, distance, pixel = (float(getattr(grid, k)) for k in ("wavelength_m", "distance_m", "pixel_size_m"))
        except (AttributeError, TypeError, ValueError):
            return float("nan")
        return wavelength * distance / (size * pixel) * 1e9

    def finish(self) -> dict:
        res = np.concatenate(self._resolutions) if self._resolutions else np.zeros(0)
        finite = res[np.isfinite(res)]
        return {"recipe": repr(self.schedule), "device": self.backend.name, "patterns_phased": self._phased,
                "patterns_resolved": int(len(finite)), "patterns_reproduced": self._reproduced,
                "patterns_positive": self._positive,
                "median_resolution_px": float(np.median(finite)) if len(finite) else float("nan"),
                # -1 / NaN: not measured (nothing phased, or too many unmeasured pixels)
                "hidden_modes": self._hidden[0] if self._hidden else -1,
                "largest_hidden_fraction": self._hidden[1] if self._hidden else float("nan")}

    def warnings(self) -> list[str]:
        lines = []
        alone = self._phased - self._reproduced
        if self.p.n_keep > 1 and alone:
            lines.append(f"{alone} of {self._phased} phased patterns were reproduced by no other start "
                         f"(starts_agreeing = 1): check them, each image rests on a single start")
        if self._hidden and self._hidden[0]:
            unused = [name for name, used in (("fill_centre", self.p.fill_centre), ("positivity", self.p.positivity))
                      if not used]
            remedy = (f"{' or '.join(unused)} would constrain them in part" if unused
                      else "fill_centre and positivity constrain them only in part")
            lines.append(f"the unmeasured pixels near the beam (beam stop, gaps) hide {self._hidden[0]} modes of a "
                         f"typical support (more than {HIDDEN_FRACTION:.0%} of their power unmeasured, the most "
                         f"{self._hidden[1]:.3f}): the data do not fix them, so the images' low-resolution features "
                         f"(a hollow centre, stripes along a gap) may be wrong; {remedy}")
        if self._unphased:
            lines.append(f"{self._unphased} frames not phased: no photon on a valid pixel (blank or fully masked)")
        if self._not_filled:
            lines.append(f"{self._not_filled} frames with a central hole phased without filling it: their sphere fit "
                         f"explains too little of the profile (fit_quality < {FILL_MIN_FIT_QUALITY})")
        return lines
