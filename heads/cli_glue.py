"""`emocache train`: the clip table + the stores -> heads.train.run_experiment, outputs where DVC tracks them.

models/<experiment>/model.pt                 checkpoint (cached by DVC)
metrics/<experiment>.json                    small metrics (uncached; `dvc metrics diff`); a function of
                                             (code, params, data): a rerun on the same commit writes the same bytes
metrics/runs/<experiment>.json               run facts: timings, git commit + dirty flag (not tracked by DVC or git)
metrics/plots/<experiment>/*.csv             plot data (`dvc plots show / diff`)
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from heads.config import HeadsConfig


def train_experiment(cfg: HeadsConfig, name: str, models_dir: Path, metrics_dir: Path,
                     trials: Optional[int] = None, out_name: Optional[str] = None) -> dict:
    """trials None: `emocache train`; else `emocache tune` with that many trials, written as `out_name`."""
    from heads.data import open_stores
    from heads.train import run_experiment
    from pipeline.datasets import read_clip_table
    from heads.inputs import check_inputs

    exp = cfg.experiments[name]
    table, summary = read_clip_table(cfg, exp.dataset)
    stores = open_stores(cfg, list(exp.modalities))
    check_inputs(cfg, name, stores)   # the stores are not DVC outputs: still what dvc.lock recorded?
    if trials is None:
        out = cfg.path(models_dir) / name
        result = run_experiment(cfg, name, stores, table, summary["labels"], summary["multilabel"], out)
    else:
        from heads.tune import tune_experiment

        name = out_name or name
        out = cfg.path(models_dir) / name
        result = tune_experiment(cfg, exp, name, stores, table, summary["labels"], summary["multilabel"], out,
                                 trials)
    metrics_dir = cfg.path(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out / "metrics.json"), metrics_dir / f"{name}.json")
    (metrics_dir / "runs").mkdir(exist_ok=True)
    shutil.move(str(out / "run.json"), metrics_dir / "runs" / f"{name}.json")
    plots = metrics_dir / "plots" / name
    if plots.exists():
        shutil.rmtree(plots)
    plots.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out / "plots"), plots)
    return result
