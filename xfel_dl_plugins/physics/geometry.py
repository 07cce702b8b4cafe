"""Per-pixel scattering geometry: q on the Ewald sphere, solid angle, polarisation factor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import XfelDLError
from .constants import photon_wavelength_m


@dataclass(frozen=True)
class ScatteringGeometry:
    """Per-pixel quantities of a detector for a given photon energy (arrays share the pixel shape)."""

    q: np.ndarray  # (..., 3) scattering vector k_out - k_in, 1/m (exact: Ewald-sphere curvature included)
    q_abs: np.ndarray  # (...) |q| = 4 pi sin(theta) / lambda, 1/m
    solid_angle: np.ndarray  # (...) sr per pixel
    polarisation: np.ndarray  # (...) polarisation factor P (1 in the forward direction)
    two_theta: np.ndarray  # (...) scattering angle, rad
    wavelength_m: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q_abs.shape

    @property
    def k(self) -> float:
        """Wavenumber 2 pi / lambda in 1/m."""
        return 2 * np.pi / self.wavelength_m

    def take(self, index) -> ScatteringGeometry:
        """The geometry of a subset of pixels (any numpy index over the pixel axes)."""
        return ScatteringGeometry(self.q[index], self.q_abs[index], self.solid_angle[index],
                                  self.polarisation[index], self.two_theta[index], self.wavelength_m)


def scattering_geometry(
    positions_m: np.ndarray,
    photon_energy_eV: float,
    pixel_area_m2: float | np.ndarray,
    *,
    pixel_normal=(0.0, 0.0, 1.0),
    polarisation: str | tuple = "horizontal",
) -> ScatteringGeometry:
    """Scattering geometry of pixels at ``positions_m`` (..., 3) (metres, sample at the origin).

    ``pixel_normal`` is the unit normal of the sensor surface (default: facing the beam);
    ``polarisation`` is ``"horizontal"`` (x, as at European XFEL), ``"vertical"`` (y),
    ``"unpolarised"``, or a 3-vector giving the direction of the electric field.
    """
    pos = np.asarray(positions_m, dtype=np.float64)
    if pos.shape[-1:] != (3,):
        raise XfelDLError(f"pixel positions must have a last axis of length 3 (x, y, z), got shape {pos.shape}")
    dist = np.linalg.norm(pos, axis=-1)
    if np.any(dist <= 0) or not np.all(np.isfinite(dist)):
        raise XfelDLError("pixel positions must be finite and away from the sample position (origin)")
    wavelength = photon_wavelength_m(photon_energy_eV)
    k = 2 * np.pi / wavelength
    direction = pos / dist[..., None]
    q = k * (direction - np.array([0.0, 0.0, 1.0]))
    cos2t = np.clip(direction[..., 2], -1.0, 1.0)
    normal = np.asarray(pixel_normal, dtype=np.float64)
    normal = normal / np.linalg.norm(normal)
    cos_incidence = np.abs(direction @ normal)
    solid_angle = np.asarray(pixel_area_m2, dtype=np.float64) * cos_incidence / dist**2
    if isinstance(polarisation, str):
        axes = {"horizontal": (1.0, 0.0, 0.0), "vertical": (0.0, 1.0, 0.0)}
        if polarisation == "unpolarised":
            pol = 0.5 * (1 + cos2t**2)
        elif polarisation in axes:
            pol = 1 - (direction @ np.array(axes[polarisation])) ** 2
        else:
            raise XfelDLError(f"polarisation must be horizontal, vertical, unpolarised or a vector, got {polarisation!r}")
    else:
        e = np.asarray(polarisation, dtype=np.float64)
        pol = 1 - (direction @ (e / np.linalg.norm(e))) ** 2
    return ScatteringGeometry(q=q, q_abs=np.linalg.norm(q, axis=-1), solid_angle=solid_angle,
                              polarisation=pol, two_theta=np.arccos(cos2t), wavelength_m=wavelength)


def flat_detector_positions(shape, pixel_size_m: float, distance_m: float, centre_px=None) -> np.ndarray:
    """Pixel-centre positions (H, W, 3) of a flat detector normal to the beam at ``distance_m``.

    Rows run along y, columns along x; the beam hits ``centre_px`` = (row, col), by default
    (H//2, W//2), the FFT-centred convention of the reciprocal grid.
    """
    h, w = (int(s) for s in shape)
    if h <= 0 or w <= 0 or not pixel_size_m > 0 or not distance_m > 0:
        raise XfelDLError(f"flat detector needs positive shape, pixel size and distance, got {shape}, {pixel_size_m}, {distance_m}")
    cy, cx = (h // 2, w // 2) if centre_px is None else centre_px
    y = (np.arange(h) - cy) * pixel_size_m
    x = (np.arange(w) - cx) * pixel_size_m
    pos = np.empty((h, w, 3))
    pos[..., 0] = x[None, :]
    pos[..., 1] = y[:, None]
    pos[..., 2] = distance_m
    return pos
