"""The CPU phasing backend's fused elementwise passes against the NumPy ufunc chains they replaced.

    PYTHONPATH=$PWD python benchmarks/bench_cpu_passes.py [--repeats 5]

One thread, interleaved rounds, best of ``--repeats``. Prints, per array size, the time of each pass
as a fused Numba loop (``xfel_dl_plugins.phasing.cpu_kernels``, through the backend) and as the
NumPy ufunc chain the backend used before (written out below as the baseline), with their ratio;
then one engine iteration of HIO and of the difference map against a bare FFT pair of the same
arrays. Results are checked to agree before anything is timed.
"""

import argparse
import time

import numpy as np
import scipy.fft as sfft

from xfel_dl_plugins.phasing.backend import FourierConstraint, NumpyBackend, Support
from xfel_dl_plugins.phasing.engine import PhasingState
from xfel_dl_plugins.phasing.kernels import TINY
from xfel_dl_plugins.phasing.testobjects import beam_stop_mask, diffraction, make_object


# -- the NumPy baseline: the ufunc chains of the CPU backend before the fusion -----------------------
def numpy_fourier_project(y, amp, fixed_index, scale):
    """|y| (one pass), + TINY, scale amp / |y| (one pass), the unconstrained pixels, y *= factor."""
    mod = np.abs(y)
    np.add(mod, np.float32(TINY), out=mod)
    fac = np.divide(amp * np.float32(scale), mod)
    fac.reshape(-1)[fixed_index] = scale
    np.multiply(y, fac, out=y)
    return y


def numpy_hio(x, y, support_index, beta, y_scale):
    """Gather the support, x += y (the feedback factor folded into y), scatter the support back."""
    inside = y.reshape(-1)[support_index] / np.float32(y_scale)
    np.add(x, y, out=x)
    x.reshape(-1)[support_index] = inside
    return x


def numpy_positivity_hio(x, y, mask, beta):
    """HIO with positivity as ``xp.where`` over the support and the sign of Re y (the generic rule)."""
    inside = mask & (y.real >= 0)
    return np.where(inside, y.real.astype(y.dtype), x - np.float32(beta) * y).astype(np.complex64)


def _best(funcs: dict, repeats: int, calls: int) -> dict:
    """Best time per call of each function, rounds interleaved."""
    best = {k: np.inf for k in funcs}
    for _ in range(repeats):
        for k, f in funcs.items():
            f()
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            best[k] = min(best[k], (time.perf_counter() - t0) / calls)
    return best


def passes(n: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    backend = NumpyBackend(2, workers=1)
    shape = (1, n, n)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    y = x.copy()
    amp = np.abs(sfft.fftn(x, axes=(1, 2))).astype(np.float32)
    fixed = rng.random(shape) < 0.05
    mask = np.zeros(shape, bool)
    mask[:, n // 4:3 * n // 4, n // 4:3 * n // 4] = True
    constraint, support = FourierConstraint(backend, amp, fixed), Support(backend, mask)
    beta = 0.9
    scale = backend.feedback_scale("hio", beta)
    fixed_index, support_index = np.flatnonzero(fixed), np.flatnonzero(mask)

    # the two implementations agree before they are timed
    np.testing.assert_allclose(backend.fourier_project_(y.copy(), constraint, scale),
                               numpy_fourier_project(y.copy(), np.where(fixed, 0, amp), fixed_index, scale), rtol=1e-5)
    np.testing.assert_allclose(backend.hio_(x.copy(), y, support, beta, scale),
                               numpy_hio(x.copy(), y, support_index, beta, scale), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.real_update_("hio", x.copy(), y, support, beta, True),
                               numpy_positivity_hio(x, y, mask, beta), rtol=1e-5, atol=1e-6)
    amp0 = np.where(fixed, 0, amp)
    work, x_work = y.copy(), x.copy()
    t = _best({"projection fused": lambda: backend.fourier_project_(work, constraint, 1.0),
               "projection numpy": lambda: numpy_fourier_project(work, amp0, fixed_index, 1.0),
               "hio fused": lambda: backend.hio_(x_work, y, support, beta, scale),
               "hio numpy": lambda: numpy_hio(x_work, y, support_index, beta, scale),
               "positivity fused": lambda: backend.real_update_("hio", x_work, y, support, beta, True),
               "positivity numpy": lambda: numpy_positivity_hio(x_work, y, mask, beta)},
              repeats, calls=max(5, 2_000_000 // (n * n)))
    for name in ("projection", "hio", "positivity"):
        fused, base = t[f"{name} fused"], t[next(k for k in t if k.startswith(name) and "fused" not in k)]
        print(f"{n}^2 {name:10s}: fused {1e3 * fused:.3f} ms, NumPy {1e3 * base:.3f} ms, ratio {fused / base:.2f}")


def iterations(n: int, count: int, repeats: int) -> None:
    obj = make_object((n, n), "blobs", rng=np.random.default_rng(1))
    iobs, valid, _ = diffraction(obj, 1e8, beam_stop_mask((n, n), n / 64), np.random.default_rng(2))
    state = PhasingState(np.repeat(iobs[None], count, 0), valid, n_starts=1, calc_llk=0,
                         backend=NumpyBackend(2, workers=1), seed=0)
    arrays = np.zeros((min(count, 8), n, n), np.complex64)

    def fft_pair():
        sfft.ifftn(sfft.fftn(arrays, axes=(1, 2), overwrite_x=True, workers=1), axes=(1, 2), overwrite_x=True, workers=1)

    t = _best({"hio": lambda: state.iterate("hio", 0.9), "dm": lambda: state.iterate_dm(0.9), "fft": fft_pair},
              repeats, calls=5)
    floor = t["fft"] / len(arrays) * count
    print(f"{count} x {n}^2 (one thread): HIO {1e3 * t['hio']:.2f} ms = {t['hio'] / floor:.2f} x the FFT floor "
          f"({1e3 * floor:.2f} ms); DM {1e3 * t['dm']:.2f} ms = {t['dm'] / t['hio']:.2f} x HIO")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    for n in (256, 512):
        passes(n, args.repeats)
    iterations(256, 1, args.repeats)
    iterations(128, 96, args.repeats)


if __name__ == "__main__":
    main()
