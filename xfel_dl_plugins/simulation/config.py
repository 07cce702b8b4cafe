"""Simulation configuration: TOML -> validated dataclasses (errors name the offending key).

Every section and key is optional; defaults describe a PR772-like virus measured at the SPB/SFX
instrument of European XFEL with AGIPD-1M at 6 keV, seen on a 4x4-binned 128x128 grid.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import XfelDLError
from ..physics.constants import MATERIALS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(XfelDLError):
    """A simulation configuration is invalid; the message names the key."""


SHAPES = ("sphere", "spheroid", "icosahedron", "cube", "octahedron", "dodecahedron", "core_shell",
          "cluster", "map", "streak")
HIT_CLASSES = ("blank", "single", "multiple", "other")


@dataclass
class Range:
    """A scalar drawn per particle: normal(mean, sigma) clipped to [min, max]."""

    mean: float
    sigma: float = 0.0
    min: float = 0.0
    max: float = float("inf")

    def draw(self, rng, size=None):
        import numpy as np

        value = self.mean + self.sigma * rng.standard_normal(size) if self.sigma > 0 else np.full(size or (), self.mean)
        return np.clip(value, self.min, self.max)


@dataclass
class BeamConfig:
    photon_energy_eV: float = 6000.0
    pulse_energy_mJ: float = 3.0  # mean SASE pulse energy at the undulator
    pulse_energy_jitter: float = 0.15  # relative rms, gamma-distributed shot to shot
    transmission: float = 0.3  # beamline + focusing optics + apertures
    focus_fwhm_um: float = 1.0  # Gaussian focus, round (SPB 1-um KB optics)
    max_offset_sigma: float = 2.0  # particles hit uniformly within this many focus sigmas (partial hits)
    polarisation: str = "horizontal"


@dataclass
class DetectorConfig:
    kind: str = "grid"  # grid | agipd1m
    shape: tuple = (128, 128)  # grid only
    pixel_size_m: float = 0.8e-3  # grid only (4x4-binned 200 um AGIPD pixels)
    distance_m: float = 0.705
    centre_px: tuple | None = None  # grid only; default (H//2, W//2)
    binning: int = 4  # native pixels per grid pixel along each axis (for noise and saturation)
    mask: str = "agipd"  # grid: "agipd" (AGIPD-1M gaps and central hole binned onto the grid) or "none"
    beam_stop_radius_m: float = 3.0e-3
    readout_noise_photons: float = 0.15  # rms per native pixel, calibrated units
    saturation_photons: float = 2.0e4  # per native pixel
    bad_pixel_fraction: float = 0.002  # agipd1m only: dead/noisy pixels flagged in the mask
    data_units: str = "photons"  # photons | keV (agipd1m calibrated data)


@dataclass
class BackgroundConfig:
    gas_photons_per_sr: float = 1.0e4  # isotropic gas scattering (on the mean pulse)
    stray_photons: float = 150.0  # small-angle stray light around the beam stop, per frame on the detector
    stray_exponent: float = 3.0  # power law I ~ q^-exponent
    jitter: float = 0.3  # relative rms of the stray-light level shot to shot


@dataclass
class SpeciesConfig:
    name: str
    shape: str = "sphere"
    radius_nm: Range = field(default_factory=lambda: Range(35.0))  # volume-equivalent radius
    material: str | None = "virus"
    electron_density: float | None = None  # electrons/A^3, overrides material
    aspect: Range = field(default_factory=lambda: Range(1.0))  # spheroid c/a; streak length/width
    core_fraction: float = 0.6  # core_shell: core radius / outer radius
    core_material: str | float = "water"
    members: tuple = (3, 12)  # cluster: number of spheres
    map_file: str | None = None  # map: .npy (N,N,N) electrons/A^3
    map_voxel_nm: float | None = None
    method: str = "analytic"  # polyhedra: "analytic" (exact edge sums) or "map" (3D-map path)
    weight: float = 1.0


@dataclass
class OutputConfig:
    n_patterns: int = 1000  # patterns (agipd1m: frames; rounded up to whole trains)
    seed: int = 0
    projected_density: bool = True  # grid detectors: store the projected electron density per pattern
    frames_per_train: int = 32  # agipd1m
    first_train_id: int = 10000  # agipd1m
    run_number: int = 1  # agipd1m


@dataclass
class SimulationConfig:
    beam: BeamConfig = field(default_factory=BeamConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    sample: list = field(default_factory=lambda: [SpeciesConfig("pr772", "icosahedron", Range(33.0, 2.0, 20.0, 50.0))])
    contaminants: list = field(default_factory=lambda: [
        SpeciesConfig("water_droplet", "sphere", Range(120.0, 40.0, 60.0, 250.0), "water"),
        SpeciesConfig("aggregate", "cluster", Range(25.0, 5.0, 15.0, 40.0), "virus"),
        SpeciesConfig("salt_needle", "spheroid", Range(40.0, 10.0, 20.0, 80.0), "sucrose", aspect=Range(8.0, 3.0, 4.0, 20.0)),
        SpeciesConfig("beamline_streak", "streak", Range(1.0), None, aspect=Range(1.0), weight=0.5),
    ])
    hit_fractions: dict = field(default_factory=lambda: {"blank": 0.5, "single": 0.3, "multiple": 0.1, "other": 0.1})
    multiple_count: tuple = (2, 4)
    touching_fraction: float = 0.5  # multiples: fraction of particles stuck to a neighbour (else apart in the focus)
    same_species_fraction: float = 0.8  # multiples: chance that a further particle is of the first one's species
    map_oversampling: int = 2
    map_interpolation: str = "cubic"  # 3D-map path: cubic | quadratic (2x faster, ~1% less accurate) | linear
    name: str = "simulation"
    output: OutputConfig = field(default_factory=OutputConfig)


_NESTED = {"beam": BeamConfig, "detector": DetectorConfig, "background": BackgroundConfig, "output": OutputConfig}


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(fields)})")
        kwargs[key] = _convert(fields[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(f: dataclasses.Field, value: Any, where: str):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if t == "Range":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Range(float(value))
        return _build(Range, value, where)
    if t.startswith("float"):
        if value is None and "None" in t:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if t == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if t.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if t.startswith("str") and not t.startswith("str | float"):
        if not isinstance(value, str) and not (value is None and "None" in t):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _species_list(data: Any, where: str) -> list:
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a non-empty array of tables ([[{where}]])")
    out = []
    for i, item in enumerate(data):
        sp = _build(SpeciesConfig, item, f"{where}[{i}]")
        if sp.shape not in SHAPES:
            raise ConfigError(f"{where}[{i}].shape: {sp.shape!r} is not one of {', '.join(SHAPES)}")
        if sp.shape == "map" and (not sp.map_file or not sp.map_voxel_nm):
            raise ConfigError(f"{where}[{i}]: shape 'map' needs map_file and map_voxel_nm")
        for key in ("material", "core_material"):
            value = getattr(sp, key)
            if isinstance(value, str) and value not in MATERIALS and not (key == "material" and sp.electron_density):
                raise ConfigError(f"{where}[{i}].{key}: unknown material {value!r}; known: {', '.join(sorted(MATERIALS))}")
        if sp.method not in ("analytic", "map"):
            raise ConfigError(f"{where}[{i}].method: must be 'analytic' or 'map', got {sp.method!r}")
        if sp.weight < 0:
            raise ConfigError(f"{where}[{i}].weight: must be >= 0")
        out.append(sp)
    return out


def config_from_dict(data: dict, source: str = "config") -> SimulationConfig:
    """Validate a parsed TOML document into a :class:`SimulationConfig`."""
    data = dict(data)
    kwargs = {}
    for key, cls in _NESTED.items():
        if key in data:
            kwargs[key] = _build(cls, data.pop(key), key)
    if "sample" in data:
        kwargs["sample"] = _species_list(data.pop("sample"), "sample")
    if "contaminants" in data:
        items = data.pop("contaminants")
        kwargs["contaminants"] = _species_list(items, "contaminants") if items else []
    cfg = _build(SimulationConfig, data, source) if data else SimulationConfig()
    cfg = dataclasses.replace(cfg, **kwargs)
    validate(cfg)
    return cfg


def validate(cfg: SimulationConfig) -> None:
    """Check ranges and cross-field consistency; raise ConfigError naming the key."""
    b, d, bg = cfg.beam, cfg.detector, cfg.background
    positive = {"beam.photon_energy_eV": b.photon_energy_eV, "beam.pulse_energy_mJ": b.pulse_energy_mJ,
                "beam.focus_fwhm_um": b.focus_fwhm_um, "beam.transmission": b.transmission,
                "beam.max_offset_sigma": b.max_offset_sigma, "detector.distance_m": d.distance_m,
                "detector.pixel_size_m": d.pixel_size_m, "detector.saturation_photons": d.saturation_photons}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}: must be positive, got {value!r}")
    nonneg = {"beam.pulse_energy_jitter": b.pulse_energy_jitter, "detector.readout_noise_photons": d.readout_noise_photons,
              "detector.beam_stop_radius_m": d.beam_stop_radius_m, "detector.bad_pixel_fraction": d.bad_pixel_fraction,
              "background.gas_photons_per_sr": bg.gas_photons_per_sr, "background.stray_photons": bg.stray_photons,
              "background.jitter": bg.jitter}
    for key, value in nonneg.items():
        if not value >= 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    if d.kind not in ("grid", "agipd1m"):
        raise ConfigError(f"detector.kind: must be 'grid' or 'agipd1m', got {d.kind!r}")
    if d.mask not in ("agipd", "none"):
        raise ConfigError(f"detector.mask: must be 'agipd' or 'none', got {d.mask!r}")
    if d.data_units not in ("photons", "keV"):
        raise ConfigError(f"detector.data_units: must be 'photons' or 'keV', got {d.data_units!r}")
    if len(d.shape) != 2 or not all(isinstance(s, int) and s > 0 for s in d.shape):
        raise ConfigError(f"detector.shape: must be [rows, columns] of positive integers, got {list(d.shape)}")
    if not (isinstance(d.binning, int) and d.binning >= 1):
        raise ConfigError(f"detector.binning: must be a positive integer, got {d.binning!r}")
    if b.polarisation not in ("horizontal", "vertical", "unpolarised"):
        raise ConfigError(f"beam.polarisation: must be horizontal, vertical or unpolarised, got {b.polarisation!r}")
    if set(cfg.hit_fractions) - set(HIT_CLASSES):
        raise ConfigError(f"hit_fractions: unknown classes {sorted(set(cfg.hit_fractions) - set(HIT_CLASSES))}; known: {HIT_CLASSES}")
    if any(not (v >= 0) for v in cfg.hit_fractions.values()) or sum(cfg.hit_fractions.values()) <= 0:
        raise ConfigError("hit_fractions: values must be >= 0 with a positive sum")
    if cfg.hit_fractions.get("other", 0) > 0 and not cfg.contaminants:
        raise ConfigError("hit_fractions.other > 0 needs at least one [[contaminants]] entry")
    lo, hi = cfg.multiple_count
    if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi):
        raise ConfigError(f"multiple_count: must be [min, max] with 2 <= min <= max, got {list(cfg.multiple_count)}")
    if not 0 <= cfg.touching_fraction <= 1:
        raise ConfigError(f"touching_fraction: must be in [0, 1], got {cfg.touching_fraction!r}")
    if not 0 <= cfg.same_species_fraction <= 1:
        raise ConfigError(f"same_species_fraction: must be in [0, 1], got {cfg.same_species_fraction!r}")
    o = cfg.output
    if o.n_patterns < 1 or not 1 <= o.frames_per_train <= 352 or o.first_train_id < 1 or o.run_number < 0:
        raise ConfigError("output: need n_patterns >= 1, 1 <= frames_per_train <= 352, first_train_id >= 1, run_number >= 0")
    if cfg.map_interpolation not in ("cubic", "quadratic", "linear"):
        raise ConfigError(f"map_interpolation: must be cubic, quadratic or linear, got {cfg.map_interpolation!r}")
    if not (isinstance(cfg.map_oversampling, int) and 2 <= cfg.map_oversampling <= 8):
        raise ConfigError(f"map_oversampling: must be an integer 2..8, got {cfg.map_oversampling!r}")
    for group in ("sample", "contaminants"):
        for i, sp in enumerate(getattr(cfg, group)):
            if sp.shape not in SHAPES:
                raise ConfigError(f"{group}[{i}].shape: {sp.shape!r} is not one of {', '.join(SHAPES)}")
            if sp.shape != "streak" and not (sp.radius_nm.mean > 0):
                raise ConfigError(f"{group}[{i}].radius_nm: must be positive")
            if sp.material is None and sp.electron_density is None and sp.shape != "streak":
                raise ConfigError(f"{group}[{i}]: give material or electron_density")


def load_config(path: str | Path) -> SimulationConfig:
    """Read and validate a simulation TOML file (a name without directory may be a packaged config)."""
    path = Path(path)
    if not path.is_file():
        packaged = Path(__file__).with_name("configs") / (path.name if path.suffix else path.name + ".toml")
        if packaged.is_file() and path.parent == Path("."):
            path = packaged
        else:
            raise ConfigError(f"simulation config not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))
