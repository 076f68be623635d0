"""`emocache evaluate EXPERIMENT`: score a trained checkpoint on the cached split again, without training.

Uses the checkpoint's own experiment config (modalities, max_frames, thresholds), the dataset's clip table and
the stores, so it reproduces what `train` reported for the kept seed, or shows what changed when the cache did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from emocache.config import Config
from pipeline.errors import UsageError

EVAL_ORDER = ("test", "val", "train")   # the first split with clips is evaluated unless one is named


class EvaluateError(UsageError, RuntimeError):
    pass


def evaluate_experiment(cfg: Config, name: str, models_dir: str | Path = "models",
                        split: Optional[str] = None) -> dict:
    from heads.checkpoint import load_checkpoint
    from heads.data import load_head_data, open_stores, pretrained_flags
    from heads.scoring import score_split
    from pipeline.datasets import read_clip_table

    ckpt = cfg.path(models_dir) / name / "model.pt"
    if not ckpt.is_file():
        raise EvaluateError(f"no checkpoint at {ckpt}; run `emocache train {name}` first")
    head = load_checkpoint(ckpt)
    exp = head.exp
    if exp.dataset not in cfg.datasets:
        raise EvaluateError(f"the checkpoint was trained on dataset {exp.dataset!r}, which params.yaml no longer lists; "
                            f"known: {', '.join(sorted(cfg.datasets))}")
    table, summary = read_clip_table(cfg, exp.dataset)
    if list(summary["labels"]) != list(head.vocab):
        raise EvaluateError(f"dataset {exp.dataset!r} now has labels {summary['labels']} but the checkpoint "
                            f"predicts {head.vocab}: retrain")
    keys = list(head.doc["modalities"])
    stores = open_stores(cfg, keys)
    data = load_head_data(table, head.vocab, head.doc["multilabel"], stores, exp.max_frames,
                          stream_over_bytes=cfg.store.stream_over_mb * 2**20,
                          prefetch_batches=cfg.store.prefetch_batches)   # a split too big for memory: streamed
    if split is None:
        split = next((s for s in EVAL_ORDER if data.has(s)), None)
    if split is None or not data.has(split):
        raise EvaluateError(f"split {split!r} has no clips in dataset {exp.dataset!r}")
    idx = data.splits[split]
    probs = np.asarray(data.batched(head.predict_proba, idx, keys, exp.train.eval_batch_size))
    tuned = head.thresholds if head.doc.get("thresholds") is not None else None   # val-tuned, per class
    m = score_split(data, split, probs, exp.train.threshold, tuned)   # what train scored each seed with
    flags = pretrained_flags(stores, keys)
    out = {"experiment": name, "checkpoint": str(ckpt), "dataset": exp.dataset, "head": head.doc["head"],
           "modalities": keys, "seed": head.doc["seed"], "split": split, "n_clips": int(len(idx)),
           "coverage": data.meta.get("coverage", {}), "pretrained": flags,
           "all_pretrained": all(v is True for v in flags.values()),
           "metrics": {k: v for k, v in m.items() if not isinstance(v, list)},
           "per_class_ap": dict(zip(head.vocab, m["ap"]))}
    if "ra" in m:
        out["per_class_ra"] = dict(zip(head.vocab, m["ra"]))
    if "confusion" in m:
        out["confusion"] = m["confusion"]
    return out
