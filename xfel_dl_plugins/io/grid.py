"""Map assembled detector frames onto the square, beam-centred grid that stages work on."""

from __future__ import annotations

import numpy as np


def bin_to_grid(images: np.ndarray, valid: np.ndarray, centre_yx, size: int, binning: int = 1):
    """Crop ``(n, H, W)`` frames to ``size*binning`` pixels around the beam centre and bin them.

    Returns ``(patterns, pattern_valid)`` of shape ``(n, size, size)``: photons summed over each
    ``binning x binning`` block (float32), with the beam centre at index ``[size//2, size//2]``.
    Pixels outside the frame or not ``valid`` carry no signal; a block is valid when at least half
    its pixels are, and its sum is scaled up by the inverse valid fraction so that partially masked
    blocks keep the expected photon count.
    """
    images = np.asarray(images)
    valid = np.asarray(valid, dtype=bool)
    if images.ndim != 3 or images.shape != valid.shape:
        raise ValueError(f"expected images and valid of the same shape (n, H, W), got {images.shape} and {valid.shape}")
    n, height, width = images.shape
    span = size * binning
    # Top-left corner such that the beam centre falls on the centre of block size//2.
    cy, cx = (float(c) for c in centre_yx)
    y0 = int(np.floor(cy - (size // 2) * binning - (binning - 1) / 2 + 0.5))
    x0 = int(np.floor(cx - (size // 2) * binning - (binning - 1) / 2 + 0.5))
    crop = np.zeros((n, span, span), dtype=np.float32)
    crop_valid = np.zeros((n, span, span), dtype=bool)
    ys, ye = max(y0, 0), min(y0 + span, height)
    xs, xe = max(x0, 0), min(x0 + span, width)
    if ys < ye and xs < xe:
        region = np.s_[:, ys - y0 : ye - y0, xs - x0 : xe - x0]
        src_valid = valid[:, ys:ye, xs:xe]
        crop_valid[region] = src_valid
        crop[region] = np.where(src_valid, images[:, ys:ye, xs:xe], 0)
    if binning == 1:
        return crop, crop_valid
    blocks = (n, size, binning, size, binning)
    summed = crop.reshape(blocks).sum(axis=(2, 4), dtype=np.float32)
    fraction = crop_valid.reshape(blocks).mean(axis=(2, 4), dtype=np.float32)
    pattern_valid = fraction >= 0.5
    patterns = np.where(pattern_valid, summed / np.maximum(fraction, 1e-6), 0).astype(np.float32)
    return patterns, pattern_valid


#: A pixel reading under one photon where the measured pixels of its ring (and of every ring further
#: out) average more than this many photons is taken as unmeasured: even at a speckle minimum
#: (exponential intensity statistics) a count of 0 or 1 then has a probability below 2 / 1000.
ZERO_RING_PHOTONS = 1000.0


def ring_index(shape: tuple[int, int]) -> np.ndarray:
    """Integer distance (rounded) of every pixel of a beam-centred grid from the beam at ``shape // 2``."""
    yy, xx = np.indices(shape)
    return np.rint(np.hypot(yy - shape[0] // 2, xx - shape[1] // 2)).astype(np.int64)


def radial_profiles(patterns: np.ndarray, valid: np.ndarray, radius_bin: np.ndarray, n_bins: int):
    """Mean intensity and valid-pixel count per integer radius bin, for every frame: ``(n, n_bins)``."""
    n = patterns.shape[0]
    inside = radius_bin < n_bins
    index = (np.arange(n)[:, None] * n_bins + radius_bin[inside][None, :]).ravel()
    weights = np.where(valid, patterns, 0)[:, inside].ravel()
    sums = np.bincount(index, weights=weights, minlength=n * n_bins).reshape(n, n_bins)
    counts = np.bincount(index, weights=valid[:, inside].ravel(), minlength=n * n_bins).reshape(n, n_bins)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0), counts


def unmeasured_zeros(patterns: np.ndarray, valid: np.ndarray, ring_photons: float = ZERO_RING_PHOTONS) -> np.ndarray:
    """Pixels of beam-centred ``(n, size, size)`` patterns that read ~0 where a measurement cannot.

    A beam stop, dead pixels or gaps left unmasked in a file read as zeros (calibrated data: noise
    around zero) among bright pixels. The expected count of a ring of radius r (from the beam at
    ``[size//2, size//2]``) is bounded by the brightest mean over the measured pixels of the rings at
    r and beyond (a particle's intensity falls with q on average; the rings under a beam stop are all
    zeros and get the bound of the rings just outside it). Returns the pixels that are valid, read
    under 1 photon and have that bound above ``ring_photons``.
    """
    ring = ring_index(patterns.shape[1:])
    means, _ = radial_profiles(patterns, valid, ring, int(ring.max()) + 1)
    bound = np.maximum.accumulate(means[:, ::-1], axis=1)[:, ::-1]  # brightest mean at this ring or beyond
    return valid & (patterns < 1) & (bound[:, ring] > ring_photons)
