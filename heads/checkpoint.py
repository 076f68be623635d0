"""Save / load a trained head. Only tensors and plain Python types are saved, so loading uses
torch.load(weights_only=True) and never runs pickled code. The head kind's own state (HeadKind.state) sits at
the top level of the saved dict; the registry's HeadKind.load reads it back."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from heads.config import ExperimentConfig
from heads.models import Inputs
from heads.registry import HeadKind, head_kind, known_kinds

FORMAT = 1


def save_checkpoint(path: Path, *, head: str, exp: ExperimentConfig, vocab: list[str], multilabel: bool,
                    input_dims: dict[str, int], seed: int, thresholds: Optional[list[float]],
                    state: dict) -> Path:
    """state: the head kind's HeadKind.state() (neural: {'state_dict': ...}; late fusion: {'heads': ...,
    'fusion_weights': [...]}; logreg: {'logreg': {...tensors}})."""
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
    model: HeadKind

    @property
    def vocab(self) -> list[str]:
        return self.doc["vocab"]

    @property
    def thresholds(self) -> np.ndarray:
        t = self.doc.get("thresholds")
        return np.asarray(t) if t is not None else np.full(len(self.vocab), self.exp.train.threshold)

    def predict_proba(self, inputs: Inputs) -> np.ndarray:
        return self.model.predict_proba(inputs)


def load_checkpoint(path: Path) -> TrainedHead:
    doc = torch.load(Path(path), map_location="cpu", weights_only=True)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {doc.get('format')!r}, this code reads {FORMAT}")
    if doc.get("head") not in known_kinds():   # e.g. a kind that a plugin registered, not loaded here
        raise ValueError(f"{path}: head kind {doc.get('head')!r} is not registered; known kinds: "
                         f"{', '.join(known_kinds())}")
    exp = ExperimentConfig.model_validate(doc["experiment"])
    model = head_kind(doc["head"]).load(doc, exp, doc["input_dims"], len(doc["vocab"]), doc["multilabel"])
    return TrainedHead(doc, exp, model)
