"""Physics of coherent X-ray diffraction from isolated particles, in absolute units.

Conventions: lab frame x horizontal, y vertical, z along the beam; the sample sits at the origin;
q = k_out - k_in in 1/m (|q| = 4 pi sin(theta) / lambda); the scattering amplitude F(q) of an
electron density rho(r) is F(q) = integral rho(r) exp(-i q.r) d^3r, in electrons; the photons a
pixel receives are J * r_e^2 * P * dOmega * |F(q)|^2 (J fluence in photons/m^2).
"""

from .constants import CLASSICAL_ELECTRON_RADIUS_M, MATERIALS, electron_density, photon_wavelength_m
from .geometry import ScatteringGeometry, flat_detector_positions, scattering_geometry

__all__ = [
    "CLASSICAL_ELECTRON_RADIUS_M",
    "MATERIALS",
    "ScatteringGeometry",
    "electron_density",
    "flat_detector_positions",
    "photon_wavelength_m",
    "scattering_geometry",
]
