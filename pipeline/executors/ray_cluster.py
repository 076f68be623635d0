"""The Ray executor: the local Worker, one per Ray actor, clips spread over a cluster.

The driver (this process) never loads a model. start()
  1. connects to Ray (runtime.ray_address / RAY_ADDRESS; none = a local cluster on this machine),
  2. starts `runtime.ray_workers` actors, each pinned to one node (plan_actors: spread over the live nodes,
     GPU nodes first, as many per node as its resources hold); each builds a Worker (extractors loaded
     once per actor, a distinct `writer` name so segment names never collide), reserving
     `ray_cpus_per_worker` CPUs and, on a node that has GPUs when runtime.device != cpu,
     `ray_gpus_per_worker` GPUs (a mixed cluster: GPU actors on the GPU nodes, CPU actors on the others; an
     actor given a GPU that torch cannot use says so and runs on the CPU); actors not all started within
     `ray_start_timeout_s` (e.g. more than the cluster can place, which Ray would wait on forever) fail the
     run, naming the resources asked and the cluster's,
  3. asks the actors for their fingerprints (all must agree: same weights on every node).
The orchestrator (pipeline/extract.py) then deletes segments an interrupted run left uncommitted and plans
what is missing, both before any actor writes. run()
  4. hands out chunks of at most `store.flush_clips` clips to whichever actor is free, so a killed
     actor (or a lost node) loses at most the uncommitted clips of the chunk it held,
  5. adds up the outcome of every chunk; the clips of a chunk whose actor died (and that did not
     commit) are failures with stage 'worker', written to the store's failure table too. The next run
     plans them again.

Ray is imported only here, only when runtime.executor is 'ray'.
"""
from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from typing import Optional

from pipeline.config import PipelineConfig
from pipeline.errors import UsageError
from pipeline.progress import progress
from pipeline.executors.base import Executor
from pipeline.store_view import StoreView
from pipeline.worker import ClipRecord, ExtractorStats, Outcome, Worker

log = logging.getLogger("emocache.extract")

ACTOR_PREFIX = "emocache-extract"          # named actors: `ray.util.list_named_actors()` finds them
LOST = "worker"                            # failure-table stage of clips whose actor died


class ExtractActor:
    """Body of one Ray actor: a Worker that lives as long as the run."""

    def __init__(self, cfg: PipelineConfig, specs: list[str], writer: str, run_id: str, resources: dict | None = None):
        if cfg.runtime.num_threads == 0:   # 0 = torch default = every core of the node: oversubscribed
            n = max(1, int(cfg.runtime.ray_cpus_per_worker))
            cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"num_threads": n})})
        self.resources = dict(resources or {})
        self.device, self.note = actor_device(cfg.runtime.device, self.resources.get("num_gpus", 0))
        if self.note:
            log.warning("ray %s: %s", writer, self.note)
        cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": self.device})})
        # A load error (e.g. MissingWeightsError) is kept and raised by describe(): Ray then hands the
        # driver the original exception instead of an opaque 'actor died in its creation task'.
        self.error: Exception | None = None
        try:
            self.worker = Worker(cfg, specs, writer=writer, run_id=run_id)
        except Exception as e:
            self.error = e

    def describe(self) -> dict:
        import ray

        if self.error is not None:
            raise self.error
        d = self.worker.describe()
        d["worker"].update(node=ray.get_runtime_context().get_node_id(), resources=self.resources,
                           device=self.device, gpu_ids=[str(g) for g in ray.get_gpu_ids()], note=self.note)
        return d

    def process(self, clips: list[ClipRecord]) -> Outcome:
        """Run one chunk (committed when this returns); report what this chunk added."""
        return self.worker.process(clips, show_progress=False)


class RayExecutor(Executor):
    def __init__(self, cfg: PipelineConfig, specs: list[str], run_id: str):
        super().__init__(cfg, specs, run_id)
        self.holder = f"ray driver run {run_id}"   # the driver holds the stores' locks for its actors
        self.actors: list = []
        self.started = False

    def start(self) -> dict:
        self.started = connect(self.cfg)
        self.actors, described = start_actors(self.cfg, self.specs, self.run_id)
        return {"order": described[0]["order"], "extractors": described[0]["extractors"],
                "workers": [d["worker"] for d in described]}

    def run(self, todo: list[ClipRecord], view: StoreView, show_progress: bool = True) -> Outcome:
        return dispatch(self.actors, todo, self.cfg, view, self.run_id, show_progress)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.started:
            ray.shutdown()
            self.started = False


