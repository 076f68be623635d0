"""A cheap signature of each segment's bytes on storage, so that an open re-checks only segments that changed.

The consolidated index records, for each segment it lists, a digest of the segment's files: relative name, size
and modification time (an object store's ETag where it has one), and locally the list of those files. At open,
one `stat` per recorded file (no directory walk; on object storage one paginated LIST per fingerprint) gives the
current digests; a segment whose digest differs -- a file vanished, was truncated or rewritten -- is walked
again and checked in full against its arrays (store.py `_verified`) and, if broken, reported and re-extracted.

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
    """Entries sorted by name (a walk sorts them; recorded file lists are kept sorted), hashed in one call."""
    text = "\n".join(f"{name}\0{size}\0{stamp}" for name, size, stamp in entries)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


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


def dir_signature(seg_dir: str) -> Optional[dict]:
    """{"sig", "files"} of a segment directory from a walk of it (None: it is gone)."""
    try:
        entries = _walk(seg_dir)
    except FileNotFoundError:
        return None
    entries.sort()
    return {"sig": _digest(entries), "files": [e[0] for e in entries]}


def files_signature(seg_dir: str, files: list[str]) -> Optional[dict]:
    """{"sig", "files"} from one stat per recorded (sorted) file (None: one of them is gone)."""
    entries, stat = [], os.stat
    try:
        for rel in files:
            st = stat(f"{seg_dir}/{rel}" if rel else seg_dir)
            entries.append((rel, st.st_size, st.st_mtime_ns))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return {"sig": _digest(entries), "files": files}


def listing_signatures(listing: dict[str, dict], prefix: str) -> dict[str, dict]:
    """Segment name -> {"sig"} from one recursive fsspec listing (`find(prefix, detail=True)`) of object storage."""
    prefix = prefix.rstrip("/")
    groups: dict[str, list] = {}
    for path, info in listing.items():
        rel = path[len(prefix) + 1:] if path.startswith(prefix + "/") else None
        if not rel or "/" not in rel or rel.startswith("_") or rel.endswith(_TEMP_SUFFIX):
            continue
        seg, name = rel.split("/", 1)
        groups.setdefault(seg, []).append((name, int(info.get("size") or 0), _stamp(info)))
    return {seg: {"sig": _digest(sorted(entries))} for seg, entries in groups.items()}


def _stamp(info: dict) -> Optional[str]:
    for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(k) is not None:
            return str(info[k])
    return None
