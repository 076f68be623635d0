"""The Worker: loads extractors once, decodes each clip once, feeds every extractor that needs it, commits.

It decodes a batch of clips once (audio and/or frames, only what the missing extractors need), runs the
extractors in dependency order and commits segments of `store.flush_clips` clips. A clip that fails is
recorded in the failure table with the stage and reason, and the run goes on.
What to run is planned elsewhere (pipeline/extract.py); the local executor runs one Worker in this process,
the Ray executor one per actor (pipeline/executors/) - the same code either way.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.progress import progress
from pipeline import media
from pipeline.extractors.base import ClipFeatures, ClipInput, Extractor, build_extractor
from pipeline.inflight import Journal
from pipeline.interrupt import InterruptFlag, deferred_sigint
from pipeline.store import FeatureStore
from pipeline.store_view import StoreView

log = logging.getLogger("emocache.extract")


@dataclass
class ClipRecord:
    """What a worker needs to know of a clip (plain data: travels to Ray actors)."""

    clip_id: str
    dataset: str
    media: Optional[str]                     # absolute media path, None for text-only clips
    start: float
    end: Optional[float]
    text: dict
    annotation: dict
    missing: list[str] = field(default_factory=list)   # extractor keys to run
    dataset_specs: Optional[list[str]] = None           # extractors its dataset(s) ask for
    root: Optional[str] = None       # dataset root and what the listing saw of the file: checked again
    rel_path: Optional[str] = None   # right before decoding (a file swapped for a link out since is refused)
    size: Optional[int] = None
    sha256: Optional[str] = None
    kills: int = 0                   # earlier runs killed (SIGKILL) with this clip in flight: run it on its own


@dataclass
class ExtractorStats:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    empty: int = 0
    seconds: float = 0.0
    pretrained: Optional[bool] = None
    learned: bool = True


@dataclass
class Outcome:
    """What running some clips did: per-extractor counts, failure rows, decodes (plain data: travels back
    from Ray actors). Executors add up the outcomes of their chunks."""

    stats: dict[str, ExtractorStats] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    decodes: dict[str, int] = field(default_factory=dict)

    def add(self, other: "Outcome") -> None:
        for k, d in other.stats.items():
            s = self.stats.setdefault(k, ExtractorStats())
            s.done, s.failed, s.empty, s.seconds = s.done + d.done, s.failed + d.failed, s.empty + d.empty, \
                s.seconds + d.seconds
        self.failures += other.failures
        for k, n in other.decodes.items():
            self.decodes[k] = self.decodes.get(k, 0) + n


def order_by_dependencies(extractors: dict[str, Extractor]) -> list[str]:
    done: list[str] = []
    pending = list(extractors)
    while pending:
        progressed = False
        for k in list(pending):
            deps = [d for d in extractors[k].depends_on]
            if all(d in done or d not in extractors for d in deps):
                done.append(k)
                pending.remove(k)
                progressed = True
        if not progressed:
            raise ValueError(f"extractor dependency cycle among {pending}")
    return done



# ---------------------------------------------------------------- decoding ahead
def prefetch_batches(batches: list[list], decode: Callable, workers: int,
                     max_ahead_bytes: Optional[float] = None,
                     before: Optional[Callable[[list], None]] = None) -> Iterator[tuple[list, list]]:
    """Yield (batch, [decode(item) ...]) while the NEXT batch is already decoding in threads.

    ffmpeg runs as a subprocess, so threads overlap decoding with the extractors' model time.
    At most two batches are held decoded at once, and only one while the current batch holds more than
    `max_ahead_bytes` (media.decode_ahead_mb): then the next is decoded after the consumer is done with this
    one. The consumer should clear() the yielded list when done, so its arrays are freed before that.
    `before(batch)` is called right before a batch starts decoding (the in-flight journal is written then)."""
    from concurrent.futures import ThreadPoolExecutor

    def submit(batch: list) -> list:
        if before is not None:
            before(batch)
        return [pool.submit(decode, item) for item in batch]

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending = submit(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            decoded = [f.result() for f in pending]
            more = i + 1 < len(batches)
            ahead = more and (max_ahead_bytes is None or sum(map(_decoded_bytes, decoded)) <= max_ahead_bytes)
            pending = submit(batches[i + 1]) if ahead else []
            yield batch, decoded
            del decoded
            if more and not ahead:
                pending = submit(batches[i + 1])


def _decoded_bytes(dec) -> int:
    cin = dec[0] if isinstance(dec, tuple) else None
    return sum(a.nbytes for a in (getattr(cin, "audio", None), getattr(cin, "frames", None)) if a is not None)


# ---------------------------------------------------------------- the worker
class Worker:
    """Loads extractors once; processes lists of ClipRecords; commits to the family stores (its `view`)."""

    def __init__(self, cfg: PipelineConfig, specs: list[str], writer: str = "", run_id: str = "",
                 storage_options: Optional[dict] = None):
        from pipeline.threads import for_extraction

        for_extraction(cfg)
        self.cfg = cfg
        self.writer = writer or f"p{os.getpid()}"
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.extractors = {e.key: e for e in (build_extractor(cfg, s) for s in specs)}
        for e in self.extractors.values():
            e.load()
        self.order = order_by_dependencies(self.extractors)
        self.fp = {k: e.fingerprint() for k, e in self.extractors.items()}
        self._hashes = None   # the listing's hash cache, opened when a clip's media is checked
        self.view = StoreView(cfg, self.describe()["extractors"], self.order, storage_options)
        self.stores = self.view.stores
        self.stats = {k: ExtractorStats(pretrained=e.weights.pretrained if e.weights else None,
                                        learned=e.weights.learned if e.weights else True)
                      for k, e in self.extractors.items()}
        self.failures: list[dict] = []
        self.pending: dict[str, list[tuple[str, ClipFeatures]]] = defaultdict(list)
        self.interrupt = InterruptFlag()     # replaced by a live one while run() runs
        self.journal = Journal(self.stores.values(), f"{self.run_id}-{self.writer}")   # clips in flight

    def describe(self) -> dict:
        """What the orchestrator needs to plan, as plain data: the extractors in spec order with family,
        fingerprint, metadata and weights; their dependency order; who this worker is."""
        import socket

        ex = {k: {"family": e.family, "fingerprint": self.fp[k], "metadata": e.metadata(),
                  "pretrained": e.weights.pretrained if e.weights else None,
                  "learned": e.weights.learned if e.weights else True} for k, e in self.extractors.items()}
        return {"order": self.order, "extractors": ex,
                "worker": {"writer": self.writer, "host": socket.gethostname(), "pid": os.getpid()}}

    def store_of(self, key: str) -> FeatureStore:
        return self.view.store_of(key)

    def process(self, clips: list[ClipRecord], show_progress: bool = True) -> Outcome:
        """run() the clips (all committed when this returns) and report what they added."""
        before = {k: ExtractorStats(done=s.done, failed=s.failed, empty=s.empty, seconds=s.seconds)
                  for k, s in self.stats.items()}
        n_fail, decodes = len(self.failures), dict(media.DECODE_COUNTER)
        self.run(clips, show_progress=show_progress)
        stats = {k: ExtractorStats(done=s.done - before[k].done, failed=s.failed - before[k].failed,
                                   empty=s.empty - before[k].empty, seconds=s.seconds - before[k].seconds)
                 for k, s in self.stats.items()}
        return Outcome(stats, self.failures[n_fail:],
                       {k: media.DECODE_COUNTER[k] - decodes.get(k, 0) for k in media.DECODE_COUNTER})

    # -- processing
    def run(self, clips: list[ClipRecord], show_progress: bool = True) -> None:
        from pipeline.batching import chunks, plan_passes

        # Clips an earlier run died with in flight go first, one at a time, each committed before the next
        # starts: if one kills this run too, the journal names it alone (pipeline/inflight.py).
        suspects = [plan_passes([r], self.extractors, self.cfg.runtime) for r in clips if r.kills]
        passes = plan_passes([r for r in clips if not r.kills], self.extractors, self.cfg.runtime)
        try:
            with deferred_sigint() as self.interrupt, \
                    progress(total=sum(len(recs) for p in [passes, *suspects] for recs, _ in p), desc="extract",
                             unit="clip", enabled=show_progress) as bar:
                for recs, _ in (item for p in suspects for item in p):
                    self.journal.add(recs)
                    self._process(recs)
                    self.flush(force=True)
                    bar.update(len(recs))
                for recs, size in passes:
                    for chunk, decoded in prefetch_batches(chunks(recs, size), self._decode_guarded,
                                                           self.cfg.media.decode_workers,
                                                           self.cfg.media.decode_ahead_mb * (1 << 20),
                                                           before=self.journal.add):
                        self._process(chunk, decoded)
                        decoded.clear()   # free this batch's frames and audio before the next is decoded
                        bar.update(len(chunk))
                self.flush(force=True)
        finally:   # ended by Python (an error included): nothing in flight killed the process
            self.journal.clear()

    def _decode_guarded(self, rec: ClipRecord):
        needs = set().union(*(self.extractors[k].needs for k in rec.missing)) if rec.missing else set()
        try:
            return self._decode(rec, needs)
        except Exception as e:  # anything unforeseen while decoding: every extractor of this clip fails
            return e

    def _decode(self, rec: ClipRecord, needs: set[str]) -> tuple[ClipInput, dict[str, str], dict[str, Exception]]:
        """Decode only what is needed, once. Returns the input, per-input 'empty' reasons and
        per-input decode errors: a file whose audio is broken still gives its frames and text."""
        cin = ClipInput(clip_id=rec.clip_id, path=rec.media, start=rec.start, end=rec.end, text=rec.text,
                        annotation=rec.annotation, sample_rate=self.cfg.media.sample_rate)
        empty: dict[str, str] = {}
        errors: dict[str, Exception] = {}
        m = self.cfg.media
        info = None
        if rec.media and needs & {"audio", "frames"}:
            try:
                rec = self._as_listed(rec)
                info = self._probe_within_limits(rec)
            except (media.ClipTooLongError, media.MediaChangedError) as e:   # every stream fails; nothing decoded
                return cin, empty, {"audio": e, "frames": e}
        if "audio" in needs and rec.media:
            try:
                cin.audio = media.decode_audio(rec.media, m.sample_rate, rec.start, rec.end, m.ffmpeg_timeout_s,
                                               info=info, resampler=m.resampler, spill_seconds=m.spill_audio_seconds)
            except media.NoStreamError as e:
                empty["audio"] = str(e)
            except Exception as e:  # corrupt / unreadable media: the extractors needing audio fail
                errors["audio"] = e
        elif "audio" in needs:
            empty["audio"] = "text-only clip (no media)"
        if "frames" in needs and rec.media:
            try:
                cin.frames, cin.frame_times = media.decode_frames(rec.media, m.decode_fps, m.max_side, rec.start,
                                                                  rec.end, info=info, timeout=m.ffmpeg_timeout_s,
                                                                  max_frames=m.max_frames)
            except media.NoStreamError as e:
                empty["frames"] = str(e)
            except Exception as e:
                errors["frames"] = e
        elif "frames" in needs:
            empty["frames"] = "text-only clip (no media)"
        return cin, empty, errors

    def _as_listed(self, rec: ClipRecord) -> ClipRecord:
        """The record with its media path resolved again now (inside the root, same size and content as when
        listed): a file swapped for a symlink out of the root, or replaced, since listing is refused. The
        content check costs nothing for an untouched file: the hash cache remembers its digest by
        (path, size, mtime); a touched one is hashed again. (The clip table holds no mtime, which differs
        per checkout: the table must be a function of the data alone.)"""
        if rec.root is None or rec.rel_path is None:
            return rec                                   # e.g. `predict`, which resolves its one file itself
        from dataclasses import replace

        from pipeline.datasets.base import HASH_CACHE, DatasetError, HashCache, resolve_inside

        try:
            real = resolve_inside(Path(rec.root), rec.rel_path, rec.media or rec.rel_path)
            st = real.stat()
            if rec.size is not None and st.st_size != rec.size:
                raise DatasetError("size differs")
            if rec.sha256:
                if self._hashes is None:
                    self._hashes = HashCache(self.cfg.path(HASH_CACHE))
                if self._hashes.sha256(real) != rec.sha256:
                    raise DatasetError("content (sha256) differs")
        except (DatasetError, OSError) as e:
            raise media.MediaChangedError(f"{rec.media}: changed since listing: {e}; list the dataset again "
                                          f"(`emocache datasets list {rec.dataset}`)") from None
        return replace(rec, media=str(real))

    def _probe_within_limits(self, rec: ClipRecord) -> Optional[media.MediaInfo]:
        """The clip's media info (None if unreadable: the decoders then say why), refusing over-long clips."""
        try:
            info = media.probe(rec.media)
        except media.MediaError:
            return None
        media.check_length(info, rec.start, rec.end, self.cfg.media.max_clip_seconds)
        return info

    def _process(self, recs: list[ClipRecord], decoded: Optional[list] = None) -> None:
        inputs: dict[str, ClipInput] = {}
        empties: dict[str, dict[str, str]] = {}
        errors: dict[str, dict[str, Exception]] = {}
        decoded = decoded if decoded is not None else [self._decode_guarded(rec) for rec in recs]
        for rec, dec in zip(recs, decoded):
            if isinstance(dec, Exception):
                for k in rec.missing:
                    self._fail(rec, k, "decode", dec)
            else:
                inputs[rec.clip_id], empties[rec.clip_id], errors[rec.clip_id] = dec
        results: dict[tuple[str, str], ClipFeatures] = {}
        for key in self.order:
            ext = self.extractors[key]
            todo = []
            for rec in recs:
                if key not in rec.missing or rec.clip_id not in inputs:
                    continue
                err = next((errors[rec.clip_id][n] for n in ext.needs if n in errors[rec.clip_id]), None)
                if err is not None:
                    self._fail(rec, key, "decode", err)
                    continue
                reason = next((empties[rec.clip_id][n] for n in ext.needs if n in empties[rec.clip_id]), None)
                if reason:
                    results[(key, rec.clip_id)] = ClipFeatures({}, np.zeros((0, 2)), {"empty": reason})
                    self._commit(key, rec.clip_id, results[(key, rec.clip_id)])
                    continue
                cin = inputs[rec.clip_id]
                try:
                    cin.upstream = {d: self._upstream(d, rec.clip_id, results) for d in ext.depends_on}
                except Exception as e:
                    self._fail(rec, key, "upstream", e)
                    continue
                todo.append((rec, cin))
            if not todo:
                continue
            t0 = time.perf_counter()
            outs = self._extract(key, ext, todo)
            self.stats[key].seconds += time.perf_counter() - t0
            for (rec, _), out in zip(todo, outs):
                if out is not None:
                    results[(key, rec.clip_id)] = out
                    self._commit(key, rec.clip_id, out)

    def _extract(self, key: str, ext: Extractor, todo: list) -> list[Optional[ClipFeatures]]:
        try:
            outs = ext.extract_batch([cin for _, cin in todo])
            if len(outs) != len(todo):
                raise RuntimeError(f"{key} returned {len(outs)} outputs for {len(todo)} clips")
            return outs
        except Exception:
            if len(todo) == 1:
                self._fail(todo[0][0], key, "extract", _current_exception())
                return [None]
        # Isolate the bad clip(s): the rest of the batch still lands.
        return [self._extract(key, ext, [item])[0] for item in todo]

    def _upstream(self, dep: str, clip_id: str, results) -> ClipFeatures:
        if (dep, clip_id) in results:
            return results[(dep, clip_id)]
        st = self.store_of(dep) if dep in self.extractors else None
        if st is None:
            raise KeyError(f"needs {dep!r} rows but {dep!r} is not among the extractors of this run")
        rows = st.read(dep, [clip_id], fingerprint=self.fp[dep])[0]
        return ClipFeatures(rows.arrays, rows.times, rows.attrs)

    def _commit(self, key: str, clip_id: str, feats: ClipFeatures) -> None:
        self.interrupt.check()   # rows computed while a SIGINT was pending may be wrong: never commit them
        self.pending[key].append((clip_id, feats))
        s = self.stats[key]
        s.done += 1
        s.empty += int(feats.n_rows == 0)
        self.flush()

    def flush(self, force: bool = False) -> None:
        for key, items in self.pending.items():
            if items and (force or len(items) >= self.cfg.store.flush_clips):
                self.interrupt.check()
                self.store_of(key).write_segment(key, self.fp[key], items, writer=self.writer)
                self.pending[key] = []
                for cid, _ in items:
                    self.journal.done(cid, key)
                self.journal.sync()
        if force and self.failures:
            self.interrupt.check()
            by_family: dict[str, list[dict]] = defaultdict(list)
            for f in self.failures:
                by_family[self.extractors[f["extractor"]].family].append(f)
            for fam, rows in by_family.items():
                self.stores[fam].record_failures(f"{self.run_id}-{self.writer}", rows)

    def _fail(self, rec: ClipRecord, key: str, stage: str, err) -> None:
        self.interrupt.check()   # e.g. ffmpeg killed by the same Ctrl-C: not the clip's fault
        msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        self.stats[key].failed += 1
        self.journal.done(rec.clip_id, key)
        self.failures.append({"clip_id": rec.clip_id, "dataset": rec.dataset, "path": rec.media,
                              "extractor": key, "stage": stage, "error": msg})
        log.warning("clip %s (%s) failed in %s/%s: %s", rec.clip_id, rec.media or "text", key, stage, msg)


def _current_exception() -> str:
    import sys

    e = sys.exc_info()[1]
    tb = traceback.extract_tb(e.__traceback__)[-1] if e and e.__traceback__ else None
    where = f" (at {Path(tb.filename).name}:{tb.lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"
