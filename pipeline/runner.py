"""Extraction: plan what is missing, decode each clip once, feed every extractor that needs it, commit.

plan():    for each requested extractor, which clips lack rows under its current fingerprint.
           A clip for which nothing is missing is not decoded at all.
Worker:    loads extractors once, decodes a batch of clips once (audio and/or frames, only
           what the missing extractors need), runs extractors in dependency order, and
           commits segments of `store.flush_clips` clips. A clip that fails is recorded in
           the failure table with the stage and reason, and the run goes on.
The local executor runs one Worker in this process; the Ray executor runs one per actor
(pipeline/executors.py) — the same code either way.
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
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.progress import progress
from pipeline import media
from pipeline.extractors.base import ClipFeatures, ClipInput, Extractor, build_extractor, weights_label
from pipeline.interrupt import InterruptFlag, deferred_sigint
from pipeline.provenance import version_changes
from pipeline.store import FeatureStore
from pipeline.store_lock import store_locks

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
class RunSummary:
    run_id: str
    stats: dict[str, ExtractorStats]
    failures: list[dict]
    decodes: dict[str, int]
    seconds: float

    def lines(self) -> list[str]:
        out = []
        for key, s in self.stats.items():
            rate = f"{s.done / s.seconds:.2f} clips/s" if s.seconds > 0 and s.done else "-"
            pre = "" if s.pretrained is None else "  " + weights_label(s.pretrained, s.learned)
            out.append(f"{key:<18} done {s.done:>5}  cached {s.skipped:>5}  failed {s.failed:>4}  "
                       f"empty {s.empty:>4}  {s.seconds:7.1f} s  {rate}{pre}")
        out.append(f"decodes: audio {self.decodes.get('audio', 0)}, frames {self.decodes.get('frames', 0)}; "
                   f"total {self.seconds:.1f} s; failures {len(self.failures)}")
        return out

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "seconds": round(self.seconds, 3), "decodes": self.decodes,
                "extractors": {k: vars(v) for k, v in self.stats.items()}, "n_failures": len(self.failures)}


# ---------------------------------------------------------------- planning
def extractor_specs(cfg: PipelineConfig, datasets: Iterable[str], family: Optional[str]) -> list[str]:
    specs: list[str] = []
    for name in datasets:
        for spec in cfg.dataset(name).extractors:
            if spec not in specs:
                specs.append(spec)
    if family:
        specs = [s for s in specs if build_extractor(cfg, s).family == family]
    return specs


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


def load_clip_records(cfg: PipelineConfig, dataset: str) -> list[ClipRecord]:
    from pipeline.datasets import list_dataset, read_clip_table, write_listing

    try:
        df, _ = read_clip_table(cfg, dataset)
    except FileNotFoundError:
        write_listing(cfg, list_dataset(cfg, dataset))
        df, _ = read_clip_table(cfg, dataset)
    import json

    root = cfg.path(cfg.dataset(dataset).root)
    text_cols = [c for c in df.columns if c.startswith("text_")]
    out = []
    for row in df.itertuples(index=False):
        r = row._asdict()
        out.append(ClipRecord(clip_id=r["clip_id"], dataset=dataset,
                              media=str(root / r["path"]) if r["path"] else None,
                              start=float(r["start"]), end=_end_or_none(r["end"]),
                              text={c[5:]: (r[c] or None) for c in text_cols},
                              annotation=json.loads(r["annotation"]) if r.get("annotation") else {},
                              root=str(root), rel_path=r["path"] or None,
                              size=int(r["media_size"]) if r.get("media_size") else None,
                              sha256=r.get("media_sha256") or None))
    return out


def _end_or_none(v) -> Optional[float]:
    """Segment end in seconds; None (to the end of the file) for '', None or NaN."""
    if v is None or v == "":
        return None
    v = float(v)
    return None if v != v else v  # NaN: pandas' spelling of a missing value


# ---------------------------------------------------------------- decoding ahead
def prefetch_batches(batches: list[list], decode: Callable, workers: int,
                     max_ahead_bytes: Optional[float] = None) -> Iterator[tuple[list, list]]:
    """Yield (batch, [decode(item) ...]) while the NEXT batch is already decoding in threads.

    ffmpeg runs as a subprocess, so threads overlap decoding with the extractors' model time.
    At most two batches are held decoded at once, and only one while the current batch holds more than
    `max_ahead_bytes` (media.decode_ahead_mb): then the next is decoded after the consumer is done with this
    one. The consumer should clear() the yielded list when done, so its arrays are freed before that."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending = [pool.submit(decode, item) for item in batches[0]] if batches else []
        for i, batch in enumerate(batches):
            decoded = [f.result() for f in pending]
            more = i + 1 < len(batches)
            ahead = more and (max_ahead_bytes is None or sum(map(_decoded_bytes, decoded)) <= max_ahead_bytes)
            pending = [pool.submit(decode, item) for item in batches[i + 1]] if ahead else []
            yield batch, decoded
            del decoded
            if more and not ahead:
                pending = [pool.submit(decode, item) for item in batches[i + 1]]


