"""The store describes itself: a catalog at the root of `store.dir`, and the one reader of cached features.

    <store.dir>/catalog.json   {"format": "emocache-catalog", "version": 1,
                                "stores": {family: {"path": "audio.zarr", "format": "zarr"}},
                                "keys":   {store key: family}}

Writers record a family store when they open it (FeatureStore.for_family) and a key when they make a
fingerprint current (FeatureStore.set_current); the doc is replaced atomically under a short flock on local
disk (object storage: one atomic PUT). Code that only reads the cache asks the catalog where a key lives
(`open_catalog(store_cfg, base)`), never the extractor registry. The family stores remain the truth: a
catalog that is missing (a cache made before it existed), unreadable, written by a newer emocache, or that
does not know a key is rebuilt by listing the family stores under `store.dir`.

`Cache.read(keys, clip_ids, padded=True|False, max_rows=...)` is THE reader: heads, predict, evaluate and
status all read through it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from pipeline.config import StoreConfig
from pipeline.store import ClipRows, FeatureStore, MissingFeaturesError, scan_stores
from pipeline.store_catalog import (CATALOG, FAMILIES, _exists, _locked, _write,  # noqa: F401 (re-exported)
                                    catalog_root, load_catalog, record)

log = logging.getLogger("emocache.store")

# ---------------------------------------------------------------- the reader
def uniform_rows(length: int, max_rows: int) -> np.ndarray:
    """Row indices that keep at most max_rows rows spread evenly over the clip (Peng et al. sample T=100)."""
    if length <= max_rows:
        return np.arange(length)
    return np.round(np.linspace(0, length - 1, max_rows)).astype(np.int64)


@dataclass
class Padded:
    x: np.ndarray          # (N, T, D) float32, zero-padded; T >= 1
    lengths: np.ndarray    # (N,) int64 valid rows; 0 = the store lacks the clip (or it has no rows)


class Cache(Mapping):
    """Every family store under one store.dir, addressed by store key. A Mapping key -> FeatureStore."""

    def __init__(self, stores: Mapping[str, FeatureStore], root: str = "", reload=None):
        self._stores = dict(stores)
        self.family_stores: dict[str, FeatureStore] = {}   # family -> store, when opened from a store.dir
        self.root = root
        self._reload = reload
        self._rescanned = False
        if reload is not None:
            self._stores, self.family_stores = reload(False)

    def __getitem__(self, key: str) -> FeatureStore:
        if key not in self._stores and self._reload is not None and not self._rescanned:
            # a key the catalog does not know (e.g. a writer that lost a race on object storage): ask the stores
            self._rescanned = True
            self._stores, self.family_stores = self._reload(True)
        if key not in self._stores:
            raise MissingFeaturesError(f"the cache {self.root or '(given stores)'} has no features for {key!r}; cached: "
                           f"{', '.join(sorted(self._stores)) or 'none'} (run `emocache extract` first)")
        return self._stores[key]

    def __iter__(self):
        return iter(self._stores)

    def __len__(self) -> int:
        return len(self._stores)

    def __contains__(self, key) -> bool:
        try:
            self[key]
        except LookupError:
            return False
        return True

    def select(self, keys: list[str]) -> "Cache":
        return Cache({k: self[k] for k in keys}, self.root)

    def lengths(self, key: str, clip_ids: list[str], max_rows: Optional[int] = None) -> np.ndarray:
        """Rows each clip would read (0: absent), from the index alone."""
        index = self[key].index(key)
        n = np.array([index.length(c) if c in index else 0 for c in clip_ids], dtype=np.int64)
        return n if max_rows is None else np.minimum(n, max_rows)

    def row_bytes(self, key: str, name: str = "features") -> int:
        """Bytes of one float32 row of `key` as read (0 when no clip has rows)."""
        st = self[key]
        index = st.index(key)
        cid = next((c for c, e in index.items() if e.length), None)
        if cid is None:
            return 0
        layout = st.raw_rows(key, st.current_fingerprint(key), cid, name)
        shape = layout.shape[1:] if layout is not None else st.read(key, [cid], [name])[0].arrays[name].shape[1:]
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(np.float32).itemsize

    def meta(self, key: str) -> dict:
        """What the key's extractor recorded for its current fingerprint ({} when nothing is recorded)."""
        try:
            return self[key].meta(key)
        except LookupError:
            return {}

    def read(self, keys: list[str], clip_ids: list[str], padded: bool = True, max_rows: Optional[int] = None,
             name: Optional[str] = "features", fingerprints: Optional[Mapping[str, str]] = None,
             dims: Optional[Mapping[str, int]] = None, missing_ok: bool = True,
             pad_to: Optional[Mapping[str, int]] = None, require_any: bool = True) -> dict:
        """Features of `clip_ids` for every key: {key: Padded} or, with padded=False, {key: [ClipRows | None]}.

        Rows are flattened to (L, D) and thinned to at most `max_rows` spread evenly (uniform_rows). A clip the
        store lacks gets length 0 / None with `missing_ok`, else MissingFeaturesError.
        `fingerprints`: read these instead of
        the current ones; `dims`: the D to use when no requested clip has a row; `pad_to`: a T to pad to at least
        (a minibatch padded like its whole split); `require_any`: no requested clip in the store is an error.
        Ragged with name=None: every array the extractor stores."""
        clip_ids = list(clip_ids)
        out = {}
        for key in keys:
            st = self[key]
            fp = (fingerprints or {}).get(key) or st._require_current(key)
            index = st.index(key, fp)
            present = [i for i, c in enumerate(clip_ids) if c in index]
            if len(present) < len(clip_ids) and not missing_ok:
                lost = [c for c in clip_ids if c not in index]
                raise MissingFeaturesError(f"{key}: {len(lost)} clip(s) not in the store {st.root}, e.g. {lost[:3]}")
            if not present and require_any:
                raise ValueError(f"store {st.root} has none of the {len(clip_ids)} requested clips under {key!r}")
            if padded:
                out[key] = _padded(st, key, fp, clip_ids, present, name, max_rows, (dims or {}).get(key),
                                   (pad_to or {}).get(key, 1))
            else:
                out[key] = _ragged(st, key, fp, clip_ids, present, name, max_rows)
        return out


