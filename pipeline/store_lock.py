"""One writer at a time per local feature store: an exclusive lock held from planning to the last commit.

Two `emocache extract` runs on one store used to corrupt it: each deleted the other's uncommitted (live)
segments at start-up, and both extracted the same missing clips. With the lock, a second run waits (saying
for whom), then plans against what the first committed: nothing is collected while its writer lives, and
nothing is extracted twice. The lock is `flock` on `<store>/.writer.lock`, released by the kernel when
the holder dies (kill -9 included), so a crashed run never blocks the next one. Linux NFS clients map
flock to NFS byte-range locks, so it also holds across machines sharing an NFS store.

Object storage (s3://, gs://) has no locks: there the store collects an uncommitted segment only once it
is older than `store.remote_gc_age_s` (pipeline/store.py), so a live writer's segment is never removed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("emocache.store")

LOCK_NAME = ".writer.lock"


def is_remote(root: str) -> bool:
    return "://" in root


@contextmanager
def store_lock(root: str, owner: str) -> Iterator[None]:
    """Hold the exclusive writer lock of the local store at `root` (a no-op for object storage)."""
    if is_remote(root):
        yield
        return
    path = Path(root) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # A store we may only read (a shared, read-only mount): nothing can be written, so there is nothing to
        # guard. A run with nothing to extract succeeds; one that must write fails at its first commit, naming
        # the store (StoreWriteError).
        log.info("store %s is read-only here (%s): running without the writer lock", root, e.strerror)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            log.warning("store %s is being written by %s; waiting for it to finish", root, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"owner": owner, "pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)          # closing the descriptor releases the flock


@contextmanager
def store_locks(roots: Iterable[str], owner: str) -> Iterator[None]:
    """Locks of several stores, always taken in the same (sorted) order so two runs cannot deadlock."""
    with ExitStack() as stack:
        for root in sorted(set(roots)):
            stack.enter_context(store_lock(root, owner))
        yield
