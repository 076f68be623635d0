"""Streaming minibatches from the store (pipeline/stream.py, heads.data.StoreModality): the same batches as the
in-memory split, read ahead on a thread, chosen by size (store.stream_over_mb)."""
import threading

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
