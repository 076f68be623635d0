"""Streaming minibatches from the store (pipeline/stream.py, heads.data.StoreModality): the same batches as the
in-memory split, read ahead on a thread, chosen by size (store.stream_over_mb)."""
import csv
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from heads.data import StoreModality, load_head_data, without_split
from pipeline.extractors.base import ClipFeatures
from pipeline.store import FeatureStore
from pipeline.stream import prefetched

N = 40


def _stores(tmp_path):
    rng = np.random.default_rng(0)
    out = {}
    for key, dim, (lo, hi) in (("vggish", 6, (0, 9)), ("egemaps", 4, (1, 1))):
        st = FeatureStore(tmp_path / f"{key}.zarr")
        st.set_current(key, "fp", {"pretrained": True})
        clips = []
        for i in range(N):
            if key == "egemaps" and i % 7 == 3:
                continue   # absent from this store: length 0 in both paths
            t = int(rng.integers(lo, hi + 1))
            clips.append((f"c{i:02d}", ClipFeatures({"features": rng.normal(size=(t, dim)).astype(np.float32)},
                                                    np.zeros((t, 2)))))
        for s in range(0, len(clips), 6):
            st.write_segment(key, "fp", clips[s: s + 6])
        out[key] = st
    table = pd.DataFrame({"clip_id": [f"c{i:02d}" for i in range(N)],
                          "split": ["train"] * 30 + ["val"] * 5 + ["test"] * 5,
                          "labels": [["a", "b"][i % 2] for i in range(N)]})
    return out, table


def test_streamed_batches_equal_in_memory_batches(tmp_path):
    stores, table = _stores(tmp_path)
    mem = load_head_data(table, ["a", "b"], False, stores, max_frames=5)
    big = load_head_data(table, ["a", "b"], False, stores, max_frames=5, stream_over_bytes=0, prefetch_batches=2)
    small = load_head_data(table, ["a", "b"], False, stores, max_frames=5, stream_over_bytes=1e9)
    assert not mem.streamed() and not small.streamed() and big.streamed()
    assert all(isinstance(m, StoreModality) for m in big.modalities.values())
    assert big.meta["streamed_bytes"] == sum(m.x.numel() * 4 for m in mem.modalities.values())
    for k in mem.modalities:
        assert big.modalities[k].dim == mem.modalities[k].dim
        assert torch.equal(big.modalities[k].lengths, mem.modalities[k].lengths)
    keys = ["vggish", "egemaps"]
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    batches = list(torch.split(perm, 8))
    got = list(big.stream(batches, keys))
    assert len(got) == len(batches)
    for b, inputs in zip(batches, got):
        for k in keys:
            x, lengths = mem.modalities[k].take(b)
            assert torch.equal(inputs[k][0], x) and torch.equal(inputs[k][1], lengths)
    # a split view keeps the same rows
    mem_v, big_v = without_split(mem, "test"), without_split(big, "test")
    idx = torch.arange(len(mem_v.clip_ids))
    for k in keys:
        assert torch.equal(big_v.modalities[k].take(idx)[0], mem_v.modalities[k].x)
    # standardisation statistics, summed batch by batch
    tr = big.splits["train"]
    for k in keys:
        m_mean, m_std = mem.input_stats(k, tr, 7)
        s_mean, s_std = big.input_stats(k, tr, 7)
        torch.testing.assert_close(s_mean, m_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s_std, m_std, rtol=1e-5, atol=1e-6)


def test_training_streamed_equals_training_in_memory(tmp_path, make_config):
    """fit_neural on the streamed split gives the same model as on the in-memory one (no standardisation:
    its float64 batch sums differ from torch's one-pass float32 mean in the last bits)."""
    from heads.neural import fit_neural

    stores, table = _stores(tmp_path)
    cfg = make_config(datasets={"toy": {"adapter": "csv", "root": str(tmp_path)}},
                      experiments={"e": {"dataset": "toy", "modalities": ["vggish", "egemaps"], "head": "early_fusion",
                                         "max_frames": 5,
                                         "train": {"epochs": 3, "batch_size": 8, "standardize": False}}})
    exp = cfg.experiments["e"]
    mem = load_head_data(table, ["a", "b"], False, stores, max_frames=5)
    big = load_head_data(table, ["a", "b"], False, stores, max_frames=5, stream_over_bytes=0, prefetch_batches=2)
    fits = [fit_neural("early_fusion", exp, d, ["vggish", "egemaps"], 0, torch.device("cpu"), show_progress=False)
            for d in (mem, big)]
    streamed_state = fits[1].model.state_dict()
    for k, v in fits[0].model.state_dict().items():
        assert torch.equal(v, streamed_state[k]), k
    assert [h["train_loss"] for h in fits[0].history] == [h["train_loss"] for h in fits[1].history]


def test_prefetched_keeps_order_reads_ahead_and_raises_where_it_failed():
    started = []
    gate = threading.Event()

    def read(i):
        started.append(i)
        if i == 0:
            gate.wait(5)
        if i == 4:
            raise RuntimeError("clip 4 unreadable")
        return i * 10

    it = prefetched(range(6), read, depth=2)
    first = None

    def consume():
        nonlocal first
        first = next(it)

    t = threading.Thread(target=consume)
    t.start()
    gate.set()
    t.join(5)
    assert first == 0
    assert next(it) == 10 and next(it) == 20 and next(it) == 30
    with pytest.raises(RuntimeError, match="clip 4 unreadable"):
        next(it)
    assert list(prefetched(range(5), lambda i: -i, depth=0)) == [0, -1, -2, -3, -4]
    early = prefetched(range(1000), lambda i: i, depth=3)
    assert next(early) == 0
    early.close()   # stops the reader thread
    assert not any(th.name == "emocache-prefetch" and th.is_alive() for th in threading.enumerate())


