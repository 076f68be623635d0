"""Long audio decoded into a temp file and read in slices (pipeline/spilled_audio.py, media.spill_audio_seconds):
the same samples as the in-memory decode on every path (libsndfile, ffmpeg; swr, soxr, resampy), the same
features from the extractors, and no file left behind. Media are generated with ffmpeg's lavfi sources."""
from __future__ import annotations

import csv
import gc
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import media, resample
from pipeline.spilled_audio import SPILL_PREFIX, SpilledAudio, SpillWriter


def _ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spill")
    # a chirp plus noise on two channels that differ, so the channel mean and the resampler both matter
    src = ["-f", "lavfi", "-i", "aevalsrc=0.4*sin(2*PI*(200+300*t)*t)+0.05*random(0)|0.3*sin(2*PI*440*t):s=48000:d=7.3"]
    out = {"wav48_stereo": d / "a48.wav", "wav16_mono": d / "a16.wav", "m4a48": d / "a48.m4a",
           "wav44_int16": d / "a44.wav"}
    _ffmpeg(*src, "-c:a", "pcm_f32le", str(out["wav48_stereo"]))
    _ffmpeg(*src, "-ac", "1", "-ar", "16000", "-c:a", "pcm_f32le", str(out["wav16_mono"]))
    _ffmpeg(*src, "-c:a", "aac", str(out["m4a48"]))
    _ffmpeg(*src, "-ar", "44100", "-c:a", "pcm_s16le", str(out["wav44_int16"]))
    return out


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Temp files (spills) go to this test's own dir, apart from other processes' (a concurrent run's spills)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _spills() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(SPILL_PREFIX + "*")}


@pytest.mark.parametrize("name", ["wav48_stereo", "wav16_mono", "m4a48", "wav44_int16"])
@pytest.mark.parametrize("resampler", ["resampy", "swr", "soxr"])
def test_spilled_decode_equals_the_in_memory_decode(clips, name, resampler):
    path = clips[name]
    info = media.probe(path)
    before = _spills()
    for start, end in ((0.0, None), (1.25, 5.5)):
        whole = media.decode_audio(path, 16000, start, end, info=info, resampler=resampler)
        spilled = media.decode_audio(path, 16000, start, end, info=info, resampler=resampler, spill_seconds=0.0)
        assert isinstance(whole, np.ndarray) and isinstance(spilled, SpilledAudio), (name, resampler)
        assert spilled.dtype == np.float32 and len(spilled) == len(whole) > 0
        np.testing.assert_array_equal(np.asarray(spilled), whole, err_msg=f"{name} {resampler} {start}-{end}")
        np.testing.assert_array_equal(spilled[1000:5000], whole[1000:5000])
        spilled.close()
    assert _spills() == before                 # the spill (and ffmpeg's WAV, and the native-rate samples) are gone


def test_under_the_threshold_stays_in_memory(clips):
    a = media.decode_audio(clips["wav16_mono"], 16000, resampler="resampy", spill_seconds=60.0)
    assert isinstance(a, np.ndarray)


def test_blocked_resampling_is_upfirdn_over_the_whole_clip():
    """Each block is upfirdn over exactly the inputs it weights, started on a phase boundary: the whole-clip
    upfirdn sums for every ratio; the in-memory path (FFT convolution for integer ratios) agrees here too."""
    from scipy.signal import upfirdn

    rng = np.random.default_rng(0)
    for sr in (48000, 44100, 22050, 8000, 32000):
        x = rng.standard_normal(sr * 3 + 123)
        h, up, down, lead = resample._polyphase_filter(sr, 16000)
        n_out = int(len(x) * 16000 / sr)
        whole = upfirdn(h, x, up, down)[lead:lead + n_out]
        whole = np.concatenate([whole, np.zeros(max(0, n_out - len(whole)))]).astype(np.float32)
        for block in (1, 997, 5003, n_out + 5):
            got = np.concatenate(list(resample.resampy_kaiser_best_blocks(x, sr, 16000, block)))
            np.testing.assert_array_equal(got, whole, err_msg=f"{sr} Hz, blocks of {block}")
        np.testing.assert_array_equal(whole, resample.resampy_kaiser_best(x, sr, 16000))


def test_spilled_audio_reads_slices_and_removes_its_file():
    with SpillWriter(np.float32) as w:
        w.write(np.arange(10, dtype=np.float32))
        w.write(np.arange(10, 25, dtype=np.float32))
    a = w.finish()
    path = Path(a.path)
    assert len(a) == a.size == 25 and a.shape == (25,) and a.ndim == 1 and a.nbytes == 0
    np.testing.assert_array_equal(a[3:7], [3, 4, 5, 6])
    np.testing.assert_array_equal(a[20:100], [20, 21, 22, 23, 24])       # clipped as an array slice is
    assert a[30:40].size == 0 and np.asarray(a).sum() == sum(range(25))
    with pytest.raises(TypeError):
        a[3]
    with pytest.raises(ValueError):
        a[::2]
    del a
    gc.collect()
    assert not path.exists()                   # collected: removed
    with pytest.raises(RuntimeError):
        with SpillWriter() as w:
            w.write(np.ones(3))
            raise RuntimeError("a failed decode")
    assert not Path(w.path).exists()           # a failed write leaves nothing


def test_extraction_of_a_spilled_clip_gives_the_same_features(clips, tmp_path, make_config):
    """eGeMAPS (two passes) and VGGish read the spilled clip in slices: the stored rows equal those of the
    in-memory run; no spill file is left."""
    from pipeline.extract import extract
    from pipeline.store import FeatureStore

    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels"], [clips["m4a48"].name, "x"], [clips["wav16_mono"].name, "y"]])
    before = _spills()
    got = {}
    for spill in (None, 0.0):
        cfg = make_config(store={"dir": str(tmp_path / f"cache{spill}"), "tables_dir": str(tmp_path / f"t{spill}")},
                          media={"spill_audio_seconds": spill},
                          weights={"dir": str(tmp_path / "weights"), "allow_untrained": ["vggish"]},
                          extractors={"egemaps": {"two_pass_seconds": 2.0}},
                          datasets={"d": {"adapter": "csv", "root": str(clips["m4a48"].parent),
                                          "manifest": str(manifest),
                                          "split": {"method": "random", "val": 0.0, "test": 0.0},
                                          "extractors": ["egemaps", "vggish"]}})
        s = extract(cfg, ["d"], show_progress=False)
        assert not s.failures, s.failures
        st = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), "audio")
        for k in ("egemaps", "vggish"):
            ids = sorted(st.index(k).ids())
            got.setdefault(spill, {}).update({(k, c): r.arrays["features"] for c, r in zip(ids, st.read(k, ids))})
    assert got[None].keys() == got[0.0].keys() and len(got[None]) == 4
    for key in got[None]:
        np.testing.assert_array_equal(got[0.0][key], got[None][key], err_msg=str(key))
    assert _spills() == before
