"""What an uninformed predictor scores on the eval split, so a reader can tell learning from luck.

    chance_levels(y_train, y_eval, vocab, multilabel) -> {"accuracy_uniform", "accuracy_majority", "majority_class",
                                                           "mAP_random"}

accuracy_uniform: a uniformly random class (1 / classes); accuracy_majority: always the most frequent train
class; mAP_random: the expected AP of scores unrelated to the labels = each class's eval prevalence, averaged
over the classes present in the eval split (as mAP is).
"""
from __future__ import annotations

import numpy as np


def chance_levels(y_train: np.ndarray, y_eval: np.ndarray, vocab: list[str], multilabel: bool) -> dict:
    """y_*: (N, C) 0/1 label matrices."""
    y_train, y_eval = np.asarray(y_train, dtype=np.float64), np.asarray(y_eval, dtype=np.float64)
    prevalence = y_eval.mean(axis=0) if len(y_eval) else np.zeros(len(vocab))
    present = y_eval.sum(axis=0) > 0
    out = {"mAP_random": float(prevalence[present].mean()) if present.any() else None}
    if not multilabel:
        majority = int(np.argmax(y_train.sum(axis=0)))
        out.update(accuracy_uniform=1.0 / len(vocab), majority_class=vocab[majority],
                   accuracy_majority=float(prevalence[majority]))
    return out
