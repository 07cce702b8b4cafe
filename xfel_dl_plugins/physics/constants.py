"""Physical constants and the electron densities of common sample materials."""

from __future__ import annotations

from ..errors import XfelDLError

CLASSICAL_ELECTRON_RADIUS_M = 2.8179403262e-15  # CODATA 2018
PLANCK_EV_S = 4.135667696e-15
SPEED_OF_LIGHT_M_S = 299792458.0
HC_EV_M = PLANCK_EV_S * SPEED_OF_LIGHT_M_S  # 1.23984e-6 eV m
AVOGADRO = 6.02214076e23
ELECTRON_VOLT_J = 1.602176634e-19
PER_A3 = 1e30  # electrons/A^3 -> electrons/m^3


def photon_wavelength_m(photon_energy_eV: float) -> float:
    """Wavelength of a photon of the given energy."""
    if not photon_energy_eV > 0:
        raise XfelDLError(f"photon energy must be positive, got {photon_energy_eV!r} eV")
    return HC_EV_M / float(photon_energy_eV)


def _from_composition(mass_density_g_cm3: float, electrons_per_formula: float, molar_mass_g: float) -> float:
    """Electron density in electrons/A^3 from mass density and formula (anomalous dispersion neglected)."""
    return mass_density_g_cm3 / molar_mass_g * AVOGADRO * electrons_per_formula * 1e-24


#: Electron densities in electrons/A^3. Protein and virus values are the usual literature averages
#: (protein 1.35 g/cm^3 ~ 0.43 e/A^3); the others follow from mass density and composition with the
#: atomic number as scattering factor (no anomalous dispersion: f1 of gold at 6 keV is a few
#: electrons below Z, so gold intensities are ~10% high; give `electron_density` explicitly to refine).
MATERIALS: dict[str, float] = {
    "protein": 0.43,
    "virus": 0.44,  # PR772-like: protein capsid, lipid membrane, DNA
    "water": _from_composition(0.997, 10, 18.015),  # 0.334
    "ice": _from_composition(0.917, 10, 18.015),
    "polystyrene": _from_composition(1.05, 56, 104.15),  # C8H8: 0.340
    "silica": _from_composition(2.20, 30, 60.08),  # SiO2: 0.661
    "sucrose": _from_composition(1.587, 182, 342.30),
    "gold": _from_composition(19.32, 79, 196.967),  # 4.67
    "silver": _from_composition(10.49, 47, 107.868),
    "iron_oxide": _from_composition(5.17, 2 * 26 + 3 * 8, 159.69),  # Fe2O3
}


def electron_density(material: str | float) -> float:
    """Electron density in electrons/m^3 of a named material or of a value given in electrons/A^3."""
    if isinstance(material, str):
        try:
            return MATERIALS[material] * PER_A3
        except KeyError:
            raise XfelDLError(f"unknown material {material!r}; known: {', '.join(sorted(MATERIALS))}") from None
    value = float(material)
    if not value > 0:
        raise XfelDLError(f"electron density must be positive (electrons/A^3), got {material!r}")
    return value * PER_A3
