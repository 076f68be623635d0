"""Scale curve of the feature store: 1k / 10k / 100k clips (generated stores, several extractors).

For each size N, in a fresh temp directory:
  write       generate the stores the way `extract` writes them: FeatureStore.for_family + set_current, then
              segments of store.flush_clips clips, for three extractors in two family stores (audio: a
              frame-level and a functional key; video: a frame-level key)
  first open  a new process-level store opening every key (no consolidated index yet: one doc read per
              segment, and the index gets written)
  open        the same after the first open (the consolidated index: one listing + one blob per key, and by
              default, store.trust_index: false, one listing pass comparing every segment's file signature)
  plan        which of N + 10% listed clips are missing, for every key (what `extract` plans), after the first open
  full read   Cache.read of every clip of every key, padded (what training loads)
  minibatch   50 random 16-clip minibatches of the frame-level audio key (a streaming loader)
  compact     `emocache store compact` of every key (store.compact_clips clips per merged segment), then open,
              plan and minibatch again on the compacted stores (segments per key before -> after)
  dvc status  `dvc status` in a temp DVC repo whose dvc.yaml is the project's own dvc.yaml (whatever it is now),
              params.yaml the project's with one generated dataset and experiment, outputs and the generated
              stores in place and committed (`dvc commit`) once before the timing

    .venv/bin/python benchmarks/scale.py [--sizes 1000 10000 100000] [--flush 16] [--no-dvc] [--no-compact]

Times are the best of --repeats (a shared machine can only slow a run down); write and dvc commit are timed once.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emocache.config import StoreConfig  # noqa: E402
from pipeline.catalog import open_catalog  # noqa: E402
from pipeline.extractors.base import ClipFeatures  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from pipeline.store_compact import compact_cache  # noqa: E402

# key -> (family, rows per clip lo..hi, row dim): small rows, so the curve measures metadata, not bandwidth
KEYS = {"vggish": ("audio", (5, 15), 128), "egemaps": ("audio", (1, 1), 88), "swin": ("video", (4, 8), 64)}
BATCH, N_BATCHES, NEW_FRACTION = 16, 50, 0.1


def best(fn, repeats: int) -> float:
    t = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def write_stores(root: Path, n: int, cfg: StoreConfig) -> list[str]:
    rng = np.random.default_rng(0)
    ids = [f"clip{i:07d}" for i in range(n)]
    for key, (fam, (lo, hi), dim) in KEYS.items():
        st = FeatureStore.for_family(cfg, root, fam)
        st.set_current(key, f"fp_{key}", {"extractor": key, "pretrained": True, "bench": True})
        for s in range(0, n, cfg.flush_clips):
            batch = []
            for cid in ids[s: s + cfg.flush_clips]:
                t = int(rng.integers(lo, hi + 1))
                times = np.stack([np.arange(t) * 0.96, np.arange(t) * 0.96 + 0.96], 1)
                batch.append((cid, ClipFeatures({"features": rng.standard_normal((t, dim), dtype=np.float32)}, times)))
            st.write_segment(key, f"fp_{key}", batch)
    return ids


def open_all(cfg: StoreConfig, root: Path):
    cache = open_catalog(cfg, root)
    for key in KEYS:
        cache[key].index(key)
    return cache


def plan(cfg: StoreConfig, root: Path, listed: list[str]) -> int:
    cache = open_catalog(cfg, root)
    missing = 0
    for key in KEYS:
        have = cache[key].has(key, f"fp_{key}")
        missing += sum(c not in have for c in listed)
    return missing


def dvc_repo(tmp: Path, store_root: Path, ids: list[str]) -> Path:
    """A DVC repo with the project's dvc.yaml, a params.yaml naming one generated dataset + experiment, every
    stage's deps and outs present (the generated stores as cache/*.zarr) and committed."""
    from dvc.repo import Repo

    d = tmp / "dvc"
    d.mkdir()
    shutil.copy(REPO / "dvc.yaml", d / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    ds_name, ds = next(iter(params["datasets"].items()))
    exp_name, exp = next(iter(params["experiments"].items()))
    params["datasets"] = {"gen": {**ds, "root": "media"}}
    params["experiments"] = {"gen_exp": {**exp, "dataset": "gen"}}
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    for sub in ("pipeline", "heads"):
        shutil.copytree(REPO / sub, d / sub, ignore=shutil.ignore_patterns("__pycache__"))
    (d / "emocache").mkdir()
    shutil.copy(REPO / "emocache" / "config.py", d / "emocache" / "config.py")
    (d / "media").mkdir()
    (d / "media" / "README").write_text("generated\n")
    (d / "cache").mkdir()
    for p in store_root.iterdir():
        if p.suffix == ".zarr":
            shutil.move(str(p), d / "cache" / p.name)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=d, check=True)
    repo = Repo(str(d))
    for stage in repo.index.stages:   # whatever the current dvc.yaml declares: make it exist
        for o in [*stage.deps, *stage.outs]:
            p = Path(o.fs_path)
            if p.exists() or not str(p).startswith(str(d)):
                continue
            if p.suffix in (".csv", ".json"):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("clip_id,split,labels\n" + "".join(f"{c},train,a\n" for c in ids[:10])
                             if p.suffix == ".csv" else "{}\n")
            else:
                p.mkdir(parents=True, exist_ok=True)
                (p / "placeholder").write_text("generated\n")
    repo.close()
    subprocess.run(["dvc", "commit", "-f", "-q"], cwd=d, check=True)
    return d


