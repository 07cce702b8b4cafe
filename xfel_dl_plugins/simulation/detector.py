"""Detectors for simulation: a flat grid patch (optionally with AGIPD-1M gaps) or the AGIPD-1M itself."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import XfelDLError
from ..physics.geometry import ScatteringGeometry, flat_detector_positions, scattering_geometry
from .config import DetectorConfig

AGIPD_PIXEL_M = 200e-6
AGIPD_MODULE_SHAPE = (16, 512, 128)


@dataclass
class Detector:
    """Pixels the simulation fills: positions (..., 3) in metres and which of them are sensitive."""

    kind: str
    positions_m: np.ndarray  # (..., 3), sample at the origin, beam along +z
    pixel_size_m: float
    valid: np.ndarray  # (...) bool: False in gaps, the central hole, behind the beam stop
    native_pixels: int  # detector pixels summed into one simulated pixel (noise, saturation)
    distance_m: float
    centre_px: tuple | None = None  # grid: beam position (row, col)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.valid.shape

    def geometry(self, photon_energy_eV: float, polarisation: str = "horizontal") -> ScatteringGeometry:
        return scattering_geometry(self.positions_m, photon_energy_eV, self.pixel_size_m**2, polarisation=polarisation)


@lru_cache(maxsize=4)
def agipd_pixel_positions(distance_m: float) -> np.ndarray:
    """Pixel centres (16, 512, 128, 3) of the EXtra-geom example AGIPD-1M geometry at ``distance_m``."""
    import extra_geom

    pos = extra_geom.AGIPD_1MGeometry.example().get_pixel_positions().astype(np.float64)
    pos[..., 2] += distance_m
    pos.setflags(write=False)
    return pos


def agipd_coverage_on_grid(shape, pixel_size_m: float, centre_px) -> np.ndarray:
    """Fraction (H, W) of each grid pixel's area covered by AGIPD-1M pixels (example geometry, beam at the origin)."""
    pos = agipd_pixel_positions(1.0)
    h, w = shape
    cy, cx = centre_px
    col = np.floor(pos[..., 0] / pixel_size_m + cx + 0.5).astype(np.int64).ravel()
    row = np.floor(pos[..., 1] / pixel_size_m + cy + 0.5).astype(np.int64).ravel()
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    counts = np.bincount(row[inside] * w + col[inside], minlength=h * w).reshape(h, w)
    return counts * (AGIPD_PIXEL_M / pixel_size_m) ** 2


def make_detector(cfg: DetectorConfig) -> Detector:
    """Build the detector a :class:`DetectorConfig` describes."""
    if cfg.kind == "grid":
        h, w = cfg.shape
        centre = tuple(cfg.centre_px) if cfg.centre_px is not None else (h // 2, w // 2)
        pos = flat_detector_positions(cfg.shape, cfg.pixel_size_m, cfg.distance_m, centre)
        valid = np.ones(cfg.shape, dtype=bool)
        if cfg.mask == "agipd":
            valid &= agipd_coverage_on_grid(cfg.shape, cfg.pixel_size_m, centre) >= 0.5
        native = cfg.binning**2
        pixel = cfg.pixel_size_m
    elif cfg.kind == "agipd1m":
        pos = np.array(agipd_pixel_positions(cfg.distance_m))
        valid = np.ones(AGIPD_MODULE_SHAPE, dtype=bool)
        centre, native, pixel = None, 1, AGIPD_PIXEL_M
    else:
        raise XfelDLError(f"detector.kind: unknown detector {cfg.kind!r}")
    radius = np.hypot(pos[..., 0], pos[..., 1])
    valid &= radius >= cfg.beam_stop_radius_m
    return Detector(cfg.kind, pos, pixel, valid, native, cfg.distance_m, centre)


def grid_detector(shape=(128, 128), pixel_size_m=0.8e-3, distance_m=0.705, *, centre_px=None, mask="agipd",
                  beam_stop_radius_m=3.0e-3, binning=4) -> Detector:
    """A flat grid patch, e.g. the 4x4-binned AGIPD-1M as a 128x128 grid of 0.8 mm pixels at 0.705 m."""
    return make_detector(DetectorConfig(kind="grid", shape=tuple(shape), pixel_size_m=pixel_size_m,
                                        distance_m=distance_m, centre_px=centre_px, mask=mask,
                                        beam_stop_radius_m=beam_stop_radius_m, binning=binning))
