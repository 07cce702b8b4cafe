"""Exact scattering amplitude of homogeneous convex polyhedra (divergence theorem, twice).

F(q) = int_V exp(-i q.r) dV = (i/q^2) sum_faces (q.n_f) int_face exp(-i q.r) dS, and each face
integral is again a sum over its edges: int_face = (i/|q_f|^2) sum_edges (q.m_fe) L_e
sinc(q.t_e L_e / 2) exp(-i q.c_e), with q_f the in-plane part of q, m_fe the outward in-plane edge
normal, t_e, L_e, c_e the edge's direction, length and midpoint. Exact at every q, any orientation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import HalfspaceIntersection

from .density import polyhedron


@dataclass(frozen=True)
class PolyhedronEdges:
    """Face normals and the face-edge terms of a polyhedron of unit volume-equivalent radius."""

    normals: np.ndarray  # (F, 3)
    face_area: np.ndarray  # (F,)
    face_offset: np.ndarray  # (F,) distance of each face plane from the centre
    volume: float
    edge_face: np.ndarray  # (K,) face of each face-edge term
    edge_normal: np.ndarray  # (K, 3) outward in-plane normal m_fe
    edge_tangent: np.ndarray  # (K, 3)
    edge_length: np.ndarray  # (K,)
    edge_mid: np.ndarray  # (K, 3)
    rg2: float  # squared radius of gyration


@lru_cache(maxsize=None)
def polyhedron_edges(shape: str) -> PolyhedronEdges:
    normals, inradius = polyhedron(shape)
    hs = HalfspaceIntersection(np.hstack([normals, -inradius * np.ones((len(normals), 1))]), np.zeros(3))
    verts = np.unique(np.round(hs.intersections, 12), axis=0)
    areas, ef, en, et, el, em = [], [], [], [], [], []
    second_moment = 0.0
    for f, n in enumerate(normals):
        on = verts[np.abs(verts @ n - inradius) < 1e-9]
        centre = on.mean(axis=0)
        u = on[0] - centre
        u /= np.linalg.norm(u)
        v = np.cross(n, u)
        order = np.argsort(np.arctan2((on - centre) @ v, (on - centre) @ u))
        ring = on[order]
        area = 0.0
        for a, b in zip(ring, np.roll(ring, -1, axis=0)):
            t = b - a
            length = np.linalg.norm(t)
            t = t / length
            m = np.cross(t, n)
            if m @ ((a + b) / 2 - centre) < 0:
                m = -m
            ef.append(f)
            en.append(m)
            et.append(t)
            el.append(length)
            em.append((a + b) / 2)
            area += 0.5 * np.linalg.norm(np.cross(a - centre, b - centre))
        areas.append(area)
        for a, b in zip(ring, np.roll(ring, -1, axis=0)):  # tetrahedra (origin, centre, a, b)
            vol = abs(np.dot(centre, np.cross(a, b))) / 6
            second_moment += vol / 20 * (centre @ centre + a @ a + b @ b + (centre + a + b) @ (centre + a + b))
    volume = 4 / 3 * np.pi
    return PolyhedronEdges(normals, np.array(areas), np.full(len(normals), inradius), volume,
                           np.array(ef), np.array(en), np.array(et), np.array(el), np.array(em),
                           second_moment / volume)


def polyhedron_amplitude(q_body: np.ndarray, shape: str, radius_m: float, density_e_m3: float) -> np.ndarray:
    """Amplitude (electrons, real: the regular polyhedra are centrosymmetric) of a regular polyhedron
    of volume-equivalent radius ``radius_m`` at body-frame ``q_body`` (..., 3). Float32 arithmetic."""
    shp = q_body.shape[:-1]
    q = (np.asarray(q_body).reshape(-1, 3) * radius_m).astype(np.float32)  # unit-radius body
    out = np.empty(len(q), np.float32)
    for start in range(0, len(q), _CHUNK):  # chunks that stay in cache
        out[start:start + _CHUNK] = _unit_amplitude(q[start:start + _CHUNK], shape)
    return (density_e_m3 * radius_m**3) * out.reshape(shp)


_CHUNK = 4096


def _unit_amplitude(q: np.ndarray, shape: str) -> np.ndarray:
    p = polyhedron_edges(shape)
    u = _edge_pairs(shape)
    q2 = np.einsum("pi,pi->p", q, q)
    qn = q @ u.normals_t  # (P, F)
    qf2 = q2[:, None] - qn * qn  # in-plane |q|^2 per face
    # opposite edges (c, -c) share sinc and cos: one trigonometric term per pair
    half = q @ u.half_tangent_t  # (P, U): q.t L/2
    half[np.abs(half) < 1e-4] = 1e-4  # sinc(1e-4) = 1 in float32
    trig = np.sin(half)
    trig /= half
    trig *= np.cos(q @ u.mid_t)
    trig *= u.length  # (P, U)
    terms = q @ u.edge_normal_t
    terms *= trig @ u.expand  # (P, K)
    face_int = terms @ u.incidence  # (P, F): sum over the edges of each face
    small_f = qf2 < 1e-6 * np.maximum(q2[:, None], 1e-12)
    qf2[small_f] = 1.0
    face_int /= qf2
    face_int *= -1.0
    if small_f.any():  # q along a face normal: the face integral is its area times the phase
        rows, faces = np.nonzero(small_f)
        face_int[rows, faces] = u.face_area[faces] * np.cos(qn[rows, faces] * u.face_offset[faces])
    num = np.einsum("pf,pf->p", qn, face_int)
    small = q2 < 2.5e-3  # |qR| < 0.05: the edge sums cancel in float32; use the Guinier series
    amp = num / np.where(small, 1.0, q2)
    if small.any():
        amp[small] = p.volume * (1 - q2[small] * p.rg2 / 6)
    return amp


@dataclass(frozen=True)
class _EdgePairs:
    """Float32 matrices that evaluate the edge sums with matrix products."""

    normals_t: np.ndarray  # (3, F)
    half_tangent_t: np.ndarray  # (3, U): t L / 2 of each opposite-edge pair
    mid_t: np.ndarray  # (3, U)
    length: np.ndarray  # (U,)
    edge_normal_t: np.ndarray  # (3, K)
    expand: np.ndarray  # (U, K): 1 where face-edge term k belongs to pair u
    incidence: np.ndarray  # (K, F): 1 where term k lies on face f
    face_area: np.ndarray  # (F,)
    face_offset: np.ndarray  # (F,)


@lru_cache(maxsize=None)
def _edge_pairs(shape: str) -> _EdgePairs:
    p = polyhedron_edges(shape)
    keys, index = [], []
    for mid in p.edge_mid:
        key = mid if tuple(np.round(mid, 9)) >= tuple(np.round(-mid, 9)) else -mid
        for j, k in enumerate(keys):
            if np.allclose(k, key, atol=1e-9):
                index.append(j)
                break
        else:
            keys.append(key)
            index.append(len(keys) - 1)
    index = np.array(index)
    first = np.array([np.flatnonzero(index == j)[0] for j in range(len(keys))])
    f32 = np.float32
    expand = np.zeros((len(keys), len(index)), f32)
    expand[index, np.arange(len(index))] = 1
    incidence = np.zeros((len(index), len(p.normals)), f32)
    incidence[np.arange(len(index)), p.edge_face] = 1
    length = p.edge_length[first]
    return _EdgePairs(p.normals.T.astype(f32).copy(), (p.edge_tangent[first] * length[:, None] / 2).T.astype(f32).copy(),
                      np.array(keys).T.astype(f32).copy(), length.astype(f32), p.edge_normal.T.astype(f32).copy(),
                      expand, incidence, p.face_area.astype(f32), p.face_offset.astype(f32))
