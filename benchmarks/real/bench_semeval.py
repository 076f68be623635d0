"""SemEval-2018 E-c (11 labels, multi-label) benchmark table: TF-IDF + one-vs-rest logistic regression next to
the emocache heads, all on the same clips and split.

    python bench_semeval.py [--params params.yaml] [--settings semeval.yaml]

Protocol (every choice on validation, test reported): dev is the test split (the official test file has no
gold labels); validation is the same deterministic carve-out of train the heads use (heads.data.carve_mask,
train.val_carve of the first experiment). The baseline fits TF-IDF and the per-class LRs on train minus val,
picks C on val macro-F1 (per-class thresholds tuned on val), and is scored on test with those thresholds.
The heads' numbers are `emocache train` / `emocache tune` results (metrics/<experiment>.json, thresholds
tuned on val, mean ± std over seeds). Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))   # run as a script from benchmarks/real

from emocache.config import load_config  # noqa: E402
from heads.data import carve_mask  # noqa: E402
from pipeline.datasets.base import TABLE_LABEL_SEP as LABEL_SEP  # noqa: E402
from heads.metrics import multilabel_metrics, tune_thresholds  # noqa: E402
from pipeline.threads import for_training  # noqa: E402

REPORTED = ("f1_macro", "f1_micro", "jaccard", "mAP")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reference(Strict):
    name: str
    f1_macro: float
    f1_micro: float
    jaccard: float
    note: str = ""


class Settings(Strict):
    out: str = "metrics/bench_semeval"
    dataset: str = "semeval"
    experiments: dict[str, str] = Field(default_factory=dict)   # experiment -> short description
    ngram_max: int = 2
    min_df: int = 2
    sublinear_tf: bool = True
    c_grid: list[float] = Field(default_factory=lambda: [0.1, 1.0, 10.0])
    max_iter: int = 2000
    references: list[Reference] = Field(default_factory=list)


def tfidf_ovr_baseline(table, vocab: list[str], idx: dict, s: Settings) -> dict:
    import time

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    text = table["text_transcript"].fillna("").to_numpy()
    y = np.array([[c in str(v).split(LABEL_SEP) for c in vocab] for v in table["labels"].fillna("")], dtype=int)
    vec = TfidfVectorizer(ngram_range=(1, s.ngram_max), min_df=s.min_df, sublinear_tf=s.sublinear_tf)
    x = vec.fit(text[idx["train"]]).transform(text)   # vocabulary from train (minus val) only
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in s.c_grid:
            models = [LogisticRegression(C=c, max_iter=s.max_iter).fit(x[idx["train"]], y[idx["train"], k])
                      for k in range(len(vocab))]
            prob = lambda rows: np.stack([m.predict_proba(x[rows])[:, 1] for m in models], 1)  # noqa: E731
            thr = tune_thresholds(y[idx["val"]], prob(idx["val"]))
            val = multilabel_metrics(y[idx["val"]], prob(idx["val"]), thr)["f1_macro"]
            fits.append((val, c, thr, prob))
    val, c, thr, prob = max(fits, key=lambda f: f[0])
    m = multilabel_metrics(y[idx["test"]], prob(idx["test"]), thr)
    return {"metrics": {k: {"mean": m[k], "std": 0.0} for k in REPORTED}, "runs": 1, "C": c,
            "val_f1_macro": val, "vocabulary_size": len(vec.vocabulary_), "train_seconds": time.perf_counter() - t0,
            "features": f"TF-IDF word 1-{s.ngram_max}-grams ({len(vec.vocabulary_)} terms)"}


def head_result(path: Path, n_test: int) -> dict:
    from baselines import run_seconds

    r = json.loads(path.read_text())
    if r["eval_split"] != "test" or r["n_clips"]["test"] != n_test:
        raise ValueError(f"{path}: scored on {r['eval_split']} ({r['n_clips']}) not the {n_test} test clips; "
                         "rerun `emocache train`")
    m = r["metrics"]
    pick = lambda k: m.get(f"{k}_tuned", m[k])  # noqa: E731  (thresholds tuned on val when available)
    out = {"metrics": {k: pick(k) for k in REPORTED}, "runs": len(r["seeds"]), "head": r["head"],
           "train_seconds": run_seconds(path.parent, path.stem), "schedule": r.get("schedule"),
           "epochs_run": r.get("epochs_run"), "best_epoch": r.get("best_epoch"), "all_pretrained": r["all_pretrained"]}
    if "tuning" in r:
        out["tuning"] = r["tuning"]
        out["train_seconds"] += r["tuning"]["seconds"]
    return out


def main(argv: Optional[list[str]] = None) -> None:
    from pipeline.datasets import read_clip_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--settings", default="semeval.yaml")
    ap.add_argument("--metrics-dir", default="metrics")
    a = ap.parse_args(argv)
    cfg = load_config(a.params)
    # the heads' thread plan (1 thread): sklearn's OpenMP loss sums change in their last bits with the thread
    # count, and lbfgs carries that into the result (MELD TF-IDF + LR: 46.10 at 1 thread, 46.05 at 2)
    for_training(0)
    s = Settings.model_validate(yaml.safe_load(Path(a.settings).read_text()) or {})
    table, summary = read_clip_table(cfg, s.dataset)
    split = table["split"].to_numpy()
    train = np.flatnonzero(split == "train")
    fraction = cfg.experiments[next(iter(s.experiments))].train.val_carve if s.experiments else 0.1
    held = carve_mask(table["clip_id"].astype(str).to_numpy()[train].tolist(), fraction)
    idx = {"train": train[~held], "val": train[held], "test": np.flatnonzero(split == "test")}
    methods = {"tfidf_ovr_logreg": tfidf_ovr_baseline(table, summary["labels"], idx, s)}
    for e, desc in s.experiments.items():
        methods[e] = dict(head_result(cfg.path(a.metrics_dir) / f"{e}.json", len(idx["test"])), description=desc)
    doc = {"benchmark": "bench_semeval", "dataset": s.dataset, "classes": summary["labels"],
           "n_clips": {k: int(len(v)) for k, v in idx.items()}, "val": f"carved from train ({fraction})",
           "methods": methods, "references": [r.model_dump() for r in s.references]}
    lines = ["| method | runs | macro-F1 % | micro-F1 % | Jaccard % | mAP % | training s |",
             "|---|---|---|---|---|---|---|"]
    pct = lambda m, runs: f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}" if runs > 1 else f"{100 * m['mean']:.2f}"  # noqa: E731
    for name, m in methods.items():
        lines.append(f"| {name}{' (' + m['description'] + ')' if m.get('description') else ''} | {m['runs']} | "
                     + " | ".join(pct(m["metrics"][k], m["runs"]) for k in REPORTED)
                     + f" | {m['train_seconds']:.1f} |")
    for r in s.references:
        lines.append(f"| {r.name} (published; {r.note}) | - | {100 * r.f1_macro:.1f} | {100 * r.f1_micro:.1f} | "
                     f"{100 * r.jaccard:.1f} | - | - |")
    out = cfg.path(s.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
