"""Compaction (pipeline/store_compact.py): small segments merged into large ones, every clip read back the same,
never twice, at any instant; kill -9 anywhere in a real compaction loses nothing and the next run tidies up."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import StoreConfig
from pipeline.extractors.base import ClipFeatures
from pipeline.store import FeatureStore
from pipeline.store_compact import compact_key, compact_stores, plan_groups
from pipeline.store_index import INDEX_BLOB, decode_index

REPO = Path(__file__).resolve().parents[1]


def feats(seed: int, t: int) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    arrays = {"features": rng.normal(size=(t, 3)).astype(np.float32), "ids": np.arange(t, dtype=np.int64) + seed}
    return ClipFeatures(arrays if t else {}, np.stack([np.arange(t) * 0.5, np.arange(t) * 0.5 + 0.5], 1),
                        {"seed": seed} if seed % 3 else {})


def _store(root, fmt, n_segments=10, per=3) -> FeatureStore:
    st = FeatureStore(root, fmt)
    st.set_current("k", "fp", {})
    for s in range(n_segments):
        # clip (s, 0) of every third segment has no rows (an empty modality), clip c0_1 is committed again later
        st.write_segment("k", "fp", [(f"c{s}_{i}", feats(s * 10 + i, 0 if (i == 0 and s % 3 == 0) else 1 + i))
                                     for i in range(per)])
    st.write_segment("k", "fp", [("c0_1", feats(999, 4))])
    return st


def _snapshot(st: FeatureStore) -> dict:
    idx = st.index("k", refresh=True)
    ids = sorted(idx)
    return {c: (r.arrays["features"].tolist(), r.arrays["ids"].tolist(), r.times.tolist(), r.attrs)
            for c, r in zip(ids, st.read("k", ids))}


def _segments_on_disk(root: Path, fmt: str) -> list[str]:
    d = root / "k" / "fp"
    return sorted(p.name[:-3] if fmt == "hdf5" else p.name for p in d.iterdir()
                  if not p.name.startswith("_") and (p.is_dir() if fmt == "zarr" else p.suffix == ".h5"))


def test_groups_are_runs_of_small_segments_up_to_the_target():
    live = {"a": ["1"] * 3, "b": ["1"] * 3, "c": ["1"] * 3, "d": ["1"] * 9, "e": ["1"] * 2, "f": [], "g": ["1"]}
    assert plan_groups(live, 8) == [["a", "b"], ["e", "f", "g"]]   # c alone (a+b+c > 8), d is large enough
    assert plan_groups({"a": ["1"]}, 8) == []


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_compaction_keeps_every_clip_once_in_fewer_segments(tmp_path, fmt, caplog):
    root = tmp_path / "s"
    st = _store(root, fmt)
    before = _snapshot(st)
    assert len(before) == 30 and "c0_1" in before
    with caplog.at_level(logging.WARNING, logger="emocache.store"):
        c = compact_key(st, "k", target_clips=8)
    assert caplog.records == []
    assert (c.segments_before, c.clips) == (11, 30) and c.segments_after < c.segments_before
    fresh = FeatureStore(root, fmt)
    assert _snapshot(fresh) == before
    on_disk = _segments_on_disk(root, fmt)
    assert len(on_disk) == c.segments_after          # the old segments are gone
    blob = decode_index((root / "k" / "fp" / INDEX_BLOB).read_bytes(), "k", "fp")
    assert sorted(blob) == on_disk
    # idempotent: nothing left to merge
    again = compact_key(fresh, "k", target_clips=8)
    assert again.segments_after == again.segments_before == c.segments_after
    assert _snapshot(FeatureStore(root, fmt)) == before


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_the_merged_commit_retires_the_old_segments_at_once(tmp_path, fmt):
    """The instant after the merged segment's commit (before anything else happens) readers already see each
    clip once, from the merged segment; gc then deletes the retired ones."""
    root = tmp_path / "s"
    st = _store(root, fmt, n_segments=3)
    before = _snapshot(st)
    live = st.index("k").live_by_segment()
    group = sorted(live)[:2]
    ids = [c for seg in group for c in live[seg]]
    rows = st.read("k", ids)
    merged = st.write_segment("k", "fp", [(c, ClipFeatures(r.arrays if len(r.times) else {}, r.times, r.attrs))
                                          for c, r in zip(ids, rows)], replaces=group)
    reader = FeatureStore(root, fmt)
    idx = reader.index("k")
    assert _snapshot(reader) == before and {idx[c].segment for c in ids} == {merged}
    assert reader.retired[("k", "fp")] == group and not reader.broken.get(("k", "fp"))
    assert reader.gc_uncommitted("k", "fp") == 2
    assert set(group).isdisjoint(_segments_on_disk(root, fmt)) and _snapshot(FeatureStore(root, fmt)) == before


COMPACTOR = r"""
import sys
from pipeline.store import FeatureStore
from pipeline.store_compact import compact_key
st = FeatureStore(sys.argv[1], sys.argv[2])
print("ready", flush=True)
compact_key(st, "k", target_clips=int(sys.argv[3]))
print("done", flush=True)
"""


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_kill_9_at_random_points_of_a_real_compaction(tmp_path, fmt):
    """SIGKILL a compaction process at random instants of its run: every reopen reads exactly the clips and rows
    of before, once each, without a warning; the next compaction collects what the killed one left."""
    template = tmp_path / "template"
    st = _store(template, fmt, n_segments=16, per=2)
    before = _snapshot(st)
    time.sleep(1)   # past the template's last commit second: the compactions do not wait for it (see store_compact)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(root: Path, kill_after: float | None) -> bool:
        p = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(root), fmt, "6"], env=env, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        t0 = time.perf_counter()
        if kill_after is None:
            assert p.stdout.readline().strip() == b"done"
            p.wait()
            return time.perf_counter() - t0
        time.sleep(kill_after)
        p.send_signal(signal.SIGKILL)
        return p.wait() == -signal.SIGKILL

    full = run(shutil.copytree(template, tmp_path / "timing"), None)   # how long one uninterrupted compaction takes
    rng = np.random.default_rng(0)
    killed = 0
    for i, frac in enumerate(rng.uniform(0.05, 0.95, 4)):
        root = shutil.copytree(template, tmp_path / f"run{i}")
        killed += run(root, full * frac)
        reader = FeatureStore(root, fmt)
        assert _snapshot(reader) == before              # same clips, same rows, once each
        assert not reader.broken.get(("k", "fp")), reader.broken
        done = compact_key(FeatureStore(root, fmt), "k", target_clips=6)   # collects leftovers, finishes the job
        after = FeatureStore(root, fmt)
        assert _snapshot(after) == before
        assert _segments_on_disk(root, fmt) == sorted(after.index("k").live_by_segment())
        assert after.segments("k", "fp")[1] == [] and done.segments_after <= 7
        assert not [f for f in (root / "k" / "fp").iterdir() if "partial" in f.name or ".tmp" in f.name]
    assert killed >= 2, "the compaction finished before most kills: nothing was tested"


def test_compact_cli_merges_every_key(tmp_path):
    from typer.testing import CliRunner

    from emocache.cli import app

    cfg = StoreConfig(dir=str(tmp_path / "cache"), flush_clips=2)
    st = FeatureStore.for_family(cfg, tmp_path, "audio")
    st.set_current("k", "fp", {"extractor": "k"})
    for s in range(6):
        st.write_segment("k", "fp", [(f"c{s}_{i}", feats(s * 10 + i, 2)) for i in range(2)])
    before = _snapshot(st)
    params = tmp_path / "params.yaml"
    params.write_text(f"store:\n  dir: {tmp_path / 'cache'}\n  compact_clips: 4\n")
    res = CliRunner().invoke(app, ["store", "compact", "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "k: 6 -> 3 segments (12 clips)"
    assert _snapshot(FeatureStore(st.root)) == before
    res = CliRunner().invoke(app, ["store", "compact", "--key", "nope", "--params", str(params)])
    assert res.exit_code == 1 and "'nope'" in res.output and "present: k" in res.output


def test_compact_stores_refuses_an_unknown_key_before_touching_anything(tmp_path):
    st = _store(tmp_path / "s", "zarr", n_segments=3)
    segs = _segments_on_disk(tmp_path / "s", "zarr")
    with pytest.raises(LookupError, match="'other'"):
        compact_stores([st], StoreConfig(compact_clips=8), ["k", "other"])
    assert _segments_on_disk(tmp_path / "s", "zarr") == segs
