"""VGGish network batch (`extractors.vggish.batch_examples`): throughput and peak memory against the old
default of 256, and that the embeddings do not depend on it.

Each batch size runs in its own process (so ru_maxrss is its peak): the extractor's own `embed` (inference
mode, channels-last) over the same E seeded log-mel examples, random weights of the exact architecture
(VGGish's are not available here; the cost is the same). Runs are interleaved over the sizes; the median
examples/s of --repeats runs is reported, as a ratio to batch 256 from the same run. Memory: the process's
peak RSS minus its RSS after loading the model (the network's activations and oneDNN's scratch).

    .venv/bin/python benchmarks/vggish_batch.py --examples 1024 --threads 1
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASELINE = 256


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(batch: int, n_examples: int, threads: int, out: str) -> None:
    import torch

    from emocache.config import Config
    from pipeline.extractors.base import build_extractor

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate({
            "base_dir": str(REPO), "store": {"dir": f"{tmp}/cache", "tables_dir": f"{tmp}/tables"},
            "weights": {"dir": f"{tmp}/weights", "allow_untrained": ["vggish"]}, "runtime": {"device": "cpu"},
            "extractors": {"vggish": {"batch_examples": batch}}})
        ex = build_extractor(cfg, "vggish")
        ex.load()
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((n_examples, 96, 64), dtype=np.float32))
        ex.embed(x[:8])                       # first-call set-up outside the timing
        loaded = rss_mb()
        t0 = time.perf_counter()
        emb = ex.embed(x)
        secs = time.perf_counter() - t0
    np.save(out, emb)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"batch": batch, "seconds": secs, "peak_extra_mb": peak - loaded}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=1024, help="0.96 s examples per run (1024 = 16.4 min)")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 128, 64, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(int(a.child[0]), int(a.child[1]), int(a.child[2]), a.child[3])
    batches = sorted(set(a.batches) | {BASELINE}, reverse=True)
    runs: dict[int, list[dict]] = {b: [] for b in batches}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            for b in batches:
                p = subprocess.run([sys.executable, __file__, "--child", str(b), str(a.examples), str(a.threads),
                                    f"{tmp}/emb_{b}.npy"], capture_output=True, text=True, check=True,
                                   stdin=subprocess.DEVNULL)
                runs[b].append(json.loads(p.stdout.strip().splitlines()[-1]))
        ref = np.load(f"{tmp}/emb_{BASELINE}.npy")
        rows = []
        for b in batches:
            secs = statistics.median(r["seconds"] for r in runs[b])
            emb = np.load(f"{tmp}/emb_{b}.npy")
            rows.append({"batch_examples": b, "examples_per_s": a.examples / secs,
                         "peak_extra_mb": max(r["peak_extra_mb"] for r in runs[b]),
                         "max_abs_diff_vs_256": float(np.abs(emb - ref).max()), "identical_to_256": bool(np.array_equal(emb, ref))})
    base = next(r for r in rows if r["batch_examples"] == BASELINE)["examples_per_s"]
    print(f"VGGish embed (NOT pretrained: seeded random weights of the exact architecture), {a.examples} examples, "
          f"{a.threads} thread(s), median of {a.repeats}:")
    for r in rows:
        print(f"  batch {r['batch_examples']:>4}: {r['examples_per_s']:7.1f} examples/s = {r['examples_per_s'] / base:.2f}x "
              f"of batch {BASELINE}; activations {r['peak_extra_mb']:6.0f} MB; embeddings "
              f"{'identical' if r['identical_to_256'] else 'max |diff| %.2g' % r['max_abs_diff_vs_256']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
