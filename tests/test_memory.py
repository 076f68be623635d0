"""Bounded memory: frames per clip capped (media.max_frames), over-long clips recorded instead of decoded
(media.max_clip_seconds), decode-ahead capped by bytes (media.decode_ahead_mb). Peak RSS against clip
length is measured by benchmarks/memory.py; these tests check the mechanisms on tiny generated media."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline import media
from pipeline.extract import extract
from pipeline.worker import prefetch_batches
from pipeline.store import FeatureStore


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("mem") / "twenty_seconds.mp4"
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=f=300:sample_rate=16000",
                    "-t", "20", "-c:v", "mpeg4", "-c:a", "aac", str(p)], check=True, stdin=subprocess.DEVNULL,
                   timeout=60)
    return p


def test_max_frames_samples_a_long_clip_down_evenly(long_clip):
    all_frames, t_all = media.decode_frames(long_clip, fps=10, max_side=64)
    capped, t = media.decode_frames(long_clip, fps=10, max_side=64, max_frames=50)
    assert len(all_frames) == 200
    assert len(capped) == 50 and capped.shape[1:] == all_frames.shape[1:]
    np.testing.assert_allclose(np.diff(t), 20 / 50)                     # spread over the whole clip
    assert t[-1] == pytest.approx(20 - 20 / 50)
    short, _ = media.decode_frames(long_clip, fps=10, max_side=64, end=3.0, max_frames=50)
    assert len(short) == 30                                             # under the cap: unchanged


def test_audio_is_read_without_a_copy(long_clip):
    a = media.decode_audio(long_clip, info=media.probe(long_clip))
    assert a.dtype == np.float32 and abs(len(a) / 16000 - 20) < 0.05 and a.flags.writeable


def test_over_long_clip_is_recorded_not_decoded(long_clip, tmp_path, make_config):
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels"], [long_clip.name, "x"]])
    cfg = make_config(media={"max_clip_seconds": 5},
                      datasets={"long": {"adapter": "csv", "root": str(long_clip.parent), "manifest": str(manifest),
                                         "split": {"method": "random", "val": 0.0, "test": 0.0},
                                         "extractors": ["egemaps"]}})
    before = dict(media.DECODE_COUNTER)
    s = extract(cfg, ["long"], show_progress=False)
    assert media.DECODE_COUNTER == before                               # nothing decoded
    assert s.stats["egemaps"].failed == 1 and s.stats["egemaps"].done == 0
    (f,) = s.failures
    assert f["stage"] == "decode" and long_clip.name in f["error"]
    assert "over media.max_clip_seconds = 5" in f["error"] and "20 s long" in f["error"]
    st = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), "audio")
    assert [r["error"] for r in st.failures()] == [f["error"]]
    assert st.has("egemaps", st.current_fingerprint("egemaps")) == set()


def test_decode_ahead_waits_when_the_current_batch_is_big():
    import threading

    for cap, expect_ahead in ((10 ** 9, True), (100, False)):
        done = [threading.Event() for _ in range(3)]

        def decode(i):
            done[i].set()
            return (type("C", (), {"audio": np.zeros(1000, np.float32), "frames": None})(), {}, {})

        seen = []
        for batch, decoded in prefetch_batches([[0], [1], [2]], decode, 1, max_ahead_bytes=cap):
            if batch == [0]:   # while batch 0 (4000 bytes) is being processed, is batch 1 decoding?
                seen.append(done[1].wait(timeout=5 if expect_ahead else 0.5))
            decoded.clear()
        assert seen == [expect_ahead], (cap, seen)
        assert all(e.is_set() for e in done)
