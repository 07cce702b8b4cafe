"""Lit-pixel hit finder with an adaptive threshold: the non-learned baseline for hit finding.

As in EuXFEL's ``extra-redu`` SPI hit finder, a frame's score is the number of valid pixels above a
photon threshold, and a frame is a hit when its score exceeds a threshold adapted over a moving
window of recent frames. ``extra-redu`` uses mean + k sigma of the window, which hits inflate when
hits are frequent; the default here uses the median and the MAD-based sigma (``statistic =
"robust"``), which stays put up to ~50 % hit rate, and a Poisson floor on sigma.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .base import Field, FrameBatch, Param, Stage

MAD_TO_SIGMA = 1.4826


class LitPixelHitFinder(Stage):
    description = "Counts lit pixels per frame; hit when the count exceeds an adaptive threshold"
    kind = "hit_finder"
    params = {
        "photon_threshold": Param(0.7, float, "a pixel is lit above this value", unit="photons", min=0.0),
        "k_sigma": Param(4.0, float, "hit when lit pixels > centre + k_sigma * sigma of the window", min=0.0),
        "statistic": Param("robust", str, "window statistics: robust (median/MAD) or mean_std (as extra-redu)",
                           choices=("robust", "mean_std")),
        "window": Param(2000, int, "frames in the moving window of scores", min=10),
        "min_lit_pixels": Param(20, int, "never call a hit below this many lit pixels", min=0),
        "fixed_threshold": Param(0, int, "if > 0: a fixed lit-pixel threshold instead of the adaptive one", min=0),
        "modules": Param([], list, "module numbers to count (empty: all)"),
        "max_radius_mm": Param(0.0, float, "count only pixels this close to the beam axis (0: all); "
                               "less background, same signal for small particles", unit="mm", min=0.0),
    }
    inputs = ("data", "valid")
    outputs = (
        Field("lit_pixels", "int32", doc="valid pixels above photon_threshold"),
        Field("unmasked_pixels", "int32", doc="valid pixels counted"),
        Field("total_intensity", "float32", doc="sum over valid pixels", unit="photons"),
        Field("hit_score", "float32", doc="(lit_pixels - centre) / sigma of the window"),
        Field("threshold", "float32", doc="lit-pixel threshold used for this frame"),
        Field("is_hit", "bool", doc="lit_pixels above the threshold"),
    )
    filter_field = "is_hit"

    def setup(self) -> None:
        self._roi = None
        if self.p.max_radius_mm > 0:
            if self.context.geometry is None:
                raise ValueError("max_radius_mm needs the detector geometry")
            self._roi = self.context.geometry.pixel_radius_m() <= self.p.max_radius_mm * 1e-3
        self._window: deque[np.ndarray] = deque()
        self._window_len = 0
        self._n_frames = self._n_hits = 0

    def _count(self, batch: FrameBatch):
        data, valid = batch["data"], batch["valid"]
        if self._roi is not None:
            valid = valid & self._roi
        if self.p.modules:
            if data.ndim != 4:
                raise ValueError("'modules' can only be selected for multi-module detector data")
            data, valid = data[:, self.p.modules], valid[:, self.p.modules]
        pixel_axes = tuple(range(1, data.ndim))  # reduce without reshaping (frames may be strided views)
        lit = np.count_nonzero((data > self.p.photon_threshold) & valid, axis=pixel_axes).astype(np.int32)
        total = np.sum(data, axis=pixel_axes, where=valid, dtype=np.float64).astype(np.float32)
        return lit, np.count_nonzero(valid, axis=pixel_axes).astype(np.int32), total

    def _threshold(self, lit: np.ndarray) -> tuple[float, float, float]:
        """Centre, sigma and threshold from the window of recent scores (including this batch)."""
        self._window.append(lit)
        self._window_len += len(lit)
        while self._window_len - len(self._window[0]) >= self.p.window:
            self._window_len -= len(self._window.popleft())
        scores = np.concatenate(self._window).astype(np.float64)
        if self.p.statistic == "robust":
            centre = float(np.median(scores))
            sigma = MAD_TO_SIGMA * float(np.median(np.abs(scores - centre)))
        else:
            centre, sigma = float(scores.mean()), float(scores.std())
        sigma = max(sigma, np.sqrt(max(centre, 1.0)))  # counts are at least Poisson-noisy
        if self.p.fixed_threshold > 0:
            return centre, sigma, float(self.p.fixed_threshold)
        return centre, sigma, max(centre + self.p.k_sigma * sigma, float(self.p.min_lit_pixels))

    def process(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        lit, unmasked, total = self._count(batch)
        centre, sigma, threshold = self._threshold(lit)
        is_hit = lit > threshold
        self._n_frames += len(lit)
        self._n_hits += int(is_hit.sum())
        return {
            "lit_pixels": lit,
            "unmasked_pixels": unmasked,
            "total_intensity": total,
            "hit_score": ((lit - centre) / sigma).astype(np.float32),
            "threshold": np.full(len(lit), threshold, np.float32),
            "is_hit": is_hit,
        }

    def finish(self) -> dict[str, float]:
        return {"frames": self._n_frames, "hits": self._n_hits,
                "hit_rate": self._n_hits / self._n_frames if self._n_frames else 0.0}
