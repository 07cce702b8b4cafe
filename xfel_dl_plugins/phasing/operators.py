"""Composable phase-retrieval operators.

Operators act on a :class:`~.engine.PhasingState` (a batch of patterns x random starts) and compose
with ``*`` (sequence, **left to right in time**: ``HIO**50 * ER**10`` runs 50 HIO then 10 ER) and
``**`` (repetition). This is the reverse of PyNX's operator algebra, where the rightmost operator
acts first; a recipe therefore reads in the order things happen.

    schedule = (SW() * HIO(beta=0.9) ** 50) ** 10 * RAAR() ** 500 * ER() ** 100
    schedule.apply(state)

:func:`.recipe.parse_recipe` builds the same objects from a manifest string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import StageError
from .defaults import AUTO_SIGMA


class Operator:
    """Base class: something applied to a phasing state."""

    def apply(self, state) -> None:
        raise NotImplementedError

    @property
    def n_iterations(self) -> int:
        """Number of Fourier-constraint iterations this operator performs."""
        return 0

    def steps(self) -> list["Operator"]:
        """The elementary operators of this schedule in order, a repeated block listed once."""
        return [self]

    def __mul__(self, other: "Operator") -> "Sequence":
        if not isinstance(other, Operator):
            return NotImplemented
        left = self.ops if isinstance(self, Sequence) else [self]
        right = other.ops if isinstance(other, Sequence) else [other]
        return Sequence(left + right)

    def __pow__(self, n: int) -> "Repeat":
        if not isinstance(n, int) or n < 0:
            raise StageError(f"an operator can only be repeated a non-negative integer number of times, got {n!r}")
        return Repeat(self, n)


class Sequence(Operator):
    def __init__(self, ops: list[Operator]):
        self.ops = list(ops)

    def apply(self, state) -> None:
        for op in self.ops:
            op.apply(state)

    @property
    def n_iterations(self) -> int:
        return sum(op.n_iterations for op in self.ops)

    def steps(self) -> list[Operator]:
        return [step for op in self.ops for step in op.steps()]

    def __repr__(self) -> str:
        return " * ".join(repr(op) for op in self.ops)


class Choice(Operator):
    """Alternative schedules run one after the other from the same iterates; per pattern the one
    whose lead start (the selection's, lowest BIC) has the lower BIC is kept, all its starts with it
    (:func:`~.multistart.choose_branches`). A recipe writes it ``(A | B)``. It costs the iterations of
    every branch; a branch may not hold a GUIDE."""

    def __init__(self, branches: list[Operator]):
        if len(branches) < 2:
            raise StageError("a choice needs at least two branches")
        if any(isinstance(step, GUIDE) for branch in branches for step in branch.steps()):
            raise StageError("a choice's branches may not hold a GUIDE (it begins a new generation)")
        self.branches = list(branches)

    def apply(self, state) -> None:
        from .multistart import choose_branches  # multistart builds on the operators: import at use

        choose_branches(state, self.branches)

    @property
    def n_iterations(self) -> int:
        return sum(branch.n_iterations for branch in self.branches)

    def steps(self) -> list[Operator]:
        return [step for branch in self.branches for step in branch.steps()]

    def __repr__(self) -> str:
        return "(" + " | ".join(repr(branch) for branch in self.branches) + ")"


class Repeat(Operator):
    def __init__(self, op: Operator, n: int):
        self.op, self.n = op, n

    def apply(self, state) -> None:
        for _ in range(self.n):
            self.op.apply(state)

    @property
    def n_iterations(self) -> int:
        return self.n * self.op.n_iterations

    def steps(self) -> list[Operator]:
        return self.op.steps()

    def __repr__(self) -> str:
        inner = repr(self.op)
        return f"({inner})**{self.n}" if isinstance(self.op, Sequence) else f"{inner}**{self.n}"


def geometric_decay(start: float, end: float, iteration: int, decay: int) -> float:
    """A width going geometrically from ``start`` to ``end`` over ``decay`` iterations, then ``end``
    (SW's smoothing width, OSS's alpha); a zero at either end switches at ``decay`` instead."""
    if start == 0 or end == 0:
        return start if iteration < decay else end
    return start * (end / start) ** min(iteration / decay, 1.0)


def _check_beta(name: str, beta: float) -> float:
    if not 0.0 < beta <= 1.0:
        raise StageError(f"{name}: beta must be in (0, 1], got {beta}")
    return float(beta)


@dataclass(repr=False)
class ER(Operator):
    """Error reduction: x <- P_S P_M x."""

    def apply(self, state) -> None:
        state.iterate("er", 0.0)

    @property
    def n_iterations(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "ER"


@dataclass(repr=False)
class _FeedbackIteration(Operator):
    """One iteration of the engine's update ``rule`` with parameter ``beta``."""

    rule: ClassVar[str] = ""
    beta: float = 0.9

    def __post_init__(self):
        self.beta = _check_beta(type(self).__name__, self.beta)

    def apply(self, state) -> None:
        state.iterate(self.rule, self.beta)

    @property
    def n_iterations(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta:g})"


