"""VGGish post-processing as the TF reference postprocessor: PCA, clip to [-2, 2], quantise to uint8 0..255.

PCA parameters come from torchvggish's `vggish_pca_params-970ea276.pth` (keys `pca_eigen_vectors` (128, 128),
`pca_means` (128,) or (128, 1)). Released AudioSet / YouTube-8M embeddings are in this form.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EIGEN_KEY = "pca_eigen_vectors"
MEANS_KEY = "pca_means"
QUANTIZE_MIN = -2.0           # the reference quantisation range (fixed by the released PCA parameters)
QUANTIZE_MAX = 2.0
QUANTIZE_LEVELS = 255.0


def load_pca_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(eigen_vectors (D, D), means (D,)) float64. The released file may hold NumPy arrays: they are allowed
    explicitly (still weights_only=True, no arbitrary code)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as first:  # NumPy arrays need their reconstructors allow-listed
        safe = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float32)),
                type(np.dtype(np.float64))]
        try:
            with torch.serialization.safe_globals(safe):
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            raise ValueError(f"{path}: cannot read VGGish PCA parameters with weights_only=True: {first}") from None
    if not isinstance(state, dict) or EIGEN_KEY not in state or MEANS_KEY not in state:
        raise ValueError(f"{path}: expected keys {EIGEN_KEY!r} and {MEANS_KEY!r}")
    eigen = np.asarray(state[EIGEN_KEY], dtype=np.float64)
    means = np.asarray(state[MEANS_KEY], dtype=np.float64).reshape(-1)
    if eigen.ndim != 2 or eigen.shape[0] != eigen.shape[1] or eigen.shape[1] != means.shape[0]:
        raise ValueError(f"{path}: PCA shapes {eigen.shape} / {means.shape} do not fit")
    return eigen, means


class Postprocessor:
    def __init__(self, eigen_vectors: np.ndarray, means: np.ndarray) -> None:
        self.eigen = np.asarray(eigen_vectors, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64).reshape(-1)

    @classmethod
    def identity(cls, dim: int) -> "Postprocessor":
        """No rotation, zero means: only clip + quantise (used with untrained weights, marked pretrained: false)."""
        return cls(np.eye(dim), np.zeros(dim))

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) float embeddings -> (N, D) uint8, as the TF postprocessor (float64 maths, round half to even)."""
        pca = (np.asarray(embeddings, dtype=np.float64) - self.means) @ self.eigen.T
        clipped = np.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
        return np.round((clipped - QUANTIZE_MIN) * (QUANTIZE_LEVELS / (QUANTIZE_MAX - QUANTIZE_MIN))).astype(np.uint8)