def connect(cfg: PipelineConfig) -> bool:
    """Join the configured cluster (or start a local one). True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or cfg.runtime.ray_address
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    log.info("ray: %s, resources %s", address or "local cluster", ray.cluster_resources())
    return True


def actor_resources(cfg: PipelineConfig, node_resources: dict) -> dict:
    """What one actor asks on a node offering `node_resources`: GPUs only where that node has them (and
    runtime.device is not cpu), so a mixed cluster's CPU-only nodes still take actors."""
    rt = cfg.runtime
    gpu = node_resources.get("GPU", 0) > 0 and rt.device != "cpu"
    return {"num_cpus": rt.ray_cpus_per_worker, "num_gpus": rt.ray_gpus_per_worker if gpu else 0}


def plan_actors(cfg: PipelineConfig, nodes: list[dict]) -> list[tuple[Optional[str], dict]]:
    """(node id, resources) for each of runtime.ray_workers actors, from ray.nodes(): round-robin over the live
    nodes (GPU nodes first, then by id), each taking as many actors as its CPUs (and, for GPU actors, its GPUs)
    hold, so every node decodes and extracts. Actors beyond what the cluster holds get node None (not pinned:
    Ray keeps them pending rather than refusing them, and start_actors' timeout names what they ask)."""
    alive = sorted((n for n in nodes if n.get("Alive")),
                   key=lambda n: (n["Resources"].get("GPU", 0) <= 0, n["NodeID"]))
    if not alive:
        raise RayStartTimeout("the Ray cluster has no live node")
    if cfg.runtime.device == "cuda":   # CUDA required: CPU-only nodes take no actor (unless there is no GPU at all)
        alive = [n for n in alive if n["Resources"].get("GPU", 0) > 0] or alive
    asks = [actor_resources(cfg, n["Resources"]) for n in alive]

    def room(node: dict, ask: dict) -> float:
        fits = [node["Resources"].get(r, 0) / ask[k] for k, r in (("num_cpus", "CPU"), ("num_gpus", "GPU"))
                if ask[k] > 0]
        return math.floor(min(fits)) if fits else math.inf

    left = [room(n, a) for n, a in zip(alive, asks)]
    plan: list[tuple[str, dict]] = []
    n_actors = max(1, cfg.runtime.ray_workers)
    while len(plan) < n_actors:
        placed = False
        for i, node in enumerate(alive):
            if len(plan) < n_actors and left[i] >= 1:
                plan.append((node["NodeID"], asks[i]))
                left[i] -= 1
                placed = True
        if not placed:   # the cluster is full: the rest cannot start (reported by the start timeout)
            plan += [(None, asks[i % len(alive)]) for i in range(n_actors - len(plan))]
    return plan


def actor_device(device: str, gpus: float) -> tuple[str, str]:
    """(the device an actor runs its extractors on, a note when that differs from what it was given). An actor
    without a GPU is told `cpu` explicitly; one given a GPU that torch cannot see (a node advertising
    --num-gpus without CUDA) runs on the CPU under device: auto and says so (device: cuda fails in the Worker,
    naming the setting)."""
    if device == "cpu" or (gpus <= 0 and device == "auto"):
        return "cpu", ""
    import torch

    if torch.cuda.is_available() or device == "cuda":
        return "cuda", ""
    return "cpu", ("Ray gave this actor a GPU but torch sees no CUDA device on this node: extracting on the CPU "
                   "(install a CUDA build of torch there, or start the node without --num-gpus)")


