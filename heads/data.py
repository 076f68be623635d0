"""Clip table + feature stores -> in-memory tensors the heads train on.

Heads never see files: they get one `HeadData` holding, per modality (store key), a zero-padded
(N, T, D) tensor with per-clip lengths, the label matrix, and the split indices. A clip absent
from a modality's store (or with 0 rows, e.g. empty text) gets length 0 and is masked by every head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

import numpy as np
import pandas as pd

from pipeline.catalog import Cache, uniform_rows  # noqa: F401 (uniform_rows: re-exported for heads' callers)

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")
LABEL_SEP = "|"   # multi-label clip tables join class names with this


@dataclass
class Modality:
    x: "torch.Tensor"          # (N, T, D) float32, zero-padded
    lengths: "torch.Tensor"    # (N,) int64 valid rows; 0 = missing for this clip

    @property
    def dim(self) -> int:
        return int(self.x.shape[-1])

    def take(self, idx) -> tuple["torch.Tensor", "torch.Tensor"]:
        return self.x[idx], self.lengths[idx]


@dataclass
class HeadData:
    clip_ids: list[str]
    modalities: dict[str, Modality]
    y: "torch.Tensor"                 # (N, C) float32 multi-hot (one-hot for single-label)
    splits: dict[str, "torch.Tensor"]  # split name -> row indices (int64)
    vocab: list[str]
    multilabel: bool
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.vocab)

    def targets(self, idx=None) -> "torch.Tensor":
        """What the loss consumes: multi-hot rows (multi-label) or class indices (single-label)."""
        y = self.y if idx is None else self.y[idx]
        return y if self.multilabel else y.argmax(1)

    def inputs(self, idx, keys: Optional[list[str]] = None) -> dict[str, tuple]:
        return {k: self.modalities[k].take(idx) for k in (keys or list(self.modalities))}

    def has(self, split: str) -> bool:
        return split in self.splits and len(self.splits[split]) > 0

    def to(self, device) -> "HeadData":
        mods = {k: Modality(m.x.to(device), m.lengths.to(device)) for k, m in self.modalities.items()}
        return HeadData(self.clip_ids, mods, self.y.to(device), {s: i.to(device) for s, i in self.splits.items()},
                        self.vocab, self.multilabel, self.meta)


# ---------------------------------------------------------------- labels
def encode_labels(labels: pd.Series, vocab: list[str], multilabel: bool) -> np.ndarray:
    """(N, C) multi-hot. Single-label rows must name exactly one known class."""
    pos = {c: i for i, c in enumerate(vocab)}
    y = np.zeros((len(labels), len(vocab)), dtype=np.float32)
    unknown: set[str] = set()
    for r, raw in enumerate(labels.tolist()):
        text = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw)
        names = [n.strip() for n in text.split(LABEL_SEP)] if multilabel else [text.strip()]
        names = [n for n in names if n]
        if not multilabel and len(names) != 1:
            raise ValueError(f"single-label clip table row {r} has label {raw!r}; expected one class name")
        for n in names:
            if n in pos:
                y[r, pos[n]] = 1.0
            else:
                unknown.add(n)
    if unknown:
        raise ValueError(f"labels not in the vocabulary: {sorted(unknown)[:10]}; vocabulary: {vocab}")
    return y


# ---------------------------------------------------------------- features
def load_head_data(clip_table: pd.DataFrame, vocab: list[str], multilabel: bool, stores: Mapping[str, object],
                   max_frames: int, name: str = "features") -> HeadData:
    """Build tensors for every modality in `stores` (a Cache from pipeline.catalog.open_catalog, or any
    {store key: FeatureStore}); clips a store lacks get length 0."""
    import torch

    for col in ("clip_id", "split", "labels"):
        if col not in clip_table.columns:
            raise ValueError(f"clip table lacks column {col!r}; has {list(clip_table.columns)}")
    bad = sorted(set(clip_table["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"clip table has unknown split names {bad}; expected {SPLITS}")
    # Single-label: a clip without a label (empty / NaN, kept by the dataset listing for extraction) can
    # neither train nor be scored. Multi-label: an empty set is a real answer (none of the classes).
    labelled = clip_table["labels"].map(lambda v: multilabel or (isinstance(v, str) and v.strip() != ""))
    n_unlabelled = int((~labelled).sum())
    clip_table = clip_table[labelled]
    clip_ids = clip_table["clip_id"].astype(str).tolist()
    y = encode_labels(clip_table["labels"], vocab, multilabel)
    cache = stores if isinstance(stores, Cache) else Cache(stores)
    read = cache.read(list(stores), clip_ids, padded=True, max_rows=max_frames, name=name)
    mods = {key: Modality(torch.from_numpy(p.x), torch.from_numpy(p.lengths)) for key, p in read.items()}
    split_col = clip_table["split"].to_numpy()
    splits = {s: torch.from_numpy(np.flatnonzero(split_col == s).astype(np.int64)) for s in SPLITS}
    coverage = {k: float((m.lengths > 0).float().mean()) for k, m in mods.items()}
    return HeadData(clip_ids, mods, torch.from_numpy(y), splits, list(vocab), multilabel,
                    {"coverage": coverage, "unlabelled_skipped": n_unlabelled})


# ---------------------------------------------------------------- stores
def open_stores(cfg, keys: list[str]) -> Cache:
    """The cache (pipeline/catalog.py) restricted to `keys`: the catalog says which store holds each key."""
    from pipeline.catalog import open_catalog

    return open_catalog(cfg.store, Path(cfg.base_dir)).select(list(keys))


def pretrained_flags(stores: Mapping[str, object], keys: list[str]) -> dict[str, Optional[bool]]:
    """What each key's extractor recorded in the store (None when the store holds no metadata)."""
    out: dict[str, Optional[bool]] = {}
    for key in keys:
        try:
            meta = stores[key].meta(key)
        except KeyError:
            meta = {}
        out[key] = bool(meta["pretrained"]) if "pretrained" in meta else None
    return out


