"""Real-data benchmark tables (issue 7, item 6): classic baselines computed here, next to the emocache heads.

    python baselines.py bench_meld_text     [--params params.yaml] [--settings baselines.yaml]
    python baselines.py bench_ravdess_audio

For each dataset of the benchmark it reads the clip table the `datasets` stage wrote (same clips, same
split as the heads), fits the baseline on the train split, scores the split the heads are scored on
(test, else val) with heads.metrics.singlelabel_metrics, adds chance levels, the emocache MLP results
(metrics/<experiment>.json from `emocache train`, with the weights each feature came from) and any
published reference numbers, and writes <out>.json (DVC metrics) and <out>.md (the table, also printed).

Baselines:
- tfidf_logreg: TF-IDF of the utterance text (sklearn TfidfVectorizer) -> LogisticRegression.
- mfcc_logreg:  librosa MFCCs of the 16 kHz audio (pipeline.media.decode_audio), mean and std over time
                -> standardised -> LogisticRegression.
LogisticRegression's C is chosen on the val split (weighted F1, the heads' selection metric) when the
dataset has one. lbfgs is deterministic, so baselines have one run (std 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))   # run as a script from benchmarks/real

from emocache.config import Config, load_config  # noqa: E402
from heads.metrics import singlelabel_metrics  # noqa: E402
from pipeline.threads import for_training  # noqa: E402

REPORTED = ("accuracy", "f1_weighted", "f1_macro")


# ---------------------------------------------------------------- settings (baselines.yaml)
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reference(Strict):
    name: str
    dataset: str
    accuracy: float
    f1_weighted: float
    note: str = ""


class Benchmark(Strict):
    out: str
    baseline: Literal["tfidf_logreg", "mfcc_logreg"]
    datasets: dict[str, list[str]]          # dataset -> emocache experiments on it
    references: list[Reference] = Field(default_factory=list)


class TfidfSettings(Strict):
    ngram_max: int = 2
    min_df: int = 2
    sublinear_tf: bool = True
    lowercase: bool = True


class MfccSettings(Strict):
    sample_rate: int = 16000
    n_mfcc: int = 20
    n_fft: int = 512
    hop_length: int = 160


class LogRegSettings(Strict):
    c_grid: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    c_default: float = 1.0
    max_iter: int = 2000


class ChanceSettings(Strict):
    uniform_draws: int = 200
    seed: int = 0


class Settings(Strict):
    bench_meld_text: Benchmark
    bench_ravdess_audio: Benchmark
    tfidf: TfidfSettings = Field(default_factory=TfidfSettings)
    mfcc: MfccSettings = Field(default_factory=MfccSettings)
    logreg: LogRegSettings = Field(default_factory=LogRegSettings)
    chance: ChanceSettings = Field(default_factory=ChanceSettings)


# ---------------------------------------------------------------- data
class Split:
    """One dataset's clip table as label indices and per-split row indices."""

    def __init__(self, cfg: Config, name: str):
        from pipeline.datasets import read_clip_table

        self.name = name
        self.table, summary = read_clip_table(cfg, name)
        if summary["multilabel"]:
            raise ValueError(f"{name}: the baselines are single-label; the clip table is multi-label")
        self.vocab: list[str] = summary["labels"]
        self.y = np.array([self.vocab.index(v) for v in self.table["labels"]])
        self.idx = {s: np.flatnonzero(self.table["split"].to_numpy() == s) for s in ("train", "val", "test")}
        self.eval_split = next((s for s in ("test", "val") if len(self.idx[s])), "train")   # as heads.train
        self.root = cfg.path(cfg.dataset(name).root)

    def has(self, split: str) -> bool:
        return len(self.idx[split]) > 0


def tfidf_features(data: Split, s: TfidfSettings):
    from sklearn.feature_extraction.text import TfidfVectorizer

    text = data.table["text_transcript"].fillna("").to_numpy()
    vec = TfidfVectorizer(ngram_range=(1, s.ngram_max), min_df=s.min_df, sublinear_tf=s.sublinear_tf,
                          lowercase=s.lowercase).fit(text[data.idx["train"]])   # vocabulary from train only
    return vec.transform(text), {"vocabulary_size": len(vec.vocabulary_),
                                 "description": f"TF-IDF word 1-{s.ngram_max}-grams, {len(vec.vocabulary_)} terms"}


_MFCC_CACHE: dict[str, np.ndarray] = {}   # media sha256 -> stats: two splits of one corpus decode once


def mfcc_features(data: Split, s: MfccSettings):
    import librosa

    from pipeline.media import decode_audio

    rows = []
    for rec in data.table.itertuples(index=False):
        key = f"{rec.media_sha256}|{rec.start}|{rec.end}"
        if key not in _MFCC_CACHE:
            audio = decode_audio(data.root / rec.path, s.sample_rate, rec.start, rec.end)
            m = librosa.feature.mfcc(y=audio, sr=s.sample_rate, n_mfcc=s.n_mfcc, n_fft=s.n_fft,
                                     hop_length=s.hop_length)                      # (n_mfcc, frames)
            _MFCC_CACHE[key] = np.concatenate([m.mean(1), m.std(1)])
        rows.append(_MFCC_CACHE[key])
    x = np.stack(rows)
    tr = data.idx["train"]
    mean, std = x[tr].mean(0), x[tr].std(0)
    return (x - mean) / np.where(std > 0, std, 1.0), {
        "dim": int(x.shape[1]), "description": f"{s.n_mfcc} MFCC mean+std over time ({x.shape[1]}-d)"}


