"""Train one experiment's head on cached features, once per seed, and write metrics, plot data and a checkpoint.

    run_experiment(cfg, name, stores, clip_table, vocab, multilabel, out_dir) -> metrics dict

Per seed: the schedule of the experiment's recipe (heads/schedule.py: sized to the training set, warm-up +
decay, early stopping on the validation score); when a val split exists (carved out of train when the clip
table has none, train.val_carve) the epoch with the best validation score is kept (early model choice). Results are reported as mean ± std over TrainConfig.seeds on the test split
(val when there is no test split, train when there is neither, named in "eval_split").

Two files per run: metrics.json holds only what (code, params, data) determine, plus a "provenance" block
(feature fingerprints, params hash, package versions, thread/device settings) that is equal on every run in
one environment; run.json holds the run's facts (timings, git commit, dirty flag, when), which change every run
and therefore stay out of DVC's metrics.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import torch

from emocache.config import Config, ExperimentConfig, TrainConfig
from emocache.progress import progress
from heads import plots
from heads.baselines import LogRegHead
from heads.chance import chance_levels
from heads.checkpoint import save_checkpoint
from heads.data import HeadData, carve_validation, load_head_data, pretrained_flags
from heads.fusion import fuse, fusion_weights
from heads.losses import build_loss
from heads.metrics import multilabel_metrics, selection_score, singlelabel_metrics, summarize, tune_thresholds
from heads.models import NEURAL_HEADS, FusionHead, build_head, predict_logits, probabilities
from heads.schedule import EarlyStopper, Schedule, make_optimizer, make_scheduler, resolve_schedule
from pipeline.extractors.base import weights_label
from pipeline.provenance import git_state, package_versions, params_hash
from pipeline.threads import for_training

EVAL_SPLITS = ("val", "test")
THRESHOLD_METRICS = ("ra", "mRA", "Mean", "f1_macro", "f1_micro", "f1_weighted", "f1_samples", "jaccard")
RUN_FACTS = ("train_seconds", "seed_seconds")    # change on every run: run.json only, never metrics.json


@dataclass
class Fit:
    model: FusionHead
    history: list[dict]
    best_epoch: int
    seconds: float
    schedule: Optional[Schedule] = None
    epochs_run: int = 0


@dataclass
class SeedRun:
    seed: int
    probs: dict[str, np.ndarray]            # split -> (N_split, C)
    state: dict                             # what the checkpoint stores for this head kind
    history: list[dict] = field(default_factory=list)
    best_epoch: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    fusion: Optional[dict] = None
    epochs_run: dict[str, int] = field(default_factory=dict)
    schedule: Optional[dict] = None


# ---------------------------------------------------------------- setup
def resolve_device(tc: TrainConfig) -> torch.device:
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if tc.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(tc.device)


def select_metric(tc: TrainConfig, multilabel: bool) -> str:
    if tc.select_metric != "auto":
        return tc.select_metric
    return "mean" if multilabel else "f1_weighted"   # seed 000 Mean; weighted F1 for single-label (seeds 001/004)


def minibatches(perm: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Chunks of `size`; a trailing chunk of one clip joins the previous one (BatchNorm needs two)."""
    chunks = list(torch.split(perm, size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


# ---------------------------------------------------------------- neural heads
def fit_neural(kind: str, exp: ExperimentConfig, data: HeadData, keys: list[str], seed: int,
               device: torch.device, on_eval=None, show_progress: bool = True) -> Fit:
    """on_eval(epoch, val_score), when given, is called after each validation pass (tuning prunes through it)."""
    tc = exp.train
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    train_idx = data.splits["train"]
    model = build_head(kind, exp, {k: data.modalities[k].dim for k in keys}, data.n_classes)
    if tc.standardize:
        model.set_input_stats({k: data.input_stats(k, train_idx, tc.eval_batch_size) for k in keys})
    model.to(device)
    loss_fn = build_loss(tc, data.vocab, data.multilabel, data.y[train_idx]).to(device)
    schedule = resolve_schedule(tc, len(train_idx))
    opt = make_optimizer(model.parameters(), schedule)
    sched = make_scheduler(opt, schedule)
    stopper = EarlyStopper(schedule.early_stop_patience if data.has("val") else 0)
    epochs = schedule.epochs

    streamed = data.streamed(keys)   # a split larger than memory: minibatches come from the store
    inputs = {} if streamed else {k: tuple(t.to(device) for t in data.modalities[k].take(train_idx)) for k in keys}
    targets = data.targets(train_idx).to(device)
    has_val = data.has("val")
    if has_val:
        val_idx = data.splits["val"]
        val_inputs = data.inputs(val_idx, keys)
        val_targets = data.targets(val_idx).to(device)
        val_y = data.y[val_idx].numpy() if data.multilabel else data.targets(val_idx).numpy()
        metric = select_metric(tc, data.multilabel)

    history, best_state, best_epoch, epoch = [], None, epochs, 0
    n = len(train_idx)
    t0 = time.perf_counter()
    desc = f"train {kind} {'+'.join(keys)} seed {seed}"
    with progress(total=epochs, desc=desc, unit="epoch", enabled=show_progress) as bar:   # log lines when not on a TTY
        for epoch in range(1, epochs + 1):
            model.train()
            total = torch.zeros((), device=device)
            batches = minibatches(torch.randperm(n, generator=order).to(device), schedule.batch_size)
            feed = (data.stream([train_idx[b.cpu()] for b in batches], keys) if streamed
                    else ({k: (x[b], l[b]) for k, (x, l) in inputs.items()} for b in batches))
            for b, batch in zip(batches, feed):
                if streamed:
                    batch = {k: (x.to(device), l.to(device)) for k, (x, l) in batch.items()}
                loss = loss_fn(model(batch), targets[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(b)   # no host sync per step
            row = {"epoch": epoch, "train_loss": float(total) / n}
            if has_val and (epoch % tc.eval_every == 0 or epoch == epochs):
                logits = predict_logits(model, val_inputs, tc.eval_batch_size, device)
                val_loss = float(loss_fn(logits, val_targets))
                probs = probabilities(logits, data.multilabel).cpu().numpy()
                score = -val_loss if metric == "loss" else selection_score(metric, data.multilabel, val_y, probs,
                                                                          tc.threshold)
                row.update(val_loss=val_loss, val_score=score)
                if stopper.update(epoch, score):   # first epoch reaching the best score wins
                    best_epoch = epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if on_eval is not None:
                    on_eval(epoch, score)
            history.append(row)
            bar.update(1)
            bar.set_postfix_str(f"loss {row['train_loss']:.4f}")
            if stopper.should_stop(epoch):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return Fit(model, history, best_epoch, time.perf_counter() - t0, schedule, epoch)


def _split_probs(model: FusionHead, data: HeadData, keys: list[str], tc: TrainConfig,
                 device: torch.device) -> dict[str, np.ndarray]:
    return {s: probabilities(predict_logits(model, data.inputs(data.splits[s], keys), tc.eval_batch_size, device),
                             data.multilabel).cpu().numpy()
            for s in ("train", *EVAL_SPLITS) if data.has(s)}


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- one seed, per head kind
def run_seed(kind: str, exp: ExperimentConfig, data: HeadData, seed: int, device: torch.device) -> SeedRun:
    keys, tc = list(exp.modalities), exp.train
    if kind in NEURAL_HEADS:
        fit = fit_neural(kind, exp, data, keys, seed, device)
        return SeedRun(seed, _split_probs(fit.model, data, keys, tc, device), {"state_dict": _cpu_state(fit.model)},
                       [dict(h, seed=seed, modality="+".join(keys)) for h in fit.history],
                       {"+".join(keys): fit.best_epoch}, fit.seconds, epochs_run={"+".join(keys): fit.epochs_run},
                       schedule=fit.schedule.as_dict())
    if kind == "late_fusion":
        return _late_fusion_seed(exp, data, keys, seed, device)
    if kind == "logreg":
        t0 = time.perf_counter()
        tr = data.splits["train"]
        y = data.y[tr].numpy() if data.multilabel else data.targets(tr).numpy()
        head = LogRegHead(exp.logreg, data.multilabel, data.n_classes, seed).fit(data.inputs(tr, keys), y)
        probs = {s: head.predict_proba(data.inputs(data.splits[s], keys)) for s in ("train", *EVAL_SPLITS)
                 if data.has(s)}
        return SeedRun(seed, probs, {"logreg": head.state()}, seconds=time.perf_counter() - t0)
    raise ValueError(f"unknown head {kind!r}")


def _late_fusion_seed(exp: ExperimentConfig, data: HeadData, keys: list[str], seed: int,
                      device: torch.device) -> SeedRun:
    """Seed 000: an independent MLP per modality, probabilities averaged with weights summing to 1."""
    tc = exp.train
    per_key, states, history, best, seconds, ran = {}, {}, [], {}, 0.0, {}
    for k in keys:
        fit = fit_neural("mlp", exp, data, [k], seed, device)
        per_key[k] = _split_probs(fit.model, data, [k], tc, device)
        states[k] = _cpu_state(fit.model)
        history += [dict(h, seed=seed, modality=k) for h in fit.history]
        best[k], seconds, ran[k] = fit.best_epoch, seconds + fit.seconds, fit.epochs_run
    val_probs = [per_key[k]["val"] for k in keys] if data.has("val") else None
    val_y = (data.y[data.splits["val"]].numpy() if data.multilabel else data.targets(data.splits["val"]).numpy()) \
        if val_probs is not None else None
    metric = select_metric(tc, data.multilabel)
    if metric == "loss":
        metric = "mean" if data.multilabel else "accuracy"   # fused probabilities have no training loss
    weights, source = fusion_weights(exp.late_fusion_weights, val_probs,
                                     lambda p: selection_score(metric, data.multilabel, val_y, p, tc.threshold),
                                     exp.late_fusion_grid_step, len(keys))
    fused = {s: fuse([per_key[k][s] for k in keys], weights) for s in per_key[keys[0]]}
    return SeedRun(seed, fused, {"heads": states, "fusion_weights": weights.tolist()}, history, best, seconds,
                   {"weights": dict(zip(keys, weights.tolist())), "source": source}, ran, fit.schedule.as_dict())


# ---------------------------------------------------------------- metrics of one seed
def seed_metrics(run: SeedRun, data: HeadData, split: str, tc: TrainConfig) -> tuple[dict, Optional[np.ndarray]]:
    """(metrics on `split`, per-class thresholds tuned on val or None)."""
    idx = data.splits[split]
    if not data.multilabel:
        return singlelabel_metrics(data.targets(idx).numpy(), run.probs[split]), None
    y = data.y[idx].numpy()
    out = multilabel_metrics(y, run.probs[split], tc.threshold)
    thresholds = None
    if tc.tune_thresholds and data.has("val"):
        thresholds = tune_thresholds(data.y[data.splits["val"]].numpy(), run.probs["val"], tc.threshold)
        tuned = multilabel_metrics(y, run.probs[split], thresholds)
        out.update({f"{m}_tuned": tuned[m] for m in THRESHOLD_METRICS})
    return out, thresholds


# ---------------------------------------------------------------- the experiment
def run_experiment(cfg: Config, name: str, stores: Mapping[str, object], clip_table: pd.DataFrame,
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
    device = resolve_device(tc) if kind != "logreg" else torch.device("cpu")
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
        metric = select_metric(tc, data.multilabel)
        metric = metric if metric != "loss" else ("mean" if data.multilabel else "accuracy")
        val_y = data.y[data.splits["val"]].numpy() if data.multilabel else data.targets(data.splits["val"]).numpy()
        chosen = int(np.argmax([selection_score(metric, data.multilabel, val_y, r.probs["val"], tc.threshold)
                                for r in runs]))
    out_dir = Path(out_dir)
    ckpt = save_checkpoint(out_dir / "model.pt", head=kind, exp=exp, vocab=data.vocab, multilabel=data.multilabel,
                           input_dims={k: data.modalities[k].dim for k in keys}, seed=runs[chosen].seed,
                           thresholds=thresholds[chosen].tolist() if thresholds[chosen] is not None else None,
                           state=runs[chosen].state)

    flags = {k: (None if pretrained is None else pretrained.get(k)) for k in keys}
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
        "best_epoch": [r.best_epoch for r in runs],
        "epochs_run": [r.epochs_run for r in runs],
        "schedule": runs[0].schedule,
        "train_seconds": {"mean": float(np.mean([r.seconds for r in runs])), "total": float(sum(r.seconds for r in runs))},
        "seed_seconds": [r.seconds for r in runs],
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
    if kind == "late_fusion":
        w = np.asarray([[r.fusion["weights"][k] for k in keys] for r in runs])
        result["late_fusion_weights"] = {"mean": dict(zip(keys, w.mean(0).tolist())),
                                         "std": dict(zip(keys, w.std(0).tolist())), "source": runs[0].fusion["source"]}
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
    plots.write_loss_curves(d / "loss.csv", [h for r in runs for h in r.history])
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
