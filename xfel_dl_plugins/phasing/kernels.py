"""Elementwise update rules of iterative phase retrieval, written once as pure expressions.

These are the reference semantics. The CPU backend applies the same rules in place as loops
compiled by Numba (:mod:`.cpu_kernels`), the GPU backend as CUDA elementwise kernels
(``backend.CUDA_KERNELS``); both are tested against these expressions (the GPU's through a NumPy
stand-in and on a CUDA device).

Notation: ``x`` the current iterate (real space), ``y = P_M x`` its Fourier-constrained version,
``s`` the support (bool or 0/1), ``amp_or_free`` the measured amplitude sqrt(I_obs), or -1 where the
modulus is not constrained (masked, missing or free pixels).
"""

#: Added to |F| before dividing, so that a vanishing calculated amplitude gives 0, not NaN.
TINY = 1e-30


def fourier_projection(y, amp_or_free):
    """Replace |F| by the measured amplitude where constrained; leave free pixels (a negative
    ``amp_or_free``) as they are."""
    free = amp_or_free < 0
    return y * (amp_or_free / (abs(y) + TINY) * (1.0 - free) + free)


def er_update(y, s):
    """Error reduction: x' = P_S P_M x."""
    return s * y


def hio_update(x, y, s, beta):
    """Hybrid input-output (Fienup): y inside the support, x - beta y outside."""
    return s * y + (1.0 - s) * (x - beta * y)


def raar_update(x, y, s, beta):
    """RAAR (Luke 2005): y inside the support, beta x + (1 - 2 beta) y outside."""
    return s * y + (1.0 - s) * (beta * x + (1.0 - 2.0 * beta) * y)


def real_update(x, y, s, x_factor, y_outside, positivity):
    """Reality (and positivity) inside the support: Re y where s (and Re y >= 0 with ``positivity``),
    ``x_factor x + y_outside y`` elsewhere (ER: 0, 0; HIO: 1, -beta; RAAR: beta, 1 - 2 beta)."""
    keep = s * ((y.real >= 0) | (not positivity))
    return keep * y.real + (1.0 - keep) * (x_factor * x + y_outside * y)


def dm_support_step(x, y, s, beta, reality=False):
    """Difference map, first half: returns (P_S f_M(x), f_S(x)) with gamma_S = -1/beta, gamma_M = 1/beta.

    f_M(x) = (1 + 1/beta) y - x/beta, f_S(x) = (1 - 1/beta) s x + x/beta; with ``reality``, P_S keeps
    the real part.
    """
    f_m = (1.0 + 1.0 / beta) * y - x / beta
    f_s = (1.0 - 1.0 / beta) * s * x + x / beta
    return s * (f_m.real if reality else f_m), f_s


def dm_combine(x, ps_fm, pm_fs, beta):
    """Difference map, second half: x' = x + beta (P_S f_M(x) - P_M f_S(x))."""
    return x + beta * (ps_fm - pm_fs)
