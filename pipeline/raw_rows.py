"""Reading rows of an uncompressed, row-chunked array straight from its file with pread.

A committed segment never changes, and with `store.compressor: none` (the default) its chunks are the raw
little-endian bytes of whole rows (a Zarr v3 chunk file with only the bytes codec; an HDF5 chunk without
filters). Reading rows lo..hi then needs no codec and no read of the rest of the chunk: one `preadv` per chunk
touched, straight into the result. This is what makes a random 16-clip minibatch as cheap as from a memmap
(the codec path reads and copies a whole segment to get one clip out of it).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class RawLayout:
    dtype: np.dtype
    shape: tuple[int, ...]           # the whole array
    rows_per_chunk: int
    locate: Callable[[int], Optional[tuple[str, int]]]   # chunk k -> (file, byte offset), None: never written
    row_bytes: int = 0

    def __post_init__(self):
        object.__setattr__(self, "row_bytes", int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize)


def native_order(dtype: np.dtype) -> bool:
    return dtype.byteorder in ("=", "|") or (dtype.byteorder == "<") == (sys.byteorder == "little")


def read_rows(layout: RawLayout, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of the array as a new ndarray."""
    hi = min(hi, layout.shape[0])
    out = np.empty((max(0, hi - lo), *layout.shape[1:]), dtype=layout.dtype)
    read_rows_into(layout, lo, hi, out)
    return out


def read_rows_into(layout: RawLayout, lo: int, hi: int, out: np.ndarray) -> None:
    """Rows lo..hi of the array into `out`, a C-contiguous array of the same dtype and exactly that many bytes
    (any shape: (n, D) of flattened rows works). A chunk that was never written holds the fill value (zeros:
    layouts are only built for arrays whose fill value is 0). A file shorter than its rows is an OSError."""
    rb, rpc, r = layout.row_bytes, layout.rows_per_chunk, lo
    if out.dtype != layout.dtype or not out.flags.c_contiguous or out.nbytes != (hi - lo) * rb or hi > layout.shape[0]:
        raise ValueError(f"rows {lo}..{hi} of a {layout.shape} {layout.dtype} array do not fit {out.shape} {out.dtype}")
    if out.nbytes == 0:
        return
    flat = memoryview(out.reshape(-1).view(np.uint8))
    rows = out.reshape(hi - lo, -1)
    while r < hi:
        k = r // rpc
        take = min(hi, (k + 1) * rpc) - r
        dest = flat[(r - lo) * rb: (r - lo + take) * rb]
        where = layout.locate(k)
        fd = None
        if where is not None:
            try:
                fd = os.open(where[0], os.O_RDONLY)
            except FileNotFoundError:   # Zarr does not write a chunk that is all fill value
                fd = None
        if fd is None:
            rows[r - lo: r - lo + take] = 0
        else:
            try:
                n = os.preadv(fd, [dest], where[1] + (r - k * rpc) * rb)
            finally:
                os.close(fd)
            if n != len(dest):
                raise OSError(f"{where[0]}: {n} of {len(dest)} bytes for rows {r}..{r + take} (file truncated?)")
        r += take


IOV_MAX = 512   # buffers per preadv call (Linux allows 1024)


def read_many_into(layout: RawLayout, parts: list[tuple[int, int, np.ndarray]]) -> None:
    """Several (lo, hi, out) row ranges of one array, as read_rows_into. Ranges that follow each other in the file
    are read by one preadv into their separate buffers, and the file is opened once."""
    if layout.rows_per_chunk < layout.shape[0]:   # several chunks: range by range
        for lo, hi, out in parts:
            read_rows_into(layout, lo, hi, out)
        return
    parts = sorted((p for p in parts if p[1] > p[0]), key=lambda p: p[0])
    if not parts:
        return
    rb = layout.row_bytes
    for lo, hi, out in parts:
        if out.dtype != layout.dtype or not out.flags.c_contiguous or out.nbytes != (hi - lo) * rb \
                or hi > layout.shape[0]:
            raise ValueError(f"rows {lo}..{hi} of a {layout.shape} {layout.dtype} array do not fit "
                             f"{out.shape} {out.dtype}")
    where = layout.locate(0)
    try:
        fd = None if where is None else os.open(where[0], os.O_RDONLY)
    except FileNotFoundError:   # Zarr does not write a chunk that is all fill value
        fd = None
    if fd is None:
        for _, _, out in parts:
            out[...] = 0
        return
    try:
        i = 0
        while i < len(parts):
            j = i + 1
            while j < len(parts) and j - i < IOV_MAX and parts[j][0] == parts[j - 1][1]:
                j += 1
            bufs = [memoryview(p[2].reshape(-1).view(np.uint8)) for p in parts[i:j]]
            want = sum(len(b) for b in bufs)
            n = os.preadv(fd, bufs, where[1] + parts[i][0] * rb)
            if n != want:
                raise OSError(f"{where[0]}: {n} of {want} bytes for rows {parts[i][0]}..{parts[j - 1][1]} "
                              f"(file truncated?)")
            i = j
    finally:
        os.close(fd)
