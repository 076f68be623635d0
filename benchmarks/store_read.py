"""Store read benchmark: load a training set of cached features from the feature store vs from
- a raw NumPy memmap holding the same ragged rows (the fastest thing a hand-rolled cache could do),
- one `.npy` file per clip (what video_features writes and MERBench-style pipelines read),
- one HDF5 file with a dataset per clip (the other common hand-rolled cache).

Every side produces the same padded (N, T, D) float32 array + lengths for the same clip ids in the same
(shuffled) order, from a warm page cache, in the same run. Prints MB/s for each and the ratio store / memmap
(goals: full split >= 0.8, random 16-clip minibatches >= 0.5, the pattern of a streaming loader).

    python benchmarks/store_read.py [--clips 1000] [--dim 768] [--format zarr|hdf5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
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


def build_baselines(tmp: Path, ids: list[str], lengths, offsets) -> None:
    """The same rows as one .npy per clip and as one HDF5 file with a dataset per clip."""
    import h5py

    mm = np.load(tmp / "rows.npy", mmap_mode="r")
    (tmp / "npy").mkdir()
    with h5py.File(tmp / "clips.h5", "w") as f:
        for cid, o, t in zip(ids, offsets, lengths):
            x = np.asarray(mm[o: o + t])
            np.save(tmp / "npy" / f"{cid}.npy", x)
            f.create_dataset(cid, data=x)


def read_npy(tmp: Path, ids: list[str], dim: int):
    arrays = [np.load(tmp / "npy" / f"{c}.npy") for c in ids]
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    x = np.zeros((len(ids), int(lengths.max()), dim), np.float32)
    for j, a in enumerate(arrays):
        x[j, : a.shape[0]] = a
    return x, lengths


def read_h5(f, ids: list[str], dim: int):
    lengths = np.array([f[c].shape[0] for c in ids], dtype=np.int64)
    x = np.zeros((len(ids), int(lengths.max()), dim), np.float32)
    for j, c in enumerate(ids):
        f[c].read_direct(x[j, : lengths[j]])
    return x, lengths


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
    ap.add_argument("--batches", type=int, default=50, help="random 16-clip minibatches timed")
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

        build_baselines(tmp, ids, lengths, offsets)
        reader = FeatureStore(tmp / f"bench.{args.format}", args.format)
        reader.index("swin")  # opening the index is part of a real run too, but once per run: keep it out
        h5 = h5py.File(tmp / "clips.h5", "r")
        readers = {
            "store": lambda b: reader.read_padded("swin", [ids[i] for i in b]),
            "memmap": lambda b: read_memmap(tmp / "rows.npy", b, lengths, offsets, args.dim),
            "npy/clip": lambda b: read_npy(tmp, [ids[i] for i in b], args.dim),
            "hdf5 file": lambda b: read_h5(h5, [ids[i] for i in b], args.dim),
        }
        ref = readers["memmap"](order)
        for name, fn in readers.items():
            x, ls = fn(order)
            assert np.array_equal(ls, ref[1]) and np.array_equal(x, ref[0]), f"{name} and memmap disagree"

        rng = np.random.default_rng(2)
        batches = [list(rng.choice(args.clips, 16, replace=False)) for _ in range(args.batches)]
        bmb = sum(int(lengths[b].sum()) for b in batches) * args.dim * 4 / 2**20
        for label, work, size, goal in (("full training set ", [order], mb, 0.8),
                                        ("random minibatches", batches, bmb, 0.5)):
            t = {name: timed(lambda: [fn(b) for b in work], args.repeats)[0] for name, fn in readers.items()}
            print(f"{label}: " + "   ".join(f"{n} {size / t[n]:6.0f} MB/s" for n in readers)
                  + f"   ratio store/memmap = {t['memmap'] / t['store']:.2f} (goal >= {goal})"
                  + f"  store/npy = {t['npy/clip'] / t['store']:.2f}  store/hdf5 = {t['hdf5 file'] / t['store']:.2f}")
        h5.close()
        print(f"({args.batches} minibatches of 16 clips; best of {args.repeats})")


if __name__ == "__main__":
    main()