def _decoded_bytes(dec) -> int:
    cin = dec[0] if isinstance(dec, tuple) else None
    return sum(a.nbytes for a in (getattr(cin, "audio", None), getattr(cin, "frames", None)) if a is not None)


# ---------------------------------------------------------------- the worker
class Worker:
    """Loads extractors once; processes lists of ClipRecords; commits to the family stores."""

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
        self.stores: dict[str, FeatureStore] = {}
        for k, e in self.extractors.items():
            if e.family not in self.stores:
                self.stores[e.family] = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), e.family,
                                                                storage_options)
        self.stats = {k: ExtractorStats(pretrained=e.weights.pretrained if e.weights else None,
                                        learned=e.weights.learned if e.weights else True)
                      for k, e in self.extractors.items()}
        self.failures: list[dict] = []
        self.pending: dict[str, list[tuple[str, ClipFeatures]]] = defaultdict(list)
        self.interrupt = InterruptFlag()     # replaced by a live one while run() runs

    def store_of(self, key: str) -> FeatureStore:
        return self.stores[self.extractors[key].family]

    def locked(self):
        """Hold the writer lock of every store this worker writes (plan, run and commit under it)."""
        return store_locks([st.root for st in self.stores.values()], f"{self.writer} run {self.run_id}")

    def prepare(self, gc: bool = True) -> None:
        """Record metadata, make these fingerprints current, drop segments a killed run left behind."""
        for k, e in self.extractors.items():
            st = self.store_of(k)
            if gc:
                n = st.gc_uncommitted(k, self.fp[k])
                if n:
                    log.info("%s: removed %d uncommitted segment(s) left by an interrupted run", k, n)
            meta = e.metadata()
            made_with = st.fingerprints(k).get(self.fp[k], {}).get("versions") if k in st.keys() else None
            if made_with:   # rows already cached under this fingerprint: keep the versions that made them
                changed = version_changes(made_with, meta["versions"])
                if changed:
                    log.warning("%s: cached rows were made with %s; new rows use the running versions", k,
                                ", ".join(f"{p} {a} (now {b})" for p, (a, b) in changed.items()))
                meta["versions"] = made_with
            st.set_current(k, self.fp[k], meta)

    def present(self, key: str) -> set[str]:
        return self.store_of(key).has(key, self.fp[key])

    # -- processing
    def run(self, clips: list[ClipRecord], show_progress: bool = True) -> None:
        from pipeline.batching import chunks, plan_passes

        passes = plan_passes(clips, self.extractors, self.cfg.runtime)
        with deferred_sigint() as self.interrupt, \
                progress(total=sum(len(recs) for recs, _ in passes), desc="extract", unit="clip",
                         enabled=show_progress) as bar:
            for recs, size in passes:
                for chunk, decoded in prefetch_batches(chunks(recs, size), self._decode_guarded,
                                                       self.cfg.media.decode_workers,
                                                       self.cfg.media.decode_ahead_mb * (1 << 20)):
                    self._process(chunk, decoded)
                    decoded.clear()   # free this batch's frames and audio before the next is decoded
                    bar.update(len(chunk))
            self.flush(force=True)

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
                                               info=info, resampler=m.resampler)
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
        self.failures.append({"clip_id": rec.clip_id, "dataset": rec.dataset, "path": rec.media,
                              "extractor": key, "stage": stage, "error": msg})
        log.warning("clip %s (%s) failed in %s/%s: %s", rec.clip_id, rec.media or "text", key, stage, msg)


