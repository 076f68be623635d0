"""Speed of `emocache tune`: a 30-trial Optuna search on 10k cached clips, against one training run with the
paper's recipe (SVCEmotion: batch 6, 300 epochs) measured in the same run.

    python benchmarks/tune_speed.py [--clips 10000] [--dim 384] [--trials 30] [--paper-epochs 2]

Data: heads.synthetic (10k clips, one 384-d row each like a MiniLM sentence vector, 7 classes), never a quality
claim. The search is exactly what `emocache tune` runs (heads.tune.search: head kind linear/MLP, lr, weight
decay, width, dropout, epochs, class balance; median pruning), one thread. The paper-recipe run is timed for
--paper-epochs epochs and extrapolated to its 300 (one run, one seed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from emocache.config import ExperimentConfig  # noqa: E402
from heads.synthetic import make_synthetic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--paper-epochs", type=int, default=2, help="epochs of the paper recipe actually timed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from heads.neural import fit_neural
    from heads.tune import search

    data = make_synthetic(a.clips, {"text": (1, a.dim)}, a.classes, multilabel=False, signal=0.15, seed=0,
                          split_fractions=(0.8, 0.1))
    exp = ExperimentConfig(dataset="bench", modalities=["text"], head="mlp",
                           train={"device": "cpu", "num_threads": a.threads})

    t0 = time.perf_counter()
    found = search(exp, data, a.trials)
    search_s = time.perf_counter() - t0

    paper = exp.model_copy(update={"train": exp.train.model_copy(update={"recipe": "svcemotion",
                                                                         "epochs": a.paper_epochs})})
    fit = fit_neural("mlp", paper, data, ["text"], 0, torch.device("cpu"), show_progress=False)
    paper_s = fit.seconds / a.paper_epochs * 300

    t0 = time.perf_counter()
    default = fit_neural("mlp", exp, data, ["text"], 0, torch.device("cpu"), show_progress=False)
    default_s = time.perf_counter() - t0

    s = found.summary()
    out = {"clips": a.clips, "train_clips": int(len(data.splits["train"])), "dim": a.dim, "trials": a.trials,
           "threads": a.threads, "search_seconds": search_s, "n_pruned": s["n_pruned"],
           "best_val_f1_weighted": found.value, "best_params": found.params,
           "default_recipe_run_seconds": default_s, "default_recipe_epochs_run": default.epochs_run,
           "paper_recipe_run_seconds_extrapolated": paper_s, "search_vs_one_paper_run": search_s / paper_s}
    print(f"tune: {a.trials} trials ({s['n_pruned']} pruned) on {a.clips} clips x {a.dim}-d, {a.threads} thread: "
          f"{search_s:.1f} s = {search_s / 60:.2f} min; one default-recipe run {default_s:.1f} s "
          f"({default.epochs_run} epochs); one paper-recipe run (batch 6, 300 epochs, extrapolated from "
          f"{a.paper_epochs}) {paper_s:.0f} s; search / paper run = {search_s / paper_s:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