FEATURES: dict[str, Callable] = {"tfidf_logreg": tfidf_features, "mfcc_logreg": mfcc_features}


# ---------------------------------------------------------------- fitting and scoring
def _probs(model, x, n_classes: int) -> np.ndarray:
    """(N, n_classes) even when a class never occurs in train (it then gets probability 0)."""
    p = np.zeros((x.shape[0], n_classes))
    p[:, model.classes_] = model.predict_proba(x)
    return p


def _scores(y: np.ndarray, probs: np.ndarray) -> dict:
    m = singlelabel_metrics(y, probs)
    return {k: m[k] for k in (*REPORTED, "mAP")}


def logreg_baseline(data: Split, x, s: LogRegSettings) -> dict:
    import time

    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()

    tr, ev = data.idx["train"], data.idx[data.eval_split]
    grid = s.c_grid if data.has("val") else [s.c_default]
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # convergence chatter
        for c in grid:
            model = LogisticRegression(C=c, max_iter=s.max_iter).fit(x[tr], data.y[tr])
            val = (singlelabel_metrics(data.y[data.idx["val"]], _probs(model, x[data.idx["val"]], len(data.vocab)))
                   ["f1_weighted"] if data.has("val") else None)
            fits.append((c, val, model))
    c, val, model = max(fits, key=lambda f: -np.inf if f[1] is None else f[1]) if data.has("val") else fits[0]
    scores = _scores(data.y[ev], _probs(model, x[ev], len(data.vocab)))
    out = {k: {"mean": v, "std": 0.0} for k, v in scores.items()}
    return {"metrics": out, "C": c, "C_chosen_on": "val f1_weighted" if data.has("val") else "fixed (no val split)",
            "val_f1_weighted": val, "runs": 1, "train_seconds": time.perf_counter() - t0}


def chance_levels(data: Split, s: ChanceSettings) -> dict:
    """majority: always the most frequent train class; uniform: a random class per clip (mean over draws)."""
    ev = data.idx[data.eval_split]
    n_classes, y = len(data.vocab), data.y[ev]
    majority = int(np.bincount(data.y[data.idx["train"]], minlength=n_classes).argmax())
    maj = _scores(y, np.tile(np.eye(n_classes)[majority], (len(y), 1)))
    rng = np.random.default_rng(s.seed)
    draws = [_scores(y, np.eye(n_classes)[rng.integers(0, n_classes, len(y))]) for _ in range(s.uniform_draws)]
    uni = {k: {"mean": float(np.mean([d[k] for d in draws])), "std": float(np.std([d[k] for d in draws]))}
           for k in REPORTED}
    return {"chance_majority": {"metrics": {k: {"mean": maj[k], "std": 0.0} for k in REPORTED},
                                "predicts": data.vocab[majority]},
            "chance_uniform": {"metrics": uni, "draws": s.uniform_draws}}


def run_seconds(metrics_dir: Path, experiment: str) -> float:
    """Training time of all seeds: a run fact, kept in metrics/runs/ (the metrics JSON holds only results)."""
    path = metrics_dir / "runs" / f"{experiment}.json"
    if not path.exists():
        raise ValueError(f"{path}: no run facts for {experiment}; rerun `emocache train {experiment}`")
    return float(json.loads(path.read_text())["train_seconds"]["total"])


def emocache_result(cfg: Config, data: Split, experiment: str, metrics_dir: Path) -> dict:
    """An `emocache train` result, checked to be on the same clips and split, with its features' weights."""
    from heads.data import open_stores

    path = metrics_dir / f"{experiment}.json"
    r = json.loads(path.read_text())
    n = {s: int(len(i)) for s, i in data.idx.items()}
    # the heads may carve val out of train (train.val_carve): same eval split and the same clips in all
    same = r["n_clips"].get(data.eval_split) == n[data.eval_split] and sum(r["n_clips"].values()) == sum(n.values())
    if r["dataset"] != data.name or r["eval_split"] != data.eval_split or not same:
        raise ValueError(f"{path}: dataset {r['dataset']} / split {r['eval_split']} / clips {r['n_clips']} do not "
                         f"match the clip table of {data.name} ({data.eval_split}, {n}); rerun `emocache train`")
    stores = open_stores(cfg, r["modalities"])
    features = {}
    for key in r["modalities"]:
        meta = stores[key].meta(key)
        features[key] = {"pretrained": r["pretrained"].get(key), "weights": meta.get("weights", {}).get("source"),
                         "params": {k: v for k, v in meta.get("params", {}).items()
                                    if k in ("model", "pooling", "layer", "feature_set", "relu_output", "postprocess")}}
    out = {"metrics": {k: r["metrics"][k] for k in (*REPORTED, "mAP")}, "head": r["head"],
           "features": features, "all_pretrained": r["all_pretrained"], "seeds": r["seeds"],
           "runs": len(r["seeds"]), "best_epoch": r["best_epoch"], "epochs_run": r.get("epochs_run"),
           "train": r.get("schedule"), "n_clips": r["n_clips"],
           "train_seconds": run_seconds(metrics_dir, experiment) + r.get("tuning", {}).get("seconds", 0.0)}
    if "tuning" in r:
        out["tuning"] = r["tuning"]
    return out


