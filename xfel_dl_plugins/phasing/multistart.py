"""Many random starts per pattern: run a schedule, select a start (by default the lowest Bayesian
information criterion among those that fit the held-out pixels), align the others on it, average.

:func:`phase` is the engine's public entry point::

    result = phase(patterns, valid, recipe="(SW*HIO**50)**10 * RAAR**500 * ER**100", n_starts=8, n_keep=4)
    result.reconstruction[i], result.llk[i], result.resolution_px[i], result.prtf[i]

With ``positivity="auto"`` half the starts phase a real, non-negative density and half a complex
object, and per pattern the run whose selected start has the lower BIC gives the result.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import scipy.fft as sfft

from ..errors import InputDataError
from .defaults import DEFAULT_RECIPE, SELECTIONS
from .engine import PhasingState
from .metrics import (ResolutionCurve, align_fourier, aligned_real_space, best_intensity_scale, poisson_deviance,
                      poisson_llk, prtf, r_factor, radial_shells)
from .operators import Operator
from .recipe import parse_recipe

#: A start overrules the consensus when its mean free-pixel deviance is lower by more than this many
#: standard errors (paired over the free pixels; 3, not 2: pixels of one island are correlated).
FREE_LLK_SIGNIFICANCE = 3.0

#: The BIC selection screens out starts whose free-pixel deviance is more than this many times the
#: lowest: a support that grew too large fits the constrained pixels by over-fitting them and misses
#: the held-out ones by factors of 3 to 10^4, while starts of one solution differ by tens of percent.
#: Complex objects' starts with fewer support pixels than the screened lead stay in
#: (:meth:`StartFits.lowest_bic`).
FREE_DEVIANCE_SCREEN = 1.5

#: With ``positivity="auto"`` this fraction of the starts is phased as a real, non-negative density,
#: the rest as a complex object, and per pattern the run whose selected start has the lower BIC
#: gives the reconstruction (docs/benchmarks.md, "The data choose positivity").
AUTO_POSITIVITY_STARTS = 0.5


@dataclass
class PatternResult:
    """The reconstruction of one pattern from its best starts."""

    reconstruction: np.ndarray  # complex64, centred in the array
    support: np.ndarray  # bool, same frame as the reconstruction
    llk: float  # Poisson LLK of the reconstruction (constrained pixels, per degree of freedom)
    llk_free: float  # Poisson LLK over the held-out free pixels (NaN without free pixels)
    r_factor: float
    prtf: ResolutionCurve  # over the n_keep best starts
    kept: np.ndarray  # indices of the averaged starts, best first
    agreeing: int  # independent starts (the selected one included) within max_difference of it: len(kept) without a GUIDE
    bic: float = float("nan")  # the selected start's Bayesian information criterion (StartFits.bic)
    positivity: bool = False  # phased as a real, non-negative density

    @property
    def resolution_px(self) -> float:
        return self.prtf.resolution_px


@dataclass
class PhasingResult:
    """Per-pattern results of :func:`phase`, stacked over patterns."""

    patterns: list[PatternResult]
    start_llk: np.ndarray  # (patterns, starts) final LLK of every start
    start_llk_free: np.ndarray
    iterations: int
    recipe: str
    device: str
    start_objects: np.ndarray | None = field(default=None, repr=False)  # (patterns, starts, *spatial) if kept
    start_supports: np.ndarray | None = field(default=None, repr=False)  # the same shape, bool, if kept
    free_pixels: np.ndarray | None = field(default=None, repr=False)  # (patterns, *spatial) held-out pixels, if kept
    guided: list | None = field(default=None, repr=False)  # per GUIDE of the recipe, its GuidedStarts, if kept
    families: tuple | None = None  # positivity="auto": (complex starts, positive starts), in that order on the starts axis

    def __getattr__(self, name):
        if name in ("reconstruction", "support", "llk", "llk_free", "r_factor", "resolution_px", "agreeing",
                    "bic", "positivity"):
            return np.stack([np.asarray(getattr(p, name)) for p in self.patterns])
        if name == "kept":  # as many per pattern as agreed: a list
            return [p.kept for p in self.patterns]
        if name == "prtf":
            return np.stack([p.prtf.value for p in self.patterns])
        raise AttributeError(name)

    @property
    def prtf_frequency(self) -> np.ndarray:
        return self.patterns[0].prtf.frequency


@dataclass
class GuidedStarts:
    """What a GUIDE saw of each pattern's starts before it pulled them together. Those starts ran
    independently, so their agreement (the PRTF) means what it should."""

    ranked_fts: list  # per pattern: the lead's and its nearest finite starts' transforms (complex64) aligned on it
    differences: list  # per pattern: those starts' differences to the lead after alignment (the lead's 0 first)
    objects: np.ndarray | None = None  # (patterns, starts, *spatial): kept with phase(keep_starts=True)
    supports: np.ndarray | None = None
    ranking: np.ndarray | None = None  # (patterns, starts): the LLK the ranking broke ties with


@dataclass
class StartFits:
    """How well each start of one pattern fits the measured pixels: what the selection reads."""

    constrained_deviance: np.ndarray  # (starts,) Poisson deviance summed over the constrained pixels
    free_deviance: np.ndarray | None  # (starts, free pixels), None without free pixels
    support_size: np.ndarray  # (starts,) pixels
    n_constrained: int
    params_per_pixel: int = 2  # real parameters per support pixel: 2 for a complex object, 1 for a real one

    @classmethod
    def measure(cls, fts: np.ndarray, supports: np.ndarray, iobs: np.ndarray, constrained: np.ndarray,
                free: np.ndarray, params_per_pixel: int = 2) -> "StartFits":
        """Deviances of every start's intensity |FT|^2 at its maximum-likelihood scale."""
        iobs = np.asarray(iobs, np.float64)
        icalc = np.abs(fts) ** 2
        scale = np.array([best_intensity_scale(iobs, i, constrained) for i in icalc])[:, None]
        constrained_dev = poisson_deviance(iobs[constrained], scale * icalc[:, constrained]).sum(axis=1)
        free_dev = poisson_deviance(iobs[free], scale * icalc[:, free]) if free.any() else None
        return cls(constrained_dev, free_dev, supports.reshape(len(supports), -1).sum(axis=1),
                   int(constrained.sum()), params_per_pixel)

    @property
    def bic(self) -> np.ndarray:
        """Bayesian information criterion per start: deviance + ln(n measured) x parameters."""
        return self.constrained_deviance + np.log(self.n_constrained) * self.params_per_pixel * self.support_size

    def lowest_bic(self, candidates: np.ndarray) -> int:
        """Among ``candidates``, the start with the lowest BIC that passes the over-fitting screen: its
        free-pixel deviance is within :data:`FREE_DEVIANCE_SCREEN` x the lowest, or, for a complex
        object, its support has fewer pixels than the lowest-BIC start that is within it (over-fitting
        takes more parameters, not fewer; measured on complex test objects, while on sphere hits
        phased with positivity it only lost, docs/benchmarks.md). Without free pixels, the lowest BIC."""
        bic = self.bic[candidates]
        if self.free_deviance is None:
            return int(candidates[np.argmin(bic)])
        free = self.free_deviance[candidates].sum(axis=1)
        admitted = free <= FREE_DEVIANCE_SCREEN * free.min()
        if self.params_per_pixel == 2:
            size = self.support_size[candidates]
            screened_lead = np.argmin(np.where(admitted, bic, np.inf))
            admitted = admitted | (size < size[screened_lead])
        return int(candidates[np.argmin(np.where(admitted, bic, np.inf))])


