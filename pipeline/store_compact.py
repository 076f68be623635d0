"""Compaction: merge the many small committed segments of a (key, fingerprint) into few large ones.

Extraction commits every `store.flush_clips` clips (a crash loses at most those), so a large cache is
thousands of small segments: more files to list and check at open, and a 16-clip minibatch touches up to 16
segment files. Compaction rewrites runs of small segments as segments of up to `store.compact_clips` clips,
keeping the kill -9 guarantee, one group at a time:

1. the merged segment is written fully under a new name (uncommitted: readers ignore it, gc collects it);
2. its commit doc lists the segments it `replaces`: that one atomic write makes their clips resolve to it and
   retires them (store.py `_scan` never indexes a retired segment), so a reader sees each clip exactly once;
3. the consolidated index is rewritten without the retired segments, then they are deleted.

A kill between any two steps leaves either the old segments (1) or the merged one plus retired leftovers (2, 3),
which the next compaction or `extract` deletes (`gc_uncommitted`). Local stores are compacted under the
store's writer lock, so no extraction runs meanwhile. Object storage has no lock: run one compaction at a time
there. A process that opened the store before a compaction must reopen it (its index names deleted segments).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from pipeline.config import StoreConfig
from pipeline.store import FeatureStore, MissingFeaturesError
from pipeline.store_lock import store_lock

log = logging.getLogger("emocache.store")
_NAME_TIME = "%Y%m%dT%H%M%S"   # the time prefix of a segment name (store.new_segment_id)
_NAME_RESOLUTION_S = 1.0


@dataclass
class _Rows:
    """One clip's rows as write_segment takes them."""

    arrays: dict[str, np.ndarray]
    times: np.ndarray
    attrs: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.times.shape[0])


@dataclass
class Compaction:
    key: str
    segments_before: int
    segments_after: int
    clips: int
    leftovers: int    # uncommitted, broken or retired segments collected first

    def line(self) -> str:
        return (f"{self.key}: {self.segments_before} -> {self.segments_after} segments ({self.clips} clips"
                + (f"; {self.leftovers} leftover segment(s) removed" if self.leftovers else "") + ")")


def plan_groups(live: dict[str, list[str]], target_clips: int) -> list[list[str]]:
    """Runs of consecutive (by name, i.e. commit time) segments smaller than target_clips, each run holding at
    most target_clips live clips; only runs of two or more segments are worth rewriting."""
    groups, run, n = [], [], 0
    for seg in sorted(live):
        size = len(live[seg])
        if size >= target_clips or (run and n + size > target_clips):
            if len(run) > 1:
                groups.append(run)
            run, n = [], 0
        if size < target_clips:
            run.append(seg)
            n += size
    if len(run) > 1:
        groups.append(run)
    return groups


def _after_the_last_commit(segments: Iterable[str]) -> None:
    """Wait until a new segment name sorts after every existing one. Names start with their commit second
    (store.new_segment_id) and, for a clip committed twice, the later name wins; a merged segment holds each
    clip's winning rows, so it must not sort before an older copy. Only a store written this very second waits
    (at most the one second the names resolve); a clock behind the store's newest name is warned about."""
    newest = max((s.split("-", 1)[0] for s in segments), default="")
    deadline = time.monotonic() + _NAME_RESOLUTION_S
    while time.strftime(_NAME_TIME) <= newest:
        if time.monotonic() > deadline:
            log.warning("store segment %s... is newer than this machine's clock: a clip committed twice may read "
                        "its older rows after compaction", newest)
            return
        time.sleep(_NAME_RESOLUTION_S / 20)


def compact_key(st: FeatureStore, key: str, target_clips: int, fingerprint: Optional[str] = None,
                writer: str = "compact") -> Compaction:
    """Compact one (key, fingerprint) of a store. Call under the store's writer lock (compact_stores does)."""
    if target_clips < 2:
        raise ValueError(f"store.compact_clips must be at least 2, got {target_clips}")
    fp = fingerprint or st._require_current(key)
    leftovers = st.gc_uncommitted(key, fp)
    live = st.index(key, fp, refresh=True).live_by_segment()
    _after_the_last_commit(live)
    before = len(live)
    # every segment was just checked (refresh above); the per-group refreshes below only fold in each merged
    # segment (walked and checked as new) and drop its group, without re-checking all the others each time
    trust, st.trust_index = st.trust_index, True
    try:
        _merge_groups(st, key, fp, live, target_clips, writer)
    finally:
        st.trust_index = trust
    after = len(st.index(key, fp, refresh=True).live_by_segment())
    return Compaction(key, before, after, sum(len(v) for v in live.values()), leftovers)


def _merge_groups(st: FeatureStore, key: str, fp: str, live: dict[str, list[str]], target_clips: int,
                  writer: str) -> None:
    for group in plan_groups(live, target_clips):
        ids = [c for seg in group for c in live[seg]]
        if ids:   # (a group whose clips were all committed again later is left as it is: it serves none)
            rows = st.read(key, ids, fingerprint=fp)
            clips = [(cid, _Rows(r.arrays if len(r.times) else {}, r.times, r.attrs)) for cid, r in zip(ids, rows)]
            st.write_segment(key, fp, clips, writer=writer, replaces=group)
            st.index(key, fp, refresh=True)    # the consolidated index now names the merged segment, not the group
            for seg in group:
                st.backend.delete(f"{key}/{fp}/{seg}")


def compact_stores(stores: Iterable[FeatureStore], store_cfg: StoreConfig, keys: Optional[list[str]] = None,
                   owner: str = "emocache store compact") -> list[Compaction]:
    """Compact every key (or `keys`) of the given family stores, each store under its writer lock."""
    stores = list(stores)
    present = {k for st in stores for k in st.keys()}
    unknown = sorted(set(keys or ()) - present)
    if unknown:
        raise MissingFeaturesError(f"no features for {', '.join(map(repr, unknown))} in the stores under "
                                   f"{store_cfg.dir}; present: {', '.join(sorted(present)) or 'none'}")
    out = []
    for st in stores:
        todo = [k for k in st.keys() if (keys is None or k in keys) and st.current_fingerprint(k) is not None]
        if todo:
            with store_lock(st.root, owner):
                out += [compact_key(st, k, store_cfg.compact_clips) for k in todo]
    return out


def compact_cache(store_cfg: StoreConfig, base: Path, keys: Optional[list[str]] = None) -> list[Compaction]:
    """`emocache store compact`: every family store under store.dir."""
    from pipeline.catalog import open_catalog

    return compact_stores(open_catalog(store_cfg, base).family_stores.values(), store_cfg, keys)
