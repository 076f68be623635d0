"""Synthetic HeadData with a known answer, for tests and the speed benchmark (never for reported results).

Each class has a random prototype per modality; a clip's rows are the sum of its classes' prototypes
times `signal`, plus unit Gaussian noise, so the problem is separable when signal is large enough.
"""
from __future__ import annotations

import numpy as np
import torch

from heads.data import HeadData, Modality


def make_synthetic(n_clips: int, shapes: dict[str, tuple[int, int]], n_classes: int, multilabel: bool,
                   signal: float = 1.0, seed: int = 0, split_fractions: tuple[float, float] = (0.7, 0.15),
                   positive_rate: float = 0.15, min_rows: int = 1) -> HeadData:
    """shapes: {key: (max rows T, width D)}. Clip lengths vary in [min(min_rows, T), T]."""
    rng = np.random.default_rng(seed)
    if multilabel:
        y = (rng.random((n_clips, n_classes)) < positive_rate).astype(np.float32)
        y[np.arange(n_clips), rng.integers(0, n_classes, n_clips)] = 1.0   # every clip has a label
    else:
        y = np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, n_clips)]
    mods = {}
    for key, (t, d) in shapes.items():
        proto = rng.standard_normal((n_classes, d)).astype(np.float32)
        lengths = rng.integers(min(min_rows, t), t + 1, n_clips)
        x = rng.standard_normal((n_clips, t, d), dtype=np.float32)
        x += signal * (y @ proto)[:, None, :]
        x[np.arange(t)[None, :] >= lengths[:, None]] = 0.0
        mods[key] = Modality(torch.from_numpy(x), torch.from_numpy(lengths.astype(np.int64)))
    n_train, n_val = int(split_fractions[0] * n_clips), int(split_fractions[1] * n_clips)
    perm = torch.from_numpy(rng.permutation(n_clips))
    splits = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    vocab = [f"class{c}" for c in range(n_classes)]
    return HeadData([f"clip{i}" for i in range(n_clips)], mods, torch.from_numpy(y), splits, vocab, multilabel)
