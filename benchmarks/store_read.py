"""Store read benchmark: load a training set of cached features from the feature store vs from a raw
NumPy memmap holding the same ragged rows (the fastest thing a hand-rolled cache could do).

Both sides produce the same padded (N, T, D) float32 array + lengths for the same clip ids in the same
(shuffled) order, from a warm page cache. Prints MB/s for each and the ratio store / memmap
(goal: >= 0.5). Also reports random 16-clip minibatch reads, the pattern of a streaming loader.

    python benchmarks/store_read.py [--clips 1000] [--dim 768] [--format zarr|hdf5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.extractors.base import ClipFeatures  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402


def build(tmp: Path, n_clips: int, dim: int, t_min: int, t_max: int, fmt: str, flush: int, compressor: str):
    rng = np.random.default_rng(0)
    lengths = rng.integers(t_min, t_max + 1, n_clips)
    ids = [f"clip{i:06d}" for i in range(n_clips)]
    store = FeatureStore(tmp / f"bench.{fmt}", fmt, compressor)
    store.set_current("swin", "fp", {"bench": True})
    total = int(lengths.sum())
    mm = np.lib.format.open_memmap(tmp / "rows.npy", mode="w+", dtype=np.float32, shape=(total, dim))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    batch = []
    for i, (cid, t) in enumerate(zip(ids, lengths)):
        x = rng.standard_normal((t, dim), dtype=np.float32)
        mm[offsets[i]: offsets[i] + t] = x
        times = np.stack([np.arange(t) * 0.1, np.arange(t) * 0.1 + 0.1], 1)
        batch.append((cid, ClipFeatures({"features": x}, times)))
        if len(batch) == flush:
            store.write_segment("swin", "fp", batch)
            batch = []
    if batch:
        store.write_segment("swin", "fp", batch)
    mm.flush()
    del mm
    return store, ids, lengths, offsets, total


def read_memmap(path: Path, order: list[int], lengths, offsets, dim: int):
    mm = np.load(path, mmap_mode="r")
    t = int(lengths[order].max())
    x = np.zeros((len(order), t, dim), np.float32)
    for j, i in enumerate(order):
        x[j, : lengths[i]] = mm[offsets[i]: offsets[i] + lengths[i]]
    return x, lengths[order]


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--t-min", type=int, default=50)
    ap.add_argument("--t-max", type=int, default=100)
    ap.add_argument("--format", default="zarr", choices=["zarr", "hdf5"])
    ap.add_argument("--compressor", default="none", choices=["none", "zstd", "lz4"])
    ap.add_argument("--flush", type=int, default=16, help="clips per segment (store.flush_clips)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        store, ids, lengths, offsets, total = build(tmp, args.clips, args.dim, args.t_min, args.t_max, args.format,
                                                    args.flush, args.compressor)
        mb = total * args.dim * 4 / 2**20
        print(f"built {args.clips} clips, {total} rows x {args.dim} ({mb:.0f} MB) in {time.perf_counter() - t0:.1f} s "
              f"[{args.format}, compressor {args.compressor}, {args.flush} clips/segment]")
        order = list(np.random.default_rng(1).permutation(args.clips))
        order_ids = [ids[i] for i in order]

        reader = FeatureStore(tmp / f"bench.{args.format}", args.format)
        reader.index("swin")  # opening the index is part of a real run too, but once per run: keep it out
        t_store, (xs, ls) = timed(lambda: reader.read_padded("swin", order_ids), args.repeats)
        t_mm, (xm, lm) = timed(lambda: read_memmap(tmp / "rows.npy", order, lengths, offsets, args.dim), args.repeats)
        assert np.array_equal(ls, lm) and np.array_equal(xs, xm), "store and memmap disagree"
        print(f"full training set : store {mb / t_store:8.0f} MB/s   memmap {mb / t_mm:8.0f} MB/s   "
              f"ratio store/memmap = {t_mm / t_store:.2f}  (goal >= 0.5)")

        rng = np.random.default_rng(2)
        batches = [list(rng.choice(args.clips, 16, replace=False)) for _ in range(50)]
        bmb = sum(int(lengths[b].sum()) for b in batches) * args.dim * 4 / 2**20
        t_sb, _ = timed(lambda: [reader.read_padded("swin", [ids[i] for i in b]) for b in batches], args.repeats)
        t_mb, _ = timed(lambda: [read_memmap(tmp / "rows.npy", b, lengths, offsets, args.dim) for b in batches],
                        args.repeats)
        print(f"random minibatches: store {bmb / t_sb:8.0f} MB/s   memmap {bmb / t_mb:8.0f} MB/s   "
              f"ratio store/memmap = {t_mb / t_sb:.2f}  (50 batches of 16 clips)")


if __name__ == "__main__":
    main()