def _keep(length: int, max_rows: Optional[int]):
    return slice(None) if max_rows is None or length <= max_rows else uniform_rows(length, max_rows)


def _padded(st: FeatureStore, key: str, fp: str, clip_ids: list[str], present: list[int], name: str,
            max_rows: Optional[int], dim: Optional[int], min_t: int = 1) -> Padded:
    index = st.index(key, fp)
    full = np.zeros(len(clip_ids), dtype=np.int64)
    for i in present:
        full[i] = index.length(clip_ids[i])
    lengths = full if max_rows is None else np.minimum(full, max_rows)
    layout = next((st.raw_rows(key, fp, clip_ids[i], name) for i in present if full[i]), None)
    thinned = [i for i in present if lengths[i] < full[i]]
    if layout is not None:   # D from the layout; whole clips straight from the files (pread into x)
        d = int(np.prod(layout.shape[1:], dtype=np.int64))
        x = np.zeros((len(clip_ids), max(min_t, int(lengths.max())), d), dtype=np.float32)
        direct = [i for i in present if lengths[i] == full[i]]
        rest = st.read_direct(key, fp, clip_ids, name, x, lengths, direct) + thinned
    else:
        x, rest = None, present
    if not rest:
        if x is None:   # none of these clips is in the store (a minibatch can miss a modality entirely)
            x = np.zeros((len(clip_ids), max(min_t, int(lengths.max(initial=0))), dim or 0), dtype=np.float32)
        return Padded(x, lengths)
    wanted = [clip_ids[i] for i in rest]
    blocks = list(st._blocks(key, wanted, [name], fp, False))   # each segment's row range read once
    if x is None:
        stored = [blk[name] for _, blk, _, _, _ in blocks if name in blk]
        with_rows = [r for r in stored if r.shape[0]] or stored
        d = int(np.prod(with_rows[0].shape[1:], dtype=np.int64)) if with_rows else (dim or 0)
        x = np.zeros((len(clip_ids), max(min_t, int(lengths.max())), d), dtype=np.float32)
    for positions, block, lo, _, _ in blocks:
        if name not in block:
            continue   # a segment of only empty clips stores no feature arrays
        rows = block[name]
        for j in positions:
            e = index[wanted[j]]
            if e.length:
                a = rows[e.offset - lo: e.offset - lo + e.length].reshape(e.length, -1)
                x[rest[j], : lengths[rest[j]]] = a[_keep(e.length, max_rows)]
    return Padded(x, lengths)


def _ragged(st: FeatureStore, key: str, fp: str, clip_ids: list[str], present: list[int], name: Optional[str],
            max_rows: Optional[int]) -> list[Optional[ClipRows]]:
    rows = st.read(key, [clip_ids[i] for i in present], None if name is None else [name], fingerprint=fp)
    out: list[Optional[ClipRows]] = [None] * len(clip_ids)
    for i, r in zip(present, rows):
        keep = _keep(len(r.times), max_rows)
        out[i] = r if max_rows is None else ClipRows({n: a[keep] if a.shape[0] else a for n, a in r.arrays.items()},
                                                     r.times[keep], r.attrs)
    return out


def open_catalog(store_cfg: StoreConfig, base: Path, storage_options: Optional[dict] = None) -> Cache:
    """The cache under store.dir: every key the catalog knows. A missing or untrusted catalog, or a key it does
    not know, is answered by listing the family stores (and the catalog is rewritten from that listing)."""
    root = catalog_root(store_cfg, Path(base))
    if storage_options is None:
        storage_options = dict(store_cfg.storage_options) or None
    return Cache({}, root, reload=lambda rescan: _load(root, store_cfg, storage_options, rescan))


def _load(root: str, store_cfg: StoreConfig, storage_options: Optional[dict], rescan: bool):
    doc = None if rescan else load_catalog(root, storage_options)
    if doc is None:
        doc = scan_stores(root, store_cfg.format, storage_options)
        if doc["stores"]:
            try:
                with _locked(root):
                    _write(root, doc, storage_options)
            except OSError as e:   # a read-only cache still reads
                log.debug("store catalog %s: not rewritten: %s", root, e)
    by_family = {}
    for fam, s in sorted(doc["stores"].items(), key=lambda kv: (FAMILIES + (kv[0],)).index(kv[0])):
        path = f"{root}/{s['path']}"
        if _exists(path, storage_options):   # opening a Zarr store creates it: never for a reader
            by_family[fam] = FeatureStore(path, s["format"], store_cfg.compressor, store_cfg.chunk_mb,
                                          storage_options, store_cfg.remote_gc_age_s, store_cfg.trust_index)
    return {k: by_family[f] for k, f in doc["keys"].items() if f in by_family}, by_family
