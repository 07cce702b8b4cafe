"""Training data for the classifiers: simulated frames on the model grid, cached, and augmented.

Frames come from the project's simulator (:func:`xfel_dl_plugins.simulation.generate`), are mapped
onto the model grid, and are cached per chunk of frames (configuration, seed, first frame) as ``.npz`` under
``$XFEL_DL_CACHE`` (default ``/tmp/xfel_dl_classify_cache``), never in the repository.

:class:`Augmenter` perturbs batches the way real data differs from the simulation (after
SpeckleNN's recipe, re-implemented): detector panels or quadrants missing, random dead patches,
beam-stop size, beam-centre shifts, rotations and flips, fewer photons (binomial thinning, exact
for Poisson data), extra Poisson background and Gaussian read-out noise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import XfelDLError
from ..io.grid import bin_to_grid
from . import CLASS_NAMES
from .inputs import to_whole_photons

#: Simulator class names that map onto our classes (everything else is "other").
CLASS_ALIASES = {"blank": "blank", "miss": "blank", "empty": "blank", "none": "blank",
                 "single": "single", "multiple": "multiple", "multi": "multiple", "double": "multiple"}


def cache_dir() -> Path:
    path = Path(os.environ.get("XFEL_DL_CACHE", "/tmp/xfel_dl_classify_cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def class_index(hit_class, names=None) -> np.ndarray:
    """Our class indices from the simulator's per-frame hit classes (names, or ints into ``names``)."""
    hit_class = np.asarray(hit_class)
    if hit_class.dtype.kind in "iu":
        if names is None:
            raise XfelDLError("integer hit classes need the simulator's class names to be mapped")
        hit_class = np.asarray(names)[hit_class]
    labels = [CLASS_ALIASES.get(str(h.decode() if isinstance(h, bytes) else h).lower(), "other") for h in hit_class]
    return np.array([CLASS_NAMES.index(lab) for lab in labels], dtype=np.int64)


@dataclass
class FrameSet:
    """Frames on the model grid with their truth."""

    patterns: np.ndarray  # (n, S, S) float32 photons per binned pixel
    valid: np.ndarray  # (n, S, S) bool
    labels: np.ndarray  # (n,) int64 index into CLASS_NAMES
    groups: np.ndarray  # (n,) str: shape of the (first) particle, "none" for blanks
    radius_nm: np.ndarray  # (n,) float32: volume-equivalent radius of the (first) particle, 0 if none

    def __len__(self):
        return len(self.labels)

    def take(self, index) -> FrameSet:
        return FrameSet(*(getattr(self, f)[index] for f in FRAMESET_FIELDS))

    @staticmethod
    def concatenate(sets) -> FrameSet:
        sets = list(sets)
        return sets[0] if len(sets) == 1 else FrameSet(*(np.concatenate([getattr(s, f) for s in sets])
                                                         for f in FRAMESET_FIELDS))


FRAMESET_FIELDS = ("patterns", "valid", "labels", "groups", "radius_nm")


