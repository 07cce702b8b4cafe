"""Preprocessing: map assembled frames onto the beam-centred reciprocal-space grid stages work on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.grid import ZERO_RING_PHOTONS, bin_to_grid, unmeasured_zeros
from .base import Field, FrameBatch, Param, Stage


@dataclass(frozen=True)
class ReciprocalGridInfo:
    """The grid of ``pattern``: beam centre at ``[size//2, size//2]``; ``q`` in 1/m per grid pixel."""

    q: np.ndarray
    pixel_size_m: float
    distance_m: float
    wavelength_m: float
    binning: int

    @property
    def q_per_pixel(self) -> float:
        """|q| step of one grid pixel near the beam (1/m): 2 pi * pixel / (lambda * L)."""
        return 2 * np.pi * self.pixel_size_m / (self.wavelength_m * self.distance_m)


class ReciprocalGrid(Stage):
    description = "Crops and bins assembled frames around the beam centre onto a square q-grid"
    kind = "preprocessing"
    params = {
        "size": Param(128, int, "grid side after binning", unit="pixels", min=8, max=4096),
        "binning": Param(4, int, "detector pixels per grid pixel along each axis", min=1, max=64),
        "zero_ring_photons": Param(ZERO_RING_PHOTONS, float, "a grid pixel reading under 1 photon where its ring "
                                   "(and those beyond) average more photons is unmeasured: an unmasked beam stop, dead pixel "
                                   "or gap (0: keep every zero)", "photons", min=0.0),
    }
    inputs = ("image", "image_valid")
    outputs = (
        Field("pattern", "float32", ("size", "size"), "photons per grid pixel", unit="photons", saved=False),
        Field("pattern_valid", "bool", ("size", "size"), "grid pixel usable", saved=False),
        Field("grid_photons", "float32", (), "photons on the valid grid", unit="photons"),
        Field("zeros_unmeasured", "int32", (), "valid grid pixels reading ~0 among bright ones, set unmeasured",
              unit="pixels"),
    )

    def setup(self) -> None:
        geom = self.context.geometry
        shape = (self.p.size, self.p.size)
        self.info = ReciprocalGridInfo(
            q=geom.q_map(shape, self.p.binning),
            pixel_size_m=geom.pixel_size_m * self.p.binning,
            distance_m=geom.distance_m,
            wavelength_m=geom.wavelength_m,
            binning=self.p.binning,
        )
        self._frames = self._frames_with_zeros = self._zeros = 0

    def warnings(self) -> list[str]:
        if not self._frames_with_zeros:
            return []
        return [f"{self._frames_with_zeros} of {self._frames} frames had zero-photon pixels among bright ones "
                f"({self._zeros} in all), set unmeasured: is a beam stop, dead pixel or gap missing from the mask? "
                "(per frame: zeros_unmeasured)"]

    def process(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        pattern, valid = bin_to_grid(batch["image"], batch["image_valid"], batch.geometry.beam_centre,
                                     self.p.size, self.p.binning)
        zeros = unmeasured_zeros(pattern, valid, self.p.zero_ring_photons) if self.p.zero_ring_photons > 0 \
            else np.zeros(valid.shape, bool)
        valid &= ~zeros
        batch.meta["grid"] = self.info
        per_frame = zeros.sum(axis=(1, 2))
        self._frames += len(per_frame)
        self._frames_with_zeros += int((per_frame > 0).sum())
        self._zeros += int(per_frame.sum())
        return {"pattern": pattern, "pattern_valid": valid,
                "grid_photons": pattern.sum(axis=(1, 2), dtype=np.float64).astype(np.float32),
                "zeros_unmeasured": per_frame.astype(np.int32)}
