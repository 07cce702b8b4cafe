"""Iterative phase retrieval (ER, HIO, RAAR, DM, shrink-wrap) on batched arrays, CPU or GPU.

Public API::

    from xfel_dl_plugins.phasing import phase, parse_recipe, metrics
    result = phase(patterns, valid, recipe="(SW*HIO**50)**10 * RAAR**500 * ER**100", n_starts=8, n_keep=4)

Lower level: :class:`PhasingState` (the batched iterate), the operators ``ER, HIO, RAAR, DM, SW, OSS, GROW, GUIDE``
(``*`` = then, ``**`` = repeat) and ``Choice`` (``(A | B)`` in a recipe: per pattern the better
branch), :func:`get_backend`, and :mod:`.metrics` (R-factor, Poisson and
free LLK, ambiguity-removed error, PRTF, FRC) for every phase retriever of the package.
"""

import importlib

# Names resolved on first use (PEP 562), so that importing a light submodule such as
# ``phasing.defaults`` (the stage registry does) does not pull in SciPy's FFT.
_EXPORTS = {
    "cuda_available": "backend", "get_backend": "backend", "PhasingState": "engine",
    "PatternResult": "multistart", "PhasingResult": "multistart", "combine_starts": "multistart",
    "phase": "multistart", "DEFAULT_RECIPE": "defaults", "DM": "operators", "ER": "operators",
    "HIO": "operators", "RAAR": "operators", "SW": "operators", "OSS": "operators", "GROW": "operators",
    "GUIDE": "operators",
    "Choice": "operators", "Operator": "operators",
    "RecipeError": "recipe", "parse_recipe": "recipe",
}

__all__ = [*_EXPORTS, "metrics"]


def __getattr__(name: str):
    if name == "metrics":
        return importlib.import_module(".metrics", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
