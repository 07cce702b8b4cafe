"""Figures of merit for phase retrieval, shared by every phase retriever of the package.

Conventions: diffraction arrays are FFT-centred (zero frequency at index 0 of each axis), an
object ``rho`` models the intensity ``I_c = |fftn(rho)|**2`` (unnormalised forward FFT), and
``valid`` is True where a pixel was measured. All functions take NumPy arrays (use
``backend.to_numpy`` first for GPU arrays) and work for 2D and 3D arrays.

- :func:`r_factor`, :func:`poisson_llk`: agreement of a model with the measured intensities.
- :func:`register_translation`, :func:`align_to_reference`, :func:`ambiguity_error`: the error
  after removing the trivial ambiguities (translation with sub-pixel precision, global complex
  factor, twin ``rho(r) -> conj(rho(-r))``).
- :func:`prtf`, :func:`frc`, :func:`half_bit_threshold`: resolution estimates.
- :func:`missing_mode_fractions`, :func:`unconstrained_modes`: how much of an object the data leave
  undetermined (the modes a support lets live mostly in the unmeasured pixels).
- :func:`unmeasured_excess`: how much brighter a model is in unmeasured pixels (detector gaps) than
  the measured pixels around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..errors import InputDataError
from .support import frequency_squared

#: PRTF level that defines the resolution (Chapman et al. 2006).
PRTF_THRESHOLD = 1.0 / np.e
_TINY = 1e-30


# --------------------------------------------------------------------------------------------
# Agreement with the data
# --------------------------------------------------------------------------------------------
def r_factor(iobs: np.ndarray, icalc: np.ndarray, valid: np.ndarray) -> float:
    """R_F = sum |sqrt(I_o) - k|F_c|| / sum sqrt(I_o) over valid pixels, with the best scale k."""
    ao = np.sqrt(np.clip(np.asarray(iobs, np.float64)[valid], 0, None))
    ac = np.sqrt(np.clip(np.asarray(icalc, np.float64)[valid], 0, None))
    k = (ao * ac).sum() / max((ac * ac).sum(), _TINY)
    return float(np.abs(ao - k * ac).sum() / max(ao.sum(), _TINY))


def poisson_deviance(iobs, icalc, xp=np):
    """Per-pixel Poisson deviance 2 [I_c - I_o + I_o ln(I_o/I_c)] (0 where both vanish)."""
    icalc = xp.maximum(icalc, _TINY)
    iobs = xp.maximum(iobs, 0)
    log_term = xp.where(iobs > 0, iobs * xp.log(xp.maximum(iobs, _TINY) / icalc), 0)
    return 2 * (icalc - iobs + log_term)


def poisson_llk(iobs: np.ndarray, icalc: np.ndarray, valid: np.ndarray, n_params: int = 0) -> float:
    """Normalised Poisson log-likelihood: sum of deviances over ``valid`` / (n_valid - n_params).

    ~1 for a model that fits down to the Poisson noise; ``n_params`` is the number of free
    parameters (the support size) and is 0 for a free LLK.
    """
    valid = np.asarray(valid, bool)
    n = int(valid.sum())
    if n == 0:
        return float("nan")
    dev = poisson_deviance(np.asarray(iobs, np.float64)[valid], np.asarray(icalc, np.float64)[valid])
    return float(dev.sum() / max(n - n_params, 1))


def best_intensity_scale(iobs: np.ndarray, icalc: np.ndarray, valid: np.ndarray) -> float:
    """Poisson maximum-likelihood scale s of a model intensity: sum I_o / sum I_c over valid pixels."""
    return float(np.clip(iobs[valid], 0, None).sum() / max(float(icalc[valid].sum()), _TINY))


# --------------------------------------------------------------------------------------------
# Registration and ambiguity-removed error
# --------------------------------------------------------------------------------------------
def _signed_freqs(n: int) -> np.ndarray:
    return np.fft.fftfreq(n) * n  # integer frequency index k in [-n/2, n/2)


def _phase_ramp(shape: tuple[int, ...], shift: np.ndarray) -> np.ndarray:
    """exp(-2 pi i k.shift/N): the Fourier factor that translates an array by ``shift`` pixels."""
    ramp = np.ones(shape, np.complex128)
    for axis, (n, s) in enumerate(zip(shape, shift)):
        view = [1] * len(shape)
        view[axis] = n
        ramp = ramp * np.exp(-2j * np.pi * _signed_freqs(n) * s / n).reshape(view)
    return ramp


def _upsampled_cc(product: np.ndarray, centre: np.ndarray, upsample: int, half_width: float) -> np.ndarray:
    """Cross-correlation sum_k product(k) exp(2 pi i k.t/N) on a fine grid of t around ``centre``."""
    m = int(np.ceil(half_width * upsample)) * 2 + 1
    offsets = (np.arange(m) - m // 2) / upsample
    out = product
    for axis, n in enumerate(product.shape):
        t = centre[axis] + offsets
        kernel = np.exp(2j * np.pi * np.outer(_signed_freqs(n), t) / n)  # (n, m)
        out = np.moveaxis(np.tensordot(out, kernel, axes=([axis], [0])), -1, axis)
    return out


def register_translation(f_ref: np.ndarray, f_mov: np.ndarray, upsample: int = 20) -> np.ndarray:
    """Shift (pixels, sub-pixel 1/``upsample``) that moves ``f_mov``'s object onto ``f_ref``'s.

    Both arguments are Fourier transforms. Integer peak of the FFT cross-correlation, then
    refinement by an upsampled matrix DFT over +-1.5 px (Guizar-Sicairos et al. 2008).
    """
    product = f_ref * np.conj(f_mov)
    cc = np.abs(sfft.ifftn(product))
    peak = np.array(np.unravel_index(int(np.argmax(cc)), cc.shape), float)
    shape = np.array(cc.shape)
    peak = np.where(peak > shape // 2, peak - shape, peak)
    if upsample > 1:
        fine = np.abs(_upsampled_cc(product, peak, upsample, 1.5))
        idx = np.array(np.unravel_index(int(np.argmax(fine)), fine.shape), float)
        peak = peak + (idx - fine.shape[0] // 2) / upsample
    return peak


@dataclass
class Alignment:
    """How a reconstruction was matched to a reference: ``aligned = c * T_shift(twin? conj(rho(-r)))``."""

    error: float  # ||ref - aligned|| / ||ref||
    shift: np.ndarray  # pixels
    twin: bool
    factor: complex  # global complex factor c (phase and scale)
    aligned_ft: np.ndarray  # Fourier transform of the aligned reconstruction


def align_fourier(f_ref: np.ndarray, f_mov: np.ndarray, upsample: int = 20, allow_twin: bool = True) -> Alignment:
    """Best alignment of ``f_mov`` onto ``f_ref`` (both Fourier transforms) over shift, twin and c."""
    ref_norm = float(np.vdot(f_ref, f_ref).real)
    best = None
    for twin in (False, True) if allow_twin else (False,):
        cand = np.conj(f_mov) if twin else f_mov
        shift = register_translation(f_ref, cand, upsample)
        moved = cand * _phase_ramp(cand.shape, shift)
        c = complex(np.vdot(moved, f_ref) / max(float(np.vdot(moved, moved).real), _TINY))
        moved = moved * c
        err = float(np.sqrt(np.vdot(f_ref - moved, f_ref - moved).real / max(ref_norm, _TINY)))
        if best is None or err < best.error:
            best = Alignment(err, shift, twin, c, moved)
    return best


def align_to_reference(reference: np.ndarray, reconstruction: np.ndarray, upsample: int = 20,
                       allow_twin: bool = True) -> Alignment:
    """Align a real-space ``reconstruction`` onto ``reference`` (see :func:`align_fourier`)."""
    if reference.shape != reconstruction.shape:
        raise InputDataError(f"cannot align arrays of shapes {reference.shape} and {reconstruction.shape}")
    f_ref = sfft.fftn(np.asarray(reference, np.complex128))
    f_mov = sfft.fftn(np.asarray(reconstruction, np.complex128))
    return align_fourier(f_ref, f_mov, upsample, allow_twin)


def ambiguity_error(truth: np.ndarray, reconstruction: np.ndarray, upsample: int = 20) -> float:
    """min over translation (sub-pixel), global complex factor and twin of ||truth - rec|| / ||truth||."""
    return align_to_reference(truth, reconstruction, upsample).error


def aligned_real_space(alignment: Alignment) -> np.ndarray:
    """The aligned reconstruction back in real space (complex64)."""
    return sfft.ifftn(alignment.aligned_ft).astype(np.complex64)


# --------------------------------------------------------------------------------------------
# Resolution: PRTF and FRC
# --------------------------------------------------------------------------------------------
def radial_shells(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Shell index of every FFT-centred pixel (width 1/max(shape) cycles/px) and shell frequencies."""
    freq = np.sqrt(frequency_squared(shape, dtype=np.float64))
    step = 1.0 / max(shape)
    index = np.rint(freq / step).astype(np.int64)
    return index, np.arange(index.max() + 1) * step


