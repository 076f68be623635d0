"""Cached fine-tuning benchmark: what token states cost per clip, and whether reading them keeps up with training.

On N real MELD utterances (train split, in file order) with the bundled all-MiniLM-L6-v2, one thread:
  1. extraction: text_states (embeddings + layers 1..L, fp16 rows into a fresh store) vs the frozen sentence
     vector (text, all 6 layers + pooling); both through the runner's extractor API and the store
  2. disk per clip (store bytes / N) and memory per clip (the padded float32 (N, T, D) tensor heads hold)
  3. reading: heads.data.read_modality of all N clips (what `emocache train` does once per run)
  4. training: one epoch of finetune_top (the layers above L, `--trainable` of them learning, + the MLP),
     with length chunks (finetune.length_chunks) and without (one padded batch)
Prints the ratios read / epoch (goal: reading is a small fraction of one epoch, and it happens once per run, not
per epoch) and epoch with chunks / without.

    python benchmarks/finetune_cache.py [--clips 1000] [--layer 4] [--trainable 2] [--batch 128] [--chunks 4]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MELD = ("../shared/data/meld/train_sent_emo.csv", "/work/shared/data/meld/train_sent_emo.csv")


def meld_texts(n: int) -> list[str]:
    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    path = next((root / p for p in MELD if (root / p).is_file()), None)
    if path is None:
        raise SystemExit(f"MELD not found at {MELD}: lay shared/ beside the repo (see tests/conftest.py)")
    return pd.read_csv(path)["Utterance"].astype(str).tolist()[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--layer", type=int, default=4, help="extractors.text_states.layer")
    ap.add_argument("--trainable", default="all", help="finetune.layers_trainable")
    ap.add_argument("--batch", type=int, default=128, help="training minibatch (the auto recipe's for MELD)")
    ap.add_argument("--chunks", type=int, default=4, help="finetune.length_chunks")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from emocache.config import Config
    from heads.data import read_modality
    from heads.finetune import Backbone, FinetuneTopModel
    from pipeline.extractors.base import ClipInput, build_extractor
    from pipeline.store import FeatureStore

    texts = meld_texts(args.clips)
    clips = [ClipInput(clip_id=f"m{i:05d}", text={"transcript": t}) for i, t in enumerate(texts)]
    cfg = Config.model_validate({"runtime": {"device": "cpu", "num_threads": 1},
                                 "extractors": {"text": {"model": "minilm-bundled", "pooling": "model"},
                                                "text_states": {"layer": args.layer, "dtype": "fp16"}}})
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for spec in ("text.transcript", "text_states.transcript"):
            ext = build_extractor(cfg, spec)
            ext.load()
            store = FeatureStore(Path(tmp) / f"{ext.family}.zarr")
            t0 = time.perf_counter()
            feats = ext.extract_batch(clips)
            store.write_segment(ext.key, ext.fingerprint(), [(c.clip_id, f) for c, f in zip(clips, feats)])
            store.set_current(ext.key, ext.fingerprint(), ext.metadata())
            out[spec] = (time.perf_counter() - t0, store, ext)
        (t_vec, vec_store, _), (t_states, st_store, st_ext) = out["text.transcript"], out["text_states.transcript"]
        ids = [c.clip_id for c in clips]

        t0 = time.perf_counter()
        mod = read_modality(st_store, "text_states.transcript", ids, cfg.extractors.text.max_length)
        t_read = time.perf_counter() - t0
        tokens = int(mod.lengths.sum())

        exp_raw = {"dataset": "x", "modalities": ["text_states.transcript"], "head": "finetune_top",
                   "max_frames": cfg.extractors.text.max_length,
                   "finetune": {"layers_trainable": args.trainable if args.trainable == "all" else int(args.trainable),
                                "length_chunks": args.chunks}}
        from emocache.config import ExperimentConfig

        top = Backbone(*_backbone_parts(st_ext))
        epochs = {}
        for chunks in (args.chunks, 1):
            exp = ExperimentConfig.model_validate({**exp_raw, "finetune": {**exp_raw["finetune"], "length_chunks": chunks}})
            model = FinetuneTopModel("text_states.transcript", top, exp, 7)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            y = torch.randint(0, 7, (len(ids),), generator=torch.Generator().manual_seed(0))
            perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
            model.train()
            t0 = time.perf_counter()
            for b in torch.split(perm, args.batch):
                loss = torch.nn.functional.cross_entropy(model({"text_states.transcript": mod.take(b)}), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            epochs[chunks] = time.perf_counter() - t0

        n, dim = len(ids), mod.dim
        disk_states, disk_vec = st_store.size_bytes() / n, vec_store.size_bytes() / n
    print(f"{n} MELD utterances, all-MiniLM-L6-v2, states after layer {args.layer}, 1 thread; "
          f"{tokens / n:.1f} tokens/clip (max {int(mod.lengths.max())})")
    print(f"extraction: sentence vectors {t_vec:.1f} s, token states {t_states:.1f} s "
          f"({t_states / t_vec:.2f}x: layers 1..{args.layer} of 6, no pooling)")
    print(f"disk per clip: states {disk_states / 1024:.1f} KiB (fp16 rows {tokens / n * dim * 2 / 1024:.1f} "
          f"KiB + times + index), sentence vector {disk_vec / 1024:.2f} KiB")
    print(f"memory per clip in training: {mod.x.numel() * 4 / n / 1024:.1f} KiB (padded float32 to the longest clip; "
          f"real tokens {tokens / n * dim * 4 / 1024:.1f} KiB)")
    print(f"read all {n} clips: {t_read:.2f} s ({n / t_read:.0f} clips/s), once per run")
    print(f"one epoch, trainable {args.trainable} of {6 - args.layer} layers, batch {args.batch}: "
          f"{epochs[args.chunks]:.1f} s with {args.chunks} length chunks, {epochs[1]:.1f} s padded to the batch max "
          f"({epochs[1] / epochs[args.chunks]:.2f}x faster)")
    print(f"read / one epoch = {t_read / epochs[args.chunks]:.3f}; bottom layers saved per epoch ~ "
          f"{t_states:.1f} s of extraction")


def _backbone_parts(ext):
    """Backbone fields straight from a loaded extractor (Backbone.from_store needs a filled store and params)."""
    import copy

    from pipeline.extractors.text_states import encoder_layers

    conf = copy.deepcopy(ext.model.config)
    layers = copy.deepcopy(encoder_layers(ext.model)[ext.sc.layer:])
    conf.num_hidden_layers = len(layers)
    spec = ext.pool_spec or {"mode": ext.tc.pooling, "normalize": ext.tc.normalize}
    return conf.to_json_string(), ext.sc.layer, spec["mode"], bool(spec["normalize"]), layers


if __name__ == "__main__":
    main()
