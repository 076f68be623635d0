"""Clips in flight when a process is killed (SIGKILL, as the OOM killer does) are remembered, not lost.

A Worker writes a per-writer journal into each store it writes (`_inflight/<run>-<writer>`) before it
decodes a batch: the clips decoded, extracted or computed but not yet committed. It rewrites the journal
as clips commit or fail, and deletes it when its run ends by any Python path (an exception included:
those clips did not kill the process). A journal left behind therefore means its writer died with those
clips in flight. The next run, under the stores' writer lock (for object storage: once the journal is
older than `store.remote_gc_age_s`), takes the dead journals (`take_deaths`): each clip in one gets a
failure row (stage 'killed') and its kill count in `_kills` goes up by one. A clip killed once is retried
on its own (a batch of one, nothing decoded ahead), so a second death names exactly that clip; at
`media.max_kills_per_clip` deaths it is skipped with a 'killed' failure instead of dying again.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Optional

from pipeline.store import FeatureStore

log = logging.getLogger("emocache.extract")

JOURNALS = "_inflight"
KILLS = "_kills"
STAGE = "killed"


def advice(path: Optional[str]) -> str:
    return (f"the extraction process was killed (SIGKILL, e.g. out of memory) while {path or 'this clip'} "
            f"was in flight; lower media.max_clip_seconds or media.max_frames (or runtime.batch_clips) "
            f"for long media")


class Journal:
    """One writer's in-flight clips, as (clip id, extractor key) pairs, mirrored into its stores."""

    def __init__(self, stores: Iterable[FeatureStore], name: str):
        self.stores = list(stores)
        self.name = name
        self.clips: dict[str, dict] = {}           # clip id -> {dataset, path, extractors: set}
        self.written = False

    def add(self, recs: list) -> None:
        """Mark the records' missing extractors in flight and write the journal (before they are decoded)."""
        for rec in recs:
            c = self.clips.setdefault(rec.clip_id, {"dataset": rec.dataset, "path": rec.media, "extractors": set()})
            c["extractors"].update(rec.missing)
        self._write()

    def done(self, clip_id: str, key: str) -> None:
        """(clip, key) committed or failed: no longer in flight (written with the next add or clear)."""
        c = self.clips.get(clip_id)
        if c is not None:
            c["extractors"].discard(key)
            if not c["extractors"]:
                del self.clips[clip_id]

    def sync(self) -> None:
        """Write what is in flight now (after a commit), or delete the journal when nothing is."""
        if self.clips:
            self._write()
        else:
            self.clear()

    def _write(self) -> None:
        doc = {"updated": time.time(),
               "clips": [{"clip_id": cid, "dataset": c["dataset"], "path": c["path"],
                          "extractors": sorted(c["extractors"])} for cid, c in self.clips.items()]}
        for st in self.stores:
            with st._writing(f"in-flight journal {JOURNALS}/{self.name}"):   # e.g. a read-only store: named
                st.backend.put_doc(f"{JOURNALS}/{self.name}", doc)
        self.written = True

    def clear(self) -> None:
        self.clips.clear()
        if not self.written:
            return
        for st in self.stores:
            try:
                st.backend.delete(f"{JOURNALS}/{self.name}")
            except Exception as e:   # e.g. the store itself is gone: the run reports that on its own
                log.debug("store %s: could not remove journal %s: %s", st.root, self.name, e)
        self.written = False


def take_deaths(st: FeatureStore, run_id: str) -> dict[str, dict]:
    """Take the journals of dead writers in `st` (call under its writer lock): record their clips as
    failures (stage 'killed'), add one to each clip's kill count, delete the journals. Returns the kill
    counts of every clip killed so far: clip id -> {count, dataset, path, extractors}."""
    kills = (st.backend.get_doc(KILLS) or {}).get("clips", {})
    remote = "://" in st.root
    rows, taken = [], []
    for name in st.backend.children(JOURNALS):
        doc = st.backend.get_doc(f"{JOURNALS}/{name}") or {}
        if remote and time.time() - float(doc.get("updated", 0)) <= st.remote_gc_age_s:
            continue        # no lock on object storage: a recent journal may belong to a live writer
        taken.append(name)
        for c in doc.get("clips", []):
            k = kills.setdefault(c["clip_id"], {"count": 0, "dataset": c["dataset"], "path": c["path"],
                                                "extractors": []})
            k["count"] += 1
            k["extractors"] = sorted(set(k["extractors"]) | set(c["extractors"]))
            rows += [{"clip_id": c["clip_id"], "dataset": c["dataset"], "path": c["path"], "extractor": key,
                      "stage": STAGE, "error": f"{advice(c['path'])} (writer {name}; death {k['count']})"}
                     for key in c["extractors"]]
    if taken:
        with st._writing(f"kill counts {KILLS}"):
            st.backend.put_doc(KILLS, {"clips": kills})
        st.record_failures(f"{run_id}-killed", rows)
        with st._writing(f"dead writers' journals in {JOURNALS}"):
            for name in taken:
                st.backend.delete(f"{JOURNALS}/{name}")
        log.warning("store %s: %d clip(s) were in flight when an earlier run was killed: %s", st.root,
                    len({r["clip_id"] for r in rows}), ", ".join(sorted({r["clip_id"] for r in rows})[:5]))
    return kills


def forget(st: FeatureStore, clip_ids: set[str]) -> None:
    """Drop the kill counts of clips that are no longer to be extracted (they committed since)."""
    doc = st.backend.get_doc(KILLS)
    if not doc:
        return
    kills = doc.get("clips", {})
    keep = {c: k for c, k in kills.items() if c not in clip_ids}
    if len(keep) != len(kills):
        with st._writing(f"kill counts {KILLS}"):
            st.backend.put_doc(KILLS, {"clips": keep})
