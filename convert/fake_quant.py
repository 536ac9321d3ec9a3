"""NumPy stand-ins for the INT8 kernels, for choices made on calibration activations without building a graph
(which MatMuls to keep fp32, which SmoothQuant alpha suits each site): what ``quantize_dynamic`` and
``convert/per_token.py`` do to a MatMul's input and weight, and the relative output error that results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FakeQuant:
    """Dynamic INT8 of one MatMul: uint8 activations (one step per tensor, or per row = token) and int8
    weights (per output channel or per tensor; 7-bit under ``reduce_range``, as the AVX2 preset writes)."""

    per_channel: bool = True
    per_token: bool = False
    reduce_range: bool = False

    def activation(self, x: np.ndarray) -> np.ndarray:
        if self.per_token:
            from .per_token import LEVELS, MIN_RANGE

            # convert/per_token.py: one symmetric scale per row, with its constants.
            step = np.maximum(np.abs(x).max(axis=-1, keepdims=True), MIN_RANGE) / LEVELS
            return np.round(x / step) * step
        # DynamicQuantizeLinear: one uint8 scale and zero point for the whole tensor, range including 0.
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (high - low) / 255.0 or 1.0
        zero = np.clip(np.round(-low / scale), 0, 255)
        return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale

    def weight(self, w: np.ndarray) -> np.ndarray:
        # onnxruntime's symmetric int8 range: [-127, 127], or [-64, 64] with reduce_range
        levels = 64.0 if self.reduce_range else 127.0
        peak = np.abs(w).max(axis=0, keepdims=True) if self.per_channel else np.abs(w).max()
        scale = np.where(peak > 0, peak / levels, 1.0)
        return np.clip(np.round(w / scale), -levels, levels) * scale

    def squared_errors(self, x: np.ndarray, quantized_weight: np.ndarray, exact: np.ndarray):
        """(|quantized - exact|^2, |exact|^2) per row of ``x @ w``, given ``weight(w)`` and ``x @ w`` (each
        computed once by the caller, not once per batch); ``x`` is one batch (one per-tensor step)."""
        error = self.activation(x) @ quantized_weight - exact
        return np.einsum("ij,ij->i", error, error), np.einsum("ij,ij->i", exact, exact)
