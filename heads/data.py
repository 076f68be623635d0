"""Clip table + feature stores -> in-memory tensors the heads train on.

Heads never see files: they get one `HeadData` holding, per modality (store key), a zero-padded
(N, T, D) tensor with per-clip lengths, the label matrix, and the split indices. A clip absent
from a modality's store (or with 0 rows, e.g. empty text) gets length 0 and is masked by every head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Union

import numpy as np
import pandas as pd

from pipeline.catalog import Cache, uniform_rows  # noqa: F401 (uniform_rows: re-exported for heads' callers)
from pipeline.datasets.base import TABLE_LABEL_SEP

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")


@dataclass
class Modality:
    x: "torch.Tensor"          # (N, T, D) float32, zero-padded
    lengths: "torch.Tensor"    # (N,) int64 valid rows; 0 = missing for this clip
    streamed = False

    @property
    def dim(self) -> int:
        return int(self.x.shape[-1])

    def take(self, idx) -> tuple["torch.Tensor", "torch.Tensor"]:
        return self.x[idx], self.lengths[idx]

    def subset(self, keep) -> "Modality":
        return Modality(self.x[keep], self.lengths[keep])

    def to(self, device) -> "Modality":
        return Modality(self.x.to(device), self.lengths.to(device))


@dataclass
class StoreModality:
    """A modality left in the store (a split larger than memory): lengths in memory, rows read when taken.

    take(idx) gives exactly what Modality.take gives for the same clips: rows padded to the whole split's T."""
    cache: Cache
    key: str
    clip_ids: list[str]
    max_rows: int
    lengths: "torch.Tensor"
    width: int
    t: int                     # the T the in-memory tensor would have
    name: str = "features"
    streamed = True

    @property
    def dim(self) -> int:
        return self.width

    def read(self, idx) -> dict:
        import torch

        p = self.cache.read([self.key], [self.clip_ids[int(i)] for i in idx], max_rows=self.max_rows,
                            name=self.name, pad_to={self.key: self.t}, dims={self.key: self.width},
                            require_any=False)[self.key]
        return {"x": torch.from_numpy(p.x), "lengths": torch.from_numpy(p.lengths)}

    def take(self, idx) -> tuple["torch.Tensor", "torch.Tensor"]:
        r = self.read(idx)
        return r["x"], r["lengths"]

    @property
    def x(self) -> "torch.Tensor":   # everything, in memory: only for code that needs the whole split
        return self.take(range(len(self.clip_ids)))[0]

    def subset(self, keep) -> "StoreModality":
        keep = [int(i) for i in keep]
        return StoreModality(self.cache, self.key, [self.clip_ids[i] for i in keep], self.max_rows,
                             self.lengths[keep], self.width, self.t, self.name)

    def to(self, device) -> "StoreModality":
        return self   # rows move to the device per minibatch


