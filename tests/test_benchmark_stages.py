"""benchmarks/real/dvc.yaml follows what its stages read, as the root dvc.yaml does.

Its train and tune stages depend on the one store their experiment reads (training.yaml / tuning.yaml name
it), so changing the audio extraction reruns only the audio experiments; every stage that runs project code
depends on at least the code the root's stage for the same command depends on (tests/test_dvc_stages.py
checks those lists against what the commands import)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.extractors import load_all
from pipeline.extractors.base import EXTRACTORS
from test_dvc_stages import _code_deps

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "benchmarks" / "real"
UP = "../../"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _covered(dep: str, deps: list[str]) -> bool:
    """`dep` (a root-relative path) lies under one of `deps` (benchmarks/real-relative paths)."""
    return any(d.startswith(UP) and (dep == d[len(UP):] or dep.startswith(d[len(UP):].rstrip("/") + "/"))
               for d in deps)


def _store_of(modalities: list[str]) -> set[str]:
    load_all()
    return {EXTRACTORS[m.partition(".")[0]].family for m in modalities}


@pytest.fixture(scope="module")
def real():
    return {"stages": _yaml(REAL / "dvc.yaml")["stages"], "params": _yaml(REAL / "params.yaml"),
            "train_runs": _yaml(REAL / "training.yaml")["train_runs"],
            "tune_runs": _yaml(REAL / "tuning.yaml")["tune_runs"],
            "root": _yaml(REPO / "dvc.yaml")["stages"]}


def test_every_experiment_trains_on_the_store_it_reads(real):
    experiments = real["params"]["experiments"]
    assert set(real["train_runs"]) == set(experiments)
    for name, run in real["train_runs"].items():
        exp = experiments[name]
        assert run["dataset"] == exp["dataset"], name
        assert {run["store"]} == _store_of(exp["modalities"]), name
    for name, run in real["tune_runs"].items():
        exp = experiments[run["experiment"]]
        assert run["dataset"] == exp["dataset"], name
        assert {run["store"]} == _store_of(exp["modalities"]), name
    for stage in ("train", "tune"):
        deps = real["stages"][stage]["do"]["deps"]
        assert "cache/${item.store}.zarr" in deps
        assert not [d for d in deps if d.endswith(".zarr") and "${" not in d], f"{stage}: a fixed store dep"


@pytest.mark.parametrize("stage, root_stage", [
    ("extract_audio", "extract_audio"), ("extract_text", "extract_text"), ("extract_text_states", "extract_text"),
    ("train", "train"), ("tune", "train"),
    ("bench_semeval", "train"), ("bench_meld_text", "train"), ("bench_ravdess_audio", "train"),
    ("bench_ravdess_audio", "extract_audio"),     # its MFCC baseline decodes the audio itself
])
def test_stages_depend_on_at_least_the_roots_code(real, stage, root_stage):
    mine = real["stages"][stage]
    mine = mine.get("do", mine)["deps"]
    theirs = real["root"][root_stage]
    missing = [d for d in _code_deps(theirs.get("do", theirs)) if not _covered(d, mine)]
    assert missing == [], f"benchmarks/real stage {stage}: add {[UP + d for d in missing]} to its deps"


def test_bench_stages_read_the_run_facts_they_report(real):
    """baselines.run_seconds reads metrics/runs/<experiment>.json: a dep next to each metrics file, and an out
    of the stage that writes it."""
    for stage in ("bench_semeval", "bench_meld_text", "bench_ravdess_audio"):
        deps = real["stages"][stage]["deps"]
        results = [d for d in deps if d.startswith("metrics/") and not d.startswith("metrics/runs/")]
        assert results, stage
        for d in results:
            assert d.replace("metrics/", "metrics/runs/", 1) in deps, f"{stage}: {d} without its run facts"
    for stage in ("train", "tune"):
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in real["stages"][stage]["do"]["outs"]]
        assert "metrics/runs/${key}.json" in outs, stage