def _circular_centre(mask: np.ndarray) -> np.ndarray:
    """Centre of mass of a mask on a periodic grid (pixels, per axis)."""
    centre = []
    for axis, n in enumerate(mask.shape):
        profile = mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis))
        angle = np.angle(np.sum(profile * np.exp(2j * np.pi * np.arange(n) / n)))
        centre.append((angle % (2 * np.pi)) * n / (2 * np.pi))
    return np.array(centre)


def _roll_to_centre(obj: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    shift = tuple(int(np.rint(n // 2 - c)) for n, c in zip(support.shape, _circular_centre(support)))
    axes = tuple(range(support.ndim))
    return np.roll(obj, shift, axes), np.roll(support, shift, axes)


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise InputDataError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def pairwise_differences(fts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Relative difference between every two ``candidates`` starts after alignment (translation,
    twin, global phase), from their Fourier transforms ``fts``; NaN for other pairs."""
    n = len(fts)
    dist = np.full((n, n), np.nan)
    dist[candidates, candidates] = 0.0
    for a, b in combinations(candidates, 2):
        dist[a, b] = dist[b, a] = align_fourier(fts[a], fts[b]).error
    return dist


def significantly_better(lead: int, candidates: np.ndarray, free_deviance: np.ndarray,
                         z: float = FREE_LLK_SIGNIFICANCE) -> int:
    """Among ``candidates``, the start with the lowest mean free-pixel deviance (``free_deviance[start]``,
    one value per free pixel) whose deviances are lower than those of ``lead`` by more than ``z``
    standard errors of the paired mean difference; ``lead`` if none is."""
    n = free_deviance.shape[1]
    means = free_deviance.mean(axis=1)
    for k in candidates[np.argsort(means[candidates], kind="stable")]:
        if means[k] >= means[lead]:
            break  # this and all further starts fit the free pixels no better than the lead
        diff = free_deviance[k] - free_deviance[lead]
        if n > 1 and diff.mean() < -z * diff.std(ddof=1) / np.sqrt(n):
            return int(k)
    return int(lead)


def rank_starts(fts: np.ndarray, start_llk: np.ndarray, max_difference: float,
                selection: str = "bic", fits: StartFits | None = None, aligned: dict | None = None) -> np.ndarray:
    """Order of the starts, the one to trust first.

    ``"bic"`` (needs ``fits``): the lowest Bayesian information criterion (constrained deviance +
    ln(n) x parameters: the fit, with a price on support size) among starts that fit the held-out
    free pixels within :data:`FREE_DEVIANCE_SCREEN` of the best, or (complex objects) with a
    smaller support than the lead those give (:meth:`StartFits.lowest_bic`). The screen removes
    supports that over-fit; the criterion then prefers the better fit and, where fits are alike, the
    smaller support. ``"consensus"``: the start that the most other starts reproduce within
    ``max_difference`` leads (ties: lower ``start_llk``), unless, given ``fits.free_deviance``, a
    start with a lower free LLK fits the held-out pixels significantly better
    (:func:`significantly_better`); it costs n_starts^2 / 2 alignments. ``"llk"``: by
    ``start_llk``. After the lead, the rest follow by their difference to it. Starts with a
    non-finite LLK (diverged) always come last. ``aligned``, if given, receives the alignments onto
    the lead that the bic rule computed (start -> :class:`~.metrics.Alignment`), for reuse.
    """
    _check_selection(selection)
    llk = np.where(np.isfinite(start_llk), start_llk, np.inf)
    by_llk = np.argsort(llk, kind="stable")
    candidates = by_llk[np.isfinite(llk[by_llk])]
    if selection == "llk" or len(candidates) < (2 if selection == "bic" else 3):
        return by_llk
    if selection == "bic":
        if fits is None:
            raise ValueError('selection="bic" needs the starts\' fits')
        lead = fits.lowest_bic(candidates)
        rest = candidates[candidates != lead]
        onto_lead = {int(k): align_fourier(fts[lead], fts[k]) for k in rest}
        if aligned is not None:
            aligned.update(onto_lead)
        difference = [onto_lead[int(k)].error for k in rest]
    else:
        dist = pairwise_differences(fts, candidates)
        reproduced = (dist[np.ix_(candidates, candidates)] <= max_difference).sum(axis=1)
        lead = candidates[np.argmax(reproduced)]  # candidates are sorted by LLK: argmax keeps the lowest on ties
        if fits is not None and fits.free_deviance is not None:
            lead = significantly_better(lead, candidates, fits.free_deviance)
        rest = candidates[candidates != lead]
        difference = dist[lead, rest]
    rest = rest[np.argsort(difference, kind="stable")]
    return np.concatenate([[lead], rest, by_llk[len(candidates):]])


def align_on_lead(fts: np.ndarray, order: np.ndarray, n_keep: int, max_difference: float,
                  aligned: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n_keep`` starts of ``order`` aligned on the first, the lead (``aligned``: alignments
    onto it already made, start -> :class:`~.metrics.Alignment`). Returns those starts, their aligned
    Fourier transforms and which of them the average takes: the lead and those within ``max_difference``."""
    top = order[:max(1, min(n_keep, len(order)))]
    f_ref = fts[top[0]]
    alignments = [(aligned or {}).get(int(k)) or align_fourier(f_ref, fts[k]) for k in top[1:]]
    aligned_fts = np.stack([f_ref] + [a.aligned_ft for a in alignments])
    agree = np.array([True] + [a.error <= max_difference for a in alignments])
    return top, aligned_fts, agree


def combine_starts(objects: np.ndarray, supports: np.ndarray, start_llk: np.ndarray, iobs: np.ndarray,
                   constrained: np.ndarray, free: np.ndarray, n_keep: int, max_difference: float = 0.15,
                   selection: str = "bic", params_per_pixel: int = 2) -> PatternResult:
    """Align the first ``n_keep`` starts of :func:`rank_starts` on the first (translation, twin,
    global phase), compute their PRTF, and average those that, after alignment, differ from the
    first by at most ``max_difference`` (relative norm: starts stuck in another solution would blur
    the average); figures of merit are those of the average.

    ``start_llk`` puts diverged starts last, breaks consensus ties and ranks the starts for
    ``selection="llk"``: pass the free LLK where free pixels exist (it penalises over-fitting
    supports, which the LLK over constrained pixels rewards). ``params_per_pixel``: 1 for a real
    object (reality or positivity), 2 for a complex one. The default ``max_difference`` exceeds the
    0.10-0.18 by which starts reaching the same solution differ at 10^6 photons.
    """
    fts, order, aligned, fits = _ranked_starts(objects, supports, start_llk, iobs, constrained, free, max_difference,
                                               selection, params_per_pixel)
    top, fts, agree = align_on_lead(fts, order, n_keep, max_difference, aligned)
    kept = top[agree]
    mean_ft = fts[agree].mean(axis=0)
    valid = constrained | free
    curve = _prtf_of(fts, iobs, valid)
    icalc = np.abs(mean_ft) ** 2
    icalc *= best_intensity_scale(iobs, icalc, constrained)
    support = supports[kept[0]]
    llk = poisson_llk(iobs, icalc, constrained, n_params=int(support.sum()))
    llk_free = poisson_llk(iobs, icalc, free) if free.any() else float("nan")
    recon, support = _roll_to_centre(sfft.ifftn(mean_ft).astype(np.complex64), support)
    return PatternResult(recon, support, llk, llk_free, r_factor(iobs, icalc, constrained), curve, kept, len(kept),
                         float(fits.bic[kept[0]]))


def _ranked_starts(objects, supports, start_llk, iobs, constrained, free, max_difference, selection,
                   params_per_pixel) -> tuple[np.ndarray, np.ndarray, dict, StartFits]:
    """One pattern's starts: their Fourier transforms, :func:`rank_starts`' order, the alignments
    onto the lead that the ranking made (the bic rule; the consensus rule keeps only its pairwise
    errors: holding n^2/2 aligned transforms would cost more than redoing n_keep - 1), and their fits."""
    fts = np.stack([sfft.fftn(o.astype(np.complex128)) for o in objects])
    fits = StartFits.measure(fts, supports, iobs, constrained, free, params_per_pixel)
    aligned = {}
    order = rank_starts(fts, start_llk, max_difference, selection, fits, aligned)
    return fts, order, aligned, fits


def guide_starts(state: PhasingState, mix: float = 0.5) -> None:
    """The guided restart of :class:`~.operators.GUIDE`: per pattern, every start but the lead (lowest
    BIC) becomes ``mix`` x the lead + (1 - mix) x itself aligned on it; diverged starts become the
    lead. The starts as they were go to ``state.guided`` (:class:`GuidedStarts`), and the state
    begins a new generation from the pulled ones."""
    if state.n_starts < 2:
        return
    state.update_llk()
    objects, supports = state.objects(), state.supports()
    ranking = np.where(np.isfinite(state.llk_free), state.llk_free, state.llk)

    def guided(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The lead is the bic rule's: the consensus rule would pay n^2/2 alignments per pattern here
        fts, order, aligned, _ = _ranked_starts(objects[i], supports[i], ranking[i], state.iobs_host[i],
                                                state.constrained_host[i], state.free_host[i], 0.15, "bic",
                                                1 if state.reality else 2)
        lead = objects[i][order[0]]
        ranked = [int(k) for k in order[1:] if int(k) in aligned]  # finite starts, nearest to the lead first
        out = np.repeat(lead[None], state.n_starts, axis=0)
        for k in ranked:
            out[k] += (1 - mix) * (aligned_real_space(aligned[k]) - lead)
        recorded = ranked[:None if state.guided_ranked is None else state.guided_ranked - 1]  # phase(): its n_keep
        ranked_fts = np.stack([fts[order[0]]] + [aligned[k].aligned_ft for k in recorded]).astype(np.complex64)
        return out, ranked_fts, np.array([0.0] + [aligned[k].error for k in recorded])

    pulled = _map_patterns(guided, state.n_patterns)
    kept = (objects, supports, ranking) if state.keep_guided_starts else ()
    state.guided.append(GuidedStarts([ranked_fts for _, ranked_fts, _ in pulled],
                                     [differences for _, _, differences in pulled], *kept))
    state.restart_from(np.stack([out for out, _, _ in pulled]))


def _prtf_of(aligned_fts: np.ndarray, iobs: np.ndarray, valid: np.ndarray) -> ResolutionCurve:
    """PRTF of starts aligned on the first (NaN for a single start)."""
    return prtf(aligned_fts, iobs, valid) if len(aligned_fts) > 1 else _undetermined_prtf(iobs.shape)


def _undetermined_prtf(shape) -> ResolutionCurve:
    """A single start has no PRTF: NaN curve and resolution."""
    _, freq = radial_shells(shape)
    nan = np.full(len(freq), np.nan)
    return ResolutionCurve(freq, nan, np.full(len(freq), 1 / np.e), float("nan"))


def phase(patterns: np.ndarray, valid: np.ndarray | None = None, *, recipe: str | Operator = DEFAULT_RECIPE,
          n_starts: int = 8, n_keep: int = 4, max_difference: float = 0.15, selection: str = "bic",
          device: str = "auto", keep_starts: bool = False, positivity: bool | str = False,
          **state_options) -> PhasingResult:
    """Phase a stack of FFT-centred diffraction patterns (photons), ``n_starts`` random starts each.

    ``patterns`` (n, ny, nx) or (n, nz, ny, nx); ``valid`` True where measured (masked pixels,
    gaps and the beam stop are left free by the modulus constraint). ``recipe`` is a recipe string
    (see :mod:`.recipe`) or an operator. Per pattern the first ``n_keep`` starts of
    :func:`rank_starts` (``selection``: the lowest BIC among starts that fit the free pixels, or the
    most reproduced start, or the lowest free LLK, or LLK without free pixels) that agree with the
    first within ``max_difference`` are averaged.
    With a GUIDE in the recipe, the PRTF, its resolution and ``agreeing`` are those of the first
    GUIDE's lead and its ``n_keep`` - 1 nearest starts, which ran independently; the reconstruction
    is the last generation's. ``keep_starts``: the result also holds every start's object and support, the free
    pixels and, per GUIDE of the recipe, the starts it guided (``guided``, :class:`GuidedStarts`).
    ``positivity``: a real, non-negative density inside the support; ``"auto"``: the data decide per
    pattern (:data:`AUTO_POSITIVITY_STARTS`, :func:`_choose_family`).
    Other keywords go to :class:`~.engine.PhasingState`
    (free_fraction, modelled, reality, calc_llk, support_threshold, support_sigma,
    support_jitter, support_cap, seed, pattern_keys, initial_support, initial_object, ndim, backend).
    """
    schedule = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    if n_keep < 1:
        raise InputDataError(f"n_keep must be >= 1, got {n_keep}")
    _check_selection(selection)
    check_positivity(positivity, n_starts, bool(state_options.get("reality")))
    state_options.setdefault("backend", device)
    run = dict(schedule=schedule, n_keep=n_keep, max_difference=max_difference, selection=selection,
               keep_starts=keep_starts)
    if positivity != "auto":
        return _phase_family(patterns, valid, n_starts=n_starts, positivity=bool(positivity), **run, **state_options)
    n_complex, n_positive = auto_family_sizes(n_starts)
    families = [_phase_family(patterns, valid, n_starts=n, positivity=pos, **run, **state_options)
                for n, pos in ((n_complex, False), (n_positive, True))]
    return _choose_family(*families)


def check_positivity(positivity, n_starts: int, reality: bool) -> None:
    """Raise :class:`InputDataError` unless ``positivity`` is True, False or ``"auto"`` with at least
    two starts and no reality constraint (``"auto"`` chooses between complex and positive objects)."""
    if positivity not in (False, True, "auto"):
        raise InputDataError(f"positivity must be true, false or 'auto', got {positivity!r}")
    if positivity == "auto" and reality:
        raise InputDataError("positivity = 'auto' chooses between a complex and a real, non-negative object: "
                             "it cannot be combined with reality")
    if positivity == "auto":
        auto_family_sizes(n_starts)


def auto_family_sizes(n_starts: int) -> tuple[int, int]:
    """With ``positivity="auto"``: how many of ``n_starts`` phase a complex object, how many a positive one."""
    n_positive = int(round(AUTO_POSITIVITY_STARTS * n_starts))
    if n_positive < 1 or n_starts - n_positive < 1:
        raise InputDataError(f"positivity = 'auto' needs n_starts >= 2 (a complex and a positive run), got {n_starts}")
    return n_starts - n_positive, n_positive


def _criterion(bic: float) -> float:
    """A BIC to compare: a run without a finite selected start (NaN) loses to any that has one."""
    return bic if np.isfinite(bic) else np.inf


def _phase_family(patterns, valid, *, schedule: Operator, n_starts: int, n_keep: int, max_difference: float,
                  selection: str, keep_starts: bool, **state_options) -> PhasingResult:
    """:func:`phase` with one object constraint for every start."""
    state = PhasingState(patterns, valid, n_starts=n_starts, **state_options)
    state.keep_guided_starts, state.guided_ranked = keep_starts, n_keep
    schedule.apply(state)
    state.update_llk()
    objects, supports = state.objects(), state.supports()
    ranking = np.where(np.isfinite(state.llk_free), state.llk_free, state.llk)
    results = _map_patterns(lambda i: combine_starts(objects[i], supports[i], ranking[i], state.iobs_host[i],
                                                     state.constrained_host[i], state.free_host[i], n_keep,
                                                     max_difference, selection, 1 if state.reality else 2),
                           state.n_patterns)
    if state.guided:
        # A PRTF, and agreement, measure how independent reconstructions agree: after a GUIDE the starts
        # share half of the lead, so both are taken from the starts the first GUIDE saw, before it pulled them together
        first = state.guided[0]
        for i, result in enumerate(results):
            result.prtf = _prtf_of(first.ranked_fts[i], state.iobs_host[i], state.valid_host[i])  # n_keep starts
            result.agreeing = int((first.differences[i] <= max_difference).sum())
    for result in results:
        result.positivity = state.positivity
    return PhasingResult(results, state.llk.copy(), state.llk_free.copy(), state.iteration, repr(schedule),
                         state.backend.name, objects if keep_starts else None,
                         supports if keep_starts else None, state.free_host if keep_starts else None,
                         state.guided if keep_starts else None)


def _choose_family(complex_run: PhasingResult, positive_run: PhasingResult) -> PhasingResult:
    """Per pattern, the reconstruction of the run whose selected start has the lower BIC: the
    positive one fits the constrained pixels (the same in both runs: one seed draws them) with half
    the parameters per support pixel, so it leads where a real, non-negative density explains the
    data about as well, and a complex object's data reject it by far. Starts of both runs follow
    one another (complex first): ``kept`` and the kept starts index them so."""
    offset = complex_run.start_llk.shape[1]
    patterns = []
    for c, p in zip(complex_run.patterns, positive_run.patterns):
        if _criterion(p.bic) < _criterion(c.bic):  # ties, and neither run finite: the complex one
            p.kept = p.kept + offset
            patterns.append(p)
        else:
            patterns.append(c)

    def joined(a, b):
        return None if a is None else np.concatenate([a, b], axis=1)

    guided = None
    if complex_run.guided is not None:
        guided = [GuidedStarts([(gp if r.positivity else gc).ranked_fts[i] for i, r in enumerate(patterns)],
                               [(gp if r.positivity else gc).differences[i] for i, r in enumerate(patterns)],
                               joined(gc.objects, gp.objects), joined(gc.supports, gp.supports),
                               joined(gc.ranking, gp.ranking))
                  for gc, gp in zip(complex_run.guided, positive_run.guided)]
    return PhasingResult(patterns, joined(complex_run.start_llk, positive_run.start_llk),
                         joined(complex_run.start_llk_free, positive_run.start_llk_free), complex_run.iterations,
                         complex_run.recipe, complex_run.device,
                         joined(complex_run.start_objects, positive_run.start_objects),
                         joined(complex_run.start_supports, positive_run.start_supports), complex_run.free_pixels, guided,
                         (offset, positive_run.start_llk.shape[1]))


def _map_patterns(func, n_patterns: int) -> list:
    """``[func(i) for i in range(n_patterns)]`` on all cores: one thread per pattern at a time, BLAS
    single-threaded meanwhile (its threads would fight over the cores and the small products in
    the alignment gain nothing from them). After a GPU run this host work is most of the time."""
    workers = min(n_patterns, len(os.sched_getaffinity(0)))
    if workers <= 1:
        return [func(i) for i in range(n_patterns)]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(func, range(n_patterns)))