@dataclass
class ResolutionCurve:
    """A curve over radial shells with the frequency (cycles/px) where it crosses its threshold."""

    frequency: np.ndarray  # cycles per pixel, per shell
    value: np.ndarray  # curve value per shell (NaN: no data)
    threshold: np.ndarray  # threshold per shell
    cutoff_frequency: float  # first crossing below the threshold (cycles/px); NaN if never resolved

    @property
    def resolution_px(self) -> float:
        """Half-period resolution in real-space pixels: 1 / (2 f_cut)."""
        f = self.cutoff_frequency
        return float(1.0 / (2.0 * f)) if np.isfinite(f) and f > 0 else float("nan")


def _cutoff(freq: np.ndarray, value: np.ndarray, threshold: np.ndarray) -> float:
    """Frequency of the first fall below threshold (linear interpolation), searching outward."""
    ok = np.isfinite(value)
    f, v, t = freq[ok], value[ok], threshold[ok]
    if len(f) == 0 or v[0] < t[0]:
        return float("nan") if len(f) == 0 else float(f[0])
    below = np.nonzero(v < t)[0]
    if len(below) == 0:
        return float(f[-1])
    i = below[0]
    d0, d1 = v[i - 1] - t[i - 1], v[i] - t[i]
    return float(f[i - 1] + (f[i] - f[i - 1]) * d0 / (d0 - d1))


