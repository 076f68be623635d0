"""Plot data for `dvc plots` (CSV, one tidy table per plot); DVC draws them, nothing is rendered here."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _r(v) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def write_loss_curves(path: Path, history: list[dict]) -> Path:
    """history rows: seed, modality, epoch, train_loss, val_loss, val_score (val_* empty when not evaluated)."""
    cols = ["seed", "modality", "epoch", "train_loss", "val_loss", "val_score"]
    cell = lambda v: _r(v) if isinstance(v, float) else ("" if v is None else v)
    return _write(path, cols, ([cell(h.get(c)) for c in cols] for h in history))


def write_pr_curves(path: Path, y: np.ndarray, scores: np.ndarray, vocab: list[str], max_points: int) -> Path:
    """Per class precision/recall points (thinned to at most max_points per class)."""
    rows = []
    for c, name in enumerate(vocab):
        if not y[:, c].any():
            continue
        precision, recall, _ = precision_recall_curve(y[:, c], scores[:, c])
        keep = np.unique(np.linspace(0, len(recall) - 1, min(len(recall), max_points)).round().astype(int))
        rows += [(name, _r(recall[i]), _r(precision[i])) for i in keep]
    return _write(path, ["class", "recall", "precision"], rows)


def write_per_class(path: Path, vocab: list[str], columns: dict[str, Sequence[Optional[float]]]) -> Path:
    """One row per class, e.g. columns {'ap_mean': [...], 'ap_std': [...]} (bar charts)."""
    names = list(columns)
    return _write(path, ["class", *names], ([name, *[_r(columns[n][i]) for n in names]] for i, name in enumerate(vocab)))


def write_confusion(path: Path, y: np.ndarray, pred: np.ndarray, vocab: list[str]) -> Path:
    """One row per clip (actual, predicted): the layout DVC's confusion template reads."""
    return _write(path, ["actual", "predicted"], ((vocab[a], vocab[p]) for a, p in zip(y, pred)))
