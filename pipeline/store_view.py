"""One view of the feature stores for a set of extractors: which clips are present for (key, fingerprint).

The orchestrator (pipeline/extract.py) plans against it whatever the executor; a local Worker writes
through the same stores; the Ray driver asks it which clips of a dead actor's chunk did commit. It knows
only plain data about each extractor (family, fingerprint, metadata), so the Ray driver builds it without
loading a model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from pipeline import inflight
from pipeline.config import PipelineConfig
from pipeline.errors import StorageError
from pipeline.provenance import version_changes
from pipeline.store import FeatureStore
from pipeline.store_lock import store_locks

log = logging.getLogger("emocache.extract")


class StoreView:
    """`extractors`: key -> {"family", "fingerprint", "metadata"}; `order`: the keys in dependency order."""

    def __init__(self, cfg: PipelineConfig, extractors: dict[str, dict], order: Optional[list[str]] = None,
                 storage_options: Optional[dict] = None):
        self.order = list(order or extractors)
        self.family = {k: d["family"] for k, d in extractors.items()}
        self.fp = {k: d["fingerprint"] for k, d in extractors.items()}
        self.meta = {k: d["metadata"] for k, d in extractors.items()}
        self.stores: dict[str, FeatureStore] = {}
        for fam in self.family.values():
            if fam not in self.stores:
                self.stores[fam] = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), fam, storage_options)

    def store_of(self, key: str) -> FeatureStore:
        return self.stores[self.family[key]]

    def present(self, key: str) -> set[str]:
        """Clip ids with committed rows for `key` under this run's fingerprint."""
        return self.store_of(key).has(key, self.fp[key])

    def locked(self, owner: str):
        """Hold the writer lock of every store of the view (plan, run and commit under it)."""
        return store_locks([st.root for st in self.stores.values()], owner)

    def prepare(self, gc: bool = True) -> None:
        """Record metadata, make these fingerprints current, drop segments a killed run left behind.
        Done while no writer of this run writes yet (under the lock for local stores)."""
        for k in self.family:
            st = self.store_of(k)
            if gc:
                n = st.gc_uncommitted(k, self.fp[k])
                if n:
                    log.info("%s: removed %d uncommitted segment(s) left by an interrupted run", k, n)
            meta = dict(self.meta[k])
            made_with = st.fingerprints(k).get(self.fp[k], {}).get("versions") if k in st.keys() else None
            if made_with:   # rows already cached under this fingerprint: keep the versions that made them
                changed = version_changes(made_with, meta["versions"])
                if changed:
                    log.warning("%s: cached rows were made with %s; new rows use the running versions", k,
                                ", ".join(f"{p} {a} (now {b})" for p, (a, b) in changed.items()))
                meta["versions"] = made_with
            st.set_current(k, self.fp[k], meta)

    # -- clips that killed a process (pipeline/inflight.py)
    def take_deaths(self, run_id: str) -> dict[str, dict]:
        """Journals of dead writers taken in every store; clip id -> its kill record (highest count)."""
        out: dict[str, dict] = {}
        for st in self.stores.values():
            for cid, k in inflight.take_deaths(st, run_id).items():
                if cid not in out or k["count"] > out[cid]["count"]:
                    out[cid] = k
        return out

    def forget_kills(self, clip_ids: set[str]) -> None:
        for st in self.stores.values():
            inflight.forget(st, clip_ids)

    # -- after the run
    def check_committed(self, committed: dict[str, set[str]]) -> None:
        """Every clip this run committed (key -> clip ids) is still there, under a store that still holds
        this run's extractor metadata; else the store was deleted or replaced mid-run: StoreGoneError."""
        counts: dict[str, list[int]] = {}       # store root -> [lost, committed]
        for key, ids in committed.items():
            if not ids:
                continue
            st = self.store_of(key)
            gone = st.current_fingerprint(key) != self.fp[key]
            c = counts.setdefault(st.root, [0, 0])
            c[0] += len(ids) if gone else len(ids - self.present(key))
            c[1] += len(ids)
        lost = {root: c for root, c in counts.items() if c[0]}
        if lost:
            raise StoreGoneError("; ".join(
                f"store {root} was deleted or replaced while this run wrote to it: {n} of the {total} clip "
                f"row sets this run committed are no longer there" for root, (n, total) in lost.items())
                + ". Rerun to extract what is missing (and keep the store in place while a run writes)")


class StoreGoneError(StorageError):
    """The store vanished (deleted, unmounted, replaced) under a running extraction."""