def _cache_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def simulator_version() -> str:
    """Hash of the simulator's source (``simulation/`` and ``physics/``): cached frames are only
    reused when the code that made them is unchanged, and model cards record which code it was."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("simulation/*.py"), *root.glob("physics/*.py")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def simulate(sim_config: dict, n: int, seed: int, start: int = 0) -> dict:
    """Run the simulator: frames ``start .. start+n-1`` as per-frame arrays on its flat detector grid
    (``patterns``, ``valid``, truth...); a frame does not depend on which call simulated it (bit for
    bit at a given BLAS thread count; another count moves a few Poisson draws by one photon)."""
    from ..simulation import generate
    from ..simulation.config import config_from_dict

    out = vars(generate(config_from_dict(sim_config), n, seed, start=start, workers=0))  # nor on workers
    out.update(class_names=np.array(out["meta"]["class_names"]), shape_names=np.array(out["meta"]["shape_names"]))
    return out


def simulated_frames(sim_config: dict, n: int, seed: int, grid: dict, *, use_cache: bool = True,
                     simulator: str | None = None, log=None) -> FrameSet:
    """``n`` simulated frames on the model ``grid``, simulated and cached chunk by chunk.

    Each chunk of :data:`SIMULATION_CHUNK` frames is cached as .npz keyed by config, seed, its first
    frame, grid and simulator, so a larger set of the same config reuses the chunks of a smaller one.
    ``simulator`` pins the simulator version (source hash) the frames must come from: they are then
    taken from the cache, and it is an error if they are not there and the current simulator differs.
    """
    current = simulator_version()
    wanted = simulator or current
    chunks = []
    for start in range(0, n, SIMULATION_CHUNK):  # binned chunk by chunk: native-pixel frames are large
        count = min(SIMULATION_CHUNK, n - start)
        key = _cache_key({"config": sim_config, "seed": seed, "start": start, "count": count, "grid": grid,
                          "version": SIMULATION_CACHE_VERSION, "simulator": wanted})
        path = cache_dir() / f"sim-{key}.npz"
        if use_cache and path.is_file():
            with np.load(path, allow_pickle=False) as f:
                chunks.append(FrameSet(*(f[name] for name in FRAMESET_FIELDS)))
            continue
        if wanted != current:
            raise XfelDLError(f"frames from simulator version {wanted} are not cached in {cache_dir()} and the "
                              f"current simulator is {current}: remove data.simulator_version to simulate anew")
        chunk = frames_on_grid(simulate(sim_config, count, seed, start), sim_config, grid)
        if use_cache:
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **{name: getattr(chunk, name) for name in FRAMESET_FIELDS})
            tmp.replace(path)
        chunks.append(chunk)
        if log is not None and n > SIMULATION_CHUNK:
            log(f"simulated {start + count}/{n} frames")
    return FrameSet.concatenate(chunks)


#: Bump when the mapping of simulator output onto FrameSets changes (invalidates the cache).
SIMULATION_CACHE_VERSION = 2
#: Frames simulated (and binned onto the model grid) per call of the simulator, and per cache file.
SIMULATION_CHUNK = 2000


def frames_on_grid(out: dict, sim_config: dict, grid: dict) -> FrameSet:
    """Map simulator output onto the model grid: crop around the beam and bin further if needed."""
    from ..simulation.config import config_from_dict

    det = config_from_dict(sim_config).detector
    extra, rem = divmod(int(grid["binning"]), int(det.binning))
    if rem or extra < 1:
        raise XfelDLError(f"model grid binning {grid['binning']} is not a multiple of the simulator's {det.binning}")
    patterns = np.asarray(out["patterns"], dtype=np.float32)
    valid = np.broadcast_to(np.asarray(out["valid"], dtype=bool), patterns.shape)
    h, w = patterns.shape[1:]
    centre = tuple(det.centre_px) if det.centre_px is not None else (h // 2, w // 2)
    patterns, valid = bin_to_grid(patterns, valid, centre, int(grid["size"]), extra)
    meta = out.get("meta") or {}
    labels = class_index(out["hit_class"], out.get("class_names", meta.get("class_names")))
    shape_names = out.get("shape_names", meta.get("shape_names"))
    groups = np.asarray(shape_names)[np.asarray(out["shape"], int)].astype(str)
    radius = np.asarray(out["radius_nm"], dtype=np.float32)
    return FrameSet(patterns, valid, labels, groups, radius)


@dataclass
class AugmentConfig:
    p_missing_panel: float = 0.3
    p_missing_quadrant: float = 0.1
    max_patches: int = 3
    patch_fraction: float = 0.12  # side of a dead patch as a fraction of the grid
    max_beamstop_px: float = 8.0
    max_shift_px: int = 2
    p_thinning: float = 0.4
    min_keep_fraction: float = 0.3
    max_background: float = 0.4  # extra Poisson photons per binned pixel
    max_read_noise: float = 0.4  # Gaussian sigma, photons per binned pixel
    rotate: bool = True
    # Multiple hits always thinned by a factor in this range (the same scene at a weaker pulse). Off
    # by default: thinning only the multiples makes bright frames look "not multiple" to the network
    # (with (0.2, 0.7) it called 2/3 of clean multiples single or other).
    multiple_keep: tuple = (1.0, 1.0)
    # Chance that a frame is rounded to whole photons, as photonised calibrated data and Poisson-only
    # simulators (Condor) give it: no sub-photon read-out noise for the network to lean on.
    p_photonize: float = 0.0
    # Chance that a frame gets 1-3 masks of kinds the detector's own masks never show (random_masks):
    # shadows of a beam-stop holder or a wire at any angle (up to max_shadow_px wide on the grid), an
    # aperture's round shadow, a beam stop of another shape, dead pixels. Without them the network
    # reads an unfamiliar mask as signal: a diagonal masked line turns blanks into "other" (streaks).
    p_extra_mask: float = 0.0
    max_shadow_px: float = 6.0


def beam_offsets(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel offsets of every pixel from the beam at ``[h//2, w//2]``."""
    y, x = np.indices(shape, dtype=np.float64)
    return y - shape[0] // 2, x - shape[1] // 2


