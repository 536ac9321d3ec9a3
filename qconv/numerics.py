"""Small numeric helpers shared by export parity and validation."""

from __future__ import annotations

import numpy as np

_ZERO = 1e-12


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _ZERO)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays, in float64. Two all-zero rows count as identical (1.0):
    a zero vector can be a legitimate output (a zero embedding row), and must not read as a mismatch."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (normalize_rows(a) * normalize_rows(b)).sum(axis=1)
    both_zero = (np.linalg.norm(a, axis=1) < _ZERO) & (np.linalg.norm(b, axis=1) < _ZERO)
    return np.where(both_zero, 1.0, cos)
