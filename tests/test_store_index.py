"""The consolidated index per fingerprint (pipeline/store_index.py): one read per open instead of one per
segment; never trusted when it is corrupted, from a newer emocache or disagrees with the segments; kill -9 safe."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.extractors.base import ClipFeatures
from pipeline.store import FeatureStore
from pipeline.store_index import INDEX_BLOB, INDEX_VERSION

REPO = Path(__file__).resolve().parents[1]


def feats(seed: int, t: int, d: int = 4) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    return ClipFeatures({"features": rng.normal(size=(t, d)).astype(np.float32)},
                        np.stack([np.arange(t) * 1.0, np.arange(t) + 1.0], 1), {"seed": seed})


def _store(tmp_path, fmt, n_segments=4, per=3) -> FeatureStore:
    st = FeatureStore(tmp_path / "s", fmt)
    st.set_current("k", "fp", {})
    for s in range(n_segments):
        st.write_segment("k", "fp", [(f"c{s}_{i}", feats(s * 10 + i, 1 + i)) for i in range(per)])
    return st


def _blob(tmp_path) -> Path:
    return tmp_path / "s" / "k" / "fp" / INDEX_BLOB


def _segment_doc_reads(st: FeatureStore, monkeypatch) -> list[str]:
    seen = []
    real = st.backend.get_doc

    def counting(path):
        if path.count("/") == 2:   # key/fp/segment: a per-segment commit doc
            seen.append(path)
        return real(path)

    monkeypatch.setattr(st.backend, "get_doc", counting)
    return seen


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_open_after_the_first_reads_no_segment_doc(tmp_path, fmt, monkeypatch):
    first = _store(tmp_path, fmt)
    assert len(first.index("k")) == 12 and _blob(tmp_path).is_file()
    st = FeatureStore(tmp_path / "s", fmt)
    reads = _segment_doc_reads(st, monkeypatch)
    assert sorted(st.index("k")) == sorted(first.index("k"))
    assert reads == []
    # a segment committed after consolidation is read (alone) and folded in
    first.write_segment("k", "fp", [("late", feats(99, 2))])
    assert "late" in st.has("k", "fp") and len(reads) == 1
    st2 = FeatureStore(tmp_path / "s", fmt)
    reads2 = _segment_doc_reads(st2, monkeypatch)
    assert "late" in st2.index("k") and reads2 == []
    np.testing.assert_array_equal(st2.read("k", ["late"])[0].arrays["features"], feats(99, 2).arrays["features"])


def _rebuilt_with(tmp_path, fmt, caplog, damage, phrase):
    ref = _store(tmp_path, fmt)
    want = {c: e.length for c, e in ref.index("k").items()}
    damage(_blob(tmp_path))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emocache.store"):
        st = FeatureStore(tmp_path / "s", fmt)
        got = {c: e.length for c, e in st.index("k").items()}
    msgs = [r.getMessage() for r in caplog.records]
    assert any(phrase in m and "rebuilding it from the segments" in m and INDEX_BLOB in m for m in msgs), msgs
    # rebuilt: the next open trusts the new blob and says nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emocache.store"):
        assert {c: e.length for c, e in FeatureStore(tmp_path / "s", fmt).index("k").items()} == got
    assert caplog.records == []
    return want, got


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_corrupted_index_is_detected_and_rebuilt(tmp_path, fmt, caplog):
    def flip(p: Path):
        b = bytearray(p.read_bytes())
        b[-5] ^= 0x55            # one byte of the body: the checksum catches it
        p.write_bytes(bytes(b))

    want, got = _rebuilt_with(tmp_path, fmt, caplog, flip, "corrupted (checksum mismatch")
    assert got == want


def test_truncated_index_is_detected_and_rebuilt(tmp_path, caplog):
    want, got = _rebuilt_with(tmp_path, "zarr", caplog, lambda p: p.write_bytes(p.read_bytes()[:7]), "corrupted")
    assert got == want


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_index_from_a_newer_emocache_is_not_trusted(tmp_path, fmt, caplog):
    def newer(p: Path):
        head, _, body = p.read_bytes().partition(b"\n")
        h = json.loads(head)
        h["version"] = INDEX_VERSION + 1
        p.write_bytes(json.dumps(h).encode() + b"\n" + body)

    want, got = _rebuilt_with(tmp_path, fmt, caplog, newer, "written by a newer emocache")
    assert got == want


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_index_disagreeing_with_segments_on_disk_is_rebuilt(tmp_path, fmt, caplog):
    gone = {}

    def delete_a_segment(p: Path):
        st = FeatureStore(tmp_path / "s", fmt)
        committed, _ = st.segments("k", "fp")
        seg = sorted(committed)[1]
        gone["ids"] = set(committed[seg]["clip_ids"])
        st.backend.delete(f"k/fp/{seg}")

    want, got = _rebuilt_with(tmp_path, fmt, caplog, delete_a_segment, "disagrees with the segments on disk")
    assert set(got) == set(want) - gone["ids"] and gone["ids"]


def test_index_listing_a_segment_with_other_clips_is_caught_by_its_checksum(tmp_path, caplog):
    """Hand-edited or bit-rotten entries (a segment's lengths changed) fail the checksum, not silently read."""
    def edit(p: Path):
        head, _, body = p.read_bytes().partition(b"\n")
        doc = json.loads(body)
        seg = sorted(doc["segments"])[0]
        doc["segments"][seg]["lengths"] = doc["segments"][seg]["lengths"][::-1]
        p.write_bytes(head + b"\n" + json.dumps(doc, separators=(",", ":")).encode())

    want, got = _rebuilt_with(tmp_path, "zarr", caplog, edit, "corrupted")
    assert got == want


WRITER = r"""
import sys, numpy as np
from pipeline.extractors.base import ClipFeatures
from pipeline.store import FeatureStore
root, fmt = sys.argv[1], sys.argv[2]
st = FeatureStore(root, fmt)
st.set_current("k", "fp", {})
i = 0
while True:    # commit a segment, consolidate, repeat: the parent kills us at a random point
    st.write_segment("k", "fp", [(f"c{i}_{j}", ClipFeatures({"features": np.full((2, 3), i, np.float32)},
                                  np.zeros((2, 2)), {})) for j in range(2)])
    st.index("k", refresh=True)
    i += 1
    if i == 3:
        print("ready", flush=True)
"""


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_kill_9_during_segment_and_index_writes(tmp_path, fmt):
    """SIGKILL a process that alternates segment commits and index rewrites, several times: every open then sees
    exactly the committed segments (from the index or, where it lags, from their docs), and gc tidies up."""
    rng = np.random.default_rng(0)
    root = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(root), fmt], env=env, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        st = FeatureStore(root, fmt)
        committed, _ = st.segments("k", "fp")          # the truth: every segment's own commit doc
        truth = {c for d in committed.values() for c in d["clip_ids"]}
        idx = st.index("k", refresh=True)
        assert set(idx) == truth and not st.broken.get(("k", "fp"))
        for cid, r in zip(sorted(idx), st.read("k", sorted(idx))):
            assert r.arrays["features"].shape == (2, 3) and np.all(r.arrays["features"] == int(cid[1:].split("_")[0]))
        st.gc_uncommitted("k", "fp")
        left = [f.name for f in (root / "k" / "fp").iterdir() if "partial" in f.name or ".tmp" in f.name]
        assert left == [] and st.segments("k", "fp")[1] == []
    assert set(FeatureStore(root, fmt).index("k")) == truth


