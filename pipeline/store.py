"""The feature store: ragged per-clip rows for every extractor, crash-safe, append-only.

Layout (same for every extractor; Zarr v3 by default, HDF5 on request):

    <root>/<key>/                       key = extractor store key ('vggish', 'text.transcript', ...)
        attrs: {"current": <fingerprint>}
    <root>/<key>/<fingerprint>/         one group per (extractor, params, weights) fingerprint
        attrs: {"meta": {extractor, version, params, weights{sha256, pretrained}, ...}}
    <root>/<key>/<fingerprint>/<segment>/   an immutable batch of clips
        arrays: <name> (R, ...) for every named output, 'times' (R, 2)
        attrs:  {"committed": true, "index": {clip_ids, offsets, lengths, attrs}}   <- written LAST
    <root>/_failures/<run_id>           attrs: {"rows": [{clip_id, path, stage, error}, ...]}

A clip is visible only through a committed segment index, which is written after all of
its rows; a process killed mid-segment leaves a segment without an index, which readers
ignore and the next run deletes. Rows of one clip are contiguous inside one segment, so a
clip reads in one or few chunk reads. Concurrent writers (Ray workers) use distinct segment
names and never touch each other's segments; separate runs take the store's writer lock
(pipeline/store_lock.py) so that only segments of dead writers are ever collected. Readers check a
committed index against its arrays: a segment whose arrays are missing or short is reported and its
clips count as missing (re-extracted), never trusted.

HDF5: `<root>` is a directory; every segment is one self-contained `.h5` file written under a
temporary name and renamed into place (the commit), and JSON documents sit beside them.
A single HDF5 file is not kill -9 safe, which is why the HDF5 form is one file per segment.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from pipeline.config import StoreConfig
from pipeline.errors import StorageError

TIMES = "times"
log = logging.getLogger("emocache.store")


@dataclass
class Entry:
    """Where one clip's rows live."""

    segment: str
    offset: int
    length: int
    attrs: dict = field(default_factory=dict)


@dataclass
class ClipRows:
    arrays: dict[str, np.ndarray]
    times: np.ndarray
    attrs: dict


def new_segment_id(writer: str = "") -> str:
    # Sortable by time, unique across processes and machines.
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{writer or 'w'}-{uuid.uuid4().hex[:10]}"


