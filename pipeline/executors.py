"""The Ray executor: the local Worker, one per Ray actor, clips spread over a cluster.

The driver (this process) never loads a model. It
  1. connects to Ray (runtime.ray_address / RAY_ADDRESS; none = a local cluster on this machine),
  2. starts `runtime.ray_workers` actors; each builds a runner.Worker (extractors loaded once per
     actor, a distinct `writer` name so segment names never collide), reserving
     `ray_cpus_per_worker` CPUs and, when the cluster has GPUs and runtime.device != cpu,
     `ray_gpus_per_worker` GPUs,
  3. asks the actors for their fingerprints (all must agree: same weights on every node),
  4. deletes segments an interrupted run left uncommitted and plans what is missing
     (runner.plan) - both before any actor writes,
  5. hands out chunks of at most `store.flush_clips` clips to whichever actor is free, so a
     killed actor loses at most the uncommitted clips of the chunk it held,
  6. gathers stats and failures of every actor into one RunSummary; the clips of a chunk whose
     actor died (and that did not commit) are failures with stage 'worker', written to the
     store's failure table too. The next run plans them again.

Ray is imported only here, only when runtime.executor is 'ray'.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.progress import progress
from pipeline import media
from pipeline.runner import ClipRecord, ExtractorStats, RunSummary, Worker, plan
from pipeline.store import FeatureStore
from pipeline.store_lock import store_locks

log = logging.getLogger("emocache.extract")

ACTOR_PREFIX = "emocache-extract"          # named actors: `ray.util.list_named_actors()` finds them
LOST = "worker"                            # failure-table stage of clips whose actor died


class ExtractActor:
    """Body of one Ray actor: a runner.Worker that lives as long as the run."""

    def __init__(self, cfg: PipelineConfig, specs: list[str], writer: str, run_id: str):
        if cfg.runtime.num_threads == 0:   # 0 = torch default = every core of the node: oversubscribed
            n = max(1, int(cfg.runtime.ray_cpus_per_worker))
            cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"num_threads": n})})
        # A load error (e.g. MissingWeightsError) is kept and raised by describe(): Ray then hands the
        # driver the original exception instead of an opaque 'actor died in its creation task'.
        self.error: Exception | None = None
        try:
            self.worker = Worker(cfg, specs, writer=writer, run_id=run_id)
        except Exception as e:
            self.error = e

    def describe(self) -> dict:
        import socket

        if self.error is not None:
            raise self.error
        w = self.worker
        return {"order": w.order, "pid": os.getpid(), "host": socket.gethostname(),
                "extractors": {k: {"family": e.family, "fingerprint": w.fp[k], "metadata": e.metadata(),
                                   "pretrained": w.stats[k].pretrained} for k, e in w.extractors.items()}}

    def process(self, clips: list[ClipRecord]) -> dict:
        """Run one chunk (committed when this returns); report what this chunk added."""
        w = self.worker
        before = {k: (s.done, s.failed, s.empty, s.seconds) for k, s in w.stats.items()}
        n_fail, decodes = len(w.failures), dict(media.DECODE_COUNTER)
        w.run(clips, show_progress=False)
        stats = {k: {"done": s.done - before[k][0], "failed": s.failed - before[k][1],
                     "empty": s.empty - before[k][2], "seconds": s.seconds - before[k][3]}
                 for k, s in w.stats.items()}
        return {"stats": stats, "failures": w.failures[n_fail:],
                "decodes": {k: media.DECODE_COUNTER[k] - decodes.get(k, 0) for k in media.DECODE_COUNTER}}


class StorePlan:
    """The driver's view of the stores: what runner.plan() needs from a Worker, without models."""

    def __init__(self, cfg: PipelineConfig, described: dict):
        ex = described["extractors"]
        self.order = described["order"]
        self.fp = {k: d["fingerprint"] for k, d in ex.items()}
        self.meta = {k: d["metadata"] for k, d in ex.items()}
        self.family = {k: d["family"] for k, d in ex.items()}
        self.stores = {fam: FeatureStore.for_family(cfg.store, Path(cfg.base_dir), fam)
                       for fam in sorted(set(self.family.values()))}

    def prepare(self) -> None:
        """Same as Worker.prepare, done once by the driver while no actor writes."""
        for k in self.order:
            st = self.stores[self.family[k]]
            n = st.gc_uncommitted(k, self.fp[k])
            if n:
                log.info("%s: removed %d uncommitted segment(s) left by an interrupted run", k, n)
            st.set_current(k, self.fp[k], self.meta[k])

    def present(self, key: str) -> set[str]:
        return self.stores[self.family[key]].has(key, self.fp[key])


