"""DVC overhead against cache size: a no-op `dvc status` and `dvc repro` with 100 vs 100k clips in the store.

For each clip count a temporary project gets the code, this repo's dvc.yaml and params.yaml with one dataset of
N text clips asking for several extractors (eGeMAPS, eGeMAPS LLD, VGGish in the audio store, MiniLM text in the
text store) and two experiments. The clip table and the stores are generated through the real FeatureStore API
(random rows, --flush-clips clips per segment); the manifests and experiment inputs are written by
pipeline/manifests.py exactly as the extract and inputs stages write them. Nothing is extracted or trained: the
train stages' outputs are small stand-in files, so that `dvc commit` can record a complete lock. The benchmark
times DVC's bookkeeping on an up-to-date project only (best of --repeats).

Baseline, same run: the previous layout, where the stores themselves were stage outputs (`persist: true`) and
every train stage depended on them, at --baseline-clips (DVC then stats and hashes every segment file).

    .venv/bin/python benchmarks/dvc_status.py --clips 100 100000 --baseline-clips 100 10000
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
KEYS = {"egemaps": (1, 88), "egemaps_lld": (50, 25), "vggish": (3, 128), "text.transcript": (1, 384)}


def params(n: int) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["datasets"] = {"big": {"adapter": "csv", "root": "data/big", "manifest": "data/big/manifest.csv",
                             "text_fields": {"transcript": "transcript"},
                             "split": {"method": "random", "val": 0.1, "test": 0.2, "seed": 0},
                             "extractors": list(KEYS)}}
    p["experiments"] = {"big_audio": {"dataset": "big", "modalities": ["egemaps", "vggish"], "head": "late_fusion"},
                        "big_text": {"dataset": "big", "modalities": ["text.transcript"], "head": "logreg"}}
    return p


def old_layout(doc: dict) -> dict:
    """The layout before the manifests: stores as persistent outputs, every train stage depending on all of them."""
    st = doc["stages"]
    for fam in ("audio", "text", "video"):
        st[f"extract_{fam}"]["outs"].append({f"cache/{fam}.zarr": {"persist": True}})
    st.pop("inputs")
    deps = st["train"]["do"]["deps"]
    deps[:] = [d for d in deps if "manifests/inputs" not in d] + [f"cache/{f}.zarr" for f in ("audio", "text", "video")]
    return doc


def build(root: Path, n: int, flush: int, old: bool, env: dict) -> None:
    from emocache.config import Config
    from pipeline.extractors.base import ClipFeatures
    from heads.inputs import write_experiment_inputs
    from pipeline.manifests import write_family_manifests
    from pipeline.store import FeatureStore

    for d in ("emocache", "heads", "pipeline"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump(old_layout(doc) if old else doc, sort_keys=False))
    p = params(n)
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (root / ".gitignore").write_text("/cache/*.zarr\n/metrics/runs/\n")
    ids = [f"big-{i:06d}" for i in range(n)]
    data = root / "data" / "big"
    data.mkdir(parents=True)
    (data / "manifest.csv").write_text("path,labels,transcript\n")   # the datasets stage never runs here
    tables = root / "cache" / "datasets"
    tables.mkdir(parents=True)
    splits = np.array(["train", "val", "test"])[np.random.default_rng(0).integers(0, 3, n)]
    (tables / "big.csv").write_text("clip_id,path,start,end,split,labels,text_transcript\n" + "".join(
        f"{c},,0.0,,{s},a,hello\n" for c, s in zip(ids, splits)))
    (tables / "big.json").write_text('{"labels": ["a"], "multilabel": false}\n')
    cfg = Config.model_validate({**p, "base_dir": str(root)})
    rng = np.random.default_rng(0)
    for key, (rows, dim) in KEYS.items():
        fam = "text" if key.startswith("text") else "audio"
        st = FeatureStore.for_family(cfg.store, root, fam)
        st.set_current(key, f"bench-{key}", {"extractor": key})
        for lo in range(0, n, flush):
            batch = ids[lo:lo + flush]
            feats = ClipFeatures({"features": rng.standard_normal((len(batch) * rows, dim)).astype(np.float32)},
                                 np.zeros((len(batch) * rows, 2)))
            per = [(c, ClipFeatures({"features": feats.arrays["features"][i * rows:(i + 1) * rows]},
                                    feats.times[i * rows:(i + 1) * rows])) for i, c in enumerate(batch)]
            st.write_segment(key, f"bench-{key}", per)
    FeatureStore.for_family(cfg.store, root, "video")
    for fam in ("audio", "text", "video"):
        write_family_manifests(cfg, fam)
    if not old:
        for exp in p["experiments"]:
            write_experiment_inputs(cfg, exp)
    for exp in p["experiments"]:   # stand-ins for what training would write (nothing is trained here)
        (root / "models" / exp).mkdir(parents=True)
        (root / "models" / exp / "model.pt").write_text("stand-in\n")
        (root / "metrics" / "plots" / exp).mkdir(parents=True)
        (root / "metrics" / f"{exp}.json").write_text("{}\n")
        for f, head in (("per_class_ap", "class,ap_mean"), ("loss", "epoch,train_loss"), ("pr_curves", "recall,precision")):
            (root / "metrics" / "plots" / exp / f"{f}.csv").write_text(head + "\n")
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                 [sys.executable, "-m", "dvc", "commit", "-f", "-q"]):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)


def timed(args: list[str], cwd: Path, env: dict, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
        best = min(best, time.perf_counter() - t0)
        if r.returncode != 0 or "Running stage" in r.stdout or (args[-1] == "--json" and r.stdout.strip() != "{}"):
            raise SystemExit(f"{' '.join(args)} in {cwd} was not a no-op:\n{r.stdout}\n{r.stderr}")
    return best


def files(path: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[100, 100_000])
    ap.add_argument("--baseline-clips", type=int, nargs="*", default=[100, 10_000])
    ap.add_argument("--flush-clips", type=int, default=16, help="clips per segment (params store.flush_clips)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, DVC_NO_ANALYTICS="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    dvc = [sys.executable, "-m", "dvc"]
    runs = [("manifests", n, False) for n in args.clips] + [("stores tracked", n, True) for n in args.baseline_clips]
    print(f"{'layout':<15} {'clips':>7} {'store files':>11} {'build s':>8} {'dvc status s':>12} {'dvc repro s':>11}")
    rows = {}
    for layout, n, old in runs:
        with tempfile.TemporaryDirectory(prefix="emocache-dvcbench-") as tmp:
            root = Path(tmp)
            env["PYTHONPATH"] = str(root)
            t0 = time.perf_counter()
            build(root, n, args.flush_clips, old, env)
            b = time.perf_counter() - t0
            s = timed(dvc + ["status", "--json"], root, env, args.repeats)
            r = timed(dvc + ["repro"], root, env, args.repeats)
            nf = files(root / "cache" / "audio.zarr") + files(root / "cache" / "text.zarr")
            rows[(layout, n)] = (s, r)
            print(f"{layout:<15} {n:>7} {nf:>11} {b:>8.1f} {s:>12.2f} {r:>11.2f}", flush=True)
    for layout in ("manifests", "stores tracked"):
        ns = sorted(n for lay, n in rows if lay == layout)
        if len(ns) > 1:
            (s0, r0), (s1, r1) = rows[(layout, ns[0])], rows[(layout, ns[-1])]
            print(f"{layout}: {ns[-1]} vs {ns[0]} clips: dvc status x{s1 / s0:.2f}, dvc repro x{r1 / r0:.2f}")
    print(f"(best of {args.repeats}; {os.cpu_count()} CPUs; segments of {args.flush_clips} clips; "
          f"{len(KEYS)} extractor keys)")


if __name__ == "__main__":
    main()
