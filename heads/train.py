"""Train one experiment's head on cached features, once per seed, and write metrics, plot data and a checkpoint.

    run_experiment(cfg, name, stores, clip_table, vocab, multilabel, out_dir) -> metrics dict

Per seed: the experiment's head kind (heads/registry.py) fits on train, choosing on val when there is one
(carved out of train when the clip table has none, train.val_carve); nothing here depends on the kind.
Results are reported as mean ± std over TrainConfig.seeds on the test split (val when there is no test split,
train when there is neither, named in "eval_split"), scored by heads/scoring.py as `evaluate` scores them.

Two files per run: metrics.json holds only what (code, params, data) determine, plus a "provenance" block
(feature fingerprints, params hash, package versions, thread/device settings) that is equal on every run in
one environment; run.json holds the run's facts (timings, git commit, dirty flag, when), which change every run
and therefore stay out of DVC's metrics.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import torch

from heads.config import HeadsConfig, ExperimentConfig, TrainConfig
from heads import plots
from heads.chance import chance_levels
from heads.checkpoint import save_checkpoint
from heads.data import HeadData, carve_validation, load_head_data, pretrained_flags
from heads.metrics import summarize, tune_thresholds
from heads.neural import resolve_device
from heads.registry import FitRecord, head_kind
from heads.scoring import probability_metric, score_split, truth, val_score
from pipeline.extractors.base import weights_label
from pipeline.provenance import git_state, package_versions, params_hash
from pipeline.threads import for_training

EVAL_SPLITS = ("val", "test")
RUN_FACTS = ("train_seconds", "seed_seconds")    # change on every run: run.json only, never metrics.json


@dataclass
class SeedRun:
    seed: int
    probs: dict[str, np.ndarray]            # split -> (N_split, C)
    state: dict                             # what the checkpoint stores for this head kind (HeadKind.state)
    record: FitRecord                       # epochs, history, seconds, kind-specific facts


# ---------------------------------------------------------------- one seed
def run_seed(kind: str, exp: ExperimentConfig, data: HeadData, seed: int, device: torch.device) -> SeedRun:
    keys = list(exp.modalities)
    head = head_kind(kind).fit(exp, data, keys, seed, device)
    probs = {s: data.batched(head.predict_proba, data.splits[s], keys, exp.train.eval_batch_size)
             for s in ("train", *EVAL_SPLITS) if data.has(s)}
    return SeedRun(seed, probs, head.state(), head.record)


# ---------------------------------------------------------------- metrics of one seed
def seed_metrics(run: SeedRun, data: HeadData, split: str, tc: TrainConfig) -> tuple[dict, Optional[np.ndarray]]:
    """(metrics on `split`, per-class thresholds tuned on val or None)."""
    thresholds = None
    if data.multilabel and tc.tune_thresholds and data.has("val"):
        thresholds = tune_thresholds(truth(data, "val"), run.probs["val"], tc.threshold)
    return score_split(data, split, run.probs[split], tc.threshold, thresholds), thresholds


# ---------------------------------------------------------------- the experiment
def run_experiment(cfg: HeadsConfig, name: str, stores: Mapping[str, object], clip_table: pd.DataFrame,
                   vocab: list[str], multilabel: bool, out_dir: str | Path,
                   pretrained: Optional[Mapping[str, Optional[bool]]] = None) -> dict:
    """stores: {store key: FeatureStore} for (at least) the experiment's modalities. `pretrained`: whether each
    key's extractor ran with pretrained weights (read from the stores' metadata when not given)."""
    exp = cfg.experiments[name]
    missing = [k for k in exp.modalities if k not in stores]
    if missing:
        raise KeyError(f"experiment {name!r}: no store given for {missing}")
    data = load_head_data(clip_table, vocab, multilabel, {k: stores[k] for k in exp.modalities}, exp.max_frames,
                          stream_over_bytes=cfg.store.stream_over_mb * 2**20,
                          prefetch_batches=cfg.store.prefetch_batches)
    flags = dict(pretrained) if pretrained is not None else pretrained_flags(stores, exp.modalities)
    features = {}
    for k in exp.modalities:
        fp = getattr(stores[k], "current_fingerprint", lambda _k: None)(k)
        meta = stores[k].meta(k) if fp else {}
        w = meta.get("weights") or {}
        features[k] = {"fingerprint": fp, "weights": weights_label(meta.get("pretrained"), w.get("learned", True)),
                       "made_with": meta.get("versions")}
    provenance = {"params_sha256": params_hash(exp, cfg.datasets[exp.dataset]), "features": features}
    data.meta.update(head_kind(exp.head).prepare(cfg, stores, exp))
    return train_on_data(exp, data, out_dir, name=name, pretrained=flags, provenance=provenance)


def train_on_data(exp: ExperimentConfig, data: HeadData, out_dir: str | Path, name: str = "experiment",
                  pretrained: Optional[Mapping[str, Optional[bool]]] = None,
                  provenance: Optional[dict] = None, extra: Optional[dict] = None) -> dict:
    """extra: more top-level keys for the metrics JSON (tune: the chosen params)."""
    tc, kind, keys = exp.train, exp.head, list(exp.modalities)
    if not data.has("train"):
        raise ValueError(f"experiment {name!r}: the clip table has no train split")
    data = carve_validation(data, tc.val_carve)
    for_training(tc.num_threads)   # small heads: 1 thread unless train.num_threads says otherwise
    device = resolve_device(tc) if head_kind(kind).uses_device else torch.device("cpu")
    eval_split = next((s for s in ("test", "val") if data.has(s)), "train")

    runs = [run_seed(kind, exp, data, seed, device) for seed in tc.seeds]
    per_seed, per_seed_val, thresholds = [], [], []
    for run in runs:
        m, thr = seed_metrics(run, data, eval_split, tc)
        per_seed.append(m)
        thresholds.append(thr)
        if data.has("val") and eval_split != "val":
            per_seed_val.append(seed_metrics(run, data, "val", tc)[0])
    summary = summarize(per_seed)

    # the checkpoint keeps the seed that scored best on val (the first seed when there is no val split)
    chosen = 0
    if data.has("val"):
        metric = probability_metric(tc, data.multilabel)
        chosen = int(np.argmax([val_score(data, r.probs["val"], metric, tc) for r in runs]))
    out_dir = Path(out_dir)
    ckpt = save_checkpoint(out_dir / "model.pt", head=kind, exp=exp, vocab=data.vocab, multilabel=data.multilabel,
                           input_dims={k: data.modalities[k].dim for k in keys}, seed=runs[chosen].seed,
                           thresholds=thresholds[chosen].tolist() if thresholds[chosen] is not None else None,
                           state=runs[chosen].state)

    flags = {k: (None if pretrained is None else pretrained.get(k)) for k in keys}
    seconds = [r.record.seconds for r in runs]
    result = {
        "experiment": name, "dataset": exp.dataset, "head": kind, "modalities": keys,
        "multilabel": data.multilabel, "classes": data.vocab,
        "n_clips": {s: int(len(i)) for s, i in data.splits.items()},
        "coverage": data.meta.get("coverage", {}),
        "val_carved": data.meta.get("val_carved"),
        "eval_split": eval_split, "seeds": list(tc.seeds),
        "pretrained": flags, "all_pretrained": all(v is True for v in flags.values()),
        "metrics": {k: v for k, v in summary.items() if k not in ("ap", "ra", "confusion")
                    and not k.startswith("ra_")},
        "per_class_ap": {c: {"mean": summary["ap"]["mean"][i], "std": summary["ap"]["std"][i]}
                         for i, c in enumerate(data.vocab)},
        "best_epoch": [r.record.best_epoch for r in runs],
        "epochs_run": [r.record.epochs_run for r in runs],
        "schedule": runs[0].record.schedule,
        "train_seconds": {"mean": float(np.mean(seconds)), "total": float(sum(seconds))},
        "seed_seconds": seconds,
        "checkpoint": {"path": str(ckpt.name), "seed": runs[chosen].seed},
        # per-seed headline values: `emocache compare` reads them; DVC skips lists, so no diff noise
        "per_seed": {k: [m[k] for m in per_seed] for k in per_seed[0] if isinstance(per_seed[0][k], float)},
        "chance": chance_levels(data.y[data.splits["train"]].numpy(), data.y[data.splits[eval_split]].numpy(),
                                data.vocab, data.multilabel),
        "provenance": {**(provenance or {}), "versions": package_versions(),
                       "runtime": {"device": device.type, "train_device_setting": tc.device,
                                   "torch_threads": torch.get_num_threads(), "num_threads_setting": tc.num_threads}},
    }
    if data.multilabel:
        result["per_class_ra"] = {c: summary["ra"]["mean"][i] for i, c in enumerate(data.vocab)}
    else:
        result["confusion"] = summary["confusion"]   # summed over seeds; rows = true class
    if per_seed_val:
        result["val_metrics"] = {k: v for k, v in summarize(per_seed_val).items()
                                 if isinstance(v, dict) and not isinstance(v["mean"], list)}
    result.update(head_kind(kind).result_extras([r.record for r in runs], keys))
    if data.multilabel and thresholds[chosen] is not None:
        result["thresholds"] = dict(zip(data.vocab, thresholds[chosen].tolist()))
    result.update(extra or {})

    _write_plots(out_dir / "plots", runs, chosen, data, eval_split, summary, tc)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k not in RUN_FACTS},
                                                     indent=2, default=_jsonable))
    run = {"experiment": name, **{k: result[k] for k in RUN_FACTS}, "git": git_state(),
           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out_dir / "run.json").write_text(json.dumps(run, indent=2, default=_jsonable))
    return result


def _write_plots(d: Path, runs: list[SeedRun], chosen: int, data: HeadData, split: str, summary: dict,
                 tc: TrainConfig) -> None:
    idx = data.splits[split]
    y = data.y[idx].numpy()
    probs = runs[chosen].probs[split]
    plots.write_loss_curves(d / "loss.csv", [h for r in runs for h in r.record.history])
    plots.write_pr_curves(d / "pr_curves.csv", y, probs, data.vocab, tc.pr_curve_points)
    plots.write_per_class(d / "per_class_ap.csv", data.vocab, {"ap_mean": summary["ap"]["mean"],
                                                               "ap_std": summary["ap"]["std"]})
    if not data.multilabel:
        plots.write_confusion(d / "confusion.csv", y.argmax(1), probs.argmax(1), data.vocab)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
