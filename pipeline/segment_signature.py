"""A cheap signature of each segment's bytes on storage, so that an open re-checks only segments that changed.

The consolidated index records, for each segment it lists, a digest of the segment's files as the storage lists
them: relative name, size and modification time (an object store's ETag where it has one). At open one listing
pass over the fingerprint's directory (one `stat` per file locally, one paginated LIST on object storage) gives
the current digests; a segment whose digest differs -- a file vanished, was truncated, rewritten or added -- is
checked in full against its arrays again (store.py `_verified`) and, if broken, reported and re-extracted.

Trade-off: copying a store without preserving modification times (`cp -r` without `-p`) changes every digest,
so the first open after the copy checks every segment once and records the new digests.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

# zarr's temporary file of a metadata write a killed process left: not part of the segment
_TEMP_SUFFIX = ".partial"


def _digest(entries: list[tuple[str, int, object]]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for name, size, stamp in sorted(entries):
        h.update(f"{name}\0{size}\0{stamp}\n".encode())
    return h.hexdigest()


def _walk(top: str) -> list[tuple[str, int, int]]:
    """(path relative to top, size, mtime_ns) of every file below top."""
    out, stack = [], [("", top)]
    while stack:
        rel, d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append((f"{rel}{e.name}/", e.path))
                elif not e.name.endswith(_TEMP_SUFFIX):
                    st = e.stat(follow_symlinks=False)
                    out.append((rel + e.name, st.st_size, st.st_mtime_ns))
    return out


def local_dir_signatures(fp_dir: str) -> dict[str, str]:
    """Segment name -> digest for every segment directory in a local fingerprint directory (zarr)."""
    out = {}
    try:
        top = list(os.scandir(fp_dir))
    except FileNotFoundError:
        return out
    for e in top:
        if e.name.startswith("_") or not e.is_dir(follow_symlinks=False):
            continue
        try:
            out[e.name] = _digest(_walk(e.path))
        except FileNotFoundError:   # deleted while listed: no signature, so it is checked in full
            continue
    return out


def local_file_signatures(fp_dir: str, suffix: str) -> dict[str, str]:
    """Segment name -> digest for every one-file segment (`<segment><suffix>`, HDF5) in a local directory."""
    out = {}
    try:
        top = list(os.scandir(fp_dir))
    except FileNotFoundError:
        return out
    for e in top:
        if e.name.endswith(suffix) and not e.name.startswith("_"):
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out[e.name[: -len(suffix)]] = _digest([("", st.st_size, st.st_mtime_ns)])
    return out


def listing_signatures(listing: dict[str, dict], prefix: str) -> dict[str, str]:
    """Segment name -> digest from one recursive fsspec listing (`find(prefix, detail=True)`) of object storage."""
    prefix = prefix.rstrip("/")
    groups: dict[str, list] = {}
    for path, info in listing.items():
        rel = path[len(prefix) + 1:] if path.startswith(prefix + "/") else None
        if not rel or "/" not in rel or rel.startswith("_") or rel.endswith(_TEMP_SUFFIX):
            continue
        seg, name = rel.split("/", 1)
        groups.setdefault(seg, []).append((name, int(info.get("size") or 0), _stamp(info)))
    return {seg: _digest(entries) for seg, entries in groups.items()}


def _stamp(info: dict) -> Optional[str]:
    for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(k) is not None:
            return str(info[k])
    return None
