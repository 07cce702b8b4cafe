"""The fixed network input: a beam-centred, binned photon pattern and its validity mask.

Both learned classifiers see the same two channels, computed here and nowhere else:

* ``log1p(max(photons, 0)) / LOG_SCALE`` on valid pixels, 0 on invalid ones (photon data spans
  0 to ~1e4 photons per binned pixel; the log keeps weak hits and bright centres in range);
* the validity mask (1 = pixel carries signal; gaps, beam stop and bad pixels are 0), so the
  network can tell "no photons" from "no detector".
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import InputDataError
from ..io.grid import bin_to_grid

#: Divides log1p(photons): log1p(~1e4 photons) ~ 9.2 maps to ~1.5.
LOG_SCALE = 6.0


def network_input(patterns, valid):
    """``(n, 2, S, S)`` float32 network input from photon patterns and their validity.

    NumPy arrays give a NumPy array; torch tensors give a tensor on their device (the classifier
    builds its input on the GPU that way: the same operations, so the same values)."""
    xp = _namespace(patterns)
    if xp is np:
        patterns = np.asarray(patterns, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
    if patterns.ndim != 3 or tuple(patterns.shape) != tuple(valid.shape):
        raise InputDataError(
            f"classifier input must be (n, S, S) patterns with a validity mask of the same shape, "
            f"got {tuple(patterns.shape)} and {tuple(valid.shape)}"
        )
    valid = valid & xp.isfinite(patterns)
    signal = xp.log1p(xp.clip(xp.where(valid, patterns, 0), 0, None)) * (1.0 / LOG_SCALE)
    return xp.stack([signal, valid.float() if xp is not np else valid.astype(np.float32)], 1)


def _namespace(a):
    """numpy, or torch for a torch tensor (both have the functions used here under the same names)."""
    if type(a).__module__.startswith("torch"):
        import torch

        return torch
    return np


def to_whole_photons(patterns: np.ndarray) -> np.ndarray:
    """Patterns rounded to whole, non-negative photons, as photonised data and Poisson-only
    simulators (Condor) give them: no sub-photon read-out noise."""
    return np.rint(np.clip(patterns, 0, None))


def whole_photon_frames(images: np.ndarray, valid: np.ndarray, n_samples: int = 1024,
                        min_fraction: float = 0.9) -> np.ndarray:
    """Per frame: do its valid pixels hold whole numbers of photons (photonised data)?

    Calibrated AGIPD frames carry sub-photon read-out noise; photonised frames and Poisson-only
    simulations do not. About ``n_samples`` evenly spaced pixels are read; a frame counts as whole
    photons when at least ``min_fraction`` of its valid ones are whole numbers (not all: on the model
    grid, blocks cut by gaps or the beam stop are scaled up to a full block's area). A frame with
    read-out noise has almost no whole values.
    """
    images = np.asarray(images)
    flat = images.reshape(len(images), -1)
    step = max(1, flat.shape[1] // n_samples)
    sample = flat[:, ::step]
    mask = np.broadcast_to(np.asarray(valid, bool), images.shape).reshape(len(images), -1)[:, ::step]
    n_valid = mask.sum(axis=1)
    n_whole = np.sum((sample == np.rint(sample)) & mask, axis=1)
    return (n_valid > 0) & (n_whole >= min_fraction * n_valid)


def restore_readout_noise(patterns: np.ndarray, frames: np.ndarray, sigma: float) -> np.ndarray:
    """``patterns`` with Gaussian noise of rms ``sigma`` photons added to the ``frames`` chosen (bool).

    Dithering: photonised frames lost the sub-photon read-out noise that the packaged networks were
    trained with, and part of the classifier's decision rests on it (docs/classification.md, "Input").
    Each frame's noise is seeded by its own content, so a frame gets the same noise in any batch and
    any run. Returns the input itself when no frame is chosen.
    """
    frames = np.asarray(frames, bool)
    if not frames.any():
        return patterns
    out = np.array(patterns, dtype=np.float32)
    for i in np.flatnonzero(frames):
        rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(out[i]).tobytes()))
        out[i] += np.float32(sigma) * rng.standard_normal(out[i].shape, dtype=np.float32)
    return out


#: Views of a pattern whose network outputs the classifier can average: the pattern, rotated by 90
#: degrees, mirrored, transposed (training augments with all eight dihedral views). They act on the
#: last two axes, so they apply alike to patterns ``(n, S, S)`` and to network input ``(n, C, S, S)``,
#: and on NumPy arrays as on torch tensors (``xp``: numpy or torch).
DIHEDRAL_VIEWS = (lambda a, xp: a, lambda a, xp: xp.rot90(a, 1, (-2, -1)), lambda a, xp: xp.flip(a, (-2,)),
                  lambda a, xp: xp.swapaxes(a, -2, -1))
VIEW_COUNTS = (1, 2, 4)


def average_over_views(forward, x, views: int):
    """Mean of ``forward(view(x))`` over the first ``views`` of :data:`DIHEDRAL_VIEWS`.

    ``x`` is network input (:func:`network_input`, an array or a tensor): computed once, since a view
    of the input is the input of the view (the channels are pixel-wise)."""
    if views not in VIEW_COUNTS:
        raise InputDataError(f"views must be one of {VIEW_COUNTS}, got {views!r}")
    xp = _namespace(x)
    contiguous = np.ascontiguousarray if xp is np else (lambda a: a.contiguous())
    total = 0
    for view in DIHEDRAL_VIEWS[:views]:
        total = total + forward(contiguous(view(x, xp)))
    return total / views


def frames_to_grid(images, valid, centre_yx, size: int, binning: int):
    """Bin assembled frames onto the model grid around the beam centre (see ``bin_to_grid``)."""
    images = np.asarray(images)
    if images.ndim == 2:
        images, valid = images[None], np.asarray(valid)[None]
    return bin_to_grid(images, valid, centre_yx, size, binning)
