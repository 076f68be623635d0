"""Whole-clip openSMILE functionals in two passes (pipeline/audio/smile_functionals.py): the row of one-pass
`process_signal`, bit for bit, for every feature set that splits, on generated and real speech."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import speechlike
from pipeline.audio import smile_config, smile_functionals, smile_stream
from pipeline.extractors.base import ClipInput, build_extractor
from pipeline.media import decode_audio

SR = 16000


def _smile(feature_set: str):
    import opensmile

    return opensmile.Smile(feature_set=opensmile.FeatureSet[feature_set],
                           feature_level=opensmile.FeatureLevel.Functionals)


@pytest.fixture
def second_passes(monkeypatch):
    """Counts second passes, so an equality below is known to come from the two-pass path."""
    calls = []
    run = smile_functionals.run_functionals

    def counted(*a, **k):
        calls.append(1)
        return run(*a, **k)

    monkeypatch.setattr(smile_functionals, "run_functionals", counted)
    return calls


def _signals(shared_data) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    t = np.arange(9 * SR) / SR
    out = {"speechlike 12.3 s": speechlike(12.3), "silence 5 s": np.zeros(5 * SR, np.float32),
           "noise 7 s": (0.1 * rng.standard_normal(7 * SR)).astype(np.float32),
           "voiced to the last frame 9 s": (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32),
           "2 s (the floor)": speechlike(2.0, seed=3)}
    for rel in ("ravdess_subset/Actor_01/03-01-05-02-01-01-01.wav", "ravdess_subset/Actor_02/03-01-03-02-02-02-02.wav"):
        out[rel] = decode_audio(shared_data / rel, SR)
    return out


@pytest.mark.parametrize("feature_set", ["eGeMAPSv02", "GeMAPSv01b", "ComParE_2016"])
def test_two_passes_give_the_one_pass_row_bit_for_bit(shared_data, second_passes, feature_set):
    smile = _smile(feature_set)
    signals = _signals(shared_data) if feature_set == "eGeMAPSv02" else {"speechlike 6.1 s": speechlike(6.1)}
    for name, x in signals.items():
        ref = smile.process_signal(x, SR).to_numpy(np.float32)
        before = len(second_passes)
        rows = smile_stream.process_chunked(smile, x, SR, 3717, two_pass_samples=2 * SR)
        assert len(second_passes) == before + 1, name
        assert rows.values.shape == ref.shape == (1, smile.num_features), name
        np.testing.assert_array_equal(rows.values, ref, err_msg=f"{feature_set}: {name}")
        np.testing.assert_array_equal(rows.times, [[0.0, len(x) / SR]])


def test_clips_under_the_threshold_take_one_pass_and_the_extractor_uses_params(make_config, second_passes):
    """Below `two_pass_seconds` one pass; at or above it, two; the same row either way."""
    audio = speechlike(3.0)
    rows = {}
    for seconds in (60.0, 3.0):
        ex = build_extractor(make_config(extractors={"egemaps": {"two_pass_seconds": seconds}}), "egemaps")
        ex.load()
        rows[seconds] = ex.extract_batch([ClipInput("c", audio=audio)])[0].arrays["features"]
    assert len(second_passes) == 1                 # the 3 s threshold only
    np.testing.assert_array_equal(rows[60.0], rows[3.0])


def test_two_pass_threshold_has_a_floor(make_config):
    """Under 2 s the end-of-input marker (a windowed output row well before the end) is not guaranteed."""
    with pytest.raises(Exception, match="two_pass_seconds"):
        make_config(extractors={"egemaps": {"two_pass_seconds": 0.5}})


def test_split_of_egemaps_and_the_files_a_run_leaves(tmp_path, monkeypatch):
    """eGeMAPSv02 splits at the 7 smoothed levels its 9 output functionals read; the spill files and the
    configs live in a temp dir removed with the run."""
    import tempfile

    smile = _smile("eGeMAPSv02")
    part = smile_functionals.split(Path(smile.config_path), "func")
    assert len(part.levels) == 7 and "gemapsv01b_loudness_smo" in part.levels
    assert len(part.functionals) == 9                     # the two GeMAPS v01b functionals not output are left out
    assert [c.name for c in part.downstream][-1] == "funcconcat"
    assert smile_functionals.split(Path(smile.config_path), "lld") is None    # no whole-clip functionals feed LLDs
    runs = tmp_path / "tmp"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    smile_stream.process_chunked(smile, speechlike(4.0), SR, 4000, two_pass_samples=2 * SR)
    assert list(runs.iterdir()) == []


def test_config_parser_follows_includes_resolves_options_and_keeps_sections(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "buffer.inc").write_text("writer.levelconf.nT = 5\n")
    (tmp_path / "sink.inc").write_text("[componentInstances:cComponentManager]\ninstance[s].type=cExternalSink\n"
                                       "[s:cExternalSink]\nreader.dmLevel = out\n")
    (tmp_path / "part.inc").write_text("[componentInstances:cComponentManager]\ninstance[f].type=cFunctionals\n"
                                       "[f:cFunctionals]\n; a comment\nreader.dmLevel = a;b\nwriter.dmLevel = out\n"
                                       "\\{\\cm[bufferConf{shared/buffer.inc}:help]}\n")
    main = tmp_path / "main.conf"
    main.write_text("[componentInstances:cComponentManager]\ninstance[dataMemory].type=cDataMemory\n"
                    "\\{part.inc}\n\\{\\cm[sink{?}:include external sink]}\n")
    comps = smile_config.parse(main)
    assert list(comps) == ["dataMemory", "f"]
    f = comps["f"]
    assert f.reads == ["a", "b"] and f.writes == "out" and f.type == "cFunctionals"
    body = smile_config.section_body(f.lines, {"bufferConf": str(tmp_path / "shared" / "buffer.inc"),
                                               "sink": str(tmp_path / "sink.inc")})
    assert body[-1] == "\\{" + str(tmp_path / "shared" / "buffer.inc") + "}"      # settings include: kept
    # the sink include the parse met after f's lines brings whole sections: not part of f
    f.lines.append("\\{\\cm[sink{?}:include external sink]}")
    assert smile_config.section_body(f.lines, {"bufferConf": str(tmp_path / "shared" / "buffer.inc"),
                                               "sink": str(tmp_path / "sink.inc")}) == body
    with pytest.raises(ValueError, match="no value and no default"):
        smile_config.resolve("\\cm[nothing]", {})
