"""3D electron-density maps: builders, their Fourier transform sampled on the Ewald sphere at any
orientation, and the projection approximation.

A :class:`DensityMap` holds cell-averaged electron densities (electrons/m^3) on a cubic grid whose
origin is the voxel at index ``N//2`` along each axis. :class:`FourierMap` zero-pads the map,
takes its 3D FFT once, and then evaluates F(q) at any set of q-vectors by trilinear interpolation
of the oversampled transform: per orientation only the interpolation is paid, so one map serves
any number of patterns, orientations and (by scaling) particle sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.spatial import ConvexHull, HalfspaceIntersection

from ..errors import XfelDLError
from .rotation import to_body_frame

_GOLDEN = (1 + 5**0.5) / 2


@dataclass(frozen=True)
class DensityMap:
    """Electron density (electrons/m^3) on a cubic grid of ``voxel_m`` cells, origin at index N//2."""

    values: np.ndarray  # (N, N, N) float
    voxel_m: float

    def __post_init__(self):
        v = self.values
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise XfelDLError(f"a density map must be a cubic 3D array, got shape {v.shape}")
        if not self.voxel_m > 0:
            raise XfelDLError(f"voxel size must be positive, got {self.voxel_m!r}")
        if not np.all(np.isfinite(v)):
            raise XfelDLError("density map contains NaN or infinite values")

    @property
    def electrons(self) -> float:
        return float(self.values.sum() * self.voxel_m**3)

    def coordinates(self) -> np.ndarray:
        """1D voxel-centre coordinates (m) along each axis."""
        n = self.values.shape[0]
        return (np.arange(n) - n // 2) * self.voxel_m


# -- shapes ---------------------------------------------------------------------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _cyclic(vectors) -> list:
    out = []
    for x, y, z in vectors:
        out += [(x, y, z), (z, x, y), (y, z, x)]
    return out


def _signs(base) -> np.ndarray:
    out = set()
    for sx in (1, -1):
        for sy in (1, -1):
            for sz in (1, -1):
                out.add((sx * base[0], sy * base[1], sz * base[2]))
    return np.array(sorted(out), dtype=np.float64)


def _face_normals(shape: str) -> np.ndarray:
    g = _GOLDEN
    if shape == "cube":
        return np.vstack([np.eye(3), -np.eye(3)])
    if shape == "octahedron":
        return _unit(_signs((1, 1, 1)))
    if shape == "icosahedron":  # face normals point at the vertices of a dodecahedron
        pts = [*_signs((1, 1, 1))] + [p for b in _cyclic([(0, 1 / g, g)]) for p in _signs(b)]
        return _unit(np.unique(np.round(pts, 12), axis=0))
    if shape == "dodecahedron":  # face normals point at the vertices of an icosahedron
        return _unit(np.unique([p for b in _cyclic([(0, 1, g)]) for p in _signs(b)], axis=0))
    raise XfelDLError(f"unknown polyhedron {shape!r}; known: {', '.join(POLYHEDRA)}")


POLYHEDRA = ("cube", "octahedron", "icosahedron", "dodecahedron")


@lru_cache(maxsize=None)
def polyhedron(shape: str) -> tuple[np.ndarray, float]:
    """Face normals (F, 3) and inradius of the regular polyhedron whose volume equals a unit sphere's.

    The body is {x : n_i . x <= inradius for all i}; scale the inradius by R for a particle of
    volume-equivalent radius R.
    """
    normals = _face_normals(shape)
    hs = HalfspaceIntersection(np.hstack([normals, -np.ones((len(normals), 1))]), np.zeros(3))
    volume_unit_inradius = ConvexHull(hs.intersections).volume
    inradius = (4 / 3 * np.pi / volume_unit_inradius) ** (1 / 3)
    normals.setflags(write=False)
    return normals, float(inradius)


def _grid(n: int, voxel_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(n) - n // 2) * voxel_m
    return np.meshgrid(c, c, c, indexing="ij", sparse=True)


def _occupancy(signed_distance: np.ndarray, voxel_m: float) -> np.ndarray:
    """Fraction of each voxel inside a surface, from the signed distance of its centre (linear ramp)."""
    return np.clip(0.5 - signed_distance / voxel_m, 0.0, 1.0)


def grid_size_for(radius_m: float, voxel_m: float, margin: int = 2) -> int:
    """Smallest even grid that holds a body of circumradius ``radius_m`` with ``margin`` empty voxels."""
    n = 2 * int(np.ceil(radius_m / voxel_m)) + 2 * margin + 1
    return n + (n % 2)


def sphere_map(radius_m: float, density_e_m3: float, voxel_m: float, n: int | None = None) -> DensityMap:
    n = n or grid_size_for(radius_m, voxel_m)
    x, y, z = _grid(n, voxel_m)
    r = np.sqrt(x * x + y * y + z * z)
    return DensityMap(density_e_m3 * _occupancy(r - radius_m, voxel_m), voxel_m)


def core_shell_map(core_radius_m, outer_radius_m, core_density, shell_density, voxel_m, n=None) -> DensityMap:
    """Concentric sphere: density ``core_density`` inside ``core_radius_m``, ``shell_density`` out to the outer radius."""
    if not 0 < core_radius_m < outer_radius_m:
        raise XfelDLError(f"core-shell needs 0 < core radius < outer radius, got {core_radius_m}, {outer_radius_m}")
    n = n or grid_size_for(outer_radius_m, voxel_m)
    x, y, z = _grid(n, voxel_m)
    r = np.sqrt(x * x + y * y + z * z)
    core = _occupancy(r - core_radius_m, voxel_m)
    outer = _occupancy(r - outer_radius_m, voxel_m)
    return DensityMap(shell_density * (outer - core) + core_density * core, voxel_m)


def polyhedron_map(shape: str, radius_m: float, density_e_m3: float, voxel_m: float, n=None) -> DensityMap:
    """Regular polyhedron of volume-equivalent radius ``radius_m``, a face normal set as in :func:`polyhedron`."""
    normals, inradius = polyhedron(shape)
    h = inradius * radius_m
    circumradius = h * circumradius_over_inradius(shape)
    n = n or grid_size_for(circumradius, voxel_m)
    x, y, z = _grid(n, voxel_m)
    sd = np.full((n, n, n), -np.inf)
    for nx, ny, nz in normals:
        np.maximum(sd, nx * x + ny * y + nz * z - h, out=sd)
    return DensityMap(density_e_m3 * _occupancy(sd, voxel_m), voxel_m)


@lru_cache(maxsize=None)
def circumradius_over_inradius(shape: str) -> float:
    normals, _ = polyhedron(shape)
    hs = HalfspaceIntersection(np.hstack([normals, -np.ones((len(normals), 1))]), np.zeros(3))
    return float(np.linalg.norm(hs.intersections, axis=1).max())


def sphere_cluster_map(centres_m, radii_m, density_e_m3: float, voxel_m: float, n=None) -> DensityMap:
    """Union of spheres (e.g. an aggregate of small particles) of one material."""
    centres = np.atleast_2d(np.asarray(centres_m, dtype=np.float64))
    radii = np.broadcast_to(np.asarray(radii_m, dtype=np.float64), (len(centres),))
    extent = float(np.max(np.linalg.norm(centres, axis=1) + radii))
    n = n or grid_size_for(extent, voxel_m)
    x, y, z = _grid(n, voxel_m)
    sd = np.full((n, n, n), np.inf)
    for (cx, cy, cz), r in zip(centres, radii):
        np.minimum(sd, np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - r, out=sd)
    return DensityMap(density_e_m3 * _occupancy(sd, voxel_m), voxel_m)


# -- Fourier transform on the Ewald sphere ------------------------------------------------------

class FourierMap:
    """The continuous Fourier transform F(q) (electrons) of a density map, sampled at any q.

    The map is zero-padded ``oversampling`` times, transformed once, and divided by the transfer
    function of the cell average (sinc per axis). F at arbitrary q (any orientation, any particle
    scale) is then interpolated from the oversampled grid: by default with cubic B-splines (the grid
    is prefiltered once; amplitude errors ~1% at oversampling 2), or trilinearly (``"linear"``,
    faster, needs oversampling >= 4 for ~5% errors). Valid up to |q| < pi / voxel.
    """

    def __init__(self, density: DensityMap, oversampling: int = 2, interpolation: str = "cubic"):
        if interpolation not in ("cubic", "linear"):
            raise XfelDLError(f"interpolation must be 'cubic' or 'linear', got {interpolation!r}")
        n = density.values.shape[0]
        m = scipy.fft.next_fast_len(int(np.ceil(oversampling * n)))
        m += m % 2
        padded = np.zeros((m, m, m), dtype=np.float32)
        start = m // 2 - n // 2
        padded[start:start + n, start:start + n, start:start + n] = density.values
        spectrum = scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(padded), workers=-1))
        del padded
        spectrum *= density.voxel_m**3
        dq = 2 * np.pi / (m * density.voxel_m)
        k = (np.arange(m) - m // 2) * dq * density.voxel_m / 2
        transfer = np.sinc(k / np.pi)  # FT of a cell average: sin(q d/2)/(q d/2) per axis
        spectrum /= transfer[:, None, None] * transfer[None, :, None] * transfer[None, None, :]
        self.is_real = bool(np.abs(spectrum.imag).max() <= 1e-5 * np.abs(spectrum.real).max())
        parts = [spectrum.real] if self.is_real else [spectrum.real, spectrum.imag]
        del spectrum
        if interpolation == "cubic":
            parts = [ndimage.spline_filter(p.astype(np.float32), order=3, output=np.float32, mode="mirror") for p in parts]
        self.parts = [np.ascontiguousarray(p, dtype=np.float32) for p in parts]
        self.interpolation = interpolation
        self.size = m
        self.dq = dq
        self.q_max = dq * (m // 2 - 2)
        self.voxel_m = density.voxel_m
        self.electrons = density.electrons

    def amplitude(self, q_lab: np.ndarray, rotation=None, scale: float = 1.0) -> np.ndarray:
        """F(q) at lab-frame ``q_lab`` (..., 3) for the map rotated by ``rotation`` (3x3) and its
        coordinates multiplied by ``scale`` (same density): F_s(q) = s^3 F(s q)."""
        qb = q_lab if rotation is None else to_body_frame(q_lab, rotation)
        if scale != 1.0:
            qb = qb * scale
        reach = float(np.abs(qb).max()) if qb.size else 0.0
        if reach > self.q_max:
            raise XfelDLError(
                f"density map voxel ({self.voxel_m * scale * 1e9:.2f} nm at this size) is too coarse for "
                f"the detector's q range: need voxels below {np.pi / reach * scale * 1e9:.2f} nm")
        coords = (qb / self.dq + self.size // 2).astype(np.float32)
        interp = tricubic if self.interpolation == "cubic" else trilinear
        values = [interp(p, coords) for p in self.parts]
        out = values[0] if self.is_real else values[0] + 1j * values[1]
        return out * np.float32(scale**3)


def tricubic(coeffs: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Cubic B-spline interpolation of prefiltered ``coeffs`` (3D) at fractional indices ``coords`` (..., 3)."""
    c = coords.reshape(-1, 3).T
    return ndimage.map_coordinates(coeffs, c, order=3, prefilter=False, output=np.float32).reshape(coords.shape[:-1])


def trilinear(grid: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a 3D ``grid`` at fractional indices ``coords`` (..., 3) (all in range)."""
    shape = coords.shape[:-1]
    c = coords.reshape(-1, 3).astype(np.float32, copy=False)
    base = np.floor(c)
    f = c - base
    i = base.astype(np.intp)
    s0, s1, _ = (np.array(grid.strides) // grid.itemsize)
    flat = grid.ravel()
    idx = i[:, 0] * s0 + i[:, 1] * s1 + i[:, 2]
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
    out = (flat[idx] * gz + flat[idx + 1] * fz) * (gx * gy)
    out += (flat[idx + s1] * gz + flat[idx + s1 + 1] * fz) * (gx * fy)
    out += (flat[idx + s0] * gz + flat[idx + s0 + 1] * fz) * (fx * gy)
    out += (flat[idx + s0 + s1] * gz + flat[idx + s0 + s1 + 1] * fz) * (fx * fy)
    return out.reshape(shape)


def projection_q(q_lab: np.ndarray) -> np.ndarray:
    """The projection (small-angle) approximation: q with its beam component dropped, so that F
    becomes the 2D Fourier transform of the density projected along the beam (central slice)."""
    q = np.array(q_lab, copy=True)
    q[..., 2] = 0.0
    return q