def test_packed_columns_round_trip_every_doc_shape():
    from pipeline.store_index import decode_index, encode_index

    docs = {"s1": {"clip_ids": ["a", "b", "c"], "offsets": [0, 3, 3], "lengths": [3, 0, 2],
                   "attrs": [{}, {"empty": "no audio"}, {}], "arrays": ["features"]},
            "s2": {"clip_ids": ["odd\nid", "e"], "offsets": [5, 0], "lengths": [1, 5],   # not a running sum
                   "attrs": [{"x": 1}, {}], "arrays": []},
            "s3": {"clip_ids": [], "offsets": [], "lengths": [], "attrs": [], "arrays": []}}
    got = decode_index(encode_index("k", "fp", docs), "k", "fp")
    assert {seg: {**d, "offsets": list(d["offsets"]), "lengths": list(d["lengths"])} for seg, d in got.items()} == docs


def _array_checks(st: FeatureStore, monkeypatch) -> list[str]:
    seen = []
    real = st.backend.row_counts

    def counting(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(st.backend, "row_counts", counting)
    return seen


@pytest.mark.parametrize("where", ["zarr", "hdf5", "fsspec"])
def test_default_open_checks_no_unchanged_segment(tmp_path, where, monkeypatch):
    """trust_index: false (the default) compares each indexed segment's file signature in one listing pass:
    an unchanged store opens with no per-segment metadata read at all."""
    root = f"file://{tmp_path}/s" if where == "fsspec" else tmp_path / "s"
    fmt, opts = ("zarr", {"auto_mkdir": True}) if where == "fsspec" else (where, None)
    first = FeatureStore(root, fmt, storage_options=opts)
    first.set_current("k", "fp", {})
    for s in range(4):
        first.write_segment("k", "fp", [(f"c{s}_{i}", feats(s * 10 + i, 1 + i)) for i in range(3)])
    assert len(first.index("k")) == 12
    st = FeatureStore(root, fmt, storage_options=opts)
    assert not st.trust_index
    checks, reads = _array_checks(st, monkeypatch), _segment_doc_reads(st, monkeypatch)
    assert sorted(st.index("k")) == sorted(first.index("k"))
    assert checks == [] and reads == []


def _damage(tmp_path, fmt, how) -> tuple[FeatureStore, str, set]:
    st = _store(tmp_path, fmt)
    st.index("k")                                     # consolidated, with every segment's signature
    committed, _ = st.segments("k", "fp")
    seg = sorted(committed)[1]
    d = tmp_path / "s" / "k" / "fp"
    if how == "array gone":                           # an array vanishes under the committed index
        st.backend.delete(f"k/fp/{seg}/features")
    elif how == "shape rewritten":                    # the array's metadata says fewer rows (same byte size)
        meta = d / seg / "features" / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["shape"][0] -= 1
        time.sleep(0.01)
        meta.write_text(json.dumps(doc))
    elif how == "file truncated":                     # a damaged .h5 segment file
        f = d / f"{seg}.h5"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return st, seg, set(committed[seg]["clip_ids"])


@pytest.mark.parametrize("fmt,how", [("zarr", "array gone"), ("zarr", "shape rewritten"), ("hdf5", "file truncated")])
def test_damage_after_indexing_is_caught_by_the_signature(tmp_path, fmt, how, monkeypatch, caplog):
    first, seg, lost = _damage(tmp_path, fmt, how)
    st = FeatureStore(tmp_path / "s", fmt)
    checks = _array_checks(st, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="emocache.store"):
        idx = st.index("k")
    assert checks == [f"k/fp/{seg}"]                   # only the changed segment is checked in full
    assert not lost & set(idx) and len(idx) == 12 - len(lost)
    assert list(st.broken[("k", "fp")]) == [seg]
    assert any(seg in r.getMessage() and "broken" in r.getMessage() for r in caplog.records)
    # still reported on every later open (never folded into the index as good)
    again = FeatureStore(tmp_path / "s", fmt)
    assert not lost & set(again.index("k")) and list(again.broken[("k", "fp")]) == [seg]


def test_a_touched_segment_is_checked_once_then_trusted_again(tmp_path, monkeypatch):
    """A changed signature without damage (e.g. a copy that did not keep mtimes): one full check, the new
    signature recorded, the next open checks nothing."""
    first = _store(tmp_path, "zarr")
    first.index("k")
    seg = sorted(first.segments("k", "fp")[0])[0]
    f = tmp_path / "s" / "k" / "fp" / seg / "zarr.json"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    st = FeatureStore(tmp_path / "s", "zarr")
    checks = _array_checks(st, monkeypatch)
    assert len(st.index("k")) == 12 and checks == [f"k/fp/{seg}"] and not st.broken.get(("k", "fp"))
    st2 = FeatureStore(tmp_path / "s", "zarr")
    checks2 = _array_checks(st2, monkeypatch)
    assert len(st2.index("k")) == 12 and checks2 == []


def test_s3_store_open_lists_once_and_catches_a_vanished_array(s3_endpoint, monkeypatch):
    """On object storage the signature is the listing's sizes and ETags: an unchanged store opens with no
    per-segment read; an array deleted under the index is caught and reported."""
    import boto3

    opts = {"key": "testing", "secret": "testing", "endpoint_url": s3_endpoint,
            "client_kwargs": {"region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="sig")
    url = "s3://sig/audio.zarr"
    first = FeatureStore(url, storage_options=opts)
    first.set_current("k", "fp", {})
    for s in range(3):
        first.write_segment("k", "fp", [(f"c{s}_{i}", feats(s * 10 + i, 1 + i)) for i in range(2)])
    assert len(first.index("k")) == 6
    st = FeatureStore(url, storage_options=opts)
    checks, reads = _array_checks(st, monkeypatch), _segment_doc_reads(st, monkeypatch)
    assert len(st.index("k")) == 6 and checks == [] and reads == []
    seg = sorted(first.segments("k", "fp")[0])[2]
    first.backend.delete(f"k/fp/{seg}/features")
    st2 = FeatureStore(url, storage_options=opts)
    checks2 = _array_checks(st2, monkeypatch)
    assert len(st2.index("k")) == 4 and checks2 == [f"k/fp/{seg}"] and list(st2.broken[("k", "fp")]) == [seg]
