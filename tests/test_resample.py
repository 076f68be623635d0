"""media.resampler: each choice is part of the audio fingerprints; 'resampy' reproduces resampy kaiser_best
(the VGGish reference's resampler) so VGGish embeddings of 48 kHz files agree with the reference pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import media
from pipeline.extractors.base import ClipInput, build_extractor
from pipeline.resample import RESAMPLERS, resampy_kaiser_best

torch.set_num_threads(1)
SR = 16000
EMBEDDING_ATOL = 1e-3      # the bound for VGGish embeddings vs the reference pipeline on 48 kHz files
WAVEFORM_ATOL = 1e-7       # float32 output of a float64 computation of the same sums (|x| <= 1)


def _ravdess(repo, n=3):
    paths = sorted((repo / "data" / "sample" / "ravdess").glob("Actor_*/*.wav"))[:n]
    assert paths, "data/sample/ravdess has no wav files"
    return paths


def _vggish(make_config, resampler):
    cfg = make_config(weights={"allow_untrained": ["vggish"]}, runtime={"device": "cpu"},
                      media={"resampler": resampler})
    ex = build_extractor(cfg, "vggish")
    ex.load()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # He-scaled random weights: O(1) embeddings, so an absolute bound means something
        for w in ex.model.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * ((2.0 / w[0].numel()) ** 0.5 if w.dim() > 1 else 0.01))
    return ex


def test_resampler_is_in_audio_fingerprints_not_in_text(make_config):
    cfgs = {r: make_config(weights={"allow_untrained": ["vggish"]}, runtime={"device": "cpu"}, media={"resampler": r})
            for r in RESAMPLERS}
    for spec in ("vggish", "egemaps"):
        ex = build_extractor(cfgs["swr"], spec)
        ex.load()
        fps = set()
        for r, cfg in cfgs.items():
            ex.settings = cfg.extractor_settings()   # same loaded extractor, only the decode setting differs
            fps.add(ex.fingerprint())
            assert ex.metadata()["params"]["resampler"] == r
        assert len(fps) == len(RESAMPLERS), spec
    assert "resampler" not in build_extractor(cfgs["resampy"], "text.transcript").output_params()


def test_unknown_resampler_is_refused(make_config, repo):
    with pytest.raises(ValueError, match="resampler"):
        make_config(media={"resampler": "sinc"})
    with pytest.raises(ValueError, match="media.resampler must be one of"):
        media.decode_audio(_ravdess(repo, 1)[0], SR, resampler="sinc")


@pytest.mark.parametrize("sr_orig", [48000, 44100, 22050, 8000])
def test_resampy_kaiser_best_equals_resampy(repo, sr_orig):
    resampy = pytest.importorskip("resampy")
    import soundfile as sf

    data, _ = sf.read(_ravdess(repo, 1)[0], dtype="int16")
    x = data[: 2 * sr_orig] / 32768.0            # the reference's int16 -> [-1, 1) scaling
    want = resampy.resample(x, sr_orig, SR)
    got = resampy_kaiser_best(x, sr_orig, SR)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < WAVEFORM_ATOL


def test_decode_resampy_matches_reference_pipeline_vggish_within_bound(make_config, repo):
    """emocache (ffmpeg decode at 48 kHz + resampler 'resampy' + torch front end) vs the reference
    (soundfile int16/32768 -> resampy.resample -> NumPy mel_features front end), same network."""
    resampy = pytest.importorskip("resampy")
    import soundfile as sf
    from test_vggish import np_log_mel_examples

    ex = {r: _vggish(make_config, r) for r in ("resampy", "swr")}
    worst = {"resampy": 0.0, "swr": 0.0}
    for path in _ravdess(repo):
        data, sr = sf.read(path, dtype="int16")
        assert sr == 48000
        ref_in = torch.from_numpy(np_log_mel_examples(resampy.resample(data / 32768.0, sr, SR))).float()
        with torch.inference_mode():
            ref = ex["resampy"].model(ref_in.unsqueeze(1)).numpy()
        assert np.abs(ref).max() > 0.5
        for r, e in ex.items():
            audio = media.decode_audio(path, SR, resampler=r)
            got = e.extract_batch([ClipInput(path.stem, path=str(path), audio=audio)])[0].arrays["features"]
            assert got.shape == ref.shape
            worst[r] = max(worst[r], float(np.abs(got - ref).max()))
    print("max abs embedding diff vs reference pipeline:", worst)
    assert worst["resampy"] <= EMBEDDING_ATOL, worst
    assert worst["swr"] > EMBEDDING_ATOL, worst   # the bound tells the resamplers apart (why 'resampy' exists)
