"""Save / load a trained head. Only tensors and plain Python types are saved, so loading uses
torch.load(weights_only=True) and never runs pickled code."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from emocache.config import ExperimentConfig
from heads.baselines import LogRegHead
from heads.fusion import fuse
from heads.models import Inputs, build_head, predict_logits, probabilities

FORMAT = 1


def save_checkpoint(path: Path, *, head: str, exp: ExperimentConfig, vocab: list[str], multilabel: bool,
                    input_dims: dict[str, int], seed: int, thresholds: Optional[list[float]],
                    state: dict) -> Path:
    """state: {'state_dict': ...} (neural), {'heads': {key: state_dict}, 'fusion_weights': [...]} (late fusion)
    or {'logreg': {...tensors}}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "head": head, "experiment": exp.model_dump(mode="json"), "vocab": list(vocab),
           "multilabel": bool(multilabel), "modalities": list(input_dims), "input_dims": dict(input_dims),
           "seed": int(seed), "thresholds": thresholds, **state}
    torch.save(doc, path)
    return path


@dataclass
class TrainedHead:
    """A loaded checkpoint that maps modality inputs to class probabilities."""

    doc: dict
    exp: ExperimentConfig
    model: object

    @property
    def vocab(self) -> list[str]:
        return self.doc["vocab"]

    @property
    def thresholds(self) -> np.ndarray:
        t = self.doc.get("thresholds")
        return np.asarray(t) if t is not None else np.full(len(self.vocab), self.exp.train.threshold)

    def predict_proba(self, inputs: Inputs) -> np.ndarray:
        head, ml, bs = self.doc["head"], self.doc["multilabel"], self.exp.train.eval_batch_size
        if head == "logreg":
            return self.model.predict_proba(inputs)
        if head == "late_fusion":
            parts = [probabilities(predict_logits(m, {k: inputs[k]}, bs), ml).numpy() for k, m in self.model.items()]
            return fuse(parts, np.asarray(self.doc["fusion_weights"]))
        return probabilities(predict_logits(self.model, inputs, bs), ml).numpy()


def load_checkpoint(path: Path) -> TrainedHead:
    doc = torch.load(Path(path), map_location="cpu", weights_only=True)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {doc.get('format')!r}, this code reads {FORMAT}")
    exp = ExperimentConfig.model_validate(doc["experiment"])
    n, dims, head = len(doc["vocab"]), doc["input_dims"], doc["head"]
    if head == "logreg":
        model = LogRegHead.from_state(doc["logreg"], exp.logreg, doc["multilabel"])
    elif head == "finetune_top":
        from heads.finetune import FinetuneTopHead

        model = FinetuneTopHead.load(doc, exp).model
    elif head == "late_fusion":
        model = {}
        for k, sd in doc["heads"].items():
            model[k] = build_head("mlp", exp, {k: dims[k]}, n)
            model[k].load_state_dict(sd)
    else:
        model = build_head(head, exp, dims, n)
        model.load_state_dict(doc["state_dict"])
    return TrainedHead(doc, exp, model)
