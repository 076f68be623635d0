"""The catalog at the store.dir root and Cache.read, the one reader (pipeline/catalog.py)."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from emocache.config import StoreConfig
from pipeline.catalog import Cache, open_catalog, uniform_rows
from pipeline.store_catalog import CATALOG, CATALOG_VERSION
from pipeline.extractors.base import ClipFeatures
from pipeline.store import FeatureStore


def feats(seed: int, t: int, shape=(4,)) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    return ClipFeatures({"features": rng.normal(size=(t, *shape)).astype(np.float32),
                         "mask": np.ones(t, bool)}, np.stack([np.arange(t) * 0.5, np.arange(t) * 0.5 + 0.5], 1),
                        {"seed": seed})


LENGTHS = [3, 1, 9, 0, 2, 12]


def _cache_dir(tmp_path, fmt="zarr") -> tuple[StoreConfig, dict]:
    """Two family stores written the way the runner writes them (for_family + set_current)."""
    cfg = StoreConfig(dir=str(tmp_path / "cache"), format=fmt)
    clips = {f"c{i}": feats(i, t) for i, t in enumerate(LENGTHS)}
    audio = FeatureStore.for_family(cfg, tmp_path, "audio")
    audio.set_current("vggish", "fpa", {"pretrained": False})
    items = list(clips.items())
    audio.write_segment("vggish", "fpa", items[:2])
    audio.write_segment("vggish", "fpa", items[2:])
    text = FeatureStore.for_family(cfg, tmp_path, "text")
    text.set_current("text.transcript", "fpt", {"pretrained": True})
    text.write_segment("text.transcript", "fpt", [("c1", feats(7, 1, (2, 3))), ("c4", feats(8, 1, (2, 3)))])
    return cfg, clips


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_writers_record_every_key_in_the_catalog(tmp_path, fmt):
    cfg, _ = _cache_dir(tmp_path, fmt)
    doc = json.loads((tmp_path / "cache" / CATALOG).read_text())
    ext = "zarr" if fmt == "zarr" else "h5store"
    assert doc["version"] == CATALOG_VERSION
    assert doc["keys"] == {"vggish": "audio", "text.transcript": "text"}
    assert doc["stores"] == {"audio": {"path": f"audio.{ext}", "format": fmt},
                             "text": {"path": f"text.{ext}", "format": fmt}}
    cache = open_catalog(cfg, tmp_path)
    assert sorted(cache) == ["text.transcript", "vggish"]
    assert cache["vggish"].root == str(tmp_path / "cache" / f"audio.{ext}")
    assert cache["vggish"] is not cache["text.transcript"] and list(cache.family_stores) == ["audio", "text"]
    assert cache.meta("vggish") == {"pretrained": False} and cache.meta("nope") == {}
    with pytest.raises(LookupError, match=r"no features for 'swin'; cached: text.transcript, vggish"):
        cache["swin"]


def _old_read_modality(store, key, clip_ids, max_rows):
    """heads.data.read_modality as it was before Cache.read replaced it: the reference output (with one fix:
    it reshaped rows with -1, which numpy refuses for a clip with 0 rows)."""
    index = store.index(key)
    present = [i for i, c in enumerate(clip_ids) if c in index]
    rows = store.read(key, [clip_ids[i] for i in present], ["features"])
    arrays = [r.arrays["features"].reshape(r.arrays["features"].shape[0], -1) if r.arrays["features"].size
              else np.zeros((0, int(np.prod(r.arrays["features"].shape[1:]))), np.float32) for r in rows]
    dim = next((a.shape[1] for a in arrays if a.shape[0]), arrays[0].shape[1])
    lengths = np.zeros(len(clip_ids), dtype=np.int64)
    picked = []
    for i, a in zip(present, arrays):
        keep = uniform_rows(a.shape[0], max_rows)
        lengths[i] = len(keep)
        picked.append(a[keep])
    x = np.zeros((len(clip_ids), max(1, int(lengths.max())), dim), dtype=np.float32)
    for i, a in zip(present, picked):
        x[i, : a.shape[0]] = a
    return x, lengths


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_padded_read_equals_the_old_readers(tmp_path, fmt):
    cfg, clips = _cache_dir(tmp_path, fmt)
    cache = open_catalog(cfg, tmp_path)
    ids = ["c5", "zz_absent", "c0", "c3", "c2", "c1", "c4"]
    for max_rows in (4, 100):
        got = cache.read(["vggish", "text.transcript"], ids, max_rows=max_rows)
        for key in ("vggish", "text.transcript"):
            x, lengths = _old_read_modality(cache[key], key, ids, max_rows)
            np.testing.assert_array_equal(got[key].lengths, lengths)
            np.testing.assert_array_equal(got[key].x, x)
            assert got[key].x.dtype == np.float32
    assert got["text.transcript"].x.shape == (7, 1, 6)            # (1, 2, 3) rows flattened to 6
    # without max_rows: FeatureStore.read_padded's rows exactly
    present = [c for c in ids if c in cache["vggish"].index("vggish")]
    x, lengths = cache["vggish"].read_padded("vggish", present)
    full = cache.read(["vggish"], present)["vggish"]
    np.testing.assert_array_equal(full.x, x)
    np.testing.assert_array_equal(full.lengths, lengths)


def test_ragged_read_equals_store_read_and_thins_rows(tmp_path):
    cfg, clips = _cache_dir(tmp_path)
    cache = open_catalog(cfg, tmp_path)
    ids = ["c2", "nope", "c3"]
    got = cache.read(["vggish"], ids, padded=False, name=None)["vggish"]
    ref = cache["vggish"].read("vggish", ["c2", "c3"])
    assert got[1] is None
    for g, r in zip([got[0], got[2]], ref):
        assert sorted(g.arrays) == sorted(r.arrays) == ["features", "mask"]
        for n in r.arrays:
            np.testing.assert_array_equal(g.arrays[n], r.arrays[n])
        np.testing.assert_array_equal(g.times, r.times)
        assert g.attrs == r.attrs
    thin = cache.read(["vggish"], ["c2"], padded=False, max_rows=3)["vggish"][0]
    keep = uniform_rows(9, 3)
    np.testing.assert_array_equal(thin.arrays["features"], clips["c2"].arrays["features"][keep])
    np.testing.assert_array_equal(thin.times, clips["c2"].times[keep])


def test_missing_clips_and_fingerprints(tmp_path):
    cfg, clips = _cache_dir(tmp_path)
    cache = open_catalog(cfg, tmp_path)
    with pytest.raises(LookupError, match=r"vggish: 1 clip\(s\) not in the store .*'zz'"):
        cache.read(["vggish"], ["c0", "zz"], missing_ok=False)
    with pytest.raises(ValueError, match="none of the 1 requested clips under 'vggish'"):
        cache.read(["vggish"], ["zz"])
    st = cache["vggish"]
    st.set_current("vggish", "fp_new", {})   # a new fingerprint without rows: the old one is still readable
    old = cache.read(["vggish"], ["c0"], fingerprints={"vggish": "fpa"})["vggish"]
    np.testing.assert_array_equal(old.x[0], clips["c0"].arrays["features"])


def test_a_cache_without_catalog_is_listed_and_the_catalog_written(tmp_path, caplog):
    """Caches made before the catalog existed (or whose catalog was deleted) still open."""
    cfg, _ = _cache_dir(tmp_path)
    (tmp_path / "cache" / CATALOG).unlink()
    cache = open_catalog(cfg, tmp_path)
    assert sorted(cache) == ["text.transcript", "vggish"]
    assert json.loads((tmp_path / "cache" / CATALOG).read_text())["keys"]["vggish"] == "audio"


@pytest.mark.parametrize("damage,phrase", [
    (lambda p: p.write_text('{"format": "emocache-cat'), "is corrupted"),
    (lambda p: p.write_text(json.dumps({"format": "emocache-catalog", "version": CATALOG_VERSION + 1,
                                        "stores": {}, "keys": {}})), "written by a newer emocache"),
    (lambda p: p.write_text(json.dumps({"format": "emocache-catalog", "version": CATALOG_VERSION,
                                        "stores": {}, "keys": {"vggish": "audio"}})), "names a store it does not list"),
], ids=["corrupted", "newer", "inconsistent"])
def test_untrusted_catalog_is_rebuilt_with_a_clear_message(tmp_path, caplog, damage, phrase):
    cfg, _ = _cache_dir(tmp_path)
    damage(tmp_path / "cache" / CATALOG)
    with caplog.at_level(logging.WARNING, logger="emocache.store"):
        cache = open_catalog(cfg, tmp_path)
    assert any(phrase in r.getMessage() and CATALOG in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert sorted(cache) == ["text.transcript", "vggish"]
    assert json.loads((tmp_path / "cache" / CATALOG).read_text())["keys"] == {"vggish": "audio",
                                                                              "text.transcript": "text"}


def test_a_key_the_catalog_does_not_know_is_found_in_the_stores(tmp_path):
    """A writer that lost a catalog race (object storage has no lock) must not hide its key."""
    cfg, _ = _cache_dir(tmp_path)
    st = FeatureStore(tmp_path / "cache" / "audio.zarr")   # not via for_family: records nothing
    st.set_current("egemaps", "fpe", {})
    st.write_segment("egemaps", "fpe", [("c0", feats(1, 2))])
    cache = open_catalog(cfg, tmp_path)
    assert "egemaps" in cache and cache["egemaps"].root.endswith("audio.zarr")
    assert json.loads((tmp_path / "cache" / CATALOG).read_text())["keys"]["egemaps"] == "audio"


def test_readers_do_not_create_stores(tmp_path):
    cfg = StoreConfig(dir=str(tmp_path / "cache"))
    cache = open_catalog(cfg, tmp_path)
    assert len(cache) == 0 and not (tmp_path / "cache").exists()
    assert isinstance(Cache({}), Cache)