# ---------------------------------------------------------------- the benchmark
def run_benchmark(name: str, cfg: Config, settings: Settings, metrics_dir: Path) -> dict:
    bench: Benchmark = getattr(settings, name)
    doc = {"benchmark": name, "baseline": bench.baseline, "datasets": {}}
    for ds, experiments in bench.datasets.items():
        data = Split(cfg, ds)
        s = getattr(settings, "tfidf" if bench.baseline == "tfidf_logreg" else "mfcc")
        x, info = FEATURES[bench.baseline](data, s)
        methods = {e: emocache_result(cfg, data, e, metrics_dir) for e in experiments}
        methods[bench.baseline] = {**logreg_baseline(data, x, settings.logreg), "features": {bench.baseline: {
            "pretrained": None, "weights": "none (fitted on the train split)", "params": {**s.model_dump(), **info}}}}
        methods.update(chance_levels(data, settings.chance))
        split_cfg = cfg.dataset(ds).split
        doc["datasets"][ds] = {
            "split": split_cfg.model_dump(), "eval_split": data.eval_split, "classes": data.vocab,
            "n_clips": {s: int(len(i)) for s, i in data.idx.items()}, "methods": methods,
            "references": [r.model_dump() for r in bench.references if r.dataset == ds]}
    return doc


def _pct(m: dict, runs: int) -> str:
    return f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}" if runs > 1 else f"{100 * m['mean']:.2f}"


def _weights(method: dict) -> str:
    """What the method's features are and whether pretrained weights made them."""
    if "predicts" in method:
        return f"always '{method['predicts']}' (most frequent train class)"
    if "draws" in method:
        return "a uniformly random class per clip"
    out = []
    for key, f in method["features"].items():
        if f["pretrained"] is None:
            out.append(f"{f['params']['description']}; no pretrained weights")
            continue
        detail = ", ".join(f"{k} {v}" for k, v in f["params"].items())
        if f["pretrained"] and "no weights" in (f["weights"] or ""):
            state = "hand-crafted, no learned weights"       # eGeMAPS: openSMILE functionals
        else:
            state = f"{'pretrained' if f['pretrained'] else 'NOT pretrained'}: {f['weights']}"
        out.append(f"{key} ({detail}); {state}")
    return "; ".join(out)


def _split_name(split: dict) -> str:
    if split["method"] == "own":
        return "own split"
    by = split.get("group_by") or "adapter group"
    return f"{split['method']} by {' x '.join(by) if isinstance(by, list) else by}"


def markdown(doc: dict) -> str:
    lines = [f"### {doc['benchmark']}", "",
             "| dataset (split, eval clips) | method | features / weights | runs "
             "| accuracy % | weighted F1 % | macro F1 % | training s |",
             "|---|---|---|---|---|---|---|---|"]
    for ds, d in doc["datasets"].items():
        where = f"{ds} ({_split_name(d['split'])}, {d['eval_split']} {d['n_clips'][d['eval_split']]})"
        for name, m in d["methods"].items():
            runs = m.get("runs", m.get("draws", 1))
            secs = f"{m['train_seconds']:.1f}" if "train_seconds" in m else "-"
            lines.append(f"| {where} | {name} | {_weights(m)} | {runs} | " +
                         " | ".join(_pct(m["metrics"][k], runs) for k in REPORTED) + f" | {secs} |")
        for r in d["references"]:
            lines.append(f"| {where} | {r['name']} (published) | {r['note']} | - | {100 * r['accuracy']:.2f} | "
                         f"{100 * r['f1_weighted']:.2f} | - | - |")
    lines.append("")
    lines.append("mean ± std over runs (seeds for the heads, random draws for chance_uniform); "
                 "baselines and chance_majority are deterministic. training s: all seeds, plus the search for "
                 "tuned heads; baselines: one fit.")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmark", choices=["bench_meld_text", "bench_ravdess_audio"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--settings", default="baselines.yaml")
    ap.add_argument("--metrics-dir", default="metrics", help="where `emocache train` wrote <experiment>.json")
    a = ap.parse_args(argv)
    cfg = load_config(a.params)
    for_training(0)   # the heads' default plan (1 thread): sklearn's OpenMP sums depend on the thread count
    settings = Settings.model_validate(yaml.safe_load(Path(a.settings).read_text()))
    doc = run_benchmark(a.benchmark, cfg, settings, cfg.path(a.metrics_dir))
    out = cfg.path(getattr(settings, a.benchmark).out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    table = markdown(doc)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
