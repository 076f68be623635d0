"""Head kinds behind one registry: a kind is one HeadKind subclass and one registry line.

    head_kind("mlp") -> the class           fit / predict_proba / state / load, the four things train,
    known_kinds()    -> names, no imports   evaluate, predict, tune and the checkpoint ask of a head

Built-in kinds are the lines of _BUILTIN ("module:Class", imported on first use, so that naming them for
config validation and error messages imports neither torch nor sklearn); a kind defined elsewhere (a test, a
plugin) registers itself with @register("name") on its class. A class learns its name from the registry:
code that needs another kind asks head_kind() for it. train.py keeps the seed loop and calls only this
interface.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

if TYPE_CHECKING:
    import numpy as np
    import torch

    from heads.config import ExperimentConfig
    from heads.data import HeadData
    from heads.models import Inputs

# name -> "module:Class"; the order is the order error messages list them in
_BUILTIN: dict[str, str] = {
    "linear": "heads.neural:LinearHead",
    "mlp": "heads.neural:MLPHead",
    "early_fusion": "heads.neural:EarlyFusionHead",
    "nextvlad": "heads.neural:NeXtVLADHead",
    "late_fusion": "heads.fusion:LateFusionHead",
    "logreg": "heads.baselines:LogRegHead",
    "finetune_top": "heads.finetune:FinetuneTopHead",
}
_REGISTERED: dict[str, type["HeadKind"]] = {}


@dataclass
class FitRecord:
    """What one fit did, for metrics.json (best/ran epochs, schedule), run.json (seconds) and the loss plot."""
    history: list[dict] = field(default_factory=list)     # rows: epoch, train_loss, val_*, seed, modality
    best_epoch: dict[str, int] = field(default_factory=dict)   # per trained network (keyed by its modalities)
    epochs_run: dict[str, int] = field(default_factory=dict)   # empty: a closed-form fit, no epochs
    seconds: float = 0.0
    schedule: Optional[dict] = None
    facts: dict = field(default_factory=dict)             # kind-specific (late fusion: its weights)


class HeadKind(ABC):
    """A trained head: modality inputs -> class probabilities, saved as plain tensors."""

    name: ClassVar[str] = ""
    uses_device: ClassVar[bool] = True          # False: fits on the CPU whatever train.device says
    width_section: ClassVar[Optional[str]] = None   # the ExperimentConfig section whose hidden/dropout it uses
    record: FitRecord

    @classmethod
    @abstractmethod
    def fit(cls, exp: "ExperimentConfig", data: "HeadData", keys: list[str], seed: int,
            device: "torch.device") -> "HeadKind":
        """Train on data.splits['train'] (choosing on 'val' when there is one); set .record."""

    @abstractmethod
    def predict_proba(self, inputs: "Inputs") -> "np.ndarray":
        """(N, C) probabilities: sigmoid (multi-label) or softmax (single-label)."""

    @abstractmethod
    def state(self) -> dict:
        """What the checkpoint stores for this kind: tensors and plain Python types only (weights_only load)."""

    @classmethod
    @abstractmethod
    def load(cls, state: dict, exp: "ExperimentConfig", input_dims: dict[str, int], n_classes: int,
             multilabel: bool) -> "HeadKind":
        """The head back from state() (the checkpoint dict holds state()'s keys at its top level)."""

    @classmethod
    def prepare(cls, cfg, stores: dict, exp: "ExperimentConfig") -> dict:
        """What fit() needs from the cache beyond the feature rows (finetune_top: the rebuilt backbone layers);
        run_experiment puts it in HeadData.meta. Most kinds need nothing."""
        return {}

    @classmethod
    def search_kind(cls, n_modalities: int) -> Optional[str]:
        """The kind `tune` trains when asked for this one (None: nothing to search)."""
        return None

    @classmethod
    def result_extras(cls, records: list[FitRecord], keys: list[str]) -> dict:
        """More top-level keys for metrics.json from the seeds' records."""
        return {}


def register(name: str) -> Callable[[type[HeadKind]], type[HeadKind]]:
    """Class decorator: @register("toy") makes head: toy a known kind."""
    def add(cls: type[HeadKind]) -> type[HeadKind]:
        if name in _BUILTIN and _BUILTIN[name] != f"{cls.__module__}:{cls.__qualname__}":
            raise ValueError(f"head kind {name!r} is built in ({_BUILTIN[name]}); pick another name")
        cls.name = name
        _REGISTERED[name] = cls
        return cls
    return add


def known_kinds() -> list[str]:
    return [*_BUILTIN, *(n for n in _REGISTERED if n not in _BUILTIN)]


def head_kind(name: str) -> type[HeadKind]:
    if name not in _REGISTERED:
        if name not in _BUILTIN:
            raise ValueError(f"unknown head kind {name!r}; known kinds: {', '.join(known_kinds())}")
        module, _, cls = _BUILTIN[name].partition(":")
        register(name)(getattr(importlib.import_module(module), cls))
    return _REGISTERED[name]