def _current_exception() -> str:
    import sys

    e = sys.exc_info()[1]
    tb = traceback.extract_tb(e.__traceback__)[-1] if e and e.__traceback__ else None
    where = f" (at {Path(tb.filename).name}:{tb.lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


# ---------------------------------------------------------------- entry point
def plan(worker: Worker, records: list[ClipRecord]) -> tuple[list[ClipRecord], dict[str, int]]:
    """Unique clips (by id) with their missing extractors; and per-extractor counts already cached."""
    wanted: dict[str, ClipRecord] = {}
    for rec in records:
        wanted.setdefault(rec.clip_id, rec)
    skipped = {}
    for key in worker.order:
        have = worker.present(key)
        skipped[key] = 0
        for rec in wanted.values():
            if rec.dataset_specs is not None and key not in rec.dataset_specs:
                continue
            if rec.clip_id in have:
                skipped[key] += 1
            else:
                rec.missing.append(key)
    return [r for r in wanted.values() if r.missing], skipped


def extract(cfg: PipelineConfig, datasets: Optional[list[str]] = None, family: Optional[str] = None,
            show_progress: bool = True) -> RunSummary:
    t0 = time.perf_counter()
    datasets = list(datasets or cfg.datasets)
    specs = extractor_specs(cfg, datasets, family)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if family:  # the family's store always exists after its stage ran (DVC tracks it as an output)
        FeatureStore.for_family(cfg.store, Path(cfg.base_dir), family)
    if not specs:
        return RunSummary(run_id, {}, [], {k: 0 for k in media.DECODE_COUNTER}, time.perf_counter() - t0)
    records: list[ClipRecord] = []
    for d in datasets:
        dspecs = [s for s in cfg.dataset(d).extractors]
        for rec in load_clip_records(cfg, d):
            rec.dataset_specs = dspecs
            records.append(rec)
    # A clip listed by two datasets runs the union of their extractors, once.
    merged: dict[str, ClipRecord] = {}
    for rec in records:
        if rec.clip_id in merged:
            merged[rec.clip_id].dataset_specs = sorted(set(merged[rec.clip_id].dataset_specs) | set(rec.dataset_specs))
        else:
            merged[rec.clip_id] = rec
    decodes_before = dict(media.DECODE_COUNTER)
    if cfg.runtime.executor == "ray":
        from pipeline.executors import run_ray

        return run_ray(cfg, specs, list(merged.values()), run_id, t0, show_progress=show_progress)
    worker = Worker(cfg, specs, run_id=run_id)
    with worker.locked():   # another run on these stores finishes first; then we plan against what it committed
        worker.prepare()
        todo, skipped = plan(worker, list(merged.values()))
        for k, n in skipped.items():
            worker.stats[k].skipped = n
        log.info("extract %s: %d clip(s) to process, %s", ",".join(specs), len(todo),
                 ", ".join(f"{k}: {n} cached" for k, n in skipped.items()))
        worker.run(todo, show_progress=show_progress)
    decodes = {k: media.DECODE_COUNTER[k] - decodes_before.get(k, 0) for k in media.DECODE_COUNTER}
    return RunSummary(run_id, worker.stats, worker.failures, decodes, time.perf_counter() - t0)
