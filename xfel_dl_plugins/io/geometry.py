"""Experiment geometry: detector layout (EXtra-geom), photon energy, distance and beam centre."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputDataError
from ..physics.constants import photon_wavelength_m as wavelength_m

#: Detector types the host can assemble, with the data shape of one frame.
DETECTOR_SHAPES = {"AGIPD1M": (16, 512, 128), "JUNGFRAU4M": (8, 512, 1024)}



def q_from_radius(radius_m, distance_m: float, photon_energy_eV: float):
    """Momentum transfer |q| = 4 pi sin(theta) / lambda (1/m) for a flat detector at ``distance_m``
    and a pixel ``radius_m`` from the beam axis (Ewald curvature included: 2 theta = atan(r / L))."""
    two_theta = np.arctan2(np.asarray(radius_m, dtype=np.float64), distance_m)
    return 4 * np.pi * np.sin(two_theta / 2) / wavelength_m(photon_energy_eV)


def _load_extra_geom(detector: str, geometry_file: str | None):
    import extra_geom

    cls = {"AGIPD1M": extra_geom.AGIPD_1MGeometry, "JUNGFRAU4M": extra_geom.JUNGFRAUGeometry}[detector]
    if geometry_file in (None, "example"):
        if detector == "JUNGFRAU4M":
            return cls.example(8)
        return cls.example()
    path = Path(geometry_file)
    if not path.is_file():
        raise InputDataError(f"geometry file not found: {path}")
    try:
        return cls.from_crystfel_geom(str(path))
    except Exception as exc:  # EXtra-geom raises several types for malformed files
        raise InputDataError(f"cannot read CrystFEL geometry {path}: {exc}") from None


@dataclass
class ExperimentGeometry:
    """Where each pixel is, and how to assemble detector-native frames into 2D images.

    ``detector`` is a multi-module type from :data:`DETECTOR_SHAPES` (assembled with EXtra-geom)
    or ``"flat"`` (frames already 2D, e.g. from a CXI file). ``beam_centre`` is ``(y, x)`` in pixels
    of the assembled image.
    """

    detector: str
    photon_energy_eV: float
    distance_m: float
    pixel_size_m: float
    beam_centre: tuple[float, float]
    image_shape: tuple[int, int]
    extra_geom: Any = None
    origin: tuple[float, float] | None = None  # where EXtra-geom puts x = y = 0 in the assembled image

    @classmethod
    def for_detector(
        cls,
        detector: str,
        *,
        photon_energy_eV: float,
        distance_m: float,
        geometry_file: str | None = None,
        beam_centre: tuple[float, float] | None = None,
    ) -> ExperimentGeometry:
        geom = _load_extra_geom(detector, geometry_file)
        probe = np.zeros((1,) + DETECTOR_SHAPES[detector], dtype=np.float32)
        image, centre = geom.position_modules(probe)
        return cls(
            detector=detector,
            photon_energy_eV=photon_energy_eV,
            distance_m=distance_m,
            pixel_size_m=float(geom.pixel_size),
            beam_centre=tuple(float(c) for c in (beam_centre or centre)),
            image_shape=image.shape[-2:],
            extra_geom=geom,
            origin=tuple(float(c) for c in centre),
        )

    @classmethod
    def flat(cls, shape, *, pixel_size_m: float, photon_energy_eV: float, distance_m: float, beam_centre=None):
        centre = beam_centre or ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
        return cls("flat", photon_energy_eV, distance_m, pixel_size_m, tuple(float(c) for c in centre), tuple(shape))

    @property
    def wavelength_m(self) -> float:
        return wavelength_m(self.photon_energy_eV)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self.image_shape if self.detector == "flat" else DETECTOR_SHAPES[self.detector]

    def assemble(self, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detector-native ``(n, *frame_shape)`` -> assembled images ``(n, H, W)`` and their validity
        (gaps and invalid pixels are 0 in the image and False in the validity)."""
        if self.detector == "flat":
            return data, valid
        n, geom = data.shape[0], self.extra_geom
        image = geom.output_array_for_position(extra_shape=(n,), dtype=np.float32)
        image_valid = geom.output_array_for_position(extra_shape=(n,), dtype=np.uint8)  # gaps: 0
        geom.position_modules(data, out=image)
        geom.position_modules(valid, out=image_valid)
        image_valid = image_valid.view(bool)
        np.copyto(image, 0, where=~image_valid)
        return image, image_valid

    def pixel_radius_m(self) -> np.ndarray:
        """Distance of every pixel from the beam axis (m), in the detector-native layout."""
        if self.detector == "flat":
            yy, xx = np.indices(self.image_shape, dtype=np.float64)
            return np.hypot(yy - self.beam_centre[0], xx - self.beam_centre[1]) * self.pixel_size_m
        pos = self.extra_geom.get_pixel_positions()  # (..., 3) metres; image row = origin_y + y / pixel
        dy = (self.origin[0] - self.beam_centre[0]) * self.pixel_size_m
        dx = (self.origin[1] - self.beam_centre[1]) * self.pixel_size_m
        return np.hypot(pos[..., 1] + dy, pos[..., 0] + dx)

    def q_map(self, shape: tuple[int, int], binning: int) -> np.ndarray:
        """|q| (1/m) on a ``shape`` grid of ``binning``-binned pixels centred on the beam (index shape//2)."""
        yy, xx = np.indices(shape, dtype=np.float64)
        r_px = np.hypot(yy - shape[0] // 2, xx - shape[1] // 2) * binning
        return q_from_radius(r_px * self.pixel_size_m, self.distance_m, self.photon_energy_eV).astype(np.float32)
