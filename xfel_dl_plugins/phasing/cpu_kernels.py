"""The CPU backend's elementwise passes, each one fused loop compiled by Numba.

They apply the rules of :mod:`.kernels` in place, one pass over the arrays each, where a chain of
NumPy ufuncs needed three to five passes and temporaries. Complex64 arrays are handled as flat
float32 (real, imag) pairs and the support as one uint8 per float (one 0/1 float per pixel where
the rule works per pixel), so every loop is a plain contiguous loop that LLVM vectorises.
``error_model="numpy"`` lets a division by zero give inf instead of raising, which is what allows
the vectorisation. No ``fastmath``: each operation is rounded as written, so results do not depend
on the vector width or on how an array is split. Compiled on first use (1.5 s for all six here) and
cached on disk where a cache directory is writable (then 0.4 s to load).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import TINY

_TINY = np.float32(TINY)


def _jit(func):
    """Compile ``func`` without the GIL, cached beside this file or in the user's cache directory, or
    in memory only where neither is writable (Numba then refuses ``cache=True``)."""
    options = dict(nogil=True, error_model="numpy")
    try:
        return njit(cache=True, **options)(func)
    except RuntimeError:
        return njit(**options)(func)


@_jit
def fourier_project(y, amp, scale):
    """y <- scale amp / |y| * y where ``amp >= 0``, scale * y where ``amp < 0`` (unconstrained pixel).

    ``y``: float32 pairs (2 n); ``amp``: float32 (n); ``scale``: float32.
    """
    for i in range(amp.size):
        re = y[2 * i]
        im = y[2 * i + 1]
        a = amp[i]
        f = (scale * a) / (np.sqrt(re * re + im * im) + _TINY)
        f = scale if a < 0 else f
        y[2 * i] = re * f
        y[2 * i + 1] = im * f


@_jit
def support_projection(x, y, inside, y_factor):
    """Error reduction: x <- y_factor y inside the support, 0 outside (``y`` may be ``x``).

    ``x``, ``y``: float32 pairs; ``inside``: uint8, one per float.
    """
    zero = np.float32(0)
    for k in range(x.size):
        x[k] = y[k] * y_factor if inside[k] else zero


@_jit
def feedback(x, y, inside, x_factor, y_outside, y_inside):
    """HIO / RAAR: x <- y_inside y inside the support, x_factor x + y_outside y outside.

    ``x``, ``y``: float32 pairs; ``inside``: uint8, one per float.
    """
    for k in range(x.size):
        a = y[k] * y_inside
        b = x_factor * x[k] + y_outside * y[k]
        x[k] = a if inside[k] else b


@_jit
def real_feedback(x, y, inside, x_factor, y_outside, positivity):
    """Reality (and positivity): x <- Re y where inside the support (and Re y >= 0 with ``positivity``),
    x_factor x + y_outside y elsewhere. ER: both factors 0; HIO: 1, -beta; RAAR: beta, 1 - 2 beta.

    ``x``, ``y``: float32 pairs; ``inside``: float32 0/1, one per pixel. The choice is made by 0/1
    weights, not a branch, so that the loop is vectorised (a select over pairs is not, and is 2-6x slower).
    """
    zero = np.float32(0)
    one = np.float32(1)
    any_sign = not positivity
    for i in range(inside.size):
        re = y[2 * i]
        im = y[2 * i + 1]
        keep = inside[i] * (one if (re >= zero) | any_sign else zero)
        x[2 * i] = keep * re + (one - keep) * (x_factor * x[2 * i] + y_outside * re)
        x[2 * i + 1] = (one - keep) * (x_factor * x[2 * i + 1] + y_outside * im)


@_jit
def dm_split(x, y, z, inside, beta, reality):
    """Difference map, between its two projections: y <- P_S f_M(x) and z <- f_S(x), where y holds P_M x
    on entry (:func:`.kernels.dm_support_step`; with ``reality``, P_S keeps the real part).

    ``x``, ``y``, ``z``: float32 pairs; ``inside``: float32 0/1, one per pixel; ``beta``: float32.
    """
    one = np.float32(1)
    inv = one / beta
    keep_imag = np.float32(0) if reality else one
    for i in range(inside.size):
        s = inside[i]
        for j in range(2):
            k = 2 * i + j
            f_m = (one + inv) * y[k] - x[k] * inv
            y[k] = s * f_m * (one if j == 0 else keep_imag)
            z[k] = s * x[k] + (one - s) * (x[k] * inv)


@_jit
def dm_combine(x, ps_fm, pm_fs, beta):
    """Difference map, last step: x <- x + beta (P_S f_M(x) - P_M f_S(x)). All float32 pairs."""
    for k in range(x.size):
        x[k] = x[k] + beta * (ps_fm[k] - pm_fs[k])
