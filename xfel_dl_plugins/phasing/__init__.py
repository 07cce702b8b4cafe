"""Iterative phase retrieval (ER, HIO, RAAR, DM, shrink-wrap) on batched arrays, CPU or GPU.

Public API::

    from xfel_dl_plugins.phasing import phase, parse_recipe, metrics
    result = phase(patterns, valid, recipe="(SW*HIO**50)**10 * RAAR**500 * ER**100", n_starts=8, n_keep=4)

Lower level: :class:`PhasingState` (the batched iterate), the operators ``ER, HIO, RAAR, DM, SW``
(``*`` = then, ``**`` = repeat), :func:`get_backend`, and :mod:`.metrics` (R-factor, Poisson and
free LLK, ambiguity-removed error, PRTF, FRC) for every phase retriever of the package.
"""

from . import metrics
from .backend import cuda_available, get_backend
from .engine import PhasingState
from .multistart import DEFAULT_RECIPE, PatternResult, PhasingResult, combine_starts, phase
from .operators import DM, ER, HIO, RAAR, SW, Operator
from .recipe import RecipeError, parse_recipe

__all__ = ["phase", "PhasingResult", "PatternResult", "PhasingState", "combine_starts", "DEFAULT_RECIPE",
           "parse_recipe", "RecipeError", "Operator", "ER", "HIO", "RAAR", "DM", "SW", "get_backend",
           "cuda_available", "metrics"]
