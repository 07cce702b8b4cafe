"""Many random starts per pattern: run a schedule, select a start (by default the lowest Bayesian
information criterion among those that fit the held-out pixels), align the others on it, average.

:func:`phase` is the engine's public entry point::

    result = phase(patterns, valid, recipe="(SW*HIO**50)**10 * RAAR**500 * ER**100", n_starts=8, n_keep=4)
    result.reconstruction[i], result.llk[i], result.resolution_px[i], result.prtf[i]

With ``positivity="auto"`` half the starts phase a real, non-negative density and half a complex
object, and per pattern the run whose selected start has the lower BIC gives the result; at the
recipe's first GUIDE a run that leads decisively takes the other run's starts too for its second
generation (``positivity_choice="guide"``, the default; ``"end"``: each run keeps its own starts).
With ``n_runs`` > 1 the whole recipe runs again from other random starts, and per pattern the run whose
result has the lowest BIC gives it.
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
                      poisson_llk, prtf, r_factor, radial_shells, unmeasured_excess)
from .operators import GUIDE, Operator, Sequence
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

#: Before that, starts many times brighter in the unmeasured pixels away from the beam (detector gaps)
#: than the lowest of them are screened out (:func:`~.metrics.unmeasured_excess`): a gap through the
#: beam leaves Fourier components free, and a wrong solution can fit the measured pixels better by
#: putting stripes into them (docs/benchmarks.md, "Quality with a detector gap"). Part of the BIC selection
#: (``selection="bic"``, the default); None: no screen.
UNMEASURED_EXCESS_SCREEN = 3.0

#: With ``positivity="auto"`` this fraction of the starts is phased as a real, non-negative density,
#: the rest as a complex object, and per pattern the run whose selected start has the lower BIC
#: gives the reconstruction (docs/benchmarks.md, "The data choose positivity").
AUTO_POSITIVITY_STARTS = 0.5

#: How ``positivity="auto"`` runs the second generation: both runs with their own starts to the end
#: ("end"), or, where a run leads decisively at the recipe's first GUIDE, that run's kind with every
#: start while the other run's go on too ("guide"); either way the end chooses.
POSITIVITY_CHOICES = ("end", "guide")

#: With ``positivity_choice="guide"`` a run leads decisively at the GUIDE where its lead's BIC is this
#: many times lower than the other's: a first generation's smaller margins do not tell which run the
#: second generation favours (docs/benchmarks.md, "The data choose positivity").
AUTO_DECISIVE_BIC_RATIO = 2.0


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
    families: tuple | None = None  # positivity="auto": (complex starts, positive starts), in that order on the starts
    # axis (and on the GUIDE records'); with positivity_choice="guide" the most of each kind any pattern's second
    # generation ran (a decided pattern's chosen kind runs every start), the others padded (NaN LLK), while the first
    # GUIDE's record (guided[0]) keeps the first generation's auto_family_sizes(n_starts)

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

    def subset(self, rows: np.ndarray) -> "PhasingResult":
        """The results of the patterns ``rows`` only."""
        def take(array):
            return None if array is None else array[rows]

        return PhasingResult([self.patterns[i] for i in rows], self.start_llk[rows], self.start_llk_free[rows],
                             self.iterations, self.recipe, self.device, take(self.start_objects),
                             take(self.start_supports), take(self.free_pixels),
                             None if self.guided is None else [g.subset(rows) for g in self.guided], self.families)


@dataclass
class GuidedStarts:
    """What a GUIDE saw of each pattern's starts before it pulled them together. Those starts ran
    independently, so their agreement (the PRTF) means what it should."""

    ranked_fts: list  # per pattern: the lead's and its nearest finite starts' transforms (complex64) aligned on it
    differences: list  # per pattern: those starts' differences to the lead after alignment (the lead's 0 first)
    objects: np.ndarray | None = None  # (patterns, starts, *spatial): kept with phase(keep_starts=True)
    supports: np.ndarray | None = None
    ranking: np.ndarray | None = None  # (patterns, starts): the LLK the ranking broke ties with

    @classmethod
    def of(cls, records: list, kept: tuple = ()) -> "GuidedStarts":
        """From per-pattern (ranked_fts, differences) and, if kept, (objects, supports, ranking)."""
        return cls([fts for fts, _ in records], [differences for _, differences in records], *kept)

    def subset(self, rows: np.ndarray) -> "GuidedStarts":
        """The record of the patterns ``rows`` only."""
        kept = [None if a is None else a[rows] for a in (self.objects, self.supports, self.ranking)]
        return GuidedStarts([self.ranked_fts[i] for i in rows], [self.differences[i] for i in rows], *kept)


@dataclass
class StartFits:
    """How well each start of one pattern fits the measured pixels: what the selection reads."""

    constrained_deviance: np.ndarray  # (starts,) Poisson deviance summed over the constrained pixels
    free_deviance: np.ndarray | None  # (starts, free pixels), None without free pixels
    support_size: np.ndarray  # (starts,) pixels
    n_constrained: int
    params_per_pixel: int = 2  # real parameters per support pixel: 2 for a complex object, 1 for a real one
    unmeasured_excess: np.ndarray | None = None  # (starts,) metrics.unmeasured_excess; None: no such pixels

    @classmethod
    def measure(cls, fts: np.ndarray, supports: np.ndarray, iobs: np.ndarray, constrained: np.ndarray,
                free: np.ndarray, params_per_pixel: int = 2) -> "StartFits":
        """Deviances of every start's intensity |FT|^2 at its maximum-likelihood scale."""
        iobs = np.asarray(iobs, np.float64)
        icalc = np.abs(fts) ** 2
        scale = np.array([best_intensity_scale(iobs, i, constrained) for i in icalc])[:, None]
        constrained_dev = poisson_deviance(iobs[constrained], scale * icalc[:, constrained]).sum(axis=1)
        free_dev = poisson_deviance(iobs[free], scale * icalc[:, free]) if free.any() else None
        excess = unmeasured_excess(scale.reshape((-1,) + (1,) * iobs.ndim) * icalc, iobs, constrained | free)
        return cls(constrained_dev, free_dev, supports.reshape(len(supports), -1).sum(axis=1),
                   int(constrained.sum()), params_per_pixel, excess)

    @property
    def bic(self) -> np.ndarray:
        """Bayesian information criterion per start: deviance + ln(n measured) x parameters."""
        return self.constrained_deviance + np.log(self.n_constrained) * self.params_per_pixel * self.support_size

    def lowest_bic(self, candidates: np.ndarray) -> int:
        """Among ``candidates``, the start with the lowest BIC that passes the over-fitting screen: its
        free-pixel deviance is within :data:`FREE_DEVIANCE_SCREEN` x the lowest, or, for a complex
        object, its support has fewer pixels than the lowest-BIC start that is within it (over-fitting
        takes more parameters, not fewer; measured on complex test objects, while on sphere hits
        phased with positivity it only lost, docs/benchmarks.md). Without free pixels, the lowest BIC.
        First, where the pattern has unmeasured pixels away from the beam, candidates more than
        :data:`UNMEASURED_EXCESS_SCREEN` x brighter there than the lowest are left out."""
        if self.unmeasured_excess is not None and UNMEASURED_EXCESS_SCREEN is not None and len(candidates) > 1:
            excess = self.unmeasured_excess[candidates]
            if np.isfinite(excess).any():  # a start without a finite figure is not screened by it
                candidates = candidates[~(excess > UNMEASURED_EXCESS_SCREEN * np.nanmin(excess))]
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
    by_llk, candidates = _by_llk(start_llk)
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