# ---------------------------------------------------------------- split views
def carve_mask(train_ids: list[str], fraction: float) -> np.ndarray:
    """True for the train clips `carve_validation` holds out (the round(fraction x N) smallest id hashes);
    all False when that would leave fewer than 2 training clips. Baselines use it to score on the same clips."""
    import hashlib

    keys = np.array([int(hashlib.sha256(c.encode()).hexdigest()[:12], 16) for c in train_ids])
    n_val = int(round(fraction * len(train_ids)))
    held = np.zeros(len(train_ids), dtype=bool)
    if n_val >= 1 and len(train_ids) - n_val >= 2:
        held[np.argsort(keys, kind="stable")[:n_val]] = True
    return held


def carve_validation(data: HeadData, fraction: float) -> HeadData:
    """When the clip table has no val split, hold out `fraction` of train as val. Clips are picked by a hash of
    their id, so the same clips are held out on every run, whatever the table order or the training seed."""
    import torch

    if data.has("val") or fraction <= 0 or not data.has("train"):
        return data
    train = data.splits["train"]
    held = carve_mask([data.clip_ids[int(i)] for i in train], fraction)
    n_val = int(held.sum())
    if n_val == 0:
        return data
    held_t = torch.from_numpy(held)
    splits = dict(data.splits, train=train[~held_t], val=train[held_t])
    return HeadData(data.clip_ids, data.modalities, data.y, splits, data.vocab, data.multilabel,
                    dict(data.meta, val_carved={"fraction": fraction, "n": int(n_val)}))


def without_split(data: HeadData, split: str) -> HeadData:
    """A copy that physically lacks `split`'s rows (features, labels, ids): what model selection gets, so it
    cannot read test labels even by mistake."""
    import torch

    keep = torch.cat([i for s, i in sorted(data.splits.items()) if s != split]).sort().values
    remap = torch.full((len(data.clip_ids),), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    mods = {k: Modality(m.x[keep], m.lengths[keep]) for k, m in data.modalities.items()}
    splits = {s: (remap[i] if s != split else torch.zeros(0, dtype=torch.int64)) for s, i in data.splits.items()}
    return HeadData([data.clip_ids[int(i)] for i in keep], mods, data.y[keep], splits, data.vocab, data.multilabel,
                    dict(data.meta))