def _rows_per_chunk(row_shape: tuple[int, ...], itemsize: int, chunk_mb: float) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    return int(max(1, min(1 << 20, (chunk_mb * (1 << 20)) // row_bytes)))


# ---------------------------------------------------------------- backends
class ZarrBackend:
    def __init__(self, root: str, compressor: str, chunk_mb: float, storage_options: Optional[dict] = None):
        import zarr

        self.zarr = zarr
        self.root_path = root
        self.storage_options = storage_options
        kw = {"storage_options": storage_options} if storage_options and "://" in root else {}
        self.root = self._open_root(root, kw)
        self.chunk_mb = chunk_mb
        self.compressors = self._compressors(compressor)
        self._arrays: dict = {}

    def _open_root(self, root: str, kw: dict):
        from zarr.errors import ContainsGroupError

        # mode "a" checks for the group, then creates it: workers starting together (Ray actors
        # on one object store) can both see none and the slower one's create fails. The group
        # then exists, so opening again succeeds.
        for attempt in range(2):
            try:
                return self.zarr.open_group(root, mode="a", zarr_format=3, **kw)
            except ContainsGroupError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _require_group(self, path: str):
        from zarr.errors import ContainsGroupError

        # Same race as the root: two writers creating a shared parent group at once.
        try:
            return self.root.require_group(path)
        except ContainsGroupError:
            return self.root.require_group(path)

    def _compressors(self, name: str):
        from zarr.codecs import BloscCodec, ZstdCodec

        return {"none": None, "zstd": ZstdCodec(level=1),
                "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")}[name]

    def get_doc(self, path: str) -> Optional[dict]:
        g = self._safe_open(path)
        return dict(g.attrs) if g is not None else None

    def put_doc(self, path: str, doc: dict) -> None:
        g = self._require_group(path)
        g.attrs.put(doc)  # one metadata write replaces all attrs

    def children(self, path: str) -> list[str]:
        """Names below `path` as stored (listing the store, so half-written nodes show up too)."""
        from zarr.core.sync import sync

        # fsspec filesystems (s3fs, gcsfs) cache listings per process; other workers add segments
        # behind our back, so a listing must always ask the storage (a stale one hides new clips).
        fs = getattr(self.root.store, "fs", None)
        if fs is not None:
            fs.invalidate_cache()

        async def _ls():
            return [k async for k in self.root.store.list_dir(path)]

        return sorted(k for k in sync(_ls()) if k != "zarr.json")

    def _safe_open(self, path: str):
        try:
            node = self.root[path]
        except Exception:
            return None
        return node if isinstance(node, self.zarr.Group) else None

    def write_segment(self, path: str, arrays: dict[str, np.ndarray], doc: dict) -> None:
        g = self._require_group(path)
        if "://" in self.root_path:   # object storage has no lock: the age tells gc a live segment from a dead one
            g.attrs.put({"committed": False, "started": time.time()})
        for name, a in arrays.items():
            # Edge chunks are stored full-size, so a small segment gets a chunk no bigger than itself.
            rows = min(_rows_per_chunk(a.shape[1:], a.dtype.itemsize, self.chunk_mb), max(1, a.shape[0]))
            z = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(rows, *a.shape[1:]),
                               compressors=self.compressors, overwrite=True)
            if a.size:
                z[...] = a
        g.attrs.put(doc)  # the commit: written after every row is on storage

    def _array(self, path: str):
        # Segments are immutable once committed, so an opened array can be reused for the whole session.
        arr = self._arrays.get(path)
        if arr is None:
            arr = self._arrays[path] = self.root[path]
        return arr

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[np.ndarray]:
        """Several (array path, start, stop) reads in one round of zarr's async I/O (overlapped, not one by one).

        Fast path: an uncompressed little-endian array stored as ONE chunk (the usual segment) is read as
        its raw chunk bytes and viewed as an ndarray, skipping zarr's decode-and-copy into a new array."""
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        arrays = [self._array(p) for p, _, _ in requests]

        async def one(a, lo, hi):
            if self._single_raw_chunk(a):
                key = f"{a.path}/{a.metadata.encode_chunk_key((0,) * a.ndim)}"
                buf = await self.root.store.get(key, prototype=default_buffer_prototype())
                if buf is not None:
                    return np.frombuffer(buf.as_numpy_array(), dtype=a.dtype).reshape(a.shape)[lo:hi]
            return np.asarray(await a._async_array.getitem(slice(lo, hi)))

        async def _all():
            return await asyncio.gather(*(one(a, lo, hi) for a, (_, lo, hi) in zip(arrays, requests)))

        return list(sync(_all()))

    @staticmethod
    def _single_raw_chunk(a) -> bool:
        from zarr.codecs import BytesCodec

        codecs = a.metadata.codecs
        return (a.size > 0 and a.nchunks == 1 and tuple(a.metadata.chunk_grid.chunk_shape) == tuple(a.shape)
                and len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
                and a.dtype.byteorder in ("<", "=", "|") and sys.byteorder == "little")

    def row_counts(self, path: str) -> dict[str, int]:
        """Rows (first dimension) of every array stored in the segment group at `path`."""
        g = self._safe_open(path)
        if g is None:
            raise KeyError(f"{path}: segment group not readable")
        return {name: int(a.shape[0]) for name, a in g.arrays()}

    def delete(self, path: str) -> None:
        from zarr.core.sync import sync

        self._arrays = {k: v for k, v in self._arrays.items() if not k.startswith(path + "/")}
        sync(self.root.store.delete_dir(path))

    def remove_partial_files(self, path: str) -> int:
        return 0  # a killed Zarr writer leaves only uncommitted segment groups, which segments() reports


class HDF5Backend:
    """A directory of JSON docs and one .h5 file per segment (each renamed into place = committed)."""

    def __init__(self, root: str, compressor: str, chunk_mb: float, storage_options: Optional[dict] = None):
        if "://" in root:
            raise ValueError(f"store.format hdf5 needs a local directory, got {root!r} (use zarr for object storage)")
        import h5py

        self.h5py = h5py
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.chunk_mb = chunk_mb
        self.compression = {"none": None, "zstd": "gzip", "lz4": "lzf"}[compressor]

    def _doc_path(self, path: str) -> Path:
        return self.root / path / "_doc.json"

    def get_doc(self, path: str) -> Optional[dict]:
        p = self._doc_path(path)
        if p.exists():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return None
        seg = self.root / f"{path}.h5"
        if seg.exists():
            with self.h5py.File(seg, "r") as f:
                return json.loads(f.attrs["doc"])
        return None

    def put_doc(self, path: str, doc: dict) -> None:
        p = self._doc_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, default=str))
        os.replace(tmp, p)

    def children(self, path: str) -> list[str]:
        d = self.root / path if path else self.root
        if not d.is_dir():
            return []
        out = [c.name for c in d.iterdir() if c.is_dir()]
        out += [c.name[:-3] for c in d.iterdir() if c.suffix == ".h5"]
        return sorted(out)

    def write_segment(self, path: str, arrays: dict[str, np.ndarray], doc: dict) -> None:
        final = self.root / f"{path}.h5"
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        with self.h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                chunks = (_rows_per_chunk(a.shape[1:], a.dtype.itemsize, self.chunk_mb), *a.shape[1:]) if a.shape[0] else None
                if chunks:
                    chunks = (min(chunks[0], a.shape[0]), *chunks[1:])
                f.create_dataset(name, data=a, chunks=chunks, compression=self.compression if a.size else None)
            f.attrs["doc"] = json.dumps(doc, default=str)
        os.replace(tmp, final)  # the commit

    def read_rows(self, path: str, name: str, start: int, stop: int) -> np.ndarray:
        with self.h5py.File(self.root / f"{path}.h5", "r") as f:
            return f[name][start:stop]

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[np.ndarray]:
        out = []
        for path, lo, hi in requests:
            seg, name = path.rsplit("/", 1)
            out.append(self.read_rows(seg, name, lo, hi))
        return out

    def row_counts(self, path: str) -> dict[str, int]:
        with self.h5py.File(self.root / f"{path}.h5", "r") as f:
            return {name: int(f[name].shape[0]) for name in f if isinstance(f[name], self.h5py.Dataset)}

    def delete(self, path: str) -> None:
        import shutil

        p = self.root / path
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        for q in p.parent.glob(p.name + ".h5*") if p.parent.exists() else []:
            q.unlink(missing_ok=True)

    def remove_partial_files(self, path: str) -> int:
        """Temporary .h5 files a killed writer left in `path` (never renamed into place = never committed)."""
        d = self.root / path
        stale = list(d.glob("*.h5.tmp*")) if d.is_dir() else []
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


