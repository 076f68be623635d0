"""The feature store: ragged per-clip rows for every extractor, crash-safe, append-only.

Layout (same for every extractor; Zarr v3 by default, HDF5 on request):

    <root>/<key>/                       key = extractor store key ('vggish', 'text.transcript', ...)
        attrs: {"current": <fingerprint>}
    <root>/<key>/<fingerprint>/         one group per (extractor, params, weights) fingerprint
        attrs: {"meta": {extractor, version, params, weights{sha256, pretrained}, ...}}
    <root>/<key>/<fingerprint>/<segment>/   an immutable batch of clips
        arrays: <name> (R, ...) for every named output, 'times' (R, 2)
        attrs:  {"committed": true, "index": {clip_ids, offsets, lengths, attrs}}   <- written LAST
    <root>/<key>/<fingerprint>/_index.json  the consolidated index: every verified segment's index doc in one
                                            atomically replaced blob (pipeline/store_index.py), so an open is one
                                            listing + one read; segments it does not know are read and folded in
    <root>/_failures/<run_id>           attrs: {"rows": [{clip_id, path, stage, error}, ...]}

A clip is visible only through a committed segment index, which is written after all of
its rows; a process killed mid-segment leaves a segment without an index, which readers
ignore and the next run deletes. Rows of one clip are contiguous inside one segment, so a
clip reads in one or few chunk reads. Concurrent writers (Ray workers) use distinct segment
names and never touch each other's segments; separate runs take the store's writer lock
(pipeline/store_lock.py) so that only segments of dead writers are ever collected. Readers check a
committed index against its arrays before it enters the consolidated index, and again whenever its files
change (the index keeps a signature of them, compared at every open in one listing pass:
pipeline/segment_signature.py): a segment whose arrays are missing or short is reported and its clips count as
missing (re-extracted), never trusted.

HDF5: `<root>` is a directory; every segment is one self-contained `.h5` file written under a
temporary name and renamed into place (the commit), and JSON documents sit beside them.
A single HDF5 file is not kill -9 safe, which is why the HDF5 form is one file per segment.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Iterable, Mapping, Optional

import numpy as np

from pipeline.config import StoreConfig
from pipeline.errors import InputError, StorageError
from pipeline.raw_rows import read_many_into
from pipeline.store_backends import HDF5Backend, ZarrBackend  # noqa: F401 (ZarrBackend re-exported)
from pipeline.store_catalog import FAMILIES, _exists, catalog_root, empty_catalog, record
from pipeline.store_index import INDEX_BLOB, IndexProblem, decode_index, encode_index

TIMES = "times"
log = logging.getLogger("emocache.store")


@dataclass
class Entry:
    """Where one clip's rows live."""

    segment: str
    offset: int
    length: int
    attrs: dict = field(default_factory=dict)


class ClipIndex(Mapping):
    """clip id -> Entry over committed segments, kept as columns: built with no Python work per clip (a 100k-clip
    store opens in well under a second), an Entry made only when a clip is looked up."""

    def __init__(self, committed: dict[str, dict]):
        from itertools import chain

        self._segs = sorted(committed)
        docs = [committed[seg] for seg in self._segs]
        ids = list(chain.from_iterable(d["clip_ids"] for d in docs))
        counts = [len(d["clip_ids"]) for d in docs]
        self._seg = np.repeat(np.arange(len(docs)), counts)
        self._off = np.concatenate([np.asarray(d["offsets"], np.int64) for d in docs] or [np.zeros(0, np.int64)])
        self._len = np.concatenate([np.asarray(d["lengths"], np.int64) for d in docs] or [np.zeros(0, np.int64)])
        self._attrs = list(chain.from_iterable(d["attrs"] for d in docs))
        self._pos = dict(zip(ids, range(len(ids))))   # later segments win for a clip committed twice

    def __getitem__(self, cid: str) -> Entry:
        i = self._pos[cid]
        return Entry(self._segs[self._seg[i]], int(self._off[i]), int(self._len[i]), dict(self._attrs[i]))

    def __contains__(self, cid) -> bool:
        return cid in self._pos

    def __iter__(self):
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)

    def length(self, cid: str) -> int:
        return int(self._len[self._pos[cid]])

    def ids(self) -> AbstractSet[str]:
        return self._pos.keys()

    def live_by_segment(self) -> dict[str, list[str]]:
        """Segment -> the clip ids that resolve to it (in row order); a clip committed again later is live only
        in its later segment."""
        pos = np.fromiter(self._pos.values(), np.int64, len(self._pos))
        ids = list(self._pos)
        order = np.lexsort((self._off[pos], self._seg[pos]))
        out: dict[str, list[str]] = {seg: [] for seg in self._segs}
        for j in order:
            out[self._segs[self._seg[pos[j]]]].append(ids[j])
        return out