def hide_pixels(frames: dict, hidden: np.ndarray) -> dict:
    """Simulated ``frames`` (``patterns``, ``valid``, ...) with the ``hidden`` pixels (True = hidden, one
    frame's shape) masked as a detector masks them: invalid and zero."""
    return {**frames, "valid": np.asarray(frames["valid"], bool) & ~hidden,
            "patterns": np.where(hidden, np.float32(0), frames["patterns"])}


def straight_shadow(size: int, angle: float, width: float, wire: bool = False, offset: float = 0.0) -> np.ndarray:
    """True on a ``size`` x ``size`` grid (beam at ``[size//2, size//2]``) under a straight shadow ``width``
    pixels wide at ``angle``: a ray from the beam outwards (a beam-stop holder), or with ``wire`` a line
    across the frame ``offset`` pixels from the beam."""
    y, x = beam_offsets((size, size))
    along = x * np.cos(angle) + y * np.sin(angle)
    across = -x * np.sin(angle) + y * np.cos(angle)
    if wire:
        return np.abs(across - offset) < width / 2
    return (along > 0) & (np.abs(across) < width / 2)


def random_masks(size: int, rng: np.random.Generator, max_shadow_px: float = 6.0) -> np.ndarray:
    """1-3 masks (True = hidden) on a ``size`` x ``size`` grid with the beam at ``[size//2, size//2]``,
    each of a kind drawn at random: a holder's shadow (a ray from the beam) or a wire's (a line across),
    up to ``max_shadow_px`` wide at any angle; the round shadow of an aperture (all beyond a circle
    around the beam); a rectangular beam stop near the beam; up to 2 % dead pixels."""
    y, x = beam_offsets((size, size))
    mask = np.zeros((size, size), bool)
    for kind in rng.integers(0, 5, int(rng.integers(1, 4))):
        if kind < 2:  # 0: holder ray, 1: wire line
            mask |= straight_shadow(size, rng.uniform(0, 2 * np.pi), rng.uniform(1.0, max_shadow_px),
                                    wire=bool(kind), offset=rng.uniform(-size / 4, size / 4))
        elif kind == 2:
            cy, cx = rng.normal(0, 0.05 * size, 2)
            mask |= np.hypot(y - cy, x - cx) > rng.uniform(0.55, 0.95) * size / 2
        elif kind == 3:
            cy, cx = rng.uniform(-size / 16, size / 16, 2)
            hy, hx = rng.uniform(2, size / 8, 2)
            mask |= (np.abs(y - cy) < hy) & (np.abs(x - cx) < hx)
        else:
            mask |= rng.random((size, size)) < rng.uniform(0, 0.02)
    return mask