def dvc_status(d: Path) -> str:
    r = subprocess.run(["dvc", "status", "-q"], cwd=d, capture_output=True, text=True)
    return r.stdout + r.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-dvc", action="store_true", help="skip the dvc status column")
    ap.add_argument("--no-compact", action="store_true", help="skip the compaction columns")
    ap.add_argument("--trust-index", action="store_true",
                    help="open with store.trust_index: true (skip the per-open signature check of every segment)")
    ap.add_argument("--flush", type=int, default=StoreConfig().flush_clips,
                    help="clips per segment (store.flush_clips; more = fewer segments = a faster write)")
    args = ap.parse_args()
    os.environ.setdefault("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"   # the venv's dvc

    cfg0 = StoreConfig(flush_clips=args.flush)
    print(f"keys {', '.join(f'{k} ({f}, {lo}-{hi} x {d})' for k, (f, (lo, hi), d) in KEYS.items())}; "
          f"{cfg0.flush_clips} clips/segment; best of {args.repeats}")
    print(f"{'clips':>7} {'write s':>8} {'first open s':>12} {'open s':>7} {'plan s':>7} {'full read s':>11} "
          f"{'minibatch ms':>12} {'dvc commit s':>12} {'dvc status s':>12} | {'segments':>13} {'compact s':>9} "
          f"{'open s':>7} {'plan s':>7} {'minibatch ms':>12}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            cfg = StoreConfig(dir=str(tmp / "cache"), flush_clips=args.flush, trust_index=args.trust_index)
            t0 = time.perf_counter()
            ids = write_stores(tmp, n, cfg)
            t_write = time.perf_counter() - t0
            for st in open_catalog(cfg, tmp).family_stores.values():   # segments were written, never indexed
                for key in st.keys():
                    (Path(st.root) / key / f"fp_{key}" / "_index.json").unlink(missing_ok=True)
            t0 = time.perf_counter()
            open_all(cfg, tmp)
            t_first = time.perf_counter() - t0
            t_open = best(lambda: open_all(cfg, tmp), args.repeats)
            listed = ids + [f"new{i:07d}" for i in range(int(n * NEW_FRACTION))]
            assert plan(cfg, tmp, listed) == len(KEYS) * (len(listed) - n)
            t_plan = best(lambda: plan(cfg, tmp, listed), args.repeats)
            cache = open_all(cfg, tmp)
            t_full = best(lambda: cache.read(list(KEYS), ids), args.repeats)
            rng = np.random.default_rng(1)
            batches = [[ids[i] for i in rng.choice(n, BATCH, replace=False)] for _ in range(N_BATCHES)]
            t_mb = best(lambda: [cache.read(["vggish"], b) for b in batches], args.repeats) / N_BATCHES
            comp = ["", float("nan"), float("nan"), float("nan"), float("nan")]
            if not args.no_compact:   # before the DVC repo moves the stores
                segs = sum(len(cache[k].index(k).live_by_segment()) for k in KEYS)
                t0 = time.perf_counter()
                done = compact_cache(cfg, tmp)
                t_compact = time.perf_counter() - t0
                assert sum(c.clips for c in done) == len(KEYS) * n
                t_open2 = best(lambda: open_all(cfg, tmp), args.repeats)
                t_plan2 = best(lambda: plan(cfg, tmp, listed), args.repeats)
                cache = open_all(cfg, tmp)
                t_mb2 = best(lambda: [cache.read(["vggish"], b) for b in batches], args.repeats) / N_BATCHES
                comp = [f"{segs} -> {sum(c.segments_after for c in done)}", t_compact, t_open2, t_plan2, t_mb2 * 1000]
            commit = status = float("nan")
            if not args.no_dvc:
                t0 = time.perf_counter()
                d = dvc_repo(tmp, tmp / "cache", ids)
                commit = time.perf_counter() - t0
                out = dvc_status(d)
                status = best(lambda: dvc_status(d), max(1, args.repeats - 1))
                if "changed" in out or "modified" in out:
                    print(f"  note: dvc status reports changes after commit: {out.strip()[:200]}")
            print(f"{n:>7} {t_write:>8.1f} {t_first:>12.3f} {t_open:>7.3f} {t_plan:>7.3f} {t_full:>11.3f} "
                  f"{t_mb * 1000:>12.2f} {commit:>12.1f} {status:>12.2f} | {comp[0]:>13} {comp[1]:>9.1f} "
                  f"{comp[2]:>7.3f} {comp[3]:>7.3f} {comp[4]:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