def _by_llk(start_llk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every start by ``start_llk``, non-finite ones last, and the finite ones in that order."""
    llk = np.where(np.isfinite(start_llk), start_llk, np.inf)
    by_llk = np.argsort(llk, kind="stable")
    return by_llk, by_llk[np.isfinite(llk[by_llk])]


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
                   selection: str = "bic", params_per_pixel: int = 2, positivity: bool = False) -> PatternResult:
    """Align the first ``n_keep`` starts of :func:`rank_starts` on the first (translation, twin,
    global phase), compute their PRTF, and average those that, after alignment, differ from the
    first by at most ``max_difference`` (relative norm: starts stuck in another solution would blur
    the average); figures of merit are those of the average.

    ``start_llk`` puts diverged starts last, breaks consensus ties and ranks the starts for
    ``selection="llk"``: pass the free LLK where free pixels exist (it penalises over-fitting
    supports, which the LLK over constrained pixels rewards). ``params_per_pixel``: 1 for a real
    object (reality or positivity: the average is then real, with ``positivity`` non-negative too), 2
    for a complex one. The default ``max_difference`` exceeds the
    0.10-0.18 by which starts reaching the same solution differ at 10^6 photons.
    """
    fts, order, aligned, fits = _ranked_starts(objects, supports, start_llk, iobs, constrained, free, max_difference,
                                               selection, params_per_pixel)
    top, fts, agree = align_on_lead(fts, order, n_keep, max_difference, aligned)
    kept = top[agree]
    mean_ft = fts[agree].mean(axis=0)
    average = sfft.ifftn(mean_ft)
    if params_per_pixel == 1:
        # Real (non-negative) starts aligned to a fraction of a pixel average to an object that is so only
        # to about 1 % (docs/benchmarks.md): the result is made what the constraint promised
        average = np.maximum(average.real, 0) if positivity else average.real
        mean_ft = sfft.fftn(average)
    valid = constrained | free
    curve = _prtf_of(fts, iobs, valid)
    icalc = np.abs(mean_ft) ** 2
    icalc *= best_intensity_scale(iobs, icalc, constrained)
    support = supports[kept[0]]
    llk = poisson_llk(iobs, icalc, constrained, n_params=int(support.sum()))
    llk_free = poisson_llk(iobs, icalc, free) if free.any() else float("nan")
    recon, support = _roll_to_centre(average.astype(np.complex64), support)
    return PatternResult(recon, support, llk, llk_free, r_factor(iobs, icalc, constrained), curve, kept, len(kept),
                         float(fits.bic[kept[0]]))


def _ranked_starts(objects, supports, start_llk, iobs, constrained, free, max_difference, selection,
                   params_per_pixel) -> tuple[np.ndarray, np.ndarray, dict, StartFits]:
    """One pattern's starts: their Fourier transforms, :func:`rank_starts`' order, the alignments
    onto the lead that the ranking made (the bic rule; the consensus rule keeps only its pairwise
    errors: holding n^2/2 aligned transforms would cost more than redoing n_keep - 1), and their fits."""
    fts, fits = _start_fits(objects, supports, iobs, constrained, free, params_per_pixel)
    aligned = {}
    order = rank_starts(fts, start_llk, max_difference, selection, fits, aligned)
    return fts, order, aligned, fits


def _start_fits(objects, supports, iobs, constrained, free, params_per_pixel) -> tuple[np.ndarray, StartFits]:
    """One pattern's starts: their Fourier transforms and :class:`StartFits`."""
    fts = np.stack([sfft.fftn(o.astype(np.complex128)) for o in objects])
    return fts, StartFits.measure(fts, supports, iobs, constrained, free, params_per_pixel)


def guide_starts(state: PhasingState, mix: float = 0.5) -> None:
    """The guided restart of :class:`~.operators.GUIDE`: per pattern, every start but the lead (lowest
    BIC) becomes ``mix`` x the lead + (1 - mix) x itself aligned on it; diverged starts become the
    lead. The starts as they were go to ``state.guided`` (:class:`GuidedStarts`), and the state
    begins a new generation from the pulled ones."""
    if state.n_starts < 2:
        return
    objects, supports, ranking = _starts_of(state)

    def guided(i: int) -> tuple[np.ndarray, tuple]:
        lead = _lead_of(state, objects, supports, ranking, i)
        return _pulled_to(lead, lead.aligned, state.n_starts, mix), lead.record(state.guided_ranked)

    pulled = _map_patterns(guided, state.n_patterns)
    state.guided.append(GuidedStarts.of([record for _, record in pulled],
                                        (objects, supports, ranking) if state.keep_guided_starts else ()))
    state.restart_from(np.stack([out for out, _ in pulled]))


def choose_branches(state: PhasingState, branches: list) -> None:
    """:class:`~.operators.Choice`: every branch runs from the same iterates; per pattern, the
    branch whose lead start (the bic rule, as a GUIDE ranks) has the lowest BIC gives all its
    starts (ties: the first branch)."""
    start, ends, bics = state.snapshot(), [], []
    for k, branch in enumerate(branches):
        if k:
            state.restore(start)
        branch.apply(state)
        objects, supports, ranking = _starts_of(state)  # the LLKs of these iterates, then kept with them
        ends.append(state.snapshot(copy=k < len(branches) - 1))  # the last branch's state is not run on
        bics.append(_map_patterns(lambda i: _criterion(_lead_bic(state, objects[i], supports[i], ranking[i], i)),
                                  state.n_patterns))
    state.restore_per_pattern(ends, np.argmin(np.array(bics), axis=0))


def _lead_bic(state: PhasingState, objects, supports, ranking, i: int) -> float:
    """The BIC of the start pattern ``i``'s selection leads with (:func:`rank_starts`' bic rule, which
    needs no alignment of the others to pick it); NaN if no start is finite."""
    _, candidates = _by_llk(ranking)
    if not len(candidates):
        return float("nan")
    _, fits = _start_fits(objects, supports, state.iobs_host[i], state.constrained_host[i], state.free_host[i],
                          1 if state.reality else 2)
    return float(fits.bic[fits.lowest_bic(candidates)])


@dataclass
class _Lead:
    """One pattern's starts in one state as a GUIDE ranks them: the lead is ``order[0]``."""

    objects: np.ndarray
    fts: np.ndarray
    order: np.ndarray
    aligned: dict  # start -> its Alignment onto the lead (finite starts but the lead)
    fits: StartFits

    @property
    def bic(self) -> float:
        return float(self.fits.bic[self.order[0]])

    def record(self, n_ranked: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The lead's and its ``n_ranked`` - 1 nearest finite starts' transforms aligned on it, and their
        differences to it (what a PRTF of independent starts reads, :class:`GuidedStarts`)."""
        ranked = [int(k) for k in self.order[1:] if int(k) in self.aligned]  # nearest to the lead first
        ranked = ranked[:None if n_ranked is None else n_ranked - 1]
        fts = np.stack([self.fts[self.order[0]]] + [self.aligned[k].aligned_ft for k in ranked]).astype(np.complex64)
        return fts, np.array([0.0] + [self.aligned[k].error for k in ranked])


def _starts_of(state: PhasingState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every start's object and support, and the LLK a GUIDE ranks by (free where measured)."""
    state.update_llk()
    return state.objects(), state.supports(), np.where(np.isfinite(state.llk_free), state.llk_free, state.llk)


def _lead_of(state: PhasingState, objects, supports, ranking, i: int) -> _Lead:
    """Pattern ``i``'s starts ranked by the bic rule (the consensus rule would pay n^2/2 alignments here)."""
    fts, order, aligned, fits = _ranked_starts(objects[i], supports[i], ranking[i], state.iobs_host[i],
                                               state.constrained_host[i], state.free_host[i], 0.15, "bic",
                                               1 if state.reality else 2)
    return _Lead(objects[i], fts, order, aligned, fits)


def _pulled_to(lead: _Lead, aligned: dict, n_starts: int, mix: float) -> np.ndarray:
    """``n_starts`` starts: each start of ``aligned`` (start -> its Alignment onto the lead) as
    ``mix`` x the lead + (1 - mix) x itself aligned; the others (the lead, diverged starts) the lead."""
    centre = lead.objects[lead.order[0]]
    out = np.repeat(centre[None], n_starts, axis=0)
    for k, alignment in aligned.items():
        out[k] += (1 - mix) * (aligned_real_space(alignment) - centre)
    return out


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
          positivity_choice: str = "guide", n_runs: int = 1, **state_options) -> PhasingResult:
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
    pattern (:data:`AUTO_POSITIVITY_STARTS`) by the runs' BIC at the end (:func:`_choose_family`);
    ``positivity_choice="guide"`` (the default; :func:`_phase_auto_at_guide`) gives a run that leads
    decisively at the recipe's first GUIDE the other run's starts too for the second generation,
    ``"end"`` keeps each run's own (as does a recipe without a GUIDE).
    ``n_runs``: the whole recipe runs this many times, each run from its own random starts and thresholds
    (the same free pixels), and per pattern the run whose result has the lowest BIC gives it
    (:func:`_choose_run`).
    Other keywords go to :class:`~.engine.PhasingState`
    (free_fraction, modelled, reality, calc_llk, support_threshold, support_sigma,
    support_jitter, support_cap, seed, pattern_keys, initial_support, initial_object, ndim, backend, run).
    """
    schedule = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    if n_keep < 1:
        raise InputDataError(f"n_keep must be >= 1, got {n_keep}")
    _check_selection(selection)
    check_positivity(positivity, n_starts, bool(state_options.get("reality")))
    if positivity_choice not in POSITIVITY_CHOICES:
        raise InputDataError(f"positivity_choice must be one of {POSITIVITY_CHOICES}, got {positivity_choice!r}")
    if n_runs < 1 or (n_runs > 1 and "run" in state_options):
        raise InputDataError(f"n_runs must be >= 1 (and, above 1, without a run: it numbers them), got {n_runs}")
    state_options.setdefault("backend", device)
    options = dict(schedule=schedule, n_keep=n_keep, max_difference=max_difference, selection=selection,
                   keep_starts=keep_starts, n_starts=n_starts, positivity=positivity, positivity_choice=positivity_choice)
    if n_runs == 1:
        return _phase_run(patterns, valid, **options, **state_options)
    return _choose_run([_phase_run(patterns, valid, **options, run=k, **state_options) for k in range(n_runs)])


def _phase_run(patterns, valid, *, schedule: Operator, n_starts: int, n_keep: int, max_difference: float,
               selection: str, keep_starts: bool, positivity, positivity_choice: str, **state_options) -> PhasingResult:
    """One run of :func:`phase`: every start of every pattern through the schedule, then the selection."""
    run = dict(schedule=schedule, n_keep=n_keep, max_difference=max_difference, selection=selection,
               keep_starts=keep_starts)
    if positivity != "auto":
        return _phase_family(patterns, valid, n_starts=n_starts, positivity=bool(positivity), **run, **state_options)
    if positivity_choice == "guide" and split_at_first_guide(schedule)[1] is not None:
        return _phase_auto_at_guide(patterns, valid, n_starts=n_starts, **run, **state_options)
    # A complex and a positive run to the end: per pattern the lower BIC of their selected starts
    return _choose_family(*(_phase_family(patterns, valid, n_starts=n, positivity=pos, **run, **state_options)
                            for n, pos in zip(auto_family_sizes(n_starts), (False, True))))


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
    state = _new_state(patterns, valid, n_starts, n_keep, keep_starts, **state_options)
    schedule.apply(state)
    return _results_of(state, repr(schedule), n_keep, max_difference, selection, keep_starts)


def _new_state(patterns, valid, n_starts: int, n_keep: int, keep_starts: bool, **state_options) -> PhasingState:
    state = PhasingState(patterns, valid, n_starts=n_starts, **state_options)
    state.keep_guided_starts, state.guided_ranked = keep_starts, n_keep
    return state


def _results_of(state: PhasingState, recipe: str, n_keep: int, max_difference: float, selection: str,
                keep_starts: bool) -> PhasingResult:
    """Select, align and average every pattern's starts of a state the schedule has run on."""
    objects, supports, ranking = _starts_of(state)
    results = _map_patterns(lambda i: combine_starts(objects[i], supports[i], ranking[i], state.iobs_host[i],
                                                     state.constrained_host[i], state.free_host[i], n_keep,
                                                     max_difference, selection, 1 if state.reality else 2,
                                                     state.positivity),
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
    return PhasingResult(results, state.llk.copy(), state.llk_free.copy(), state.iteration, recipe,
                         state.backend.name, objects if keep_starts else None,
                         supports if keep_starts else None, state.free_host if keep_starts else None,
                         state.guided if keep_starts else None)


def split_at_first_guide(schedule: Operator) -> tuple[Operator | None, Operator | None, Operator | None]:
    """``(before, GUIDE, after)`` where the schedule is a sequence with a GUIDE among its own steps
    (not inside a repeat); ``(None, None, None)`` otherwise."""
    ops = schedule.ops if isinstance(schedule, Sequence) else [schedule]
    for k, op in enumerate(ops):
        if isinstance(op, GUIDE):
            return Sequence(ops[:k]), op, Sequence(ops[k + 1:])
    return None, None, None


def _phase_auto_at_guide(patterns, valid, *, schedule: Operator, n_starts: int, n_keep: int, max_difference: float,
                         selection: str, keep_starts: bool, **state_options) -> PhasingResult:
    """``positivity="auto"``, ``positivity_choice="guide"`` (the default): a complex and a positive run of the
    recipe's first generation; at its first GUIDE (:func:`split_at_first_guide`) a pattern whose runs'
    leads differ in BIC by :data:`AUTO_DECISIVE_BIC_RATIO` or more is decided: the starts of both runs
    are pulled halfway to the better lead and the second generation runs all ``n_starts`` of them in
    its kind, while the other run's starts go on in theirs, pulled to their own lead. Undecided
    patterns go on as two runs. At the end the lower selected BIC chooses, as with
    ``positivity_choice="end"`` (docs/benchmarks.md, "The data choose positivity")."""
    first_generation, guide, second_generation = split_at_first_guide(schedule)
    sizes = auto_family_sizes(n_starts)
    first = [_new_state(patterns, valid, n, n_keep, keep_starts, positivity=pos, **state_options)
             for n, pos in zip(sizes, (False, True))]
    for state in first:
        first_generation.apply(state)
    decision, own, across, records, kept = _guide_families(*first, guide.mix, n_keep, keep_starts)
    iobs, measured, iterations = first[0].iobs_host, first[0].valid_host, first[0].iteration
    del first  # their iterates: the second generation's states take their place
    keys = state_options.pop("pattern_keys", None)
    keys = [(i,) for i in range(len(iobs))] if keys is None else list(keys)
    modelled = state_options.pop("modelled", None)
    for name in ("initial_object", "initial_support"):
        state_options.pop(name, None)  # the first generation's: the second starts from the pulled starts

    def second(rows: np.ndarray, positive: bool, initial: np.ndarray) -> PhasingResult:
        """The second generation of patterns ``rows`` from the pulled starts ``initial``, phased ``positive``."""
        # The same seed and keys: the same free pixels as the first generation's
        state = _new_state(iobs[rows], measured[rows], initial.shape[1], n_keep, keep_starts, positivity=positive,
                           pattern_keys=[keys[i] for i in rows],
                           modelled=np.asarray(modelled)[rows] if np.shape(modelled) == iobs.shape else modelled,
                           initial_object=initial, initial_support=np.ones(iobs[rows].shape, bool), **state_options)
        state.iteration = state.generation_start = iterations  # a new generation, as restart_from begins one
        state.guided.append(records[positive].subset(rows))  # what the PRTF reads (_results_of)
        second_generation.apply(state)
        return _results_of(state, repr(schedule), n_keep, max_difference, selection, keep_starts)

    parts = []
    for kind in (COMPLEX, POSITIVE, UNDECIDED):
        rows = np.flatnonzero(decision == kind)
        if not len(rows):
            continue
        starts = [own[rows, :sizes[0]], own[rows, sizes[0]:]]  # complex, positive: each pulled to its own lead
        if kind != UNDECIDED:  # the chosen kind also takes the other run's starts, pulled to its lead (complex first)
            other = np.stack([across[i] for i in rows])
            starts[kind] = np.concatenate([starts[kind], other] if kind == COMPLEX else [other, starts[kind]], axis=1)
        parts.append((rows, _choose_family(second(rows, False, starts[0]), second(rows, True, starts[1]))))
    result = _merge_patterns(parts)
    if keep_starts:  # the first GUIDE's record: the result's run's lead and nearest starts, and every start
        result.guided[0] = GuidedStarts.of([(records[r.positivity].ranked_fts[i], records[r.positivity].differences[i])
                                            for i, r in enumerate(result.patterns)], kept)
    return result


#: Decisions of :func:`_guide_families` per pattern.
COMPLEX, POSITIVE, UNDECIDED = 0, 1, -1


def _guide_families(complex_run: PhasingState, positive_run: PhasingState, mix: float, n_keep: int,
                    keep_starts: bool) -> tuple[np.ndarray, np.ndarray, dict, tuple, tuple]:
    """The GUIDE of ``positivity="auto"``, ``positivity_choice="guide"``. Per pattern the decision
    (:data:`COMPLEX`, :data:`POSITIVE`; :data:`UNDECIDED` where neither run's lead has a BIC
    :data:`AUTO_DECISIVE_BIC_RATIO` times lower than the other's) and the starts of both runs
    (complex first), each ``mix`` x its own run's lead + (1 - mix) x itself aligned on it; for a
    decided pattern i, ``across[i]`` holds the other run's starts pulled to the chosen lead instead.
    Also each run's record (:class:`GuidedStarts`: its lead and nearest starts) and, if kept, the
    starts of both runs as they were (objects, supports, ranking)."""
    runs = (complex_run, positive_run)
    seen = [_starts_of(run) for run in runs]

    def guided(i: int) -> tuple[int, np.ndarray, np.ndarray | None, list]:
        leads = [_lead_of(run, *starts, i) for run, starts in zip(runs, seen)]
        bic = [_criterion(lead.bic) for lead in leads]
        better = int(bic[1] < bic[0])  # ties: the complex run
        own = np.concatenate([_pulled_to(lead, lead.aligned, run.n_starts, mix) for run, lead in zip(runs, leads)])
        records = [lead.record(n_keep) for lead in leads]
        if bic[1 - better] < AUTO_DECISIVE_BIC_RATIO * bic[better]:
            return UNDECIDED, own, None, records
        target, other = leads[better], leads[1 - better]
        ranking = seen[1 - better][2]
        aligned = {int(k): align_fourier(target.fts[target.order[0]], other.fts[k])
                   for k in np.flatnonzero(np.isfinite(ranking[i]))}
        return better, own, _pulled_to(target, aligned, runs[1 - better].n_starts, mix), records

    per_pattern = _map_patterns(guided, complex_run.n_patterns)
    records = tuple(GuidedStarts.of([both[k] for *_, both in per_pattern]) for k in (COMPLEX, POSITIVE))
    kept = tuple(np.concatenate(arrays, axis=1) for arrays in zip(*seen)) if keep_starts else ()
    across = {i: pulled for i, (_, _, pulled, _) in enumerate(per_pattern) if pulled is not None}
    return (np.array([decision for decision, *_ in per_pattern]), np.stack([own for _, own, *_ in per_pattern]),
            across, records, kept)


def _merge_patterns(parts: list[tuple[np.ndarray, PhasingResult]]) -> PhasingResult:
    """One result from results over disjoint sets of patterns (``rows`` of each), in pattern order.
    Results of ``positivity="auto"`` whose runs had other numbers of starts are padded to the most of
    each kind (:func:`_padded`)."""
    order = np.argsort(np.concatenate([rows for rows, _ in parts]))
    results = [part for _, part in parts]
    widths = None
    if results[0].families is not None:
        widths = tuple(max(r.families[k] for r in results) for k in (0, 1))
        results = [_padded(r, widths) for r in results]

    def stacked(arrays: list):  # the parts' arrays one after the other, or None where not kept
        return None if arrays[0] is None else np.concatenate(arrays)

    def joined(name: str):
        array = stacked([getattr(r, name) for r in results])
        return None if array is None else array[order]

    guided = None
    if results[0].guided is not None:  # per GUIDE, its records of the parts joined
        guided = [GuidedStarts([f for r in records for f in r.ranked_fts], [d for r in records for d in r.differences],
                               *(stacked([getattr(r, name) for r in records]) for name in ("objects", "supports", "ranking"))
                               ).subset(order)
                  for records in zip(*(r.guided for r in results))]
    patterns = [p for r in results for p in r.patterns]
    first = results[0]
    return PhasingResult([patterns[k] for k in order], joined("start_llk"), joined("start_llk_free"), first.iterations,
                         first.recipe, first.device, joined("start_objects"), joined("start_supports"),
                         joined("free_pixels"), guided, widths)


def _padded(result: PhasingResult, widths: tuple[int, int]) -> PhasingResult:
    """``result`` of ``positivity="auto"`` with ``widths`` (complex, positive) starts: the missing ones
    appended to each kind's as starts that did not run (NaN LLK, zero object, empty support); the
    kept starts' indices follow."""
    have = result.families
    if tuple(have) == tuple(widths):
        return result
    for p in result.patterns:
        if p.positivity:
            p.kept = p.kept + (widths[0] - have[0])

    def pad(array, fill):
        return _pad_starts(array, have, widths, fill)

    # The first GUIDE's record holds the first generation's starts, auto_family_sizes(n_starts) in every result
    guided = None if result.guided is None else result.guided[:1] + [
        GuidedStarts(g.ranked_fts, g.differences, pad(g.objects, 0), pad(g.supports, False), pad(g.ranking, np.nan))
        for g in result.guided[1:]]
    return PhasingResult(result.patterns, pad(result.start_llk, np.nan), pad(result.start_llk_free, np.nan),
                         result.iterations, result.recipe, result.device, pad(result.start_objects, 0),
                         pad(result.start_supports, False), result.free_pixels, guided, tuple(widths))


def _pad_starts(array: np.ndarray | None, have: tuple, widths: tuple, fill) -> np.ndarray | None:
    """(patterns, starts, ...) with ``have`` (complex, positive) starts -> ``widths``, each kind padded
    with ``fill``."""
    if array is None:
        return None
    blocks = np.split(array, [have[0]], axis=1)
    padding = [np.full((b.shape[0], w - b.shape[1]) + b.shape[2:], fill, b.dtype) for b, w in zip(blocks, widths)]
    return np.concatenate([part for pair in zip(blocks, padding) for part in pair], axis=1)


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


def _choose_run(runs: list[PhasingResult]) -> PhasingResult:
    """Per pattern, the result of the run (``phase(n_runs=...)``) with the lowest BIC (ties: the earlier
    run). The runs constrained the same pixels, so their selected starts' BICs compare: across
    independent runs a wrong solution that one run's starts agreed on fits worse than another run's
    right one (docs/benchmarks.md, "Two independent runs")."""
    bics = np.array([[_criterion(p.bic) for p in result.patterns] for result in runs])
    chosen = np.argmin(bics, axis=0)
    return _merge_patterns([(rows, runs[k].subset(rows)) for k in range(len(runs))
                            if len(rows := np.flatnonzero(chosen == k))])


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
