"""The runner: decode once, skip what is cached, re-extract on change, isolate bad clips."""
import json
import shutil

import numpy as np
import pytest

from emocache.config import Config
from pipeline import media
from pipeline.extractors.base import EXTRACTORS, ClipFeatures, Extractor, WeightsInfo, register
from pipeline.extract import extract
from pipeline.store import FeatureStore


class FrameRMS(Extractor):
    """Test extractor: RMS of 0.5 s audio frames (a real, deterministic computation)."""

    name, family, needs, version = "test_rms", "audio", frozenset({"audio"}), "1"
    config_section = "vggish"      # borrows a real section, so a params change re-keys it
    calls: list = []

    def params(self):
        return {"frame_s": 0.5, "scale": self.section.log_offset}

    def load(self):
        self.weights = WeightsInfo(pretrained=True, sha256="none", source="no weights")
        return self.weights

    def extract_batch(self, clips):
        FrameRMS.calls.append(len(clips))
        out = []
        for c in clips:
            if c.annotation.get("explode"):
                raise RuntimeError(f"boom on {c.clip_id}")
            n = c.sample_rate // 2
            frames = c.audio[: len(c.audio) // n * n].reshape(-1, n)
            rms = np.sqrt((frames ** 2).mean(1, keepdims=True)).astype(np.float32) * self.params()["scale"] / 0.01
            t = np.arange(len(rms)) * 0.5
            out.append(ClipFeatures({"features": rms}, np.stack([t, t + 0.5], 1)))
        return out


class FrameMean(FrameRMS):
    name = "test_mean"

    def params(self):
        return {"statistic": "mean"}

    def extract_batch(self, clips):
        return [ClipFeatures({"features": np.array([[c.audio.mean()]], np.float32)}, [[0, len(c.audio) / c.sample_rate]])
                for c in clips]


@pytest.fixture(autouse=True)
def _register():
    register(FrameRMS)
    register(FrameMean)
    yield
    EXTRACTORS.pop("test_rms", None)
    EXTRACTORS.pop("test_mean", None)


def _cfg(make_config, tmp_path, shared_data, extra_csv_rows="", **over) -> Config:
    root = tmp_path / "media"
    root.mkdir(exist_ok=True)
    for f in ["ravdess_subset/Actor_01/03-01-05-01-01-01-01.wav", "ravdess_subset/Actor_02/03-01-03-02-01-01-02.wav",
              "asterisk_prompts_en/activated.wav", "face_recognition/short_hamilton_clip.mp4"]:
        shutil.copy(shared_data / f, root)
    shutil.copy(shared_data / "opencv_samples/vtest.avi", root / "silent.avi")  # no audio stream
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    rows = ("path,labels,target_time\n03-01-05-01-01-01-01.wav,angry,\n03-01-03-02-01-01-02.wav,happy,\n"
            "activated.wav,neutral,\nshort_hamilton_clip.mp4,happy,\nsilent.avi,neutral,\ncorrupt.wav,sad,\n" + extra_csv_rows)
    (tmp_path / "m.csv").write_text(rows)
    ds = {"adapter": "csv", "root": str(root), "manifest": str(tmp_path / "m.csv"),
          "split": {"method": "random", "val": 0, "test": 0.3}, "extractors": ["test_rms", "test_mean"]}
    return make_config(datasets={"d": ds}, runtime={"batch_clips": 4}, store={"flush_clips": 2}, **over)


def test_extract_skip_and_decode_once(make_config, tmp_path, shared_data):
    cfg = _cfg(make_config, tmp_path, shared_data)
    before = dict(media.DECODE_COUNTER)
    s1 = extract(cfg, ["d"], show_progress=False)
    assert s1.stats["test_rms"].done == 5 and s1.stats["test_rms"].failed == 1   # corrupt.wav
    assert s1.stats["test_rms"].empty == 1                                     # silent.avi: no audio stream
    assert s1.decodes["audio"] == 6          # each file decoded once for both extractors
    assert media.DECODE_COUNTER["audio"] - before["audio"] == 6
    fail = s1.failures[0]
    assert fail["path"].endswith("corrupt.wav") and fail["stage"] == "decode" and "corrupt.wav" in fail["error"]
    st = FeatureStore(str(tmp_path / "cache" / "audio.zarr"))
    assert {f["clip_id"] for f in st.failures()} == {fail["clip_id"]}
    rows = st.read("test_rms", list(st.index("test_rms")))
    expected = sorted([0] + [len(media.decode_audio(tmp_path / "media" / f)) // 8000 for f in
                             ["03-01-05-01-01-01-01.wav", "03-01-03-02-01-01-02.wav", "activated.wav",
                              "short_hamilton_clip.mp4"]])
    assert sorted(r.arrays["features"].shape[0] for r in rows) == expected == [0, 2, 7, 7, 19]
    # second run: nothing missing except the failed clip, which is retried (and fails again)
    s2 = extract(cfg, ["d"], show_progress=False)
    assert s2.stats["test_rms"].done == 0 and s2.stats["test_rms"].skipped == 5
    assert s2.decodes["audio"] == 1   # only the failed clip is retried


def test_param_change_reextracts_that_extractor_only(make_config, tmp_path, shared_data):
    cfg = _cfg(make_config, tmp_path, shared_data)
    extract(cfg, ["d"], show_progress=False)
    cfg2 = cfg.model_copy(deep=True)
    cfg2.extractors.vggish.log_offset = 0.02          # test_rms puts this in its params
    s = extract(cfg2, ["d"], show_progress=False)
    assert s.stats["test_rms"].done == 5 and s.stats["test_mean"].skipped == 5
    st = FeatureStore(str(tmp_path / "cache" / "audio.zarr"))
    assert len(st.fingerprints("test_rms")) == 2 and len(st.fingerprints("test_mean")) == 1


def test_bad_clip_in_batch_is_isolated(make_config, tmp_path, shared_data):
    cfg = _cfg(make_config, tmp_path, shared_data)
    (tmp_path / "m.csv").write_text((tmp_path / "m.csv").read_text().replace("activated.wav,neutral,", "activated.wav,neutral,1"))
    cfg.datasets["d"].columns = {"target_time": "target_time"}
    # explode via annotation: reuse target_time column as the trigger
    orig = FrameRMS.extract_batch

    def exploding(self, clips):
        for c in clips:
            if c.annotation.get("target_time") == 1.0:
                raise RuntimeError(f"boom on {c.clip_id}")
        return orig(self, clips)

    FrameRMS.extract_batch = exploding
    try:
        s = extract(cfg, ["d"], show_progress=False)
    finally:
        FrameRMS.extract_batch = orig
    assert s.stats["test_rms"].failed == 2 and s.stats["test_rms"].done == 4   # corrupt + boom
    assert s.stats["test_mean"].done == 5
    assert any("boom on" in f["error"] and f["stage"] == "extract" for f in s.failures)


def test_same_clip_in_two_datasets_is_extracted_once(make_config, tmp_path, shared_data):
    cfg = _cfg(make_config, tmp_path, shared_data)
    d2 = cfg.datasets["d"].model_copy(deep=True)
    cfg.datasets["d2"] = d2
    s = extract(cfg, ["d", "d2"], show_progress=False)
    assert s.stats["test_rms"].done == 5 and s.decodes["audio"] == 6


def test_orchestrator_executors_worker_import_downward_only():
    """extract (plans, picks the executor) -> executors -> worker / store view: no module imports one above it,
    and Ray is imported only by the Ray executor."""
    import subprocess
    import sys

    def loaded(module: str) -> set[str]:
        code = (f"import sys, {module}; print(' '.join(m for m in sys.modules if m == 'ray' "
                f"or m.startswith(('pipeline.', 'emocache.cli'))))")
        return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())

    above = {"pipeline.worker": {"pipeline.extract", "pipeline.executors.base", "pipeline.executors.local",
                                 "pipeline.executors.ray_cluster"},
             "pipeline.store_view": {"pipeline.extract", "pipeline.worker", "pipeline.executors.base"},
             "pipeline.executors.local": {"pipeline.extract", "pipeline.executors.ray_cluster"},
             "pipeline.executors.ray_cluster": {"pipeline.extract", "pipeline.executors.local"}}
    for module, forbidden in above.items():
        got = loaded(module)
        assert module in got and not got & forbidden, f"{module} loads {sorted(got & forbidden)}"
    assert "ray" not in loaded("pipeline.extract") and "ray" not in loaded("pipeline.executors.ray_cluster")