def connect(cfg: PipelineConfig) -> bool:
    """Join the configured cluster (or start a local one). True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or cfg.runtime.ray_address
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    log.info("ray: %s, resources %s", address or "local cluster", ray.cluster_resources())
    return True


def actor_resources(cfg: PipelineConfig) -> dict:
    import ray

    rt = cfg.runtime
    gpus = ray.cluster_resources().get("GPU", 0) if rt.device != "cpu" else 0
    return {"num_cpus": rt.ray_cpus_per_worker, "num_gpus": rt.ray_gpus_per_worker if gpus > 0 else 0}


def start_actors(cfg: PipelineConfig, specs: list[str], run_id: str) -> tuple[list, list[dict]]:
    """Start the actors and wait until each has loaded its extractors. Raises the load error as is."""
    import ray

    res = actor_resources(cfg)
    cls = ray.remote(ExtractActor)
    actors = [cls.options(name=f"{ACTOR_PREFIX}-{run_id}-{i}", max_restarts=0, **res)
              .remote(cfg, specs, f"ray{i}", run_id) for i in range(max(1, cfg.runtime.ray_workers))]
    try:
        described = ray.get([a.describe.remote() for a in actors])
    except Exception as e:
        for a in actors:
            ray.kill(a)
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, BaseException) else e) from None
    fps = {tuple(sorted((k, d["fingerprint"]) for k, d in desc["extractors"].items())) for desc in described}
    if len(fps) > 1:
        for a in actors:
            ray.kill(a)
        hosts = {f"{d['host']}:{d['pid']}": {k: v["fingerprint"] for k, v in d["extractors"].items()} for d in described}
        raise RuntimeError(f"Ray workers disagree on extractor fingerprints (different weights or params per node?): "
                           f"{hosts}. Put the same weight files on every node.")
    log.info("ray: %d worker(s) %s", len(actors), ", ".join(f"{d['host']}:{d['pid']}" for d in described))
    return actors, described


def run_ray(cfg: PipelineConfig, specs: list[str], records: list[ClipRecord], run_id: str, t0: float,
            show_progress: bool = True) -> RunSummary:
    import ray

    started = connect(cfg)
    actors: list = []
    try:
        actors, described = start_actors(cfg, specs, run_id)
        view = StorePlan(cfg, described[0])
        # the driver holds the stores' writer lock for its actors (local/NFS stores; see pipeline/store_lock.py)
        with store_locks([st.root for st in view.stores.values()], f"ray driver run {run_id}"):
            view.prepare()
            todo, skipped = plan(view, records)  # type: ignore[arg-type]  (duck-typed: order + present)
            pretrained = {k: d["pretrained"] for k, d in described[0]["extractors"].items()}
            stats = {k: ExtractorStats(skipped=skipped.get(k, 0), pretrained=pretrained[k]) for k in pretrained}
            log.info("extract %s on %d Ray worker(s): %d clip(s) to process, %s", ",".join(specs), len(actors),
                     len(todo), ", ".join(f"{k}: {n} cached" for k, n in skipped.items()))
            failures, decodes = dispatch(actors, todo, cfg, view, stats, run_id, show_progress)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    return RunSummary(run_id, stats, failures, decodes, time.perf_counter() - t0)


def dispatch(actors: list, todo: list[ClipRecord], cfg: PipelineConfig, view: StorePlan,
             stats: dict[str, ExtractorStats], run_id: str, show_progress: bool) -> tuple[list[dict], dict]:
    """Give each free actor the next chunk until all are done; actors that die are retired."""
    import ray

    size = max(1, min(cfg.store.flush_clips, math.ceil(len(todo) / max(1, len(actors)))))
    queue = [todo[i: i + size] for i in range(0, len(todo), size)]
    queue.reverse()  # pop() from the end = in order
    failures: list[dict] = []
    lost: list[dict] = []
    decodes = {k: 0 for k in media.DECODE_COUNTER}
    running: dict = {}  # ObjectRef -> (actor, chunk)
    idle = list(actors)
    with progress(total=len(todo), desc="extract (ray)", unit="clip", enabled=show_progress) as bar:
        while queue or running:
            while idle and queue:
                a, chunk = idle.pop(), queue.pop()
                running[a.process.remote(chunk)] = (a, chunk)
            if not running:  # every actor died: the rest waits for the next run
                for chunk in queue:
                    lost += _lost_rows(view, chunk, stats, "no live Ray worker left")
                break
            done, _ = ray.wait(list(running), num_returns=1)
            a, chunk = running.pop(done[0])
            try:
                out = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                log.error("Ray worker died while processing %d clip(s): %s", len(chunk), _first_line(e))
                lost += _lost_rows(view, chunk, stats, f"Ray worker died: {_first_line(e)}")
            except Exception as e:  # the chunk raised outside the per-clip isolation (e.g. storage error)
                log.error("Ray worker failed on %d clip(s): %s", len(chunk), _first_line(e))
                lost += _lost_rows(view, chunk, stats, f"{type(e).__name__}: {_first_line(e)}")
                idle.append(a)
            else:
                for k, d in out["stats"].items():
                    s = stats[k]
                    s.done, s.failed, s.empty = s.done + d["done"], s.failed + d["failed"], s.empty + d["empty"]
                    s.seconds += d["seconds"]
                failures += out["failures"]
                for k, n in out["decodes"].items():
                    decodes[k] = decodes.get(k, 0) + n
                idle.append(a)
            bar.update(len(chunk))
    if lost:
        by_family: dict[str, list[dict]] = defaultdict(list)
        for row in lost:
            by_family[view.family[row["extractor"]]].append(row)
        for fam, rows in by_family.items():
            view.stores[fam].record_failures(f"{run_id}-driver", rows)
    return failures + lost, decodes


def _lost_rows(view: StorePlan, chunk: list[ClipRecord], stats: dict[str, ExtractorStats], why: str) -> list[dict]:
    """Clips of a chunk that did not commit become failures; the ones that did count as done."""
    present = {k: view.present(k) for k in {k for rec in chunk for k in rec.missing}}
    rows = []
    for rec in chunk:
        for k in rec.missing:
            if rec.clip_id in present[k]:
                stats[k].done += 1
                continue
            stats[k].failed += 1
            rows.append({"clip_id": rec.clip_id, "dataset": rec.dataset, "path": rec.media,
                         "extractor": k, "stage": LOST, "error": why})
    return rows


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def named_actors() -> list[str]:
    """Names of this executor's live actors (tests and operators use it to find them)."""
    import ray

    return [n for n in ray.util.list_named_actors() if str(n).startswith(ACTOR_PREFIX)]

