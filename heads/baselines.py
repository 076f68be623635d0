"""Logistic regression on mean-pooled features (sklearn): the cheap reference head for the benchmarks
(the registry's logreg kind)."""
from __future__ import annotations

import time
import warnings
from typing import Optional

import numpy as np
import torch

from heads.config import ExperimentConfig, LogRegConfig
from heads.data import HeadData
from heads.models import Inputs, valid_mask
from heads.registry import FitRecord, HeadKind
from heads.scoring import truth


def mean_pooled(inputs: Inputs) -> np.ndarray:
    """(N, sum D): each modality's valid rows averaged (0 for a missing modality), concatenated."""
    parts = []
    for x, lengths in inputs.values():
        mask = valid_mask(lengths, x.shape[1]).to(x.dtype)
        parts.append(((x * mask[..., None]).sum(1) / lengths.clamp_min(1)[:, None].to(x.dtype)).cpu())
    return torch.cat(parts, dim=1).numpy().astype(np.float64)


class LogRegHead(HeadKind):
    """Standardise -> one-vs-rest (multi-label) or multinomial (single-label) logistic regression."""

    uses_device = False   # sklearn: CPU whatever train.device says

    def __init__(self, cfg: LogRegConfig, multilabel: bool, n_classes: int, seed: int):
        self.cfg, self.multilabel, self.n_classes, self.seed = cfg, multilabel, n_classes, seed
        self.record = FitRecord()

    @classmethod
    def fit(cls, exp: ExperimentConfig, data: HeadData, keys: list[str], seed: int,
            device: torch.device) -> "LogRegHead":
        t0 = time.perf_counter()
        # pooled batch by batch when the split is streamed: only the (N, sum D) means are ever in memory
        x = data.batched(mean_pooled, data.splits["train"], keys, exp.train.eval_batch_size)
        head = cls(exp.logreg, data.multilabel, data.n_classes, seed).fit_pooled(x, truth(data, "train"))
        head.record = FitRecord(seconds=time.perf_counter() - t0)
        return head

    def fit_pooled(self, x: np.ndarray, y: np.ndarray) -> "LogRegHead":
        """x: (N, sum D) mean-pooled rows (mean_pooled)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        xs = scaler.transform(x)
        self.coef = np.zeros((self.n_classes, x.shape[1]))
        self.intercept = np.zeros(self.n_classes)
        make = lambda: LogisticRegression(C=self.cfg.c, max_iter=self.cfg.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # convergence chatter on tiny data
            if self.multilabel:
                for c in range(self.n_classes):   # one binary model per class
                    col = y[:, c].astype(int)
                    if col.min() == col.max():    # constant in train: predict the train rate
                        p = float(col[0]) * (1 - 2e-6) + 1e-6
                        self.intercept[c] = np.log(p / (1 - p))
                        continue
                    m = make().fit(xs, col)
                    self.coef[c], self.intercept[c] = m.coef_[0], m.intercept_[0]
            else:
                m = make().fit(xs, y)
                present = m.classes_.astype(int)
                if len(present) == 2:   # sklearn stores one row for two classes
                    self.coef[present[1]], self.intercept[present[1]] = m.coef_[0], m.intercept_[0]
                else:
                    self.coef[present], self.intercept[present] = m.coef_, m.intercept_
                    absent = np.setdiff1d(np.arange(self.n_classes), present)
                    self.intercept[absent] = -1e9   # classes never seen in train are never predicted
        return self

    def predict_proba(self, inputs: Inputs) -> np.ndarray:
        z = (mean_pooled(inputs) - self.mean) / self.scale @ self.coef.T + self.intercept
        if self.multilabel:
            return 1 / (1 + np.exp(-z))
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    @classmethod
    def search_kind(cls, n_modalities: int) -> Optional[str]:
        return cls.name   # `tune` searches its C (heads/tune.py)

    def state(self) -> dict:
        """Plain tensors only (checkpoints load with weights_only=True)."""
        return {"logreg": {"coef": torch.from_numpy(self.coef), "intercept": torch.from_numpy(self.intercept),
                           "mean": torch.from_numpy(self.mean), "scale": torch.from_numpy(self.scale)}}

    @classmethod
    def load(cls, state: dict, exp: ExperimentConfig, input_dims: dict[str, int], n_classes: int,
             multilabel: bool) -> "LogRegHead":
        s = state["logreg"]
        head = cls(exp.logreg, multilabel, int(s["coef"].shape[0]), seed=0)
        head.coef, head.intercept = s["coef"].numpy(), s["intercept"].numpy()
        head.mean, head.scale = s["mean"].numpy(), s["scale"].numpy()
        return head
