"""Decision-level (late) fusion, SVCEmotion: a weighted average of per-modality head probabilities.

Weights come from params (late_fusion_weights) or are tuned on the validation split by a grid over
the simplex; either way they are normalised to sum to 1.
"""
from __future__ import annotations

from itertools import combinations
from typing import Callable, Optional, Sequence

import numpy as np


def normalise_weights(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"late_fusion_weights has {w.size} values for {n} modalities")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"late_fusion_weights must be >= 0 with a positive sum, got {list(weights)}")
    return w / w.sum()


def fuse(probs: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted average of (N, C) probability matrices."""
    return np.tensordot(np.asarray(weights), np.stack(probs), axes=1)


def simplex_grid(n: int, step: float) -> np.ndarray:
    """Every weight vector of n non-negative multiples of `step` that sums to 1 (stars and bars)."""
    k = int(round(1 / step))
    if k < 1 or abs(k * step - 1) > 1e-9:
        raise ValueError(f"late_fusion_grid_step must divide 1 (e.g. 0.1, 0.05), got {step}")
    rows = []
    for bars in combinations(range(k + n - 1), n - 1):
        edges = (-1, *bars, k + n - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
    return np.asarray(rows, dtype=np.float64) / k


def tune_weights(val_probs: Sequence[np.ndarray], score: Callable[[np.ndarray], float], step: float) -> np.ndarray:
    """The grid point whose fused validation probabilities score highest (first one on ties)."""
    grid = simplex_grid(len(val_probs), step)
    scores = [score(fuse(val_probs, w)) for w in grid]
    return grid[int(np.argmax(scores))]


def fusion_weights(given: Optional[Sequence[float]], val_probs: Optional[Sequence[np.ndarray]],
                   score: Callable[[np.ndarray], float], step: float, n: int) -> tuple[np.ndarray, str]:
    """(weights summing to 1, where they came from)."""
    if given is not None:
        return normalise_weights(given, n), "params"
    if val_probs is not None:
        return tune_weights(val_probs, score, step), "tuned on val"
    return np.full(n, 1.0 / n), "uniform (no val split)"