def start_actors(cfg: PipelineConfig, specs: list[str], run_id: str) -> tuple[list, list[dict]]:
    """Start the actors and wait until each has loaded its extractors. Raises the load error as is."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    plan = plan_actors(cfg, ray.nodes())
    cls = ray.remote(ExtractActor)
    # each actor pinned to its planned node, asking that node's resources (hard affinity: no silent move)
    actors = [cls.options(name=f"{ACTOR_PREFIX}-{run_id}-{i}", max_restarts=0, **res,
                          scheduling_strategy=("SPREAD" if node is None
                                               else NodeAffinitySchedulingStrategy(node, soft=False)))
              .remote(cfg, specs, f"ray{i}", run_id, res) for i, (node, res) in enumerate(plan)]
    refs = [a.describe.remote() for a in actors]
    try:
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=cfg.runtime.ray_start_timeout_s)
        if waiting:
            raise RayStartTimeout(f"{len(waiting)} of {len(actors)} Ray worker(s) did not start within "
                                  f"runtime.ray_start_timeout_s = {cfg.runtime.ray_start_timeout_s:g} s: each asks "
                                  f"{' or '.join(sorted({_asked(r) for _, r in plan}))}; "
                                  f"the cluster has {_amounts(ray.cluster_resources())} "
                                  f"({_amounts(ray.available_resources())} free). Lower runtime.ray_workers or "
                                  f"ray_cpus_per_worker / ray_gpus_per_worker, or add nodes")
        described = ray.get(refs)
    except RayStartTimeout:
        for a in actors:
            ray.kill(a)
        raise
    except Exception as e:
        for a in actors:
            ray.kill(a)
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, BaseException) else e) from None
    fps = {tuple(sorted((k, d["fingerprint"]) for k, d in desc["extractors"].items())) for desc in described}
    if len(fps) > 1:
        for a in actors:
            ray.kill(a)
        hosts = {_where(d): {k: v["fingerprint"] for k, v in d["extractors"].items()} for d in described}
        raise RuntimeError(f"Ray workers disagree on extractor fingerprints (different weights or params per node?): "
                           f"{hosts}. Put the same weight files on every node.")
    log.info("ray: %d worker(s) %s", len(actors), ", ".join(_where(d) for d in described))
    return actors, described


class RayStartTimeout(UsageError):
    """The cluster cannot place (or start) the actors asked for within runtime.ray_start_timeout_s."""


def _asked(res: dict) -> str:
    return ", ".join(f"{k[4:-1].upper()} {v:g}" for k, v in res.items())      # num_cpus -> CPU


def _amounts(res: dict) -> str:
    shown = {k: v for k, v in res.items() if k in ("CPU", "GPU") or not k.startswith(("node:", "memory",
                                                                                     "object_store_memory"))}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "no resources"


def _where(described: dict) -> str:
    w = described["worker"]
    where = f"{w['writer']}@{w['host']}:{w['pid']}"
    if "device" not in w:
        return where
    gpu = f", GPU {','.join(w['gpu_ids'])}" if w.get("gpu_ids") else ""
    return f"{where} ({w['device']}{gpu}{' without CUDA' if w.get('note') else ''})"


def dispatch(actors: list, todo: list[ClipRecord], cfg: PipelineConfig, view: StoreView, run_id: str,
             show_progress: bool) -> Outcome:
    """Give each free actor the next chunk until all are done; actors that die are retired."""
    import ray

    size = max(1, min(cfg.store.flush_clips, math.ceil(len(todo) / max(1, len(actors)))))
    queue = [todo[i: i + size] for i in range(0, len(todo), size)]
    queue.reverse()  # pop() from the end = in order
    total = Outcome()
    lost: list[dict] = []
    dead: list[tuple[list[ClipRecord], str]] = []   # chunks whose actor died, and why
    running: dict = {}  # ObjectRef -> (actor, chunk)
    idle = list(actors)
    with progress(total=len(todo), desc="extract (ray)", unit="clip", enabled=show_progress) as bar:
        while queue or running:
            while idle and queue:
                a, chunk = idle.pop(), queue.pop()
                running[a.process.remote(chunk)] = (a, chunk)
            if not running:  # every actor died: the rest waits for the next run
                dead += [(chunk, "no live Ray worker left") for chunk in queue]
                break
            done, _ = ray.wait(list(running), num_returns=1)
            a, chunk = running.pop(done[0])
            try:
                total.add(ray.get(done[0]))
            except ray.exceptions.RayActorError as e:   # the actor's process or its whole node is gone
                log.error("Ray worker died while processing %d clip(s): %s", len(chunk), _first_line(e))
                dead.append((chunk, f"Ray worker died: {_first_line(e)}"))
            except Exception as e:  # the chunk raised outside the per-clip isolation (e.g. storage error)
                log.error("Ray worker failed on %d clip(s): %s", len(chunk), _first_line(e))
                dead.append((chunk, f"{type(e).__name__}: {_first_line(e)}"))
                idle.append(a)
            else:
                idle.append(a)
            bar.update(len(chunk))
    # Asked only now: a dead actor's process can outlive its node's raylet briefly and commit its chunk.
    for chunk, why in dead:
        lost += _lost_rows(view, chunk, total.stats, why)
    if lost:
        by_family: dict[str, list[dict]] = defaultdict(list)
        for row in lost:
            by_family[view.family[row["extractor"]]].append(row)
        for fam, rows in by_family.items():
            view.stores[fam].record_failures(f"{run_id}-driver", rows)
    total.failures += lost
    return total


def _lost_rows(view: StoreView, chunk: list[ClipRecord], stats: dict[str, ExtractorStats], why: str) -> list[dict]:
    """Clips of a chunk that did not commit become failures; the ones that did count as done."""
    present = {k: view.present(k) for k in {k for rec in chunk for k in rec.missing}}
    rows = []
    for rec in chunk:
        for k in rec.missing:
            s = stats.setdefault(k, ExtractorStats())
            if rec.clip_id in present[k]:
                s.done += 1
                continue
            s.failed += 1
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

