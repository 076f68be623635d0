"""Evaluation metrics (scikit-learn where it has them).

Multi-label (SVCEmotion): per-class AP and RA = (TP+TN)/all, mAP, mRA, Mean = (mAP + mRA)/2, plus F1s.
Single-label (Wu et al., DeepMSI-MER): accuracy, weighted F1, macro F1, one-vs-rest AP, confusion matrix.
Per-class thresholds that maximise F1 on validation (the real-world MER system). Seeds summarised as mean ± std.
A class with no positive in the evaluated split has AP = NaN and is left out of mAP.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Union

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, jaccard_score, precision_recall_curve

Thresholds = Union[float, np.ndarray]


def per_class_ap(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        if y[:, c].any():
            out[c] = average_precision_score(y[:, c], scores[:, c])
    return out


def fast_per_class_ap(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Same numbers as `per_class_ap`, vectorised over classes (ties grouped like sklearn):
    cheap enough to run on the validation split after every epoch."""
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, 0)
    ys = np.take_along_axis(y, order, 0)
    tp = np.cumsum(ys, axis=0)
    # each row's precision is read at the end of its tie group (sklearn evaluates distinct thresholds only)
    group_end = np.ones_like(s, dtype=bool)
    group_end[:-1] = s[:-1] != s[1:]
    ends = np.where(group_end, np.arange(n)[:, None], n)
    ends = np.minimum.accumulate(ends[::-1], axis=0)[::-1]
    precision = np.take_along_axis(tp, ends, 0) / (ends + 1)
    pos = y.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (ys * precision).sum(0) / pos
    return np.where(pos > 0, ap, np.nan)


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def multilabel_metrics(y: np.ndarray, scores: np.ndarray, thresholds: Thresholds = 0.5) -> dict:
    """y: (N, C) {0,1}; scores: (N, C) probabilities; thresholds: scalar or (C,)."""
    y = np.asarray(y).astype(int)
    pred = (scores >= np.asarray(thresholds)).astype(int)
    ap = per_class_ap(y, scores)
    ra = (pred == y).mean(0)
    m_ap, m_ra = _nanmean(ap), float(ra.mean())
    out = {"ap": ap.tolist(), "ra": ra.tolist(), "mAP": m_ap, "mRA": m_ra, "Mean": (m_ap + m_ra) / 2}
    for avg in ("macro", "micro", "weighted", "samples"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # weighted/samples on classes or clips with no label
            out[f"f1_{avg}"] = float(f1_score(y, pred, average=avg, zero_division=0))
    # SemEval-2018 E-c "accuracy": |true & predicted| / |true | predicted| per clip; both empty counts as 1
    out["jaccard"] = float(jaccard_score(y, pred, average="samples", zero_division=1.0))
    return out


def singlelabel_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """y: (N,) class indices; probs: (N, C)."""
    n_classes = probs.shape[1]
    pred = probs.argmax(1)
    labels = np.arange(n_classes)
    ap = per_class_ap(np.eye(n_classes, dtype=int)[y], probs)
    return {
        "accuracy": float((pred == y).mean()),
        "f1_weighted": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "ap": ap.tolist(), "mAP": _nanmean(ap),
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def tune_thresholds(y: np.ndarray, scores: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per class, the score threshold that maximises F1 on (validation) data; `default` for a class
    with no positives."""
    out = np.full(y.shape[1], default, dtype=np.float64)
    for c in range(y.shape[1]):
        if not y[:, c].any():
            continue
        precision, recall, thr = precision_recall_curve(y[:, c], scores[:, c])
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        out[c] = thr[int(np.argmax(f1[:-1]))]   # the last PR point has no threshold
    return out


def selection_score(metric: str, multilabel: bool, y: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    """Higher is better. Cheap: used on the validation split after every epoch."""
    if multilabel:
        y = np.asarray(y)
        if metric in ("mean", "map"):
            m_ap = _nanmean(fast_per_class_ap(y, probs))
            if metric == "map":
                return m_ap
            return (m_ap + float(((probs >= threshold) == (y > 0.5)).mean())) / 2
        pred = (probs >= threshold).astype(int)
        avg = {"f1_macro": "macro", "f1_weighted": "weighted"}.get(metric)
        if avg is None:
            raise ValueError(f"select_metric {metric!r} does not apply to multi-label experiments")
        return float(f1_score(y.astype(int), pred, average=avg, zero_division=0))
    labels = np.arange(probs.shape[1])
    pred = probs.argmax(1)
    if metric == "accuracy":
        return float((pred == y).mean())
    if metric in ("f1_weighted", "f1_macro"):
        return float(f1_score(y, pred, labels=labels, average=metric[3:], zero_division=0))
    if metric == "map":
        return _nanmean(fast_per_class_ap(np.eye(probs.shape[1])[y], probs))
    raise ValueError(f"select_metric {metric!r} does not apply to single-label experiments")


def summarize(runs: Iterable[dict]) -> dict:
    """Seed runs -> {metric: {"mean", "std"}} for scalars, {"mean": [...], "std": [...]} for per-class lists.
    Matrices (confusion) are summed over seeds."""
    runs = list(runs)
    out: dict = {}
    for key in runs[0]:
        vals = [r[key] for r in runs]
        if key == "confusion":
            out[key] = np.sum(np.asarray(vals), axis=0).tolist()
            continue
        arr = np.asarray(vals, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-NaN classes
            mean, std = np.nanmean(arr, axis=0), np.nanstd(arr, axis=0)
        if arr.ndim == 1:
            out[key] = {"mean": _num(mean), "std": _num(std)}
        else:
            out[key] = {"mean": [_num(v) for v in mean], "std": [_num(v) for v in std]}
    return out


def _num(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v   # JSON has no NaN
