"""Decision-level (late) fusion, SVCEmotion: a weighted average of per-modality head probabilities.

Weights come from params (late_fusion_weights) or are tuned on the validation split by a grid over
the simplex; either way they are normalised to sum to 1. LateFusionHead is the registry's late_fusion kind:
one independent MLP per modality (the mlp kind), probabilities averaged with those weights.
"""
from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from heads.registry import FitRecord, HeadKind, head_kind

if TYPE_CHECKING:
    import torch

    from heads.config import ExperimentConfig
    from heads.data import HeadData
    from heads.models import Inputs


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


class LateFusionHead(HeadKind):
    """SVCEmotion's decision-level fusion over per-modality MLPs."""

    width_section = "mlp"
    part_kind = "mlp"   # the kind trained on each modality

    def __init__(self, parts: dict[str, HeadKind], weights: np.ndarray, record: Optional[FitRecord] = None):
        self.parts, self.weights = parts, weights
        self.record = record or FitRecord()

    @classmethod
    def fit(cls, exp: "ExperimentConfig", data: "HeadData", keys: list[str], seed: int,
            device: "torch.device") -> "LateFusionHead":
        from heads.metrics import selection_score
        from heads.scoring import probability_metric, truth

        part = head_kind(cls.part_kind)
        parts = {k: part.fit(exp, data, [k], seed, device) for k in keys}
        val_probs = [data.batched(parts[k].predict_proba, data.splits["val"], [k], exp.train.eval_batch_size)
                     for k in keys] \
            if data.has("val") else None
        val_y = truth(data, "val") if val_probs is not None else None
        metric = probability_metric(exp.train, data.multilabel)   # fused probabilities have no training loss
        weights, source = fusion_weights(exp.late_fusion_weights, val_probs,
                                         lambda p: selection_score(metric, data.multilabel, val_y, p,
                                                                   exp.train.threshold),
                                         exp.late_fusion_grid_step, len(keys))
        records = [parts[k].record for k in keys]
        record = FitRecord(history=[h for r in records for h in r.history],
                           best_epoch={k: v for r in records for k, v in r.best_epoch.items()},
                           epochs_run={k: v for r in records for k, v in r.epochs_run.items()},
                           seconds=sum(r.seconds for r in records), schedule=records[-1].schedule,
                           facts={"weights": dict(zip(keys, weights.tolist())), "source": source})
        return cls(parts, weights, record)

    def predict_proba(self, inputs: "Inputs") -> np.ndarray:
        return fuse([p.predict_proba({k: inputs[k]}) for k, p in self.parts.items()], self.weights)

    def state(self) -> dict:
        return {"heads": {k: p.state()["state_dict"] for k, p in self.parts.items()},
                "fusion_weights": self.weights.tolist()}

    @classmethod
    def load(cls, state: dict, exp: "ExperimentConfig", input_dims: dict[str, int], n_classes: int,
             multilabel: bool) -> "LateFusionHead":
        part = head_kind(cls.part_kind)
        parts = {k: part.load({"state_dict": sd}, exp, {k: input_dims[k]}, n_classes, multilabel)
                 for k, sd in state["heads"].items()}
        return cls(parts, np.asarray(state["fusion_weights"]))

    @classmethod
    def search_kind(cls, n_modalities: int) -> Optional[str]:
        return head_kind(cls.part_kind).search_kind(n_modalities)   # its per-modality MLPs

    @classmethod
    def result_extras(cls, records: list[FitRecord], keys: list[str]) -> dict:
        w = np.asarray([[r.facts["weights"][k] for k in keys] for r in records])
        return {"late_fusion_weights": {"mean": dict(zip(keys, w.mean(0).tolist())),
                                        "std": dict(zip(keys, w.std(0).tolist())),
                                        "source": records[0].facts["source"]}}