@dataclass(repr=False)
class HIO(_FeedbackIteration):
    """Hybrid input-output with feedback ``beta``."""

    rule: ClassVar[str] = "hio"


@dataclass(repr=False)
class RAAR(_FeedbackIteration):
    """Relaxed averaged alternating reflections with relaxation ``beta``."""

    rule: ClassVar[str] = "raar"


@dataclass(repr=False)
class DM(Operator):
    """Elser's difference map (gamma_S = -1/beta, gamma_M = 1/beta): two Fourier projections per iteration."""

    beta: float = 0.8

    def __post_init__(self):
        self.beta = _check_beta("DM", self.beta)

    def apply(self, state) -> None:
        state.iterate_dm(self.beta)

    @property
    def n_iterations(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"DM(beta={self.beta:g})"


@dataclass(repr=False)
class SW(Operator):
    """Shrink-wrap support update.

    The amplitude |x| is smoothed by a Gaussian whose width (pixels) decays geometrically from
    ``sigma`` to ``sigma_end`` over the first ``decay`` iterations of the run (``None`` or ``auto``:
    :data:`~.defaults.AUTO_SIGMA` of the array side, 2 -> 1 px at 128^2); the new support is
    where the smoothed amplitude exceeds ``threshold`` times its maximum (``method='max'``) or
    ``threshold_rms`` times its root-mean-square inside the current support (``method='rms'``).
    ``method='both'`` (default) gives every other start the rms rule: compact uniform particles
    favour the max rule, textured ones with weak parts the rms rule, and the (free) LLK selects
    among the starts. ``scale`` multiplies both thresholds: below 1 the support takes in weaker
    parts (the default recipe's RAAR stage uses 0.67). ``smooth`` multiplies both smoothing widths:
    below 1 the support follows sharp edges more closely (faceted particles). ``force_shrink`` only
    removes pixels.
    """

    threshold: float = 0.15
    threshold_rms: float = 0.25
    sigma: float | None = None
    sigma_end: float | None = None
    decay: int = 500
    method: str = "both"
    force_shrink: bool = False
    scale: float = 1.0
    smooth: float = 1.0

    def __post_init__(self):
        if self.method not in ("rms", "max", "both"):
            raise StageError(f"SW: method must be 'rms', 'max' or 'both', got {self.method!r}")
        if not 0.0 < self.threshold < 1.0:
            raise StageError(f"SW: threshold (relative to the maximum) must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.threshold_rms < 10.0:
            raise StageError(f"SW: threshold_rms must be in (0, 10), got {self.threshold_rms}")
        if isinstance(self.scale, (str, bool)) or not 0.0 < self.scale * self.threshold < 1.0:
            raise StageError(f"SW: scale must be > 0 and keep threshold x scale below 1, got {self.scale!r}")
        if isinstance(self.smooth, (str, bool)) or not self.smooth > 0:
            raise StageError(f"SW: smooth (a factor on the smoothing widths) must be > 0, got {self.smooth!r}")
        self.sigma, self.sigma_end = (None if value == "auto" else value for value in (self.sigma, self.sigma_end))
        for value in (self.sigma, self.sigma_end):
            if value is not None and (isinstance(value, (str, bool)) or value < 0):
                raise StageError(f"SW: sigma and sigma_end must be >= 0 px or 'auto', got {value!r}")
        if int(self.decay) < 1:
            raise StageError(f"SW: decay must be >= 1 iteration, got {self.decay}")
        self.decay = int(self.decay)
        self.force_shrink = bool(self.force_shrink)

    def widths(self, shape: tuple[int, ...]) -> tuple[float, float]:
        """Smoothing width at the start and after the decay (pixels) for arrays of ``shape``."""
        side = max(shape)
        return (self.smooth * (float(self.sigma) if self.sigma is not None else AUTO_SIGMA[0] * side),
                self.smooth * (float(self.sigma_end) if self.sigma_end is not None else AUTO_SIGMA[1] * side))

    def current_sigma(self, iteration: int, shape: tuple[int, ...]) -> float:
        return geometric_decay(*self.widths(shape), iteration, self.decay)

    def apply(self, state) -> None:
        sigma = self.current_sigma(state.iteration - state.generation_start, state.spatial)
        state.shrink_wrap(self.threshold * self.scale, self.threshold_rms * self.scale, sigma, self.method,
                          self.force_shrink)

    def __repr__(self) -> str:
        sigma, sigma_end = ("auto" if v is None else f"{v:g}" for v in (self.sigma, self.sigma_end))
        return (f"SW(threshold={self.threshold:g}, threshold_rms={self.threshold_rms:g}, sigma={sigma}, "
                f"sigma_end={sigma_end}, decay={self.decay}, method={self.method}"
                + (f", scale={self.scale:g}" if self.scale != 1 else "")
                + (f", smooth={self.smooth:g}" if self.smooth != 1 else "")
                + (", force_shrink=true" if self.force_shrink else "") + ")")


@dataclass
class GROW(Operator):
    """Every start's support dilated by a ball of ``px`` pixels (not held to the support cap).
    Shrink-wrap at high photon counts can settle on a support that cuts a textured particle's weak rim,
    where no fixed-support iteration reaches the noise floor; HIO within the grown support does (the
    default recipe's last choice, docs/benchmarks.md, "Growing the support before a last HIO")."""

    px: float = 2.0

    def __post_init__(self):
        if isinstance(self.px, (str, bool)) or not 0 < self.px <= 64:
            raise StageError(f"GROW: px (the dilation radius) must be in (0, 64] pixels, got {self.px!r}")

    def apply(self, state) -> None:
        state.grow_support(float(self.px))


@dataclass(repr=False)
class OSS(Operator):
    """Oversampling smoothness (Rodriguez et al., J. Appl. Cryst. 46, 312, 2013): outside the support
    the iterate becomes its low-pass, exp(-k^2 / (2 alpha^2)) in Fourier space (k in frequency pixels
    of the array's largest side): HIO's feedback then builds up no fine-grained density outside the
    support, which the unmeasured pixels (a beam stop, gaps) would leave unchecked. ``alpha`` decays
    geometrically from ``alpha`` (None or ``auto``: the array's largest side, nearly no smoothing) to
    ``alpha_end`` over the first ``decay`` iterations of the generation. Put it after each HIO
    iteration, ``(SW*(HIO*OSS)**50)**12``; it costs an FFT pair."""

    alpha: float | None = None
    alpha_end: float = 1.0
    decay: int = 600

    def __post_init__(self):
        self.alpha = None if self.alpha == "auto" else self.alpha
        for name in ("alpha", "alpha_end"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bool)) or not value > 0):
                raise StageError(f"OSS: {name} must be > 0 frequency pixels, got {value!r}")
        if isinstance(self.decay, (str, bool)) or int(self.decay) < 1:
            raise StageError(f"OSS: decay must be >= 1 iteration, got {self.decay!r}")
        self.decay = int(self.decay)

    def current_alpha(self, iteration: int, shape: tuple[int, ...]) -> float:
        start = float(self.alpha) if self.alpha is not None else float(max(shape))
        return geometric_decay(start, self.alpha_end, iteration, self.decay)

    def apply(self, state) -> None:
        alpha = self.current_alpha(state.iteration - state.generation_start, state.spatial)
        state.smooth_outside(max(state.spatial) / (2 * math.pi * alpha))  # the same Gaussian in real space, px

    def __repr__(self) -> str:
        alpha = "auto" if self.alpha is None else f"{self.alpha:g}"
        return f"OSS(alpha={alpha}, alpha_end={self.alpha_end:g}, decay={self.decay})"


@dataclass(repr=False)
class GUIDE(Operator):
    """Guided restart (the "guided HIO" of Chen et al., Phys. Rev. B 76, 064113, 2007), per pattern:
    the start the selection would lead with (:func:`~.multistart.rank_starts`, lowest BIC) stays,
    every other start becomes ``mix`` x the lead + (1 - mix) x itself aligned on the lead
    (translation, twin, global phase). A new generation then begins from these iterates, as a new run
    would (:meth:`~.engine.PhasingState.restart_from`): the support is the whole array until the next
    SW, which must follow, and the shrink-wrap widths restart their decay."""

    mix: float = 0.5

    def __post_init__(self):
        if isinstance(self.mix, (str, bool)) or not 0.0 < self.mix < 1.0:
            raise StageError(f"GUIDE: mix (the lead's weight) must be in (0, 1), got {self.mix!r}")
        self.mix = float(self.mix)

    def apply(self, state) -> None:
        from .multistart import guide_starts  # multistart builds on the operators: import at use

        guide_starts(state, self.mix)

    def __repr__(self) -> str:
        return f"GUIDE(mix={self.mix:g})"