def prtf(aligned_fts: np.ndarray, iobs: np.ndarray, valid: np.ndarray, normalise: str = "model") -> ResolutionCurve:
    """Phase-retrieval transfer function of independent reconstructions, per radial shell.

    ``aligned_fts`` (n_runs, *shape): Fourier transforms of the runs after alignment (translation,
    twin, global phase removed); sums run over the valid pixels of a shell.

    - ``normalise='data'`` (textbook): sum |<F_j>_j| / sum sqrt(I_o). With few runs it does not fall
      below ~1/sqrt(n_runs) where phases are random, and with few photons per pixel sum sqrt(I_o)
      underestimates the amplitude (Poisson zeros), pushing it above 1 at high q.
    - ``normalise='model'`` (default): the phase reproducibility, unbiased for the number of runs:
      sqrt((sum |sum_j F_j|^2 - sum_j |F_j|^2) / ((n - 1) sum_j |F_j|^2)): 1 where all runs agree,
      0 on average where their phases are independent, so the 1/e crossing is meaningful with 4 runs.
    """
    aligned_fts = np.asarray(aligned_fts)
    if aligned_fts.shape[1:] != iobs.shape:
        raise InputDataError(f"PRTF: reconstructions {aligned_fts.shape[1:]} and data {iobs.shape} differ")
    if normalise not in ("model", "data"):
        raise InputDataError(f"PRTF: normalise must be 'model' or 'data', got {normalise!r}")
    n_runs = len(aligned_fts)
    if normalise == "model" and n_runs < 2:
        raise InputDataError("PRTF: the model normalisation needs at least 2 runs")
    shell, freq = radial_shells(iobs.shape)
    w = np.asarray(valid, bool).ravel()
    idx = shell.ravel()[w]

    def shell_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(idx, values.ravel()[w], minlength=len(freq))

    with np.errstate(invalid="ignore", divide="ignore"):
        if normalise == "data":
            num = shell_sum(np.abs(aligned_fts.mean(axis=0)))
            den = shell_sum(np.sqrt(np.clip(iobs, 0, None)))
            value = np.where(den > 0, num / den, np.nan)
        else:
            power = (np.abs(aligned_fts) ** 2).sum(axis=0)
            coherent = shell_sum(np.abs(aligned_fts.sum(axis=0)) ** 2) - shell_sum(power)
            den = (n_runs - 1) * shell_sum(power)
            value = np.where(den > 0, np.sqrt(np.clip(coherent / den, 0, None)), np.nan)
    threshold = np.full_like(value, PRTF_THRESHOLD)
    return ResolutionCurve(freq, value, threshold, _cutoff(freq, value, threshold))


def half_bit_threshold(n_pixels_in_shell: np.ndarray) -> np.ndarray:
    """Half-bit information threshold (van Heel & Schatz 2005) for shells of n pixels (voxels)."""
    s = np.sqrt(np.maximum(n_pixels_in_shell, 1))
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


