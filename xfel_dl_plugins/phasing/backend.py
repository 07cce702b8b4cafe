"""Array backends of the phasing engine: NumPy + scipy.fft + Numba loops on the CPU, CuPy + cuFFT on a GPU.

Both backends expose the same small interface used by the operators: batched FFTs over the
trailing spatial axes (in place, except the GPU's forward FFT: out of place saves a copy), the
Fourier-modulus projection, and the real-space update rules of :mod:`.kernels`. Update methods
return the updated array, which the caller rebinds. Both backends run one fused in-place pass per
rule: the CPU backend a loop compiled by Numba (:mod:`.cpu_kernels`), the GPU backend a CUDA
elementwise kernel (:data:`CUDA_KERNELS`). Both are tested against the reference expressions of
:mod:`.kernels`; the NumPy stand-in of the tests replaces each CUDA kernel by its expression.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import StageError
from . import kernels


#: The CPU backend iterates a batch in chunks of about this many bytes per complex array, so that the
#: elementwise passes between the two FFTs run in cache instead of streaming the batch from memory.
CPU_CHUNK_BYTES = 1 << 20

#: An FFT on the CPU uses one thread per this many complex elements (at most ``workers``): below it,
#: waking pocketfft's threads costs more than they save. Measured on 2 cores (2026-11-27): a two-thread
#: scipy.fft pair is slower than one thread up to 384^2 (256^2: 1.25 against 0.78 ms) and faster from
#: 512^2 (2.7 against 3.5 ms). The fused elementwise passes (0.03-0.15 ms at 512^2) stay in one
#: thread: handing work to a pool thread costs about as much.
CPU_FFT_ELEMENTS_PER_THREAD = 1 << 17


class Support:
    """The support of a chunk of arrays (n, *spatial) in the forms a backend needs: ``mask`` (bool, one
    byte per pixel: the GPU kernels read it), and on the CPU ``weights`` (0/1 float per pixel) and
    ``pair_mask`` (one uint8 per float of the complex64 array seen as float32 pairs)."""

    def __init__(self, backend: "ArrayBackend", mask):
        self.mask = mask.astype(bool, copy=False)
        if backend.name == "cpu":
            self.weights = self.mask.astype(np.float32)
            self.pair_mask = np.repeat(self.mask.reshape(-1), 2).view(np.uint8)


class FourierConstraint:
    """Measured amplitudes of a chunk of arrays (n, *spatial) in one float32 array, ``amp_or_free``:
    a negative value marks a pixel left free (masked, missing or held out)."""

    def __init__(self, backend: "ArrayBackend", amp, fixed):
        xp = backend.xp
        self.amp_or_free = xp.where(xp.asarray(fixed), np.float32(-1), xp.asarray(amp, dtype=np.float32))


def _float_pairs(a: np.ndarray) -> np.ndarray:
    """A C-contiguous complex64 array as one flat float32 array of (real, imag) pairs, without a copy."""
    if not a.flags.c_contiguous:
        raise ValueError("the CPU kernels work in place on C-contiguous arrays only")
    return a.reshape(-1).view(np.float32)


class ArrayBackend:
    """Operations shared by both backends (everything that is not on the hot path)."""

    name = ""
    xp = np

    def __init__(self, ndim: int = 2):
        self.ndim = ndim

    def spatial_axes(self, array_ndim: int) -> tuple[int, ...]:
        return tuple(range(array_ndim - self.ndim, array_ndim))

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def feedback_scale(self, rule: str, beta: float) -> float:
        """Factor the modulus projection may pre-apply to y for the update ``rule`` (1: none)."""
        return 1.0

    def map_chunks(self, func, n_chunks: int) -> None:
        """Call ``func(k)`` for every chunk index."""
        for k in range(n_chunks):
            func(k)

    def chunk_length(self, n_pixels: int) -> int:
        """How many arrays of ``n_pixels`` to iterate together (the GPU takes the whole batch)."""
        return 1 << 30

    def scratch_like(self, x):
        """A scratch array the forward FFT of an iterate works in (None: the FFT is out of place)."""
        return self.xp.empty_like(x)

    def intensity(self, y):
        """|y|^2 as float32."""
        a = abs(y)
        return a * a

    def outside_factors(self, rule: str, beta: float) -> tuple[float, float]:
        """(x factor, y factor) of the update ``rule`` outside the support: ER (0, 0), HIO (1, -beta),
        RAAR (beta, 1 - 2 beta)."""
        factors = {"er": (0.0, 0.0), "hio": (1.0, -beta), "raar": (beta, 1.0 - 2.0 * beta)}
        if rule not in factors:
            raise StageError(f"unknown update rule {rule!r}")
        return factors[rule]


class NumpyBackend(ArrayBackend):
    """CPU: scipy.fft (pocketfft) in place with worker threads, fused elementwise passes compiled by Numba."""

    name = "cpu"

    def __init__(self, ndim: int = 2, workers: int | None = None):
        super().__init__(ndim)
        import scipy.fft

        from . import cpu_kernels  # imports Numba: only where the CPU backend is used
        self._fft = scipy.fft
        self._kernels = cpu_kernels
        self.workers = workers or len(os.sched_getaffinity(0))
        self._local = threading.local()  # per thread: whether it is a pool thread
        self._pool: ThreadPoolExecutor | None = None

    def map_chunks(self, func, n_chunks: int) -> None:
        """Call ``func(k)`` for every chunk: chunks in parallel threads (one FFT thread each) when
        there are several, else one chunk with multi-threaded FFTs where the arrays are large enough
        (:data:`CPU_FFT_ELEMENTS_PER_THREAD`). The Numba kernels and pocketfft release the GIL, so the
        elementwise passes of parallel chunks run in parallel too."""
        if n_chunks == 1 or self.workers == 1:
            for k in range(n_chunks):
                func(k)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, initializer=lambda: setattr(self._local, "in_pool", True))
        for _ in self._pool.map(func, range(n_chunks)):
            pass

    def fft_threads(self, n_elements: int) -> int:
        """Threads for an FFT of ``n_elements``: one in a pool thread (the chunks are already parallel),
        else one per :data:`CPU_FFT_ELEMENTS_PER_THREAD`, at most ``workers``."""
        if getattr(self._local, "in_pool", False):
            return 1
        return max(1, min(self.workers, n_elements // CPU_FFT_ELEMENTS_PER_THREAD))

    def _inplace(self, func, a: np.ndarray) -> np.ndarray:
        out = func(a, axes=self.spatial_axes(a.ndim), overwrite_x=True, workers=self.fft_threads(a.size))
        if out.ctypes.data != a.ctypes.data:  # pocketfft could not work in place: keep the caller's buffer
            a[...] = out
        return a

    def fft_(self, a: np.ndarray) -> np.ndarray:
        return self._inplace(self._fft.fftn, a)

    def ifft_(self, a: np.ndarray) -> np.ndarray:
        return self._inplace(self._fft.ifftn, a)

    def chunk_length(self, n_pixels: int) -> int:
        return max(1, CPU_CHUNK_BYTES // (8 * n_pixels))

    def feedback_scale(self, rule: str, beta: float) -> float:
        """HIO and RAAR scale y before adding it to x (their y factor outside the support): fold that
        factor into the projection, unless it is (nearly) zero (RAAR with beta = 0.5)."""
        if rule not in ("hio", "raar"):
            return 1.0
        y_outside = float(self.outside_factors(rule, beta)[1])
        return y_outside if abs(y_outside) > 1e-3 else 1.0

    def fourier_project_(self, y: np.ndarray, constraint: FourierConstraint, scale: float = 1.0) -> np.ndarray:
        """In place: y *= scale amp/|y| on constrained pixels, y *= scale elsewhere."""
        self._kernels.fourier_project(_float_pairs(y), constraint.amp_or_free.reshape(-1), np.float32(scale))
        return y

    def er_(self, x, y, support: Support, y_scale: float = 1.0):
        """x <- P_S y / y_scale, in one pass; ``y`` may be ``x`` itself (ER needs no copy of x)."""
        self._kernels.support_projection(_float_pairs(x), _float_pairs(y), support.pair_mask, np.float32(1.0 / y_scale))
        return x

    def _feedback_(self, x, y, support: Support, scale_x: float, scale_y: float, y_scale: float):
        """x <- scale_x x + scale_y P_M x outside the support, P_M x inside, where y = y_scale P_M x: one pass."""
        self._kernels.feedback(_float_pairs(x), _float_pairs(y), support.pair_mask, np.float32(scale_x),
                               np.float32(scale_y / y_scale), np.float32(1.0 / y_scale))
        return x

    def hio_(self, x, y, support: Support, beta: float, y_scale: float = 1.0):
        return self._feedback_(x, y, support, *self.outside_factors("hio", beta), y_scale)

    def raar_(self, x, y, support: Support, beta: float, y_scale: float = 1.0):
        return self._feedback_(x, y, support, *self.outside_factors("raar", beta), y_scale)

    def real_update_(self, rule: str, x, y, support: Support, beta: float, positivity: bool):
        """In one pass, in place: the update ``rule`` with reality (and positivity) inside the support
        (:func:`.kernels.real_update`; y is not pre-scaled). ``y`` may be ``x`` itself for ER."""
        x_factor, y_outside = self.outside_factors(rule, beta)
        self._kernels.real_feedback(_float_pairs(x), _float_pairs(y), support.weights.reshape(-1), np.float32(x_factor),
                                    np.float32(y_outside), bool(positivity))
        return x

    def dm_split_(self, x, y, scratch, support: Support, beta: float, reality: bool):
        """In one pass: y <- P_S f_M(x) in place, ``scratch`` <- f_S(x)."""
        self._kernels.dm_split(_float_pairs(x), _float_pairs(y), _float_pairs(scratch), support.weights.reshape(-1),
                               np.float32(beta), bool(reality))
        return y, scratch

    def dm_combine_(self, x, ps_fm, pm_fs, beta: float):
        """In one pass, in place: x <- x + beta (P_S f_M(x) - P_M f_S(x))."""
        self._kernels.dm_combine(_float_pairs(x), _float_pairs(ps_fm), _float_pairs(pm_fs), np.float32(beta))
        return x

    def projection_input(self, dst, src):
        """The array to Fourier-transform for a projection of ``src``: a copy in ``dst`` (the FFT works in place)."""
        np.copyto(dst, src)
        return dst


#: The rules of :mod:`.kernels` as CUDA elementwise kernels, each writing its last argument(s) in place:
#: name -> (inputs, outputs, body). ``s`` is the support (bool), ``amp`` the amplitude or -1 (free).
CUDA_KERNELS = {
    "xfel_fourier_projection": ("float32 amp", "complex64 y",
                                f"if (amp >= 0.0f) y = y * (amp / (abs(y) + {kernels.TINY}f));"),
    "xfel_er": ("complex64 y, bool s", "complex64 x", "x = s ? y : complex<float>(0.0f, 0.0f);"),
    "xfel_hio": ("complex64 y, bool s, float32 beta", "complex64 x", "x = s ? y : x - y * beta;"),
    "xfel_raar": ("complex64 y, bool s, float32 beta", "complex64 x", "x = s ? y : x * beta + y * (1.0f - 2.0f * beta);"),
    "xfel_real_update": ("complex64 y, bool s, float32 x_factor, float32 y_outside, bool positivity", "complex64 x",
                         "x = (s && (!positivity || y.real() >= 0.0f))"
                         " ? complex<float>(y.real(), 0.0f) : x * x_factor + y * y_outside;"),
    "xfel_dm_split": ("complex64 x, bool s, float32 beta, bool reality", "complex64 y, complex64 f_s",
                      "complex<float> f_m = y * (1.0f + 1.0f / beta) - x * (1.0f / beta);"
                      " y = s ? complex<float>(f_m.real(), reality ? 0.0f : f_m.imag()) : complex<float>(0.0f, 0.0f);"
                      " f_s = s ? x : x * (1.0f / beta);"),
    "xfel_dm_combine": ("complex64 ps_fm, complex64 pm_fs, float32 beta", "complex64 x", "x = x + (ps_fm - pm_fs) * beta;"),
}


class CupyBackend(ArrayBackend):
    """GPU: CuPy arrays, cuFFT plans cached per shape (forward out of place, inverse in place), one
    in-place elementwise kernel per rule: an iteration is four passes over the batch."""

    name = "cuda"

    def __init__(self, ndim: int = 2):
        super().__init__(ndim)
        import cupy
        import cupyx.scipy.fft as cufft

        self.xp = cupy
        self._cufft = cufft
        self._plans: dict[tuple, object] = {}
        self._kernel = {name: cupy.ElementwiseKernel(ins, out, body, name)
                        for name, (ins, out, body) in CUDA_KERNELS.items()}

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a) if isinstance(a, self.xp.ndarray) else np.asarray(a)

    def _plan(self, a):
        key = (a.shape, a.dtype.str)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._cufft.get_fft_plan(a, axes=self.spatial_axes(a.ndim), value_type="C2C")
        return plan

    def fft_(self, a):
        """Out of place (cuFFT reads ``a`` once and writes a new array): ``a`` needs no copy first."""
        return self._cufft.fftn(a, axes=self.spatial_axes(a.ndim), overwrite_x=False, plan=self._plan(a))

    def ifft_(self, a):
        return self._cufft.ifftn(a, axes=self.spatial_axes(a.ndim), overwrite_x=True, plan=self._plan(a))

    def fourier_project_(self, y, constraint: FourierConstraint, scale: float = 1.0):
        return self._kernel["xfel_fourier_projection"](constraint.amp_or_free, y)  # scale is always 1 here

    def er_(self, x, y, support: Support, y_scale: float = 1.0):
        return self._kernel["xfel_er"](y, support.mask, x)

    def hio_(self, x, y, support: Support, beta: float, y_scale: float = 1.0):
        return self._kernel["xfel_hio"](y, support.mask, np.float32(beta), x)

    def raar_(self, x, y, support: Support, beta: float, y_scale: float = 1.0):
        return self._kernel["xfel_raar"](y, support.mask, np.float32(beta), x)

    def real_update_(self, rule: str, x, y, support: Support, beta: float, positivity: bool):
        x_factor, y_outside = self.outside_factors(rule, beta)
        return self._kernel["xfel_real_update"](y, support.mask, np.float32(x_factor), np.float32(y_outside),
                                                bool(positivity), x)

    def dm_split_(self, x, y, scratch, support: Support, beta: float, reality: bool):
        """In one pass: y <- P_S f_M(x) in place, f_S(x) into a new array (``scratch`` is None here)."""
        f_s = self.xp.empty_like(x)
        self._kernel["xfel_dm_split"](x, support.mask, np.float32(beta), bool(reality), y, f_s)
        return y, f_s

    def dm_combine_(self, x, ps_fm, pm_fs, beta: float):
        return self._kernel["xfel_dm_combine"](ps_fm, pm_fs, np.float32(beta), x)

    def scratch_like(self, x):
        """None: the forward FFT is out of place, so no scratch copy of the batch is needed."""
        return None

    def projection_input(self, dst, src):
        """``src`` itself: the forward FFT is out of place, so a copy would only cost a pass over memory."""
        return src


def cuda_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # ImportError, or a CUDA runtime that fails to initialise
        return False


def get_backend(device: str = "auto", ndim: int = 2, workers: int | None = None) -> ArrayBackend:
    """The backend for ``device`` ('cpu', 'cuda' or 'auto': CUDA when available)."""
    if device not in ("auto", "cpu", "cuda"):
        raise StageError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cuda":
        if not cuda_available():
            raise StageError("device 'cuda' requested but CuPy with a CUDA device is not available")
        return CupyBackend(ndim)
    return NumpyBackend(ndim, workers)
