"""Feature store: append, skip, re-extract on change, crash safety of the commit protocol, HDF5 round trip."""
import numpy as np
import pytest

from pipeline.extractors.base import ClipFeatures
from pipeline.store import FeatureStore, MissingFeaturesError


def feats(seed: int, t: int, d: int = 8) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    times = np.stack([np.arange(t) * 0.96, np.arange(t) * 0.96 + 0.96], 1)
    return ClipFeatures({"features": rng.normal(size=(t, d)).astype(np.float32),
                         "mask": np.ones(t, bool)}, times, {"seed": seed})


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_round_trip_ragged_and_padded(tmp_path, fmt):
    st = FeatureStore(tmp_path / "s", fmt)
    st.set_current("vggish", "fp1", {"pretrained": False})
    clips = [(f"c{i}", feats(i, t)) for i, t in enumerate([3, 1, 5, 0, 2])]
    st.write_segment("vggish", "fp1", clips[:2])
    st.write_segment("vggish", "fp1", clips[2:])
    order = ["c4", "c0", "c3", "c2"]
    rows = st.read("vggish", order)
    for cid, r in zip(order, rows):
        ref = dict(clips)[cid]
        np.testing.assert_array_equal(r.arrays["features"], ref.arrays["features"])
        np.testing.assert_array_equal(r.times, ref.times)
        assert r.attrs == {"seed": int(cid[1:])}
    x, lengths = st.read_padded("vggish", order)
    assert x.shape == (4, 5, 8) and lengths.tolist() == [2, 3, 0, 5]
    assert np.all(x[0, 2:] == 0) and np.all(x[2] == 0)
    # reopen: everything came from storage, not from memory
    st2 = FeatureStore(tmp_path / "s", fmt)
    assert sorted(st2.index("vggish")) == [f"c{i}" for i in range(5)]
    assert st2.meta("vggish") == {"pretrained": False}


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_fingerprints_are_separate_and_current_is_read(tmp_path, fmt):
    st = FeatureStore(tmp_path / "s", fmt)
    st.set_current("k", "old", {"v": 1})
    st.write_segment("k", "old", [("a", feats(1, 2)), ("b", feats(2, 2))])
    st.set_current("k", "new", {"v": 2})
    assert st.has("k", "new") == set() and st.has("k", "old") == {"a", "b"}
    st.write_segment("k", "new", [("a", feats(9, 4))])
    assert st.read("k", ["a"])[0].arrays["features"].shape == (4, 8)
    assert set(st.fingerprints("k")) == {"old", "new"}


def test_uncommitted_segment_is_invisible_and_collected(tmp_path):
    """A writer killed after writing rows but before the index leaves nothing visible."""
    st = FeatureStore(tmp_path / "s", "zarr")
    st.set_current("k", "fp", {})
    st.write_segment("k", "fp", [("a", feats(1, 2))])
    # Simulate the kill: rows of a segment on disk, no commit doc.
    g = st.backend.root.require_group("k/fp/20990101T000000-w-dead")
    g.create_array("features", shape=(3, 8), dtype="float32")[...] = 1.0
    # and a torn commit doc
    (tmp_path / "s" / "k" / "fp" / "20990101T000001-w-torn").mkdir()
    (tmp_path / "s" / "k" / "fp" / "20990101T000001-w-torn" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    st2 = FeatureStore(tmp_path / "s", "zarr")
    assert set(st2.index("k")) == {"a"}
    assert st2.gc_uncommitted("k", "fp") == 2
    assert set(st2.index("k", refresh=True)) == {"a"}
    assert sorted(st2.segments("k", "fp")[1]) == []


def test_hdf5_temp_file_is_not_a_segment(tmp_path):
    st = FeatureStore(tmp_path / "s", "hdf5")
    st.set_current("k", "fp", {})
    st.write_segment("k", "fp", [("a", feats(1, 2))])
    seg_dir = tmp_path / "s" / "k" / "fp"
    (seg_dir / "zzz.h5.tmp123").write_bytes(b"partial")
    st2 = FeatureStore(tmp_path / "s", "hdf5")
    assert set(st2.index("k")) == {"a"}
    assert st2.gc_uncommitted("k", "fp") == 1 and not (seg_dir / "zzz.h5.tmp123").exists()
    assert set(st2.index("k", refresh=True)) == {"a"}


def test_empty_clips_without_arrays(tmp_path):
    st = FeatureStore(tmp_path / "s")
    st.set_current("k", "fp", {})
    empty = ClipFeatures({}, np.zeros((0, 2)), {"empty": "no audio stream"})
    st.write_segment("k", "fp", [("e", empty), ("a", feats(1, 3))])
    st.write_segment("k", "fp", [("e2", empty)])
    x, lengths = st.read_padded("k", ["a", "e", "e2"])
    assert lengths.tolist() == [3, 0, 0] and x.shape == (3, 3, 8)
    assert st.read("k", ["e2"])[0].attrs == {"empty": "no audio stream"}


def test_failures_table(tmp_path):
    st = FeatureStore(tmp_path / "s")
    st.record_failures("run1", [{"clip_id": "x", "path": "bad.mp4", "stage": "decode", "error": "boom"}])
    assert st.failures()[0]["path"] == "bad.mp4" and st.failures()[0]["run_id"] == "run1"


def test_missing_key_and_clip_errors_are_clear(tmp_path):
    st = FeatureStore(tmp_path / "s")
    with pytest.raises(MissingFeaturesError, match="no features for 'nope'"):
        st.read("nope", ["a"])
    st.set_current("k", "fp", {})
    st.write_segment("k", "fp", [("a", feats(1, 1))])
    with pytest.raises(MissingFeaturesError, match="not in the store"):
        st.read("k", ["zzz"])
