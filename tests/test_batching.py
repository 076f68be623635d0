"""Batches sized for the extractor: text gets many clips per call (not runtime.batch_clips), and its
features do not depend on how clips are grouped into calls or into length buckets."""
import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.batching import decode_free_keys, plan_passes  # noqa: E402
from pipeline.extractors.base import ClipInput, build_extractor  # noqa: E402
from pipeline.worker import ClipRecord, Worker  # noqa: E402

# Float32 round-off only: a different bucket changes the padded width and so the shapes oneDNN blocks its
# matmuls with; over 6 layers of 384-1536-wide sums of O(1) terms that moves outputs by ~1e-6 (measured
# up to 1.9e-6 on 300 MELD utterances with MiniLM, outputs up to 6.2). Masked padding itself contributes exactly zero. 1e-5 leaves
# headroom for other CPUs' kernels while a real batching bug (wrong row, padding attended) is >= 1e-2.
BATCH_ATOL = 1e-5
N_UTTERANCES = 60


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def meld_texts(shared_data):
    with open(shared_data / "meld" / "dev_sent_emo.csv", newline="", encoding="utf-8") as f:
        return [row["Utterance"] for row, _ in zip(csv.DictReader(f), range(N_UTTERANCES))]


def _text_extractor(make_config, batch_size, pooling="mean"):
    cfg = make_config(runtime={"device": "cpu"},
                      extractors={"text": {"model": "minilm-bundled", "batch_size": batch_size, "pooling": pooling}})
    ext = build_extractor(cfg, "text.transcript")
    ext.load()
    return ext


def _features(ext, texts, call_size):
    clips = [ClipInput(clip_id=f"c{i}", text={"transcript": t}) for i, t in enumerate(texts)]
    out = []
    for i in range(0, len(clips), call_size):
        out += [f.arrays["features"][0] for f in ext.extract_batch(clips[i:i + call_size])]
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_features_invariant_to_batch_size_and_grouping(make_config, meld_texts, pooling):
    # reference: one clip per call and batch_size 1 -> no padding at all
    ref = _features(_text_extractor(make_config, 1, pooling), meld_texts, call_size=1)
    assert np.abs(ref).max() > 0.1   # real MiniLM outputs, not zeros
    for batch_size, call_size in [(7, 13), (64, len(meld_texts)), (64, 5), (len(meld_texts), len(meld_texts))]:
        got = _features(_text_extractor(make_config, batch_size, pooling), meld_texts, call_size)
        np.testing.assert_allclose(got, ref, rtol=0, atol=BATCH_ATOL,
                                   err_msg=f"batch_size {batch_size}, {call_size} clips per call")


def test_runner_hands_text_all_clips_at_once_not_batch_clips(make_config, meld_texts, monkeypatch):
    cfg = make_config(runtime={"device": "cpu", "batch_clips": 2, "decode_free_batch_clips": 25},
                      extractors={"text": {"model": "minilm-bundled"}})
    worker = Worker(cfg, ["text.transcript"])
    worker.view.prepare()
    ext = worker.extractors["text.transcript"]
    sizes = []
    real = ext.extract_batch
    monkeypatch.setattr(ext, "extract_batch", lambda clips: sizes.append(len(clips)) or real(clips))
    recs = [ClipRecord(f"m{i}", "d", None, 0.0, None, {"transcript": t}, {}, missing=["text.transcript"])
            for i, t in enumerate(meld_texts)]
    worker.run(recs, show_progress=False)
    assert sizes == [25, 25, len(meld_texts) - 50]   # decode_free_batch_clips per call, not batch_clips = 2
    assert worker.view.present("text.transcript") == {r.clip_id for r in recs}


def test_plan_passes_splits_decode_free_from_decoding_extractors(make_config):
    cfg = make_config(runtime={"device": "cpu", "batch_clips": 3, "decode_free_batch_clips": 100},
                      weights={"allow_untrained": ["vggish"]})
    exts = {s: build_extractor(cfg, s) for s in ("text.transcript", "vggish", "tracks", "faces")}
    assert decode_free_keys(exts) == {"text.transcript"}
    recs = [ClipRecord("a", "d", "a.wav", 0.0, None, {}, {}, missing=["text.transcript", "vggish"]),
            ClipRecord("b", "d", None, 0.0, None, {}, {}, missing=["text.transcript"])]
    (free, n_free), (dec, n_dec) = plan_passes(recs, exts, cfg.runtime)
    assert (n_free, n_dec) == (100, 3)
    assert [(r.clip_id, r.missing) for r in free] == [("a", ["text.transcript"]), ("b", ["text.transcript"])]
    assert [(r.clip_id, r.missing) for r in dec] == [("a", ["vggish"])]
    assert recs[0].missing == ["text.transcript", "vggish"]   # the caller's records are not changed
