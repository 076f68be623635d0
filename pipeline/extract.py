"""Extraction, orchestrated: list the clips, plan what is missing, pick the executor, summarise.

plan():    for each requested extractor, which clips lack rows under its current fingerprint (asked of
           one StoreView, whatever the executor). A clip for which nothing is missing is not decoded at all.
extract(): the entry point. The executor (runtime.executor: local = one Worker here, ray = one Worker per
           Ray actor; pipeline/executors/) loads the extractors and reports their fingerprints; under the
           stores' writer lock the orchestrator then drops what a killed run left uncommitted, plans, and
           hands the executor the clips to run.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pipeline.config import PipelineConfig
from pipeline import media
from pipeline.executors.base import Executor
from pipeline.extractors.base import build_extractor, weights_label
from pipeline.store import FeatureStore
from pipeline.store_view import StoreView
from pipeline import inflight
from pipeline.worker import ClipRecord, ExtractorStats, Outcome

log = logging.getLogger("emocache.extract")


@dataclass
class RunSummary:
    run_id: str
    stats: dict[str, ExtractorStats]
    failures: list[dict]
    decodes: dict[str, int]
    seconds: float
    workers: list[dict] = field(default_factory=list)   # who ran: writer, host, pid (and Ray node id)

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


# ---------------------------------------------------------------- what to extract
def extractor_specs(cfg: PipelineConfig, datasets: Iterable[str], family: Optional[str]) -> list[str]:
    specs: list[str] = []
    for name in datasets:
        for spec in cfg.dataset(name).extractors:
            if spec not in specs:
                specs.append(spec)
    if family:
        specs = [s for s in specs if build_extractor(cfg, s).family == family]
    return specs


def load_clip_records(cfg: PipelineConfig, dataset: str) -> list[ClipRecord]:
    from pipeline.datasets import list_dataset, read_clip_table, write_listing

    try:
        df, _ = read_clip_table(cfg, dataset)
    except FileNotFoundError:
        write_listing(cfg, list_dataset(cfg, dataset))
        df, _ = read_clip_table(cfg, dataset)
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


# ---------------------------------------------------------------- planning
def plan(view: StoreView, records: list[ClipRecord]) -> tuple[list[ClipRecord], dict[str, int]]:
    """Unique clips (by id) with their missing extractors; and per-extractor counts already cached."""
    wanted: dict[str, ClipRecord] = {}
    for rec in records:
        wanted.setdefault(rec.clip_id, rec)
    skipped = {}
    for key in view.order:
        have = view.present(key)
        skipped[key] = 0
        for rec in wanted.values():
            if rec.dataset_specs is not None and key not in rec.dataset_specs:
                continue
            if rec.clip_id in have:
                skipped[key] += 1
            else:
                rec.missing.append(key)
    return [r for r in wanted.values() if r.missing], skipped


def skip_killers(view: StoreView, todo: list[ClipRecord], kills: dict[str, dict], max_kills: int,
                 run_id: str) -> tuple[list[ClipRecord], Outcome]:
    """Clips that were in flight at `max_kills` process deaths are not run again: failures (stage
    'killed'), also in the failure table. Those killed fewer times run on their own (ClipRecord.kills).
    Kill counts of clips no longer to be extracted are dropped."""
    view.forget_kills(set(kills) - {r.clip_id for r in todo})
    keep, out = [], Outcome()
    for rec in todo:
        n = kills.get(rec.clip_id, {}).get("count", 0)
        if n < max(1, max_kills):
            rec.kills = n
            keep.append(rec)
            continue
        for k in rec.missing:
            out.stats.setdefault(k, ExtractorStats()).failed += 1
            out.failures.append({"clip_id": rec.clip_id, "dataset": rec.dataset, "path": rec.media, "extractor": k,
                                 "stage": inflight.STAGE,
                                 "error": f"skipped: {inflight.advice(rec.media)} {n} times (media.max_kills_per_clip "
                                          f"= {max_kills}); raise it to try again"})
    if out.failures:
        log.warning("skipping %d clip(s) that killed %d earlier runs each: %s", len(todo) - len(keep), max_kills,
                    ", ".join(r.clip_id for r in todo if r not in keep))
        by_family: dict[str, list[dict]] = {}
        for row in out.failures:
            by_family.setdefault(view.family[row["extractor"]], []).append(row)
        for fam, rows in by_family.items():
            view.stores[fam].record_failures(f"{run_id}-skipped", rows)
    return keep, out


def committed_by(todo: list[ClipRecord], failures: list[dict]) -> dict[str, set[str]]:
    """key -> clip ids this run must have committed: every planned (clip, key) that did not fail."""
    failed = {(f["clip_id"], f["extractor"]) for f in failures}
    out: dict[str, set[str]] = {}
    for rec in todo:
        for k in rec.missing:
            if (rec.clip_id, k) not in failed:
                out.setdefault(k, set()).add(rec.clip_id)
    return out


def executor_for(cfg: PipelineConfig, specs: list[str], run_id: str) -> Executor:
    """runtime.executor's executor (Ray is imported only when it is 'ray')."""
    if cfg.runtime.executor == "ray":
        from pipeline.executors.ray_cluster import RayExecutor

        return RayExecutor(cfg, specs, run_id)
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor(cfg, specs, run_id)


# ---------------------------------------------------------------- entry point
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
    with executor_for(cfg, specs, run_id) as executor:
        described = executor.start()
        view = StoreView(cfg, described["extractors"], described["order"])
        with view.locked(executor.holder):   # another run on these stores finishes first; we plan against it
            view.prepare()
            kills = view.take_deaths(run_id)
            todo, skipped = plan(view, list(merged.values()))
            todo, killed = skip_killers(view, todo, kills, cfg.media.max_kills_per_clip, run_id)
            workers = described["workers"]
            log.info("extract %s%s: %d clip(s) to process, %s", ",".join(specs),
                     f" on {len(workers)} Ray worker(s)" if cfg.runtime.executor == "ray" else "", len(todo),
                     ", ".join(f"{k}: {n} cached" for k, n in skipped.items()))
            outcome = executor.run(todo, view, show_progress=show_progress)
            outcome.add(killed)
            view.check_committed(committed_by(todo, outcome.failures))
            view.forget_kills(set(kills) & ({r.clip_id for r in todo} - {f["clip_id"] for f in outcome.failures}))
    stats = {}
    for k, d in described["extractors"].items():
        ran = outcome.stats.get(k, ExtractorStats())
        stats[k] = ExtractorStats(done=ran.done, skipped=skipped.get(k, 0), failed=ran.failed, empty=ran.empty,
                                  seconds=ran.seconds, pretrained=d["pretrained"], learned=d["learned"])
    decodes = {k: outcome.decodes.get(k, 0) for k in media.DECODE_COUNTER}
    return RunSummary(run_id, stats, outcome.failures, decodes, time.perf_counter() - t0, workers)
