"""One scoring function for `train` (each seed's metrics) and `emocache evaluate` (a checkpoint's metrics), and
the validation score that model selection reads.

    score_split(data, split, probs, threshold, thresholds=None) -> metrics dict
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from heads.config import TrainConfig
from heads.data import HeadData
from heads.metrics import multilabel_metrics, selection_score, singlelabel_metrics

# metrics that move with the decision thresholds: with val-tuned thresholds they are reported again as <m>_tuned
THRESHOLD_METRICS = ("ra", "mRA", "Mean", "f1_macro", "f1_micro", "f1_weighted", "f1_samples", "jaccard")


def truth(data: HeadData, split: str) -> np.ndarray:
    """The split's labels as metrics read them: multi-hot rows (multi-label) or class indices (single-label)."""
    idx = data.splits[split]
    return data.y[idx].numpy() if data.multilabel else data.targets(idx).numpy()


def score_split(data: HeadData, split: str, probs: np.ndarray, threshold: float,
                thresholds: Optional[np.ndarray] = None) -> dict:
    """Metrics of `probs` (N_split, C) on `split`; `thresholds` (per class, tuned on val) add the <m>_tuned keys."""
    y = truth(data, split)
    if not data.multilabel:
        return singlelabel_metrics(y, probs)
    out = multilabel_metrics(y, probs, threshold)
    if thresholds is not None:
        tuned = multilabel_metrics(y, probs, thresholds)
        out.update({f"{m}_tuned": tuned[m] for m in THRESHOLD_METRICS})
    return out


def select_metric(tc: TrainConfig, multilabel: bool) -> str:
    if tc.select_metric != "auto":
        return tc.select_metric
    return "mean" if multilabel else "f1_weighted"   # SVCEmotion Mean; weighted F1 for single-label (Wu et al., DeepMSI-MER)


def probability_metric(tc: TrainConfig, multilabel: bool) -> str:
    """select_metric for choices made on probabilities alone (seeds, fusion weights): they have no loss."""
    metric = select_metric(tc, multilabel)
    return metric if metric != "loss" else ("mean" if multilabel else "accuracy")


def val_score(data: HeadData, probs: np.ndarray, metric: str, tc: TrainConfig) -> float:
    """The validation score model selection maximises."""
    return selection_score(metric, data.multilabel, truth(data, "val"), probs, tc.threshold)
