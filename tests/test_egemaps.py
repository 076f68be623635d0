"""openSMILE eGeMAPSv02: 88 functionals per clip and 25 LLDs per frame on real RAVDESS speech."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import speechlike
from pipeline.extractors.base import ClipInput, build_extractor
from pipeline.media import decode_audio

SR = 16000
ACTOR1 = "ravdess_subset/Actor_01/03-01-{emo}-{intensity}-01-01-01.wav"   # same actor, statement, repetition
NEUTRAL = ACTOR1.format(emo="01", intensity="01")
HAPPY = ACTOR1.format(emo="03", intensity="02")
ANGRY = ACTOR1.format(emo="05", intensity="02")


@pytest.fixture(scope="module")
def ravdess(shared_data):
    return {name: decode_audio(shared_data / rel, SR) for name, rel in
            [("neutral", NEUTRAL), ("happy", HAPPY), ("angry", ANGRY)]}


def _loaded(make_config, name):
    ex = build_extractor(make_config(), name)
    ex.load()
    return ex


def test_functionals_88_finite_and_differ_between_emotions(make_config, ravdess):
    ex = _loaded(make_config, "egemaps")
    assert ex.family == "audio" and ex.needs == frozenset({"audio"})
    clips = [ClipInput(k, audio=a) for k, a in ravdess.items()]
    out = {c.clip_id: f for c, f in zip(clips, ex.extract_batch(clips))}
    cols = ex.metadata()["columns"]
    assert len(cols) == 88
    for name, f in out.items():
        x = f.arrays["features"]
        assert x.shape == (1, 88) and x.dtype == np.float32 and np.isfinite(x).all()
        np.testing.assert_allclose(f.times, [[0.0, len(ravdess[name]) / SR]], atol=0.011)
    neutral, happy, angry = (out[k].arrays["features"][0] for k in ("neutral", "happy", "angry"))
    for a, b in [(neutral, happy), (neutral, angry), (happy, angry)]:
        assert not np.allclose(a, b, rtol=0.05)
    # strong anger is louder and higher-pitched than neutral speech from the same actor and sentence
    loud, f0 = cols.index("loudness_sma3_amean"), cols.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    assert angry[loud] > 1.5 * neutral[loud]
    assert angry[f0] > neutral[f0]


def test_lld_per_frame_with_times(make_config, ravdess):
    ex = _loaded(make_config, "egemaps_lld")
    f = ex.extract_batch([ClipInput("neutral", audio=ravdess["neutral"])])[0]
    x, t = f.arrays["features"], f.times
    seconds = len(ravdess["neutral"]) / SR
    assert x.shape[1] == 25 == len(ex.metadata()["columns"])
    assert abs(x.shape[0] - seconds * 100) < 10            # 10 ms hop
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.diff(t[:, 0]), 0.01, atol=1e-9)
    assert np.all(t[:, 1] > t[:, 0]) and t[-1, 1] <= seconds + 1e-6


def test_weights_info_and_fingerprint(make_config):
    import opensmile

    a, b = _loaded(make_config, "egemaps"), _loaded(make_config, "egemaps_lld")
    for ex in (a, b):
        assert ex.weights.pretrained is True
        assert ex.weights.source == f"opensmile {opensmile.__version__} (no weights)"
        assert len(ex.weights.sha256) == 64
    assert a.fingerprint() != b.fingerprint()


def test_short_and_missing_audio(make_config):
    ex = _loaded(make_config, "egemaps")
    short = ex.extract_batch([ClipInput("blip", audio=np.zeros(400, np.float32))])[0]
    assert short.n_rows == 0 and short.arrays["features"].shape == (0, 88) and "empty_reason" in short.attrs
    with pytest.raises(ValueError, match="no_audio_clip"):
        ex.extract_batch([ClipInput("no_audio_clip", audio=None)])


@pytest.mark.parametrize("name,level", [("egemaps", "Functionals"), ("egemaps_lld", "LowLevelDescriptors")])
def test_chunked_equals_process_signal(make_config, name, level):
    """Fed in many small chunks (an odd size, not a multiple of openSMILE's 10 ms hop), openSMILE gives exactly
    the rows of the whole-signal `process_signal` the extractor used before."""
    import opensmile

    audio = speechlike(12.0)
    ex = _loaded_chunked(make_config, name, chunk_seconds=0.3717)
    f = ex.extract_batch([ClipInput("c", audio=audio)])[0]
    df = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                         feature_level=opensmile.FeatureLevel[level]).process_signal(audio, SR)
    assert f.n_rows == len(df) > 0
    np.testing.assert_array_equal(f.arrays["features"], df.to_numpy(np.float32))
    times = np.stack([df.index.get_level_values(k).total_seconds().to_numpy() for k in ("start", "end")], axis=1)
    np.testing.assert_array_equal(f.times, times)


def _loaded_chunked(make_config, name, chunk_seconds):
    ex = build_extractor(make_config(extractors={"egemaps": {"chunk_seconds": chunk_seconds}}), name)
    ex.load()
    return ex


FAILING_WRITE_SCRIPT = """
import numpy as np, opensmile
from pipeline.audio import smile_stream
smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                        feature_level=opensmile.FeatureLevel.Functionals)
make = smile._smile
class FailingWrite:
    def __init__(self, engine): self.engine = engine
    def __getattr__(self, k): return getattr(self.engine, k)
    def external_audio_source_write_data(self, source, data): raise OSError("write refused (injected)")
smile._smile = lambda options: FailingWrite(make(options=options))
signal = np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32) * 0.1
refused = 0
for _ in range(20):
    try:
        smile_stream.process_chunked(smile, signal, 16000, 16000)
    except OSError:
        refused += 1
print("refused", refused)
"""


def test_failed_write_right_after_start_raises_and_does_not_crash():
    """A write that fails as openSMILE's run() starts (disk gone, an interrupt) is re-raised, and the engine is
    stopped cleanly: stopping it with engine.abort() there corrupted openSMILE's heap (a double free, abort)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", FAILING_WRITE_SCRIPT], cwd=root, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["refused", "20"]


def test_whole_clip_levels_sized_for_the_clip_and_output_independent_of_the_estimate(monkeypatch, tmp_path):
    """Functionals: the levels kept whole are sized for the clip (no doubling); an estimate far too small only
    lets them grow again (same rows as process_signal); the include file is removed with the run."""
    import tempfile

    import opensmile

    from pipeline.audio import smile_stream

    inc = smile_stream.whole_level_buffers(tmp_path / "b.inc", 16000 * 60, 16000)
    assert "nT = 7000" in inc.read_text() and "growDyn = 1" in inc.read_text()   # 6000 frames + the margin

    audio = speechlike(12.0)
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    ref = smile.process_signal(audio, SR).to_numpy(np.float32)
    runs = tmp_path / "tmp"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    for hop, margin in ((smile_stream.LLD_HOP_S, smile_stream.WHOLE_LEVEL_MIN_FRAMES), (1.0, 1)):   # as is; 100x short
        monkeypatch.setattr(smile_stream, "LLD_HOP_S", hop)
        monkeypatch.setattr(smile_stream, "WHOLE_LEVEL_MIN_FRAMES", margin)
        rows = smile_stream.process_chunked(smile, audio, SR, 4000)
        np.testing.assert_array_equal(rows.values, ref)
    assert list(runs.iterdir()) == []