class Augmenter:
    """Random, physically motivated perturbations of (patterns, valid) batches on the model grid."""

    def __init__(self, config: AugmentConfig, rng: np.random.Generator):
        self.c, self.rng = config, rng

    def __call__(self, patterns: np.ndarray, valid: np.ndarray, labels: np.ndarray | None = None):
        patterns = self._photon_noise(np.asarray(patterns, dtype=np.float32), labels)
        valid = valid.copy()
        for i in range(len(patterns)):
            patterns[i], valid[i] = self._geometry(patterns[i], valid[i])
        return patterns, valid

    def _photon_noise(self, p: np.ndarray, labels=None) -> np.ndarray:
        """Fewer photons, extra background and read-out noise, drawn per frame, applied to the batch."""
        c, rng, n = self.c, self.rng, len(p)
        if c.p_thinning or labels is not None:
            # Binomial thinning of Poisson counts = the same pattern at a lower fluence.
            keep_all = np.where(rng.random(n) < c.p_thinning, rng.uniform(c.min_keep_fraction, 1.0, n), 1.0)
            if labels is not None:
                multiple = np.asarray(labels) == CLASS_NAMES.index("multiple")
                keep_all[multiple] *= rng.uniform(*c.multiple_keep, int(multiple.sum()))
            chosen = np.flatnonzero(keep_all < 1.0)
            keep = keep_all[chosen]
            p = p.copy()
            rounded = np.rint(p[chosen])
            p[chosen] = rng.binomial(np.clip(rounded, 0, None).astype(np.int64), keep[:, None, None]) + (p[chosen] - rounded)
        if c.max_background:
            level = c.max_background * rng.random(n) ** 2  # mostly low, sometimes high
            p = p + rng.poisson(level[:, None, None], p.shape).astype(np.float32)
        if c.max_read_noise:
            p = p + (rng.uniform(0, c.max_read_noise, n)[:, None, None].astype(np.float32) * rng.standard_normal(p.shape, dtype=np.float32))
        if c.p_photonize:
            whole = rng.random(n) < c.p_photonize
            p[whole] = to_whole_photons(p[whole])
        return p.astype(np.float32, copy=False)

    def _geometry(self, p: np.ndarray, v: np.ndarray):
        """Beam-centre shift, rotation/flip, missing panels, quadrants, patches and beam stop of one frame."""
        c, rng, size = self.c, self.rng, p.shape[0]
        if c.max_shift_px:
            dy, dx = rng.integers(-c.max_shift_px, c.max_shift_px + 1, 2)
            p, v = np.roll(p, (dy, dx), (0, 1)), np.roll(v, (dy, dx), (0, 1))
            if dy > 0:
                v[:dy] = False
            elif dy < 0:
                v[dy:] = False
            if dx > 0:
                v[:, :dx] = False
            elif dx < 0:
                v[:, dx:] = False
        if c.rotate:
            k = int(rng.integers(4))
            p, v = np.rot90(p, k), np.rot90(v, k)
            if rng.random() < 0.5:
                p, v = p[:, ::-1], v[:, ::-1]
            p, v = np.ascontiguousarray(p), np.ascontiguousarray(v)
        if rng.random() < c.p_missing_panel:  # a module-like strip from the edge towards the centre
            w = max(1, size // 8)
            start = int(rng.integers(0, size - w))
            half = slice(0, size // 2) if rng.random() < 0.5 else slice(size // 2, size)
            if rng.random() < 0.5:
                v[half, start : start + w] = False
            else:
                v[start : start + w, half] = False
        if rng.random() < c.p_missing_quadrant:
            ys = slice(0, size // 2) if rng.random() < 0.5 else slice(size // 2, size)
            xs = slice(0, size // 2) if rng.random() < 0.5 else slice(size // 2, size)
            v[ys, xs] = False
        side = max(1, int(round(c.patch_fraction * size)))
        for _ in range(int(rng.integers(0, c.max_patches + 1))):
            y, x = rng.integers(0, size - side, 2)
            v[y : y + side, x : x + side] = False
        if c.p_extra_mask and rng.random() < c.p_extra_mask:
            v &= ~random_masks(size, rng, c.max_shadow_px)
        if c.max_beamstop_px:
            r = rng.uniform(0, c.max_beamstop_px)
            yy, xx = np.ogrid[:size, :size]
            v[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= r * r] = False
        return np.where(v, p, 0).astype(np.float32), v
