"""Several `emocache extract` processes on one store at once (zarr and HDF5), and broken segments.

Before the store's writer lock, each run deleted the other's live uncommitted segments at start-up (the
writer then committed an index whose arrays were gone: `status` said cached, reads raised KeyError), the
same dataset run twice stored every clip twice, and HDF5 runs aborted. Now: every run exits 0, every clip
is committed exactly once with rows equal to a single sequential run, nothing is left uncommitted, and a
committed segment whose arrays are missing or damaged is reported and re-extracted, never trusted.
Media: short tones generated with ffmpeg's sine source (nothing committed)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from emocache.config import load_config
from emocache.status import collect_status
from pipeline import media
from pipeline.datasets import list_dataset, write_listing
from pipeline.extract import extract
from pipeline.store import FeatureStore, store_path

KEY = "egemaps"
N_CLIPS = 8
# which clips each dataset lists: ds0 and ds1 overlap, ds2 is disjoint from both, ds3 is ds0 again
DATASETS = {"ds0": range(0, 4), "ds1": range(2, 6), "ds2": range(6, 8), "ds3": range(0, 4)}


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tones")
    for i in range(N_CLIPS):
        subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"sine=f={220 + 70 * i}:sample_rate=16000:duration={1.0 + 0.1 * i}", str(d / f"tone{i}.wav")],
                       check=True, stdin=subprocess.DEVNULL, timeout=60)
    for name, idx in DATASETS.items():
        with open(d / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels"])
            w.writerows([[f"tone{i}.wav", "calm"] for i in idx])
    return d


def _project(base: Path, tones: Path, fmt: str) -> Path:
    base.mkdir(parents=True)
    params = {"store": {"dir": "cache", "format": fmt, "flush_clips": 1},
              "runtime": {"batch_clips": 1, "device": "cpu", "num_threads": 1},
              "datasets": {name: {"adapter": "csv", "root": str(tones), "manifest": str(tones / f"{name}.csv"),
                                  "split": {"method": "random", "val": 0.0, "test": 0.0}, "extractors": [KEY]}
                           for name in DATASETS}}
    p = base / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    cfg = load_config(str(p))
    for name in DATASETS:            # listed once up front: the runs race on the store, not on the listing
        write_listing(cfg, list_dataset(cfg, name))
    return p


def _store(params: Path) -> FeatureStore:
    cfg = load_config(str(params))
    return FeatureStore.for_family(cfg.store, Path(cfg.base_dir), "audio")


def _rows(params: Path) -> dict:
    st = _store(params)
    idx = st.index(KEY, refresh=True)
    return {cid: r for cid, r in zip(sorted(idx), st.read(KEY, sorted(idx)))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tones) -> dict[str, dict]:
    out = {}
    for fmt in ("zarr", "hdf5"):
        params = _project(tmp_path_factory.mktemp("ref") / fmt, tones, fmt)
        extract(load_config(str(params)), list(DATASETS), show_progress=False)
        out[fmt] = _rows(params)
        assert len(out[fmt]) == N_CLIPS
    return out


def _assert_store_exact(params: Path, ref: dict) -> None:
    st = _store(params)
    fp = st.current_fingerprint(KEY)
    committed, pending = st.segments(KEY, fp)
    ids = [c for doc in committed.values() for c in doc["clip_ids"]]
    assert pending == [], "uncommitted segments left behind"
    assert len(ids) == len(set(ids)) == N_CLIPS, f"clips committed more than once: {sorted(ids)}"
    rows = _rows(params)
    assert not st.broken.get((KEY, fp)), st.broken
    assert sorted(rows) == sorted(ref)
    for cid, r in rows.items():
        np.testing.assert_array_equal(r.arrays["features"], ref[cid].arrays["features"])
        np.testing.assert_array_equal(r.times, ref[cid].times)
    lines = collect_status(load_config(str(params)))
    for name, idx in DATASETS.items():
        assert any(ln.strip().startswith(KEY) and f"cached {len(idx)}/{len(idx)}" in ln
                   for ln in lines[lines.index(f"{name}: {len(idx)} clips"):][:2]), lines


TWO_SAME = ("ds0", "ds0")                     # the same dataset twice
FOUR_MIXED = ("ds0", "ds1", "ds2", "ds3")     # overlapping, disjoint and the same dataset again


@pytest.mark.slow
@pytest.mark.parametrize("fmt,runs", [("zarr", TWO_SAME), ("zarr", FOUR_MIXED), ("hdf5", TWO_SAME),
                                      ("hdf5", FOUR_MIXED)], ids=["zarr-2", "zarr-4", "hdf5-2", "hdf5-4"])
def test_concurrent_extract_processes(tmp_path, tones, reference, repo, fmt, runs):
    params = _project(tmp_path / "p", tones, fmt)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    procs = [subprocess.Popen([sys.executable, "-m", "emocache.cli", "extract", "--family", "audio", "-d", ds,
                               "--params", str(params)], env=env, cwd=repo, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for ds in runs]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-3000:]
        assert b"Traceback" not in err
    # the union of what the runs asked for, once each, equal to one sequential run
    asked = sorted({i for ds in runs for i in DATASETS[ds]})
    if len(asked) < N_CLIPS:   # finish the rest so the whole store can be compared
        extract(load_config(str(params)), list(DATASETS), show_progress=False)
    _assert_store_exact(params, reference[fmt])
    waited = sum(b"waiting for it to finish" in err for _, err in outs)
    print(f"\n{fmt} {len(runs)} concurrent runs: all exit 0, {waited} waited for the store lock")


def _break_one_segment(params: Path, fmt: str) -> str:
    st = _store(params)
    fp = st.current_fingerprint(KEY)
    committed, _ = st.segments(KEY, fp)
    seg = sorted(committed)[0]
    if fmt == "zarr":      # the arrays vanish under a committed index (what a concurrent gc used to do)
        st.backend.delete(f"{KEY}/{fp}/{seg}/features")
    else:                  # a damaged segment file
        f = Path(st.root) / KEY / fp / f"{seg}.h5"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return committed[seg]["clip_ids"][0]


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_broken_segment_is_reported_and_re_extracted(tmp_path, tones, reference, fmt):
    params = _project(tmp_path / "p", tones, fmt)
    cfg = load_config(str(params))
    extract(cfg, ["ds0"], show_progress=False)
    lost = _break_one_segment(params, fmt)
    st = _store(params)
    fp = st.current_fingerprint(KEY)
    assert lost not in st.has(KEY, fp)                       # not trusted
    assert len(st.broken[(KEY, fp)]) == 1
    assert any("broken segments 1" in ln for ln in collect_status(cfg))
    summary = extract(cfg, list(DATASETS), show_progress=False)
    assert summary.stats[KEY].done == N_CLIPS - 3            # the lost clip again + the 4 not yet extracted
    _assert_store_exact(params, reference[fmt])
    assert Path(store_path(cfg.store, Path(cfg.base_dir), "audio")).exists()


def test_object_storage_gc_spares_a_live_writers_segment(tmp_path):
    """Object storage has no lock: an uncommitted segment is collected only once older than
    store.remote_gc_age_s (writers mark its start first). A fsspec URL (file://) takes that path."""
    import time

    st = FeatureStore(f"file://{tmp_path}/remote.zarr", storage_options={"auto_mkdir": True}, remote_gc_age_s=60)
    st.set_current("k", "fp", {"extractor": "k"})
    for name, age in (("20260101T000000-live-a", 5), ("20260101T000000-dead-b", 600)):
        st.backend.root.require_group(f"k/fp/{name}").attrs.put({"committed": False, "started": time.time() - age})
    assert sorted(st.segments("k", "fp")[1]) == ["20260101T000000-dead-b", "20260101T000000-live-a"]
    assert st.gc_uncommitted("k", "fp") == 1
    assert st.segments("k", "fp")[1] == ["20260101T000000-live-a"]
