"""Model selection on the validation split only (Optuna), then the best setting retrained over the seeds.

    search(exp, data, trials) -> SearchResult          TPE search of head kind, lr, weight decay, width,
                                                       dropout, epochs and class balance; one training seed
    tune_on_data(exp, data, out_dir, trials, name)     search, then heads.train.train_on_data with the best
                                                       setting: metrics/plots/checkpoint as `train` writes
                                                       them, plus the chosen params under "tuning"

The search gets a copy of the data that physically lacks the test split (heads.data.without_split): test
features and labels never reach it. Validation is the clip table's val split, or the same deterministic
carve-out of train that `train` uses (train.val_carve). When that split has fewer than tune.cv_below_clips
clips, its score is mostly noise, so each trial is scored instead by tune.cv_folds-fold cross-validation over
train + val (stratified for single-label; the mean of the folds' best validation scores). Head kinds: the
neural ones (lr, weight decay, epochs, class balance, width, dropout) and logreg (its C). Trials that trail the
median of earlier trials at the same epoch are stopped early (Optuna's median pruner), which is most of the
speed of a 30-trial search; cross-validated networks are pruned the same way fold by fold (their running mean
against earlier trials' after the same fold).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from heads.config import ExperimentConfig, TuneConfig
from heads.data import HeadData, carve_validation, without_split
from heads.neural import fit_neural, neural_kinds, resolve_device
from heads.registry import head_kind
from heads.schedule import resolve_schedule
from heads.scoring import select_metric, val_score
from heads.train import train_on_data
from pipeline.errors import InputError


class TuneError(InputError, ValueError):
    """A search that cannot run as configured (no validation split, no head left to search)."""


OWN = "own"   # the experiment's own head kind in tune.heads
CLOSED_FORM = ("logreg",)   # kinds fitted whole (no epochs, nothing to prune): the search varies only their C


@dataclass
class SearchResult:
    params: dict                 # the best trial's params (what trial_experiment applies)
    value: float                 # its best validation score
    metric: str
    trials: list[dict]           # number, state, value, params, epochs_run, seconds
    seconds: float
    cv_folds: int = 0            # > 0: trials scored by this many folds over train + val, not by val

    def summary(self) -> dict:
        states = [t["state"] for t in self.trials]
        out = {"params": self.params, "val_score": self.value, "metric": self.metric,
               "n_trials": len(self.trials), "n_complete": states.count("COMPLETE"),
               "n_pruned": states.count("PRUNED"), "seconds": self.seconds,
               "split": "cv" if self.cv_folds else "val"}
        if self.cv_folds:
            out["cv_folds"] = self.cv_folds
        return out


def candidate_heads(exp: ExperimentConfig) -> list[str]:
    """tune.heads with 'own' resolved, each through its kind's search_kind (e.g. 'mlp' means early_fusion when
    the experiment has several modalities; late_fusion searches its per-modality MLPs)."""
    out = []
    searchable = [*neural_kinds(), *CLOSED_FORM]
    for h in exp.tune.heads:
        kind = head_kind(exp.head if h == OWN else h).search_kind(len(exp.modalities))
        if kind not in searchable:
            if h == OWN:
                continue            # logreg: nothing to search here
            raise TuneError(f"tune.heads: {h!r} is not a head the search can train ({', '.join(searchable)} "
                             "or 'own')")
        if kind not in out:
            out.append(kind)
    if not out:
        raise TuneError(f"tune.heads {exp.tune.heads} leaves no head to search")
    return out


def trial_experiment(exp: ExperimentConfig, params: Mapping) -> ExperimentConfig:
    """The experiment with one trial's params applied (head kind, train.*, the head's own width/dropout)."""
    kind = params["head"]
    if kind in CLOSED_FORM:
        return exp.model_copy(update={"head": kind, "logreg": exp.logreg.model_copy(update={"c": params["c"]})})
    train = exp.train.model_copy(update={"lr": params["lr"], "weight_decay": params["weight_decay"],
                                         "epochs": params["epochs"], "class_balance": params["class_balance"]})
    update: dict = {"head": kind, "train": train}
    if "hidden" in params:
        section = head_kind(kind).width_section
        update[section] = getattr(exp, section).model_copy(update={"hidden": params["hidden"],
                                                                   "dropout": params["dropout"]})
    return exp.model_copy(update=update)


def cv_splits(data: HeadData, space: TuneConfig) -> list[HeadData]:
    """The data once per fold, train + val re-split (test untouched), when the val split is under
    tune.cv_below_clips clips; [] otherwise. Folds are stratified by class for single-label data (fewer folds
    when even the largest class has fewer than tune.cv_folds clips)."""
    import warnings

    from sklearn.model_selection import KFold, StratifiedKFold

    if space.cv_folds < 2 or len(data.splits["val"]) >= space.cv_below_clips:
        return []
    pool = torch.cat([data.splits["train"], data.splits["val"]])
    if len(pool) < 2 * space.cv_folds:
        raise TuneError(f"tune.cv_folds {space.cv_folds}: train + val hold only {len(pool)} clips")
    if data.multilabel:
        folds = KFold(space.cv_folds, shuffle=True, random_state=space.seed).split(np.zeros(len(pool)))
    else:
        y = data.targets(pool).numpy()
        k = min(space.cv_folds, int(np.bincount(y).max()))   # stratifying needs one class with k clips
        if k < 2:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "least populated class has fewer members than n_splits"
            folds = list(StratifiedKFold(k, shuffle=True, random_state=space.seed).split(np.zeros(len(pool)), y))
    return [HeadData(data.clip_ids, data.modalities, data.y,
                     dict(data.splits, train=pool[torch.from_numpy(tr)], val=pool[torch.from_numpy(va)]),
                     data.vocab, data.multilabel, dict(data.meta)) for tr, va in folds]


def search(exp: ExperimentConfig, data: HeadData, trials: Optional[int] = None) -> SearchResult:
    """Optuna TPE search scored on the validation split. `data` may hold a test split: it is removed first."""
    import optuna

    tc, space = exp.train, exp.tune
    data = without_split(carve_validation(data, tc.val_carve), "test")
    if not data.has("val"):
        raise TuneError("tune needs a validation split: the clip table has none and train.val_carve is 0")
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc)
    keys = list(exp.modalities)
    heads = candidate_heads(exp)
    base_epochs = resolve_schedule(tc, len(data.splits["train"])).epochs
    metric = select_metric(tc, data.multilabel)
    if metric == "loss" and any(h in CLOSED_FORM for h in heads):
        raise TuneError(f"train.select_metric 'loss' scores only networks; drop {', '.join(CLOSED_FORM)} from "
                        "tune.heads or select on a metric")
    folds = cv_splits(data, space)
    log: dict[int, dict] = {}

    def fit_score(kind: str, texp: ExperimentConfig, d: HeadData, on_eval) -> tuple[float, dict]:
        """The best validation score of one fit on `d`, and what the trial log records of it."""
        if kind in CLOSED_FORM:
            head = head_kind(kind).fit(texp, d, keys, space.seed, device)
            return val_score(d, head.predict_proba(d.inputs(d.splits["val"], keys)), metric, tc), {}
        fit = fit_neural(kind, texp, d, keys, space.seed, device, on_eval=on_eval, show_progress=False)
        scores = [h["val_score"] for h in fit.history if "val_score" in h]
        return max(scores), {"epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch}

    def objective(trial: "optuna.Trial") -> float:
        kind = trial.suggest_categorical("head", heads)
        t0 = time.perf_counter()
        if kind in CLOSED_FORM:
            params = {"head": kind, "c": trial.suggest_float("c", *space.logreg_c, log=True)}
            log[trial.number] = {"params": params}
            texp = trial_experiment(exp, params)
            if folds:
                value = float(np.mean([fit_score(kind, texp, d, None)[0] for d in folds]))
            else:
                value = fit_score(kind, texp, data, None)[0]
            log[trial.number]["seconds"] = time.perf_counter() - t0
            return value
        params = {"head": kind,
                  "lr": trial.suggest_float("lr", *space.lr, log=True),
                  "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
                  "class_balance": trial.suggest_categorical("class_balance", space.class_balance)}
        scale = trial.suggest_float("epochs_scale", *space.epochs_scale, log=True)
        params["epochs"] = max(1, round(base_epochs * scale))
        if head_kind(kind).width_section:
            params["hidden"] = trial.suggest_categorical("hidden", space.hidden)
            params["dropout"] = trial.suggest_float("dropout", *space.dropout)
        texp = trial_experiment(exp, params)

        def on_eval(epoch: int, score: float) -> None:
            if space.prune:
                trial.report(score, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        log[trial.number] = {"params": params}
        if folds:
            fits = []
            for i, d in enumerate(folds):
                fits.append(fit_score(kind, texp, d, None))
                log[trial.number].update({k: [f[k] for _, f in fits] for k in ("epochs_run", "best_epoch")})
                if space.prune:
                    trial.report(float(np.mean([v for v, _ in fits])), i)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            value = float(np.mean([v for v, _ in fits]))
            info = {}
        else:
            value, info = fit_score(kind, texp, data, on_eval)
        log[trial.number].update(info, seconds=time.perf_counter() - t0)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # quiet: one line per stage
    sampler = optuna.samplers.TPESampler(seed=space.seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=space.prune_startup_trials,
                                          n_warmup_steps=0 if folds else space.prune_warmup_epochs)
              if space.prune else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials or space.trials)
    seconds = time.perf_counter() - t0
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             **{k: v for k, v in log.get(t.number, {}).items() if k != "params"},
             "params": log.get(t.number, {}).get("params", {})} for t in study.trials]
    best = study.best_trial
    return SearchResult(log[best.number]["params"], float(best.value), metric, rows, seconds, len(folds))


def tune_on_data(exp: ExperimentConfig, data: HeadData, out_dir: str | Path, trials: Optional[int] = None,
                 name: str = "experiment", pretrained: Optional[Mapping[str, Optional[bool]]] = None) -> dict:
    found = search(exp, data, trials)
    best = trial_experiment(exp, found.params)
    out_dir = Path(out_dir)
    result = train_on_data(best, data, out_dir, name=name, pretrained=pretrained,
                           extra={"tuning": dict(found.summary(), tuned_from=exp.head)})
    write_trials(out_dir / "plots" / "tune_trials.csv", found.trials)
    return result


def write_trials(path: Path, trials: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in trials for k in t["params"]})
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "val_score", "epochs_run", "best_epoch", "seconds", *keys])
        for t in trials:
            w.writerow([t["number"], t["state"], "" if t["value"] is None else round(t["value"], 6),
                        t.get("epochs_run", ""), t.get("best_epoch", ""), round(t.get("seconds", 0.0), 3),
                        *[json.dumps(t["params"][k]) if k in t["params"] else "" for k in keys]])
    return path


def tune_experiment(cfg, exp: ExperimentConfig, name: str, stores: Mapping[str, object], clip_table, vocab: list[str],
                    multilabel: bool, out_dir: str | Path, trials: Optional[int] = None) -> dict:
    """`emocache tune`: like heads.train.run_experiment, with the search in front."""
    from heads.data import load_head_data, pretrained_flags

    data = load_head_data(clip_table, vocab, multilabel, {k: stores[k] for k in exp.modalities}, exp.max_frames,
                          stream_over_bytes=cfg.store.stream_over_mb * 2**20,
                          prefetch_batches=cfg.store.prefetch_batches)   # as run_experiment: streamed by size
    return tune_on_data(exp, data, out_dir, trials, name=name, pretrained=pretrained_flags(stores, exp.modalities))
