"""The catalog document at the root of `store.dir`: which family store holds every key.

    <store.dir>/catalog.json   {"format": "emocache-catalog", "version": 1,
                                "stores": {family: {"path": "audio.zarr", "format": "zarr"}},
                                "keys":   {store key: family}}

Writers record a family store when they open it and a key when they make a fingerprint current
(pipeline/store.py); the doc is replaced atomically under a short flock on local disk (object storage: one
atomic PUT). Readers go through pipeline/catalog.py, which rebuilds a missing or untrusted doc by listing the
family stores (they remain the truth).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from pipeline.config import StoreConfig

log = logging.getLogger("emocache.store")

CATALOG = "catalog.json"
CATALOG_LOCK = ".catalog.lock"
CATALOG_FORMAT = "emocache-catalog"
CATALOG_VERSION = 1
FAMILIES = ("audio", "audio_states", "text", "text_states", "video")   # family stores (Extractor.family)


# ---------------------------------------------------------------- the document
def empty_catalog() -> dict:
    return {"format": CATALOG_FORMAT, "version": CATALOG_VERSION, "stores": {}, "keys": {}}


def _fs(root: str, storage_options: Optional[dict]):
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    return fs, path


def _read_raw(root: str, storage_options: Optional[dict]) -> Optional[bytes]:
    if "://" in root:
        fs, path = _fs(root, storage_options)
        fs.invalidate_cache()
        target = f"{path.rstrip('/')}/{CATALOG}"
        return fs.cat_file(target) if fs.exists(target) else None
    p = Path(root) / CATALOG
    return p.read_bytes() if p.is_file() else None


def _parse(raw: bytes, where: str) -> dict:
    """The catalog doc, or ValueError saying why it is not trusted."""
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is corrupted ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        raise ValueError(f"{where} is not an emocache catalog")
    if not isinstance(doc.get("version"), int) or doc["version"] > CATALOG_VERSION:
        raise ValueError(f"{where} was written by a newer emocache (catalog version {doc.get('version')!r}; "
                         f"this version reads up to {CATALOG_VERSION})")
    if not isinstance(doc.get("stores"), dict) or not isinstance(doc.get("keys"), dict) \
            or any(f not in doc["stores"] for f in doc["keys"].values()):
        raise ValueError(f"{where} is corrupted (a key names a store it does not list)")
    return doc


def load_catalog(root: str, storage_options: Optional[dict] = None) -> Optional[dict]:
    """The catalog at `root`, or None when there is none or it cannot be trusted (logged: it gets rebuilt)."""
    try:
        raw = _read_raw(root, storage_options)
        return None if raw is None else _parse(raw, f"{root.rstrip('/')}/{CATALOG}")
    except (OSError, ValueError) as e:
        log.warning("store catalog: %s; rebuilding it from the family stores", e)
        return None


def _write(root: str, doc: dict, storage_options: Optional[dict]) -> None:
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    if "://" in root:
        fs, path = _fs(root, storage_options)
        fs.pipe_file(f"{path.rstrip('/')}/{CATALOG}", data)   # one PUT: atomic on object storage
        return
    p = Path(root) / CATALOG
    tmp = p.with_name(f"{CATALOG}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, p)   # readers see the old catalog or the new one


@contextmanager
def _locked(root: str) -> Iterator[None]:
    """Writers of different family stores update one catalog: serialise the read-modify-write (local only)."""
    if "://" in root:
        yield
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(root) / CATALOG_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the flock, also when the holder is killed


def record(root: str, family: str, store_name: str, fmt: str, key: Optional[str] = None,
           storage_options: Optional[dict] = None, scan: Optional[Callable[[], dict]] = None) -> None:
    """Make the catalog at `root` list the family store (and `key` in it). Writes only when something changes.
    scan(): the catalog listed from the stores themselves, for a root that has none yet."""
    def wanted(doc: Optional[dict]) -> bool:
        return doc is not None and doc["stores"].get(family) == {"path": store_name, "format": fmt} \
            and (key is None or doc["keys"].get(key) == family)

    if wanted(load_catalog(root, storage_options)):
        return
    try:
        _record(root, family, store_name, fmt, key, storage_options, scan, wanted)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # a read-only cache: readers list the family stores themselves when the catalog lacks a key
        log.debug("store catalog %s: not updated (%s)", root, e.strerror)


def _record(root, family, store_name, fmt, key, storage_options, scan, wanted) -> None:
    with _locked(root):
        doc = load_catalog(root, storage_options)
        if wanted(doc):
            return
        doc = doc or (scan() if scan is not None else empty_catalog())
        doc["stores"][family] = {"path": store_name, "format": fmt}
        if key is not None:
            doc["keys"][key] = family
        _write(root, doc, storage_options)


def _exists(path: str, storage_options: Optional[dict]) -> bool:
    if "://" in path:
        fs, p = _fs(path, storage_options)
        return fs.exists(p)
    return Path(path).exists()


def catalog_root(store_cfg: StoreConfig, base: Path) -> str:
    d = store_cfg.dir
    if "://" in d:
        return d.rstrip("/")
    p = Path(d)
    return str(p if p.is_absolute() else base / p)