class StoreWriteError(StorageError, OSError):
    """Writing to the store failed (disk full, permissions, a lost mount): the run must stop.

    Names the store and what was being written; committed segments are untouched."""


# ---------------------------------------------------------------- the store
class FeatureStore:
    def __init__(self, root: str | os.PathLike, fmt: str = "zarr", compressor: str = "none",
                 chunk_mb: float = 8.0, storage_options: Optional[dict] = None,
                 remote_gc_age_s: Optional[float] = None):
        self.root = str(root)
        self.remote_gc_age_s = StoreConfig().remote_gc_age_s if remote_gc_age_s is None else remote_gc_age_s
        # (key, fingerprint) -> {segment: why it cannot be trusted}; filled while indexing
        self.broken: dict[tuple[str, str], dict[str, str]] = {}
        self.format = fmt
        backend = {"zarr": ZarrBackend, "hdf5": HDF5Backend}[fmt]
        self.backend = backend(self.root, compressor, chunk_mb, storage_options)
        self._index_cache: dict[tuple[str, str], dict[str, Entry]] = {}
        self._arrays_cache: dict[tuple[str, str], dict[str, list[str]]] = {}

    @classmethod
    def for_family(cls, store_cfg: StoreConfig, base: Path, family: str,
                   storage_options: Optional[dict] = None) -> "FeatureStore":
        if storage_options is None:  # params' store.storage_options (s3 endpoint etc.)
            storage_options = dict(store_cfg.storage_options) or None
        return cls(store_path(store_cfg, base, family), store_cfg.format, store_cfg.compressor,
                   store_cfg.chunk_mb, storage_options, store_cfg.remote_gc_age_s)

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
            raise KeyError(f"store {self.root} has no features for {key!r}; present: {self.keys() or 'none'}")
        return fp

    # -- index
    def segments(self, key: str, fingerprint: str) -> tuple[dict[str, dict], list[str]]:
        """(committed segment -> index doc, uncommitted segment names)."""
        committed, pending = {}, []
        broken = self.broken.setdefault((key, fingerprint), {})
        for seg in self.backend.children(f"{key}/{fingerprint}"):
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

    def index(self, key: str, fingerprint: Optional[str] = None, refresh: bool = False) -> dict[str, Entry]:
        fp = fingerprint or self._require_current(key)
        cache_key = (key, fp)
        if refresh or cache_key not in self._index_cache:
            idx: dict[str, Entry] = {}
            committed, _ = self.segments(key, fp)
            committed = self._verified(key, fp, committed)
            self._arrays_cache[cache_key] = {seg: doc.get("arrays", []) for seg, doc in committed.items()}
            for seg in sorted(committed):  # later segments win for a clip committed twice
                doc = committed[seg]
                for i, cid in enumerate(doc["clip_ids"]):
                    idx[cid] = Entry(seg, int(doc["offsets"][i]), int(doc["lengths"][i]), doc["attrs"][i])
            self._index_cache[cache_key] = idx
        return self._index_cache[cache_key]

    def _verified(self, key: str, fp: str, committed: dict[str, dict]) -> dict[str, dict]:
        """The committed segments whose arrays exist with as many rows as their index says."""
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
                ok[seg] = doc
        return ok

    def _report_broken(self, key: str, fp: str, seg: str, why: str) -> None:
        seen = self.broken.setdefault((key, fp), {})
        if seg not in seen:
            log.warning("store %s: segment %s/%s/%s is broken (%s); its clips count as missing and are "
                        "extracted again", self.root, key, fp, seg, why)
        seen[seg] = why

    def has(self, key: str, fingerprint: str) -> set[str]:
        return set(self.index(key, fingerprint, refresh=True))

    def gc_uncommitted(self, key: str, fingerprint: str) -> int:
        """Delete segments no live writer can still commit, and broken ones.

        Call only while holding the store's writer lock (pipeline/store_lock.py): then every other writer
        of a local store is dead. Object storage has no lock, so there an uncommitted segment is deleted
        only once it is older than `remote_gc_age_s` (a live writer commits a segment within seconds)."""
        _, pending = self.segments(key, fingerprint)
        self.index(key, fingerprint, refresh=True)          # fills self.broken
        if "://" in self.root:
            pending = [seg for seg in pending if self._age_s(f"{key}/{fingerprint}/{seg}", seg) > self.remote_gc_age_s]
        doomed = [*pending, *self.broken.get((key, fingerprint), {})]
        for seg in doomed:
            self.backend.delete(f"{key}/{fingerprint}/{seg}")
        self.broken.pop((key, fingerprint), None)
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
    def write_segment(self, key: str, fingerprint: str, clips: list[tuple[str, Any]], writer: str = "") -> str:
        """Commit a batch of (clip_id, ClipFeatures) as one segment. Returns the segment name."""
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
            raise KeyError(f"{key}: {len(missing)} clip(s) not in the store, e.g. {missing[:3]}")
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

    def read_padded(self, key: str, clip_ids: Iterable[str], name: str = "features",
                    max_len: Optional[int] = None, fingerprint: Optional[str] = None,
                    dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(N, T, ...) zero-padded + lengths (N,). Rows beyond max_len are cut. Copies straight from segment blocks."""
        clip_ids = list(clip_ids)
        fp = fingerprint or self._require_current(key)
        idx = self.index(key, fp)
        blocks = list(self._blocks(key, clip_ids, [name], fp, False))
        lengths = np.array([idx[c].length for c in clip_ids], dtype=np.int64)
        if max_len is not None:
            lengths = np.minimum(lengths, max_len)
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


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