@dataclass
class HeadData:
    clip_ids: list[str]
    modalities: dict[str, Union[Modality, StoreModality]]
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

    def streamed(self, keys: Optional[list[str]] = None) -> bool:
        return any(self.modalities[k].streamed for k in (keys or list(self.modalities)))

    def stream(self, batches: list, keys: list[str]) -> Iterator[dict[str, tuple]]:
        """inputs(b, keys) for every batch b of row indices, the store reads done store.prefetch_batches batches
        ahead on a thread (pipeline/stream.py)."""
        from pipeline.stream import prefetched

        return prefetched(batches, lambda b: self.inputs(b, keys), self.meta.get("prefetch_batches", 0))

    def batched(self, fn, idx, keys: list[str], batch_size: int):
        """fn(inputs) over the clips idx, concatenated in order: one call on the whole split when it is in memory,
        else one call per `batch_size` clips streamed from the store (prefetched). fn gives per-clip rows (numpy or
        torch); with batch_size = the head's own eval batch size both paths run the same forward passes, so the
        results are bit-identical."""
        import torch

        idx = torch.as_tensor(idx)
        if not self.streamed(keys) or len(idx) == 0:
            return fn(self.inputs(idx, keys))
        parts = [fn(inputs) for inputs in self.stream(list(torch.split(idx, max(1, batch_size))), keys)]
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)

    def input_stats(self, key: str, idx, chunk: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Mean/std over the valid rows of `key` for clips idx (heads.models.input_stats), read `chunk` clips at
        a time when the modality is streamed (float64 sums: the whole split is never in memory)."""
        import torch

        from heads.models import input_stats, valid_mask

        m = self.modalities[key]
        if not m.streamed:
            return input_stats(*m.take(idx))
        n, s1, s2 = 0, torch.zeros(m.dim, dtype=torch.float64), torch.zeros(m.dim, dtype=torch.float64)
        for c in range(0, len(idx), chunk):
            x, lengths = m.take(idx[c: c + chunk])
            rows = x[valid_mask(lengths, x.shape[1])].double()
            n, s1, s2 = n + rows.shape[0], s1 + rows.sum(0), s2 + (rows * rows).sum(0)
        if n < 2:
            return torch.zeros(m.dim), torch.ones(m.dim)
        mean = s1 / n
        return mean.float(), ((s2 - n * mean * mean).clamp_min(0) / (n - 1)).sqrt().float()

    def has(self, split: str) -> bool:
        return split in self.splits and len(self.splits[split]) > 0

    def to(self, device) -> "HeadData":
        mods = {k: m.to(device) for k, m in self.modalities.items()}
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
        names = [n.strip() for n in text.split(TABLE_LABEL_SEP)] if multilabel else [text.strip()]
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
                   max_frames: int, name: str = "features", stream_over_bytes: Optional[float] = None,
                   prefetch_batches: int = 0) -> HeadData:
    """Build tensors for every modality in `stores` (a Cache from pipeline.catalog.open_catalog, or any
    {store key: FeatureStore}); clips a store lacks get length 0. When the padded tensors would take more than
    `stream_over_bytes`, every modality stays in the store (StoreModality) and is read per minibatch, with
    `prefetch_batches` read ahead (HeadData.stream)."""
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
    keys = list(stores)
    lengths = {k: cache.lengths(k, clip_ids, max_frames) for k in keys}
    missing = [k for k in keys if not any(c in cache[k].index(k) for c in clip_ids)]   # the reader says so
    t = {k: max(1, int(n.max(initial=0))) for k, n in lengths.items()}
    width = {k: cache.row_bytes(k, name) // np.dtype(np.float32).itemsize for k in keys} \
        if stream_over_bytes is not None else {}
    padded_bytes = sum(len(clip_ids) * t[k] * width[k] * np.dtype(np.float32).itemsize for k in width)
    if stream_over_bytes is not None and padded_bytes > stream_over_bytes and not missing:
        mods = {k: StoreModality(cache, k, clip_ids, max_frames, torch.from_numpy(lengths[k]), width[k], t[k], name)
                for k in keys}
    else:
        read = cache.read(keys, clip_ids, padded=True, max_rows=max_frames, name=name)
        mods = {key: Modality(torch.from_numpy(p.x), torch.from_numpy(p.lengths)) for key, p in read.items()}
    split_col = clip_table["split"].to_numpy()
    splits = {s: torch.from_numpy(np.flatnonzero(split_col == s).astype(np.int64)) for s in SPLITS}
    coverage = {k: float((m.lengths > 0).float().mean()) for k, m in mods.items()}
    meta = {"coverage": coverage, "unlabelled_skipped": n_unlabelled}
    if any(m.streamed for m in mods.values()):
        meta.update(streamed_bytes=int(padded_bytes), prefetch_batches=prefetch_batches)
    return HeadData(clip_ids, mods, torch.from_numpy(y), splits, list(vocab), multilabel, meta)


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
        except LookupError:
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
    mods = {k: m.subset(keep) for k, m in data.modalities.items()}
    splits = {s: (remap[i] if s != split else torch.zeros(0, dtype=torch.int64)) for s, i in data.splits.items()}
    return HeadData([data.clip_ids[int(i)] for i in keep], mods, data.y[keep], splits, data.vocab, data.multilabel,
                    dict(data.meta))
