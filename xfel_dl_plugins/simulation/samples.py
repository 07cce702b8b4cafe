"""Particles drawn from the species of a configuration, each with its scattering amplitude F(q)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import XfelDLError
from ..physics import density as dens
from ..physics.constants import PER_A3, electron_density
from ..physics.formfactors import sphere_amplitude, spheroid_amplitude
from ..physics.polyhedra import polyhedron_amplitude
from ..physics.rotation import quaternion_to_matrix, random_quaternions, to_body_frame
from .config import SHAPES, SpeciesConfig

#: Integer codes of the per-pattern ``shape`` label (0: no particle).
SHAPE_CODES = {"none": 0, **{name: i + 1 for i, name in enumerate(SHAPES)}}
SHAPE_NAMES = tuple(SHAPE_CODES)


@dataclass
class Particle:
    """One scatterer: F(q) (electrons) of the particle centred at the origin, and its place in its group."""

    species: str
    shape: str
    radius_m: float  # volume-equivalent radius
    quaternion: np.ndarray  # (4,) body -> lab
    spec: dict  # what the amplitude needs: kind ("sphere", "spheroid", "polyhedron", ...) and parameters
    extent_m: float  # largest distance of the particle's matter from its centre
    position_m: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def amplitude(self, q: np.ndarray, q_abs: np.ndarray | None = None) -> np.ndarray:
        """F(q) (electrons) at lab-frame ``q`` (..., 3) for the particle centred at the origin."""
        return amplitude(self.spec, q, q_abs)


def amplitude(spec: dict, q: np.ndarray, q_abs: np.ndarray | None = None) -> np.ndarray:
    """Scattering amplitude of a particle description (see :class:`Particle`), NumPy arrays."""
    kind = spec["kind"]
    if kind == "sphere":
        return sphere_amplitude(_norm(q, q_abs), spec["radius"], spec["rho"])
    if kind == "spheroid":
        return spheroid_amplitude(q, spec["a"], spec["c"], spec["rot"], spec["rho"])
    if kind == "polyhedron":
        return polyhedron_amplitude(to_body_frame(q, spec["rot"]), spec["shape"], spec["radius"], spec["rho"])
    if kind == "core_shell":
        qa = _norm(q, q_abs)
        return (sphere_amplitude(qa, spec["radius"], spec["rho"])
                + sphere_amplitude(qa, spec["core"], spec["rho_core"] - spec["rho"]))
    if kind == "cluster":
        return _cluster_amplitude(q, _norm(q, q_abs), spec["centres"].T, spec["radii"], spec["rho"])
    if kind == "map":
        return spec["map"].amplitude(q, spec["rot"], spec["scale"])
    raise XfelDLError(f"unknown particle kind {kind!r}")


def _density(sp: SpeciesConfig) -> float:
    return electron_density(sp.electron_density if sp.electron_density is not None else sp.material)


class SpeciesSampler:
    """Draws particles of one species; keeps what is expensive to rebuild (3D-map transforms)."""

    def __init__(self, species: SpeciesConfig, q_reach: float, oversampling: int = 2):
        self.species = species
        self.q_reach = q_reach  # largest |q| the detector needs, 1/m
        self.oversampling = oversampling
        self.rho = _density(species) if species.shape != "streak" else 0.0
        self._map: dens.FourierMap | None = None
        self._map_radius = None
        if species.shape == "map":
            self._load_map()

    def _load_map(self) -> None:
        sp = self.species
        path = Path(sp.map_file)
        if not path.is_file():
            raise XfelDLError(f"density map file not found: {path}")
        values = np.load(path, allow_pickle=False) * PER_A3
        dm = dens.DensityMap(values.astype(np.float32), sp.map_voxel_nm * 1e-9)
        self._map = dens.FourierMap(dm, self.oversampling)
        self._map_radius = (3 * dm.electrons / (4 * np.pi * float(values.max()))) ** (1 / 3)
        occupied = np.argwhere(values > 0.01 * values.max()) - values.shape[0] // 2
        self._map_extent = float(np.linalg.norm(occupied, axis=1).max() + 1) * dm.voxel_m

    def fourier_map(self) -> dens.FourierMap:
        """The 3D-map path for polyhedra (built once, at the largest radius, reused at any size)."""
        if self._map is None:
            sp = self.species
            r_ref = float(min(sp.radius_nm.max, sp.radius_nm.mean + 5 * sp.radius_nm.sigma)) * 1e-9
            voxel = 0.9 * np.pi / self.q_reach
            self._map = _polyhedron_fourier_map(sp.shape, r_ref, self.rho, voxel, self.oversampling)
            self._map_radius = r_ref
        return self._map

    def draw(self, rng: np.random.Generator, use_map: bool = False) -> Particle:
        sp = self.species
        quat = random_quaternions(rng, 1)[0]
        rot = quaternion_to_matrix(quat)
        radius = float(sp.radius_nm.draw(rng)) * 1e-9
        rho, shape = self.rho, sp.shape
        extent = radius
        if shape == "sphere":
            spec = dict(kind="sphere", radius=radius, rho=rho)
        elif shape == "spheroid":
            aspect = float(sp.aspect.draw(rng))
            a = radius / aspect ** (1 / 3)
            spec = dict(kind="spheroid", a=a, c=a * aspect, rot=rot, rho=rho)
            extent = max(a, a * aspect)
        elif shape in dens.POLYHEDRA:
            extent = radius * dens.polyhedron(shape)[1] * dens.circumradius_over_inradius(shape)
            if use_map or sp.method == "map":
                spec = dict(kind="map", map=self.fourier_map(), rot=rot, scale=radius / self._map_radius)
            else:
                spec = dict(kind="polyhedron", shape=shape, radius=radius, rot=rot, rho=rho)
        elif shape == "core_shell":
            spec = dict(kind="core_shell", radius=radius, core=radius * sp.core_fraction, rho=rho,
                        rho_core=electron_density(sp.core_material))
        elif shape == "cluster":
            centres, radii = _aggregate(rng, radius, sp)
            radius = float(np.cbrt(np.sum(radii**3)))
            extent = float(np.max(np.linalg.norm(centres, axis=1) + radii))
            spec = dict(kind="cluster", centres=(rot @ centres.T).T, radii=radii, rho=rho)
        elif shape == "map":
            spec = dict(kind="map", map=self._map, rot=rot, scale=1.0)
            radius, extent = self._map_radius, self._map_extent
        elif shape == "streak":
            raise XfelDLError("streaks are not particles")
        else:  # pragma: no cover - validated in config
            raise XfelDLError(f"unknown shape {shape!r}")
        return Particle(sp.name, shape, radius, quat, spec, extent)


@lru_cache(maxsize=2)
def _polyhedron_fourier_map(shape: str, radius: float, rho: float, voxel: float, oversampling: int) -> dens.FourierMap:
    """3D-map path of a polyhedron (kept for reuse: building it is one large 3D FFT + spline prefilter)."""
    return dens.FourierMap(dens.polyhedron_map(shape, radius, rho, voxel), oversampling)


def _aggregate(rng, member_radius_mean: float, sp: SpeciesConfig):
    """Sticky random aggregate: each new sphere touches a random earlier one without overlapping."""
    lo, hi = sp.members
    n = int(rng.integers(lo, hi + 1))
    radii = np.clip(member_radius_mean * (1 + 0.15 * rng.standard_normal(n)), 0.3 * member_radius_mean, None)
    centres = np.zeros((n, 3))
    for i in range(1, n):
        for _ in range(50):
            j = int(rng.integers(i))
            d = rng.standard_normal(3)
            c = centres[j] + d / np.linalg.norm(d) * (radii[i] + radii[j])
            if np.all(np.linalg.norm(centres[:i] - c, axis=1) >= (radii[:i] + radii[i]) * 0.999):
                break
        centres[i] = c
    centres -= (centres * radii[:, None] ** 3).sum(0) / np.sum(radii**3)
    return centres, radii


def _norm(q: np.ndarray, q_abs: np.ndarray | None) -> np.ndarray:
    return np.sqrt(np.einsum("...i,...i->...", q, q)) if q_abs is None else q_abs


def _cluster_amplitude(q, qa, centres_lab, radii, rho):
    """Coherent sum of touching spheres: sum_j F_sphere(q; r_j) exp(-i q.c_j), in float32."""
    real = np.zeros(qa.shape, dtype=np.float32)
    imag = np.zeros(qa.shape, dtype=np.float32)
    for i, r in enumerate(radii):
        f = sphere_amplitude(qa, r, rho).astype(np.float32, copy=False)
        phase = q @ centres_lab[:, i].astype(np.float32)
        real += f * np.cos(phase)
        imag -= f * np.sin(phase)
    return real + 1j * imag


def streak_intensity(rng, q: np.ndarray, valid: np.ndarray, photons: float, width_q: float) -> np.ndarray:
    """Non-particle scatter: a streak through the beam (slit/aperture edge or liquid-jet sheet),
    I ~ 1/q^2 along a random direction with a Gaussian profile ``width_q`` wide, ``photons`` in total."""
    phi = rng.uniform(0, np.pi)
    along = q[..., 0] * np.cos(phi) + q[..., 1] * np.sin(phi)
    across = -q[..., 0] * np.sin(phi) + q[..., 1] * np.cos(phi)
    profile = np.exp(-0.5 * (across / width_q) ** 2) / (along**2 + (3 * width_q) ** 2)
    profile = np.where(valid, profile, 0.0)
    total = profile.sum()
    return profile * (photons / total) if total > 0 else profile