@dataclass
class ClipRows:
    arrays: dict[str, np.ndarray]
    times: np.ndarray
    attrs: dict


def new_segment_id(writer: str = "") -> str:
    # Sortable by time (to the second), unique across processes and machines.
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{writer or 'w'}-{uuid.uuid4().hex[:10]}"


class MissingFeaturesError(InputError, LookupError):
    """The cache lacks a key, a fingerprint or some clips a reader asked for: run `emocache extract` first."""


class StoreWriteError(StorageError, OSError):
    """Writing to the store failed (disk full, permissions, a lost mount): the run must stop.

    Names the store and what was being written; committed segments are untouched."""


# ---------------------------------------------------------------- the store
class FeatureStore:
    def __init__(self, root: str | os.PathLike, fmt: str = "zarr", compressor: str = "none",
                 chunk_mb: float = 8.0, storage_options: Optional[dict] = None,
                 remote_gc_age_s: Optional[float] = None, trust_index: Optional[bool] = None):
        self.root = str(root)
        self.trust_index = StoreConfig().trust_index if trust_index is None else trust_index
        self.remote_gc_age_s = StoreConfig().remote_gc_age_s if remote_gc_age_s is None else remote_gc_age_s
        # (key, fingerprint) -> {segment: why it cannot be trusted}; filled while indexing
        self.broken: dict[tuple[str, str], dict[str, str]] = {}
        # (key, fingerprint) -> segments on disk that a committed compacted segment replaces (gc deletes them)
        self.retired: dict[tuple[str, str], list[str]] = {}
        self.format = fmt
        backend = {"zarr": ZarrBackend, "hdf5": HDF5Backend}[fmt]
        self.backend = backend(self.root, compressor, chunk_mb, storage_options)
        self._index_cache: dict[tuple[str, str], ClipIndex] = {}
        self._arrays_cache: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.catalog: Optional[tuple[str, str, Optional[dict]]] = None   # (store.dir, family, options): for_family

    @classmethod
    def for_family(cls, store_cfg: StoreConfig, base: Path, family: str,
                   storage_options: Optional[dict] = None) -> "FeatureStore":
        if storage_options is None:  # params' store.storage_options (s3 endpoint etc.)
            storage_options = dict(store_cfg.storage_options) or None
        st = cls(store_path(store_cfg, base, family), store_cfg.format, store_cfg.compressor,
                 store_cfg.chunk_mb, storage_options, store_cfg.remote_gc_age_s, store_cfg.trust_index)
        # a writer's store: list it (and, in set_current, its keys) in the catalog at the store.dir root
        st.catalog = (catalog_root(store_cfg, base), family, storage_options)
        record(st.catalog[0], family, st.name, st.format, storage_options=storage_options,
               scan=lambda: scan_stores(st.catalog[0], st.format, storage_options))
        return st

    @property
    def name(self) -> str:
        """The store's name inside store.dir ('audio.zarr')."""
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    # -- metadata
    def keys(self) -> list[str]:
        return [k for k in self.backend.children("") if not k.startswith(("_", "."))]   # '.writer.lock' is no key

    def current_fingerprint(self, key: str) -> Optional[str]:
        doc = self.backend.get_doc(key) or {}
        return doc.get("current")

    def set_current(self, key: str, fingerprint: str, meta: dict) -> None:
        """Record the extractor's metadata under its fingerprint and make it the one readers use."""
        doc = {"meta": _jsonable(meta)}
        stored = self.backend.get_doc(f"{key}/{fingerprint}") or {}
        if self.current_fingerprint(key) == fingerprint and _jsonable(stored) == doc:
            return   # already so: a rerun writes nothing (and works on a read-only store)
        with self._writing(f"metadata of {key!r}"):
            self.backend.put_doc(f"{key}/{fingerprint}", {"meta": meta})
            self.backend.put_doc(key, {"current": fingerprint})
            if self.catalog is not None:
                root, family, options = self.catalog
                record(root, family, self.name, self.format, key, options,
                       scan=lambda: scan_stores(root, self.format, options))

    @contextmanager
    def _writing(self, what: str, cleanup: Optional[str] = None):
        """Turn an OS-level write failure into a StoreWriteError naming this store; a segment that
        failed half-way is removed (best effort; it has no index, so readers ignore it anyway)."""
        try:
            yield
        except OSError as e:
            if cleanup:
                try:
                    self.backend.delete(cleanup)
                except Exception:  # the next run's gc_uncommitted removes it
                    pass
            raise StoreWriteError(e.errno, f"store {self.root}: could not write {what}: "
                                  f"{e.strerror or e}. Clips committed earlier are intact; fix the cause "
                                  f"and rerun (only missing clips are extracted)") from e

    def fingerprints(self, key: str) -> dict[str, dict]:
        out = {}
        for fp in self.backend.children(key):
            doc = self.backend.get_doc(f"{key}/{fp}") or {}
            out[fp] = doc.get("meta", {})
        return out

    def meta(self, key: str, fingerprint: Optional[str] = None) -> dict:
        fp = fingerprint or self._require_current(key)
        return (self.backend.get_doc(f"{key}/{fp}") or {}).get("meta", {})

    def _require_current(self, key: str) -> str:
        fp = self.current_fingerprint(key)
        if fp is None:
            raise MissingFeaturesError(f"store {self.root} has no features for {key!r}; present: {self.keys() or 'none'}")
        return fp

    # -- index
    def _segment_names(self, key: str, fingerprint: str) -> list[str]:
        # '_index.json' and its temporary files sit beside the segments; they are no segments
        return [s for s in self.backend.children(f"{key}/{fingerprint}") if not s.startswith("_")]

    def _segment_docs(self, key: str, fingerprint: str, names: Iterable[str]) -> tuple[dict[str, dict], list[str]]:
        committed, pending = {}, []
        broken = self.broken.setdefault((key, fingerprint), {})
        for seg in names:
            try:
                doc = self.backend.get_doc(f"{key}/{fingerprint}/{seg}")
            except Exception as e:   # e.g. a damaged .h5 file: reported, never trusted
                self._report_broken(key, fingerprint, seg, f"unreadable ({type(e).__name__}: {e})")
                continue
            broken.pop(seg, None)
            if doc and doc.get("committed"):
                committed[seg] = doc["index"]
            else:
                pending.append(seg)
        return committed, pending

    def segments(self, key: str, fingerprint: str) -> tuple[dict[str, dict], list[str]]:
        """(committed segment -> index doc, uncommitted segment names), read from every segment's own doc."""
        return self._segment_docs(key, fingerprint, self._segment_names(key, fingerprint))

    def _scan(self, key: str, fp: str) -> tuple[dict[str, dict], list[str]]:
        """(verified committed segment -> index doc, uncommitted segments): the consolidated index plus the
        segments it does not know yet, which are read, checked and folded into it (best effort). Segments a
        committed compacted segment replaces are retired: never indexed, left for gc_uncommitted to delete."""
        names = self._segment_names(key, fp)
        known, trusted = self._load_index(key, fp, names)
        unknown = [s for s in names if s not in known]
        retired = {r for d in known.values() for r in d.get("replaces", ())}
        docs, pending = self._segment_docs(key, fp, [s for s in unknown if s not in retired])
        retired |= {r for d in docs.values() for r in d.get("replaces", ())}
        self.retired[(key, fp)] = sorted(retired & set(names))
        if retired & known.keys():   # the blob predates a compaction's commit: rewrite it without them
            trusted = False
            known = {s: d for s, d in known.items() if s not in retired}
        docs = {s: d for s, d in docs.items() if s not in retired}
        pending = [s for s in pending if s not in retired]
        where = f"{key}/{fp}"
        # each segment's signature is taken before its check, so a change after the check shows at the next open;
        # one call for the new and the indexed segments (on object storage that is one listing)
        wanted = list(docs) if self.trust_index else [*docs, *known]
        now = self.backend.signatures(where, wanted, {s: d.get("files") for s, d in known.items()}) if wanted else {}
        if not self.trust_index:   # arrays can vanish or be damaged under a committed index: check changed ones
            same = {s: d for s, d in known.items()
                    if d.get("sig") is not None and d["sig"] == now.get(s, {}).get("sig")}
            changed = {s: d for s, d in known.items() if s not in same}
            if changed:   # a fresh signature (a walk: the files may differ from those recorded), then the full check
                now.update(self.backend.signatures(where, changed))
            checked = self._verified(key, fp, changed, now)
            trusted = trusted and len(same) == len(known)   # new signatures, or broken ones dropped from the blob
            known = {**same, **checked}
        fresh = self._verified(key, fp, docs, now)
        committed = {**known, **fresh}
        if fresh or (not trusted and committed):
            on_disk = set(names)   # a compacted segment's `replaces` matter only while those segments exist
            self._write_index(key, fp, {s: _replacing(d, on_disk) for s, d in committed.items()})
        return committed, pending

    def _load_index(self, key: str, fp: str, names: list[str]) -> tuple[dict[str, dict], bool]:
        """(segment -> doc from the consolidated index, whether it could be trusted). Missing: ({}, False)."""
        where = f"{key}/{fp}/{INDEX_BLOB}"
        try:
            blob = self.backend.get_blob(where)
        except Exception as e:
            blob, why = None, f"unreadable ({type(e).__name__}: {e})"
        else:
            why = None
        if blob is None and why is None:
            return {}, False
        try:
            if why:
                raise IndexProblem(why)
            known = decode_index(blob, key, fp)
            gone = sorted(set(known) - set(names))
            if gone:
                raise IndexProblem(f"disagrees with the segments on disk ({len(gone)} segment(s) it lists are "
                                   f"gone, e.g. {gone[0]})")
        except IndexProblem as e:
            log.warning("store %s: the consolidated index %s is %s; rebuilding it from the segments (they are "
                        "the source of truth)", self.root, where, e)
            return {}, False
        return known, True

    def _write_index(self, key: str, fp: str, committed: dict[str, dict]) -> None:
        try:
            self.backend.put_blob(f"{key}/{fp}/{INDEX_BLOB}", encode_index(key, fp, committed))
        except Exception as e:   # a read-only store still reads, one doc per segment
            log.debug("store %s: could not write the consolidated index of %s/%s: %s", self.root, key, fp, e)

    def index(self, key: str, fingerprint: Optional[str] = None, refresh: bool = False) -> "ClipIndex":
        fp = fingerprint or self._require_current(key)
        cache_key = (key, fp)
        if refresh or cache_key not in self._index_cache:
            committed, _ = self._scan(key, fp)
            self._arrays_cache[cache_key] = {seg: doc.get("arrays", []) for seg, doc in committed.items()}
            self._index_cache[cache_key] = ClipIndex(committed)
        return self._index_cache[cache_key]

    def _verified(self, key: str, fp: str, committed: dict[str, dict], sigs: Mapping[str, dict]) -> dict[str, dict]:
        """The committed segments whose arrays exist with as many rows as their index says, each doc carrying
        its segment's signature from `sigs` (listed before this check) for the next open to compare."""
        ok = {}
        for seg, doc in committed.items():
            total = int(sum(doc["lengths"]))
            try:
                counts = self.backend.row_counts(f"{key}/{fp}/{seg}")
            except Exception as e:
                self._report_broken(key, fp, seg, f"arrays unreadable ({type(e).__name__}: {e})")
                continue
            bad = [f"{n!r} missing" if n not in counts else f"{n!r} has {counts[n]} rows, index says {total}"
                   for n in [*doc.get("arrays", []), TIMES] if counts.get(n) != total]
            if bad:
                self._report_broken(key, fp, seg, "; ".join(bad))
            else:
                ok[seg] = {**doc, "sig": sigs.get(seg, {}).get("sig"), "files": sigs.get(seg, {}).get("files")}
        return ok

    def _report_broken(self, key: str, fp: str, seg: str, why: str) -> None:
        seen = self.broken.setdefault((key, fp), {})
        if seg not in seen:
            log.warning("store %s: segment %s/%s/%s is broken (%s); its clips count as missing and are "
                        "extracted again", self.root, key, fp, seg, why)
        seen[seg] = why

    def has(self, key: str, fingerprint: str) -> AbstractSet[str]:
        # a set view of the index (no copy of 100k ids: planning only asks `clip in has(...)`)
        return self.index(key, fingerprint, refresh=True).ids()

    def gc_uncommitted(self, key: str, fingerprint: str) -> int:
        """Delete segments no live writer can still commit, and broken ones.

        Call only while holding the store's writer lock (pipeline/store_lock.py): then every other writer
        of a local store is dead. Object storage has no lock, so there an uncommitted segment is deleted
        only once it is older than `remote_gc_age_s` (a live writer commits a segment within seconds)."""
        _, pending = self._scan(key, fingerprint)           # fills self.broken
        if "://" in self.root:
            pending = [seg for seg in pending if self._age_s(f"{key}/{fingerprint}/{seg}", seg) > self.remote_gc_age_s]
        doomed = [*pending, *self.broken.get((key, fingerprint), {}), *self.retired.get((key, fingerprint), [])]
        for seg in doomed:
            self.backend.delete(f"{key}/{fingerprint}/{seg}")
        self.broken.pop((key, fingerprint), None)
        self.retired.pop((key, fingerprint), None)
        self._index_cache.pop((key, fingerprint), None)
        partial = self.backend.remove_partial_files(f"{key}/{fingerprint}") if "://" not in self.root else 0
        return len(doomed) + partial

    def _age_s(self, path: str, seg: str) -> float:
        """Seconds since the segment's writer started it. Writers mark that first on object storage; a
        segment without the mark was never started by a live writer of this version: collectable."""
        try:
            started = (self.backend.get_doc(path) or {}).get("started")
        except Exception:
            started = None
        return float("inf") if started is None else time.time() - float(started)

    # -- write
    def write_segment(self, key: str, fingerprint: str, clips: list[tuple[str, Any]], writer: str = "",
                      replaces: Iterable[str] = ()) -> str:
        """Commit a batch of (clip_id, ClipFeatures) as one segment. Returns the segment name.

        `replaces`: segments whose clips this one holds (compaction, pipeline/store_compact.py); its commit retires
        them in the same atomic write, so no reader sees their clips twice or misses one."""
        if not clips:
            raise ValueError("write_segment needs at least one clip")
        # Clips with 0 rows (a documented empty modality) may carry no arrays; others must agree.
        names = sorted({n for _, f in clips for n in f.arrays})
        tails = {}
        for cid, feats in clips:
            if feats.n_rows and sorted(feats.arrays) != names:
                raise ValueError(f"{key}: clip {cid} has arrays {sorted(feats.arrays)}, expected {names}")
            for n, a in feats.arrays.items():
                tails.setdefault(n, (a.shape[1:], a.dtype))
        arrays = {}
        for name in names:
            tail, dtype = tails[name]
            parts = [np.asarray(f.arrays[name]) if name in f.arrays else np.zeros((0, *tail), dtype)
                     for _, f in clips]
            arrays[name] = _concat_rows(parts)
        arrays[TIMES] = _concat_rows([f.times for _, f in clips]).astype(np.float64)
        lengths = [int(f.n_rows) for _, f in clips]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        doc = {"committed": True, "written_at": time.time(),
               "index": {"clip_ids": [c for c, _ in clips], "offsets": offsets, "lengths": lengths,
                         "attrs": [_jsonable(f.attrs) for _, f in clips], "arrays": names}}
        if replaces:
            doc["index"]["replaces"] = sorted(replaces)
        seg = new_segment_id(writer)
        path = f"{key}/{fingerprint}/{seg}"
        with self._writing(f"segment {path} ({len(clips)} clips)", cleanup=path):
            self.backend.write_segment(path, arrays, doc)
        self._index_cache.pop((key, fingerprint), None)
        return seg

    # -- failures
    def record_failures(self, run_id: str, rows: list[dict]) -> None:
        if rows:
            with self._writing(f"failure table _failures/{run_id}"):
                self.backend.put_doc(f"_failures/{run_id}", {"rows": rows, "written_at": time.time()})

    def failures(self) -> list[dict]:
        out = []
        for run in self.backend.children("_failures"):
            doc = self.backend.get_doc(f"_failures/{run}") or {}
            out += [dict(r, run_id=run) for r in doc.get("rows", [])]
        return out

    # -- read
    def _blocks(self, key: str, clip_ids: list[str], names: Optional[Iterable[str]], fp: Optional[str],
                with_times: bool):
        """Per segment touched: (positions in clip_ids, {name: rows lo..hi}, lo). Each segment range read once."""
        fp = fp or self._require_current(key)
        idx = self.index(key, fp)
        missing = [c for c in clip_ids if c not in idx]
        if missing:
            raise MissingFeaturesError(f"{key}: {len(missing)} clip(s) not in the store, e.g. {missing[:3]}")
        by_seg: dict[str, list[int]] = {}
        for i, c in enumerate(clip_ids):
            by_seg.setdefault(idx[c].segment, []).append(i)
        seg_arrays = self._arrays_cache.get((key, fp), {})
        if names is None:  # every array the extractor writes (segments of only empty clips store none)
            names = sorted({n for arrs in seg_arrays.values() for n in arrs})
        names = list(names)
        plan, requests = [], []
        for seg, positions in by_seg.items():
            path = f"{key}/{fp}/{seg}"
            lo = min(idx[clip_ids[i]].offset for i in positions)
            hi = max(idx[clip_ids[i]].offset + idx[clip_ids[i]].length for i in positions)
            stored = set(seg_arrays.get(seg, []))
            wanted = [n for n in names if n in stored] + ([TIMES] if with_times else [])
            plan.append((positions, wanted, lo))
            requests += [(f"{path}/{n}", lo, hi) for n in wanted]
        results = iter(self.backend.read_many(requests))
        for positions, wanted, lo in plan:
            yield positions, {n: next(results) for n in wanted}, lo, idx, names

    def read(self, key: str, clip_ids: Iterable[str], names: Optional[Iterable[str]] = None,
             fingerprint: Optional[str] = None) -> list[ClipRows]:
        """Ragged view: one ClipRows per clip id, in order."""
        clip_ids = list(clip_ids)
        out: list[Optional[ClipRows]] = [None] * len(clip_ids)
        for positions, block, lo, idx, names_ in self._blocks(key, clip_ids, names, fingerprint, True):
            for i in positions:
                e = idx[clip_ids[i]]
                s = slice(e.offset - lo, e.offset - lo + e.length)
                # A segment of only empty clips stores no feature arrays: their rows are (0,).
                out[i] = ClipRows({n: block[n][s] if n in block else np.zeros((0,), np.float32) for n in names_},
                                  block[TIMES][s], e.attrs)
        return out  # type: ignore[return-value]

    def raw_rows(self, key: str, fp: str, clip_id: str, name: str):
        """The raw layout of the array holding `clip_id`'s rows (None: read through the backend's codecs)."""
        e = self.index(key, fp)[clip_id]
        return self.backend.raw_layout(f"{key}/{fp}/{e.segment}/{name}")

    def read_direct(self, key: str, fp: str, clip_ids: list[str], name: str, x: np.ndarray, n_rows,
                    positions: Iterable[int]) -> list[int]:
        """Copy the first n_rows[i] rows of clip_ids[i] into x[i, :n_rows[i]] straight from the segment files
        (pread, no codec, no intermediate copy) for each i in positions. Returns the positions it could not serve
        (compressed or remote arrays, another dtype): those go through _blocks."""
        idx = self.index(key, fp)
        rest = []
        by_seg: dict[str, list] = {}
        for i in positions:
            n = int(n_rows[i])
            if n:
                e = idx[clip_ids[i]]
                by_seg.setdefault(e.segment, []).append((i, e.offset, n, e.length))
        for seg, parts in by_seg.items():
            layout = self.backend.raw_layout(f"{key}/{fp}/{seg}/{name}")
            if layout is None or layout.dtype != x.dtype:
                rest += [i for i, _, _, _ in parts]
                continue
            # one preadv per run of clips that are neighbours in the segment file
            read_many_into(layout, [(off, off + n, x[i, :n]) for i, off, n, _ in parts])
        return rest

    def read_padded(self, key: str, clip_ids: Iterable[str], name: str = "features",
                    max_len: Optional[int] = None, fingerprint: Optional[str] = None,
                    dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(N, T, ...) zero-padded + lengths (N,). Rows beyond max_len are cut. Copies straight from the segment
        files where they hold raw rows (read_direct), else from segment blocks."""
        clip_ids = list(clip_ids)
        fp = fingerprint or self._require_current(key)
        idx = self.index(key, fp)
        missing = [c for c in clip_ids if c not in idx]
        if missing:
            raise MissingFeaturesError(f"{key}: {len(missing)} clip(s) not in the store, e.g. {missing[:3]}")
        lengths = np.array([idx[c].length for c in clip_ids], dtype=np.int64)
        if max_len is not None:
            lengths = np.minimum(lengths, max_len)
        layout = next((self.raw_rows(key, fp, c, name) for c, n in zip(clip_ids, lengths) if n), None)
        if layout is not None:   # the row shape from the layout: no read needed to size x
            x = np.zeros((len(clip_ids), int(lengths.max()), *layout.shape[1:]), dtype=dtype)
            rest = self.read_direct(key, fp, clip_ids, name, x, lengths, range(len(clip_ids)))
            if not rest:
                return x, lengths
            blocks = list(self._blocks(key, [clip_ids[i] for i in rest], [name], fp, False))
            blocks = [([rest[j] for j in pos], b, lo, i_, n_) for pos, b, lo, i_, n_ in blocks]
        else:
            blocks = list(self._blocks(key, clip_ids, [name], fp, False))
            tail = next((b[name].shape[1:] for _, b, _, _, _ in blocks if name in b and b[name].shape[0]), ())
            x = np.zeros((len(clip_ids), int(lengths.max()) if len(lengths) else 0, *tail), dtype=dtype)
        for positions, block, lo, _, _ in blocks:
            if name not in block:
                continue
            rows = block[name]
            for i in positions:
                if lengths[i]:
                    start = idx[clip_ids[i]].offset - lo
                    x[i, : lengths[i]] = rows[start: start + lengths[i]]
        return x, lengths

    def size_bytes(self) -> int:
        if "://" in self.root:
            return -1
        return sum(p.stat().st_size for p in Path(self.root).rglob("*") if p.is_file())


def store_path(store_cfg: StoreConfig, base: Path, family: str) -> str:
    ext = "zarr" if store_cfg.format == "zarr" else "h5store"
    d = store_cfg.dir
    if "://" in d:
        return f"{d.rstrip('/')}/{family}.{ext}"
    p = Path(d)
    return str((p if p.is_absolute() else base / p) / f"{family}.{ext}")


def _concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    nonempty = [p for p in parts if p.shape[0]]
    if nonempty:
        return np.concatenate(nonempty, axis=0)
    tail = next((p.shape[1:] for p in parts if p.ndim > 1), ())
    return np.zeros((0, *tail), dtype=parts[0].dtype)


def _replacing(doc: dict, on_disk: set[str]) -> dict:
    """The doc with `replaces` cut to the segments still on disk (dropped once none is)."""
    if "replaces" not in doc:
        return doc
    left = [r for r in doc["replaces"] if r in on_disk]
    out = {k: v for k, v in doc.items() if k != "replaces"}
    return {**out, "replaces": left} if left else out


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def scan_stores(root: str, fmt: str, storage_options: Optional[dict]) -> dict:
    """A catalog built from the family stores under `root` (their keys are their top-level groups)."""
    doc = empty_catalog()
    probe = StoreConfig(dir=root, format=fmt)
    for fam in FAMILIES:
        path = store_path(probe, Path("."), fam)
        if not _exists(path, storage_options):
            continue
        st = FeatureStore(path, fmt, storage_options=storage_options)
        doc["stores"][fam] = {"path": path.rstrip("/").rsplit("/", 1)[-1], "format": fmt}
        for k in st.keys():
            doc["keys"].setdefault(k, fam)
    return doc
