"""Scale-out throughput: the local executor vs the Ray executor with 1 and 2 workers.

For each configuration the fixed cost of a run is timed apart from the clips:
  start:   Executor.start(): local: Worker() loads the extractors; ray: actors start and load theirs
           (in parallel)
  process: Executor.run(todo): local: one Worker; ray: chunks to free actors, commits, stats gathered -
           i.e. everything the clips cost once the models are loaded.
Each point is the fastest of --repeats runs into a fresh store (other work on a shared machine
can only slow a run down). Printed: start seconds, ms/clip, clips/s, the speed-up of 2 over 1 Ray
worker, and the per-clip overhead Ray adds over the local executor (1 worker, 1 thread each).

    .venv/bin/python benchmarks/ray_throughput.py --clips 40 --cpus 2

On a 2-core machine expect a speed-up below 2x: the driver, ffmpeg and Ray's own processes
share the two cores with the two actors.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = next((p for p in [REPO.parent / "shared" / "data", Path("/work/shared/data")] if p.exists()), None)


def config(tmp: Path, media: Path, store: str, executor: str, workers: int, extractors: list[str], flush: int):
    from emocache.config import Config

    return Config.model_validate({
        "base_dir": str(REPO), "store": {"dir": str(tmp / store), "flush_clips": flush},
        "weights": {"dir": str(tmp / "weights"), "allow_untrained": ["vggish"]},
        "runtime": {"device": "cpu", "num_threads": 1, "batch_clips": flush, "executor": executor,
                    "ray_workers": workers},
        "datasets": {"rav": {"adapter": "ravdess", "root": str(media),
                             "split": {"method": "group", "val": 0, "test": 0.5}, "extractors": extractors}}})


def records(cfg):
    from pipeline.extract import load_clip_records

    recs = load_clip_records(cfg, "rav")
    for r in recs:
        r.dataset_specs = list(cfg.dataset("rav").extractors)
    return recs


def run_executor(cfg) -> tuple[float, float, int]:
    """(start seconds, process seconds, clips planned) of one extraction with cfg's executor."""
    from pipeline.extract import executor_for, plan
    from pipeline.store_view import StoreView

    specs, recs = list(cfg.dataset("rav").extractors), records(cfg)
    t0 = time.perf_counter()
    with executor_for(cfg, specs, uuid.uuid4().hex[:8]) as ex:
        described = ex.start()
        view = StoreView(cfg, described["extractors"], described["order"])
        view.prepare()
        todo, _ = plan(view, recs)
        t1 = time.perf_counter()
        outcome = ex.run(todo, view, show_progress=False)
        t2 = time.perf_counter()
    assert not outcome.failures, outcome.failures[:2]
    return t1 - t0, t2 - t1, len(todo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--extractors", nargs="+", default=["egemaps", "vggish"])
    ap.add_argument("--flush-clips", type=int, default=4, help="clips per segment = per Ray chunk = per batch")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration; the fastest counts")
    args = ap.parse_args()
    if SHARED is None:
        sys.exit("shared test data not found (../shared/data)")
    import ray

    wavs = sorted((SHARED / "ravdess_subset").rglob("*.wav"))[: args.clips]
    runs = [("local", "local", 1), ("ray, 1 worker", "ray", 1), ("ray, 2 workers", "ray", 2)]
    with tempfile.TemporaryDirectory(prefix="emocache-scale-") as d:
        tmp = Path(d)
        (tmp / "media").mkdir()
        for f in wavs:
            shutil.copy(f, tmp / "media" / f.name)
        print(f"{len(wavs)} RAVDESS clips, extractors {', '.join(args.extractors)}, flush/chunk/batch "
              f"{args.flush_clips}; load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
        print(f"ray.init (local cluster, {args.cpus} CPUs): {time.perf_counter() - t:.1f} s")
        per_clip = {}
        for label, executor, workers in runs:
            best = None
            for r in range(args.repeats):
                cfg = config(tmp, tmp / "media", f"{executor}{workers}-{r}", executor, workers, args.extractors,
                             args.flush_clips)
                start, proc, n = run_executor(cfg)
                assert n == len(wavs), f"expected {len(wavs)} clips to process, planned {n}"
                best = (start, proc) if best is None or proc < best[1] else best
            per_clip[label] = best[1] / len(wavs)
            print(f"{label:<15} start {best[0]:5.1f} s   process {best[1]:6.2f} s   "
                  f"{per_clip[label] * 1000:6.1f} ms/clip   {1 / per_clip[label]:6.2f} clips/s")
        ray.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    one, two, local = per_clip["ray, 1 worker"], per_clip["ray, 2 workers"], per_clip["local"]
    print(f"speed-up 2 vs 1 Ray worker: {one / two:.2f}x on {args.cpus} CPUs")
    print(f"Ray overhead per clip vs local executor (1 worker each): {(one - local) * 1000:+.1f} ms "
          f"({(one / local - 1) * 100:+.0f}%)")


if __name__ == "__main__":
    main()
