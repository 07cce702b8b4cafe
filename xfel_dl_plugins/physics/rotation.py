"""Rotations as unit quaternions (w, x, y, z) rotating the particle's body frame into the lab frame."""

from __future__ import annotations

import numpy as np


def random_quaternions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rotations uniform on SO(3) (Shoemake's method), as (n, 4) quaternions with w >= 0."""
    u1, u2, u3 = rng.random((3, n))
    a, b = np.sqrt(1 - u1), np.sqrt(u1)
    q = np.stack([a * np.sin(2 * np.pi * u2), a * np.cos(2 * np.pi * u2),
                  b * np.sin(2 * np.pi * u3), b * np.cos(2 * np.pi * u3)], axis=-1)
    q = q[:, [3, 0, 1, 2]]  # (w, x, y, z)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def quaternion_to_matrix(quaternion) -> np.ndarray:
    """Rotation matrix (..., 3, 3) of unit quaternions (..., 4); r_lab = R @ r_body."""
    q = np.asarray(quaternion, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def to_body_frame(q_lab: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Express lab-frame vectors (..., 3) in the body frame of a particle rotated by ``rotation``."""
    return q_lab @ rotation  # row vectors: (R^T q)^T = q^T R