def _streaming_cfg(make_config, tmp_path, stream_over_mb: float, **train):
    tiny = {"epochs": 3, "batch_size": 8, "eval_batch_size": 4, "seeds": [0, 1], "standardize": False,
            "num_threads": 1, "device": "cpu", **train}
    return make_config(
        datasets={"toy": {"adapter": "csv", "root": str(tmp_path)}},
        store={"stream_over_mb": stream_over_mb, "prefetch_batches": 2},
        experiments={"fused": {"dataset": "toy", "modalities": ["vggish", "egemaps"], "head": "early_fusion",
                               "max_frames": 5, "train": tiny, "tune": {"trials": 3, "hidden": [8, 16]}},
                     "late": {"dataset": "toy", "modalities": ["vggish", "egemaps"], "head": "late_fusion",
                              "max_frames": 5, "train": tiny},
                     "logreg": {"dataset": "toy", "modalities": ["vggish", "egemaps"], "head": "logreg",
                                "max_frames": 5, "train": {"seeds": [0], "eval_batch_size": 4}}})


def _same_outputs(a: Path, b: Path) -> None:
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    if "tuning" in ma:   # wall-clock facts of the search
        for m in (ma, mb):
            m["tuning"].pop("seconds")
    assert ma == mb
    sa = torch.load(a / "model.pt", weights_only=True)
    sb = torch.load(b / "model.pt", weights_only=True)
    flat = lambda d, p="": ({f"{p}{k}": v for k, v in d.items() if not isinstance(v, dict)}
                            | {q: w for k, v in d.items() if isinstance(v, dict) for q, w in flat(v, f"{p}{k}.").items()})
    fa, fb = flat(sa), flat(sb)
    assert fa.keys() == fb.keys()
    for k, v in fa.items():
        assert torch.equal(v, fb[k]) if isinstance(v, torch.Tensor) else v == fb[k], k


@pytest.fixture
def store_reads(monkeypatch):
    """The number of clips of every read a StoreModality makes (streamed splits only)."""
    sizes: list[int] = []
    read = StoreModality.read

    def spy(self, idx):
        sizes.append(len(idx))
        return read(self, idx)

    monkeypatch.setattr(StoreModality, "read", spy)
    return sizes


@pytest.mark.parametrize("name", ["fused", "late", "logreg"])
def test_train_streamed_equals_in_memory_for_every_head_path(tmp_path, make_config, name, store_reads):
    """run_experiment above store.stream_over_mb (a tiny threshold): fit, validation passes and the scored
    predictions read the split in batches; metrics and checkpoint bit-identical to the in-memory run."""
    from heads.train import run_experiment

    stores, table = _stores(tmp_path)
    outs, reads = [], []
    for mb in (1e-6, 1e3):
        cfg = _streaming_cfg(make_config, tmp_path, mb)
        out = tmp_path / f"out-{mb:g}"
        run_experiment(cfg, name, stores, table, ["a", "b"], False, out)
        outs.append(out)
        reads.append(list(store_reads))
        store_reads.clear()
    _same_outputs(*outs)
    # streamed: never a whole split (30 train clips) at once, only minibatches (8) and eval batches (4)
    assert reads[0] and max(reads[0]) <= (4 if name == "logreg" else 8) and reads[1] == []


def test_tune_streamed_equals_in_memory(tmp_path, make_config, store_reads):
    """`emocache tune`'s entry point streams a split above store.stream_over_mb: the same trials, the same chosen
    params, the same retrained metrics and checkpoint."""
    from heads.tune import tune_experiment

    stores, table = _stores(tmp_path)
    outs, reads = [], []
    for mb in (1e-6, 1e3):
        cfg = _streaming_cfg(make_config, tmp_path, mb, val_carve=0.2)
        out = tmp_path / f"tune-{mb:g}"
        tune_experiment(cfg, cfg.experiments["fused"], "fused", stores, table, ["a", "b"], False, out)
        outs.append(out)
        reads.append(list(store_reads))
        store_reads.clear()
    _same_outputs(*outs)
    assert reads[0] and max(reads[0]) <= 8 and reads[1] == []
    rows = [[r[:5] + r[6:] for r in csv.reader(open(o / "plots" / "tune_trials.csv"))] for o in outs]   # no seconds
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_streamed_predictions_come_in_eval_batches(tmp_path):
    stores, table = _stores(tmp_path)
    big = load_head_data(table, ["a", "b"], False, stores, max_frames=5, stream_over_bytes=0, prefetch_batches=1)
    mem = load_head_data(table, ["a", "b"], False, stores, max_frames=5)
    seen = []

    def rows(inputs):
        seen.append(len(inputs["vggish"][0]))
        return inputs["vggish"][0].sum((1, 2)).numpy()

    idx = big.splits["train"]
    got = big.batched(rows, idx, ["vggish"], 7)
    assert seen == [7, 7, 7, 7, 2]
    assert np.array_equal(got, mem.batched(rows, idx, ["vggish"], 7)) and seen[-1] == 30   # in memory: one call