def frc(image1: np.ndarray, image2: np.ndarray) -> ResolutionCurve:
    """Fourier ring (2D) / shell (3D) correlation of two real-space images, with the half-bit threshold."""
    if image1.shape != image2.shape:
        raise InputDataError(f"FRC: shapes {image1.shape} and {image2.shape} differ")
    f1 = sfft.fftn(np.asarray(image1, np.complex128))
    f2 = sfft.fftn(np.asarray(image2, np.complex128))
    shell, freq = radial_shells(image1.shape)
    idx = shell.ravel()
    n = len(freq)
    cross = np.bincount(idx, (f1 * np.conj(f2)).real.ravel(), minlength=n) + 1j * np.bincount(
        idx, (f1 * np.conj(f2)).imag.ravel(), minlength=n)
    p1 = np.bincount(idx, (np.abs(f1) ** 2).ravel(), minlength=n)
    p2 = np.bincount(idx, (np.abs(f2) ** 2).ravel(), minlength=n)
    counts = np.bincount(idx, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(p1 * p2 > 0, np.abs(cross) / np.sqrt(p1 * p2), np.nan)
    # Only shells fully inside the Nyquist sphere are meaningful.
    value[freq > 0.5] = np.nan
    threshold = half_bit_threshold(counts)
    return ResolutionCurve(freq, value, threshold, _cutoff(freq, value, threshold))


# --------------------------------------------------------------------------------------------
# What the data do not determine
# --------------------------------------------------------------------------------------------
#: A mode with more than this fraction of its power in unmeasured pixels counts as unconstrained.
UNCONSTRAINED_FRACTION = 0.5


def missing_mode_fractions(support: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per mode, the fraction of its power in the unmeasured pixels, largest first.

    The modes are the objects on ``support`` whose transforms concentrate most in the pixels
    ``~valid`` (the eigenvectors of that concentration problem, as in Thibault et al. 2006,
    Acta Cryst. A 62, 248): a mode near 1 is invisible in the data, so neither the modulus nor the
    support constraint fixes it. One value per unmeasured pixel (the rest are 0). The matrix is
    ``S(q_m - q_m') / N`` over unmeasured pixels m, m' (``S``: the support's transform), so the
    cost grows with the number of unmeasured pixels (an eigenproblem of their number cubed), not
    with the array.
    """
    support, valid = np.asarray(support, bool), np.asarray(valid, bool)
    if support.shape != valid.shape:
        raise InputDataError(f"support {support.shape} and valid {valid.shape} differ in shape")
    missing = np.argwhere(~valid)
    if len(missing) == 0:
        return np.zeros(0)
    support_ft = sfft.fftn(support.astype(np.float64))
    differences = (missing[:, None, :] - missing[None, :, :]) % np.array(support.shape)
    gram = support_ft[tuple(np.moveaxis(differences, -1, 0))] / support.size
    return np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, 1.0)


def unconstrained_modes(support: np.ndarray, valid: np.ndarray, fraction: float = UNCONSTRAINED_FRACTION) -> int:
    """Number of modes with more than ``fraction`` of their power unmeasured (:func:`missing_mode_fractions`)."""
    return int((missing_mode_fractions(support, valid) > fraction).sum())


#: :func:`unmeasured_excess` compares each unmeasured pixel with the measured pixels of a window this
#: many pixels wide around it (a gap of a few rows leaves measured pixels on either side).
EXCESS_WINDOW = 7


def unmeasured_excess(icalc: np.ndarray, iobs: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """How much brighter the model intensities ``icalc`` (a stack of one pattern's starts, at the data's
    scale) are in the unmeasured pixels than the measured intensities near them: per start the geometric
    mean of (I_model + 1) / (I_local + 1) over the unmeasured pixels that have measured pixels in an
    :data:`EXCESS_WINDOW` window (I_local: their mean) and lie beyond twice the innermost measured
    radius (the beam stop's central speckle is brighter than its rim by nature). About 1 for a model
    that continues the data across a gap; a model that puts stripes into a gap's free Fourier components
    (a wrong solution that fits the measured pixels by doing so) is many times brighter there. None
    where no unmeasured pixel qualifies."""
    iobs, valid = np.asarray(iobs, np.float64), np.asarray(valid, bool)
    if not valid.any():
        return None
    radius = np.sqrt(frequency_squared(valid.shape, dtype=np.float64))
    measured_share = ndimage.uniform_filter(valid.astype(np.float64), EXCESS_WINDOW, mode="wrap")
    measured_sum = ndimage.uniform_filter(np.where(valid, iobs, 0.0), EXCESS_WINDOW, mode="wrap")
    pixels = ~valid & (radius > 2 * radius[valid].min()) & (measured_share > 0.5 / EXCESS_WINDOW ** valid.ndim)
    if not pixels.any():
        return None
    local = measured_sum[pixels] / measured_share[pixels]
    icalc = np.asarray(icalc, np.float64).reshape((-1,) + valid.shape)
    return np.exp(np.mean(np.log((icalc[:, pixels] + 1.0) / (local + 1.0)), axis=1))
