"""Storage backends of the feature store: where the bytes of documents and segments go.

ZarrBackend: one Zarr v3 hierarchy (local directory or an fsspec URL such as s3://); a document is a group's
attributes, a segment a group of arrays whose attributes (the commit) are written last.
HDF5Backend: a directory of JSON documents and one self-contained `.h5` file per segment, written under a
temporary name and renamed into place (the commit); a single HDF5 file is not kill -9 safe.

Both also keep small opaque blobs (the consolidated index per fingerprint), replaced atomically.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from pipeline.raw_rows import RawLayout, native_order, read_rows
from pipeline.segment_signature import dir_signature, files_signature, listing_signatures


def _rows_per_chunk(row_shape: tuple[int, ...], itemsize: int, chunk_mb: float) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    return int(max(1, min(1 << 20, (chunk_mb * (1 << 20)) // row_bytes)))


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
        self._layouts: dict[str, Optional[RawLayout]] = {}   # segments are immutable: found once per session

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

        # '*.partial': zarr's temporary file of a metadata write a killed process left; never a node
        return sorted(k for k in sync(_ls()) if k != "zarr.json" and not k.endswith(".partial"))

    def get_blob(self, path: str) -> Optional[bytes]:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        fs = getattr(self.root.store, "fs", None)
        if fs is not None:   # another worker may have replaced it: never a cached copy
            fs.invalidate_cache()
        buf = sync(self.root.store.get(path, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def put_blob(self, path: str, data: bytes) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        # zarr's LocalStore writes through a temporary file and a rename; an object PUT is atomic too.
        sync(self.root.store.set(path, default_buffer_prototype().buffer.from_bytes(data)))

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
        """Several (array path, start, stop) reads.

        Local uncompressed arrays (the default) are read row-exactly with pread (pipeline/raw_rows.py). Others go
        through one round of zarr's async I/O (overlapped, not one by one); there an uncompressed array stored as
        ONE chunk is read as its raw chunk bytes and viewed as an ndarray, skipping zarr's decode-and-copy."""
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        out: list = [None] * len(requests)
        slow = []
        for i, (p, lo, hi) in enumerate(requests):
            layout = self.raw_layout(p)
            if layout is not None:
                out[i] = read_rows(layout, lo, hi)
            else:
                slow.append(i)
        if not slow:
            return out
        arrays = [self._array(requests[i][0]) for i in slow]

        async def one(a, lo, hi):
            if self._single_raw_chunk(a):
                key = f"{a.path}/{a.metadata.encode_chunk_key((0,) * a.ndim)}"
                buf = await self.root.store.get(key, prototype=default_buffer_prototype())
                if buf is not None:
                    return np.frombuffer(buf.as_numpy_array(), dtype=a.dtype).reshape(a.shape)[lo:hi]
            return np.asarray(await a._async_array.getitem(slice(lo, hi)))

        async def _all():
            return await asyncio.gather(*(one(a, requests[i][1], requests[i][2]) for a, i in zip(arrays, slow)))

        for i, r in zip(slow, sync(_all())):
            out[i] = r
        return out

    def raw_layout(self, path: str) -> Optional[RawLayout]:
        """Where the raw rows of a local, uncompressed, row-chunked array are (None: read through zarr)."""
        if path in self._layouts:
            return self._layouts[path]
        layout = None
        if "://" not in self.root_path and self._safe_array(path):
            from zarr.codecs import BytesCodec

            a = self._array(path)
            md = a.metadata
            chunks = tuple(md.chunk_grid.chunk_shape)
            if (len(md.codecs) == 1 and isinstance(md.codecs[0], BytesCodec) and native_order(a.dtype)
                    and chunks[1:] == tuple(a.shape[1:]) and a.size and not np.any(np.asarray(md.fill_value))):
                base = f"{Path(self.root_path) / a.path}/"
                zeros = (0,) * (a.ndim - 1)
                files = [base + md.encode_chunk_key((k, *zeros)) for k in range(-(-a.shape[0] // chunks[0]))]
                layout = RawLayout(np.dtype(a.dtype), tuple(a.shape), chunks[0], lambda k: (files[k], 0))
        self._layouts[path] = layout
        return layout

    def _safe_array(self, path: str) -> bool:
        try:
            self._array(path)
        except Exception:   # missing arrays: the zarr path raises its own error
            return False
        return True

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

    def signatures(self, path: str, segments: Iterable[str],
                   recorded: Optional[Mapping[str, Optional[list[str]]]] = None) -> dict[str, dict]:
        """Segment -> {"sig": digest of its files (names, sizes, mtimes or ETags), "files"} for the given segments
        below `path`: locally one stat per file `recorded` for it, else a walk of its directory; on object
        storage one listing of `path` (every segment in it)."""
        if "://" not in self.root_path:
            base, recorded = f"{Path(self.root_path) / path}", recorded or {}
            out = {}
            for seg in segments:
                files = recorded.get(seg)
                sig = files_signature(f"{base}/{seg}", files) if files else dir_signature(f"{base}/{seg}")
                if sig is not None:
                    out[seg] = sig
            return out
        from zarr.core.sync import sync

        fs, prefix = self.root.store.fs, f"{self.root.store.path.rstrip('/')}/{path}"
        fs.invalidate_cache()
        try:   # zarr's fsspec filesystems are async: list on zarr's own event loop
            listing = sync(fs._find(prefix, detail=True)) if fs.async_impl else fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        return listing_signatures(listing, prefix)

    def delete(self, path: str) -> None:
        from zarr.core.sync import sync

        self._arrays = {k: v for k, v in self._arrays.items() if not k.startswith(path + "/")}
        self._layouts = {k: v for k, v in self._layouts.items() if not k.startswith(path + "/")}
        sync(self.root.store.delete_dir(path))

    def remove_partial_files(self, path: str) -> int:
        """Temporary files of metadata or index writes a killed process left (segments: gc_uncommitted)."""
        if "://" in self.root_path:
            return 0
        d = Path(self.root_path) / path
        stale = [f for f in d.glob("*.partial") if f.is_file()] if d.is_dir() else []   # zarr LocalStore's temp names
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


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
        self._layouts: dict[str, dict[str, Optional[RawLayout]]] = {}   # segment -> dataset -> layout

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

    def get_blob(self, path: str) -> Optional[bytes]:
        p = self.root / path
        return p.read_bytes() if p.is_file() else None

    def put_blob(self, path: str, data: bytes) -> None:
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)   # readers see the old blob or the new one, never half of one

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
            layout = self.raw_layout(path)
            out.append(read_rows(layout, lo, hi) if layout is not None else self.read_rows(seg, name, lo, hi))
        return out

    def raw_layout(self, path: str) -> Optional[RawLayout]:
        """Byte offsets of an unfiltered dataset's chunks in its (immutable) segment file, found once."""
        seg, name = path.rsplit("/", 1)
        if seg not in self._layouts:
            if not (self.root / f"{seg}.h5").is_file():
                return None
            layouts = {}
            fname = str(self.root / f"{seg}.h5")
            try:
                with self.h5py.File(fname, "r") as f:
                    for n, ds in f.items():
                        if isinstance(ds, self.h5py.Dataset):
                            layouts[n] = self._dataset_layout(fname, ds)
            except OSError:   # a damaged file: the h5py path raises its own error
                return None
            self._layouts[seg] = layouts
        return self._layouts[seg].get(name)

    @staticmethod
    def _dataset_layout(fname: str, ds) -> Optional[RawLayout]:
        dt = np.dtype(ds.dtype)
        if not ds.size or ds.compression or ds.shuffle or ds.fletcher32 or ds.scaleoffset is not None \
                or not native_order(dt) or dt.hasobject or ds.fillvalue not in (0, None):
            return None
        if ds.chunks is None:   # contiguous: one run of bytes
            off = ds.id.get_offset()
            return None if off is None else RawLayout(dt, ds.shape, ds.shape[0], lambda k: (fname, off))
        if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
            return None
        rpc = ds.chunks[0]
        offsets = {}
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            if info.filter_mask:
                return None
            offsets[info.chunk_offset[0] // rpc] = info.byte_offset
        return RawLayout(dt, ds.shape, rpc, lambda k: (fname, offsets[k]) if k in offsets else None)

    def row_counts(self, path: str) -> dict[str, int]:
        with self.h5py.File(self.root / f"{path}.h5", "r") as f:
            return {name: int(f[name].shape[0]) for name in f if isinstance(f[name], self.h5py.Dataset)}

    def signatures(self, path: str, segments: Iterable[str],
                   recorded: Optional[Mapping[str, Optional[list[str]]]] = None) -> dict[str, dict]:
        """Segment -> {"sig": digest of its .h5 file's size and mtime}: one stat per segment."""
        base, out = self.root / path, {}
        for seg in segments:
            sig = files_signature(str(base / f"{seg}.h5"), [""])
            if sig is not None:
                out[seg] = {"sig": sig["sig"]}
        return out

    def delete(self, path: str) -> None:
        import shutil

        self._layouts = {k: v for k, v in self._layouts.items() if k != path and not k.startswith(path + "/")}
        p = self.root / path
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        for q in p.parent.glob(p.name + ".h5*") if p.parent.exists() else []:
            q.unlink(missing_ok=True)

    def remove_partial_files(self, path: str) -> int:
        """Temporary .h5 files a killed writer left in `path` (never renamed into place = never committed)."""
        d = self.root / path
        stale = [*d.glob("*.h5.tmp*"), *d.glob("_index.json.tmp*")] if d.is_dir() else []
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


