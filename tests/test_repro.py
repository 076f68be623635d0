"""Metrics as a function of (code, params, data): byte-identical reruns, run facts apart, provenance, chance levels,
and the check-repro comparisons (on a temporary git repository with a hand-written dvc.lock)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emocache.checkrepro import file_changes, lock_changes
from emocache.config import ExperimentConfig
from heads.chance import chance_levels
from heads.synthetic import make_synthetic
from heads.train import train_on_data
from pipeline.provenance import OUTPUT_PACKAGES, package_versions, params_hash, version_changes

torch.set_num_threads(1)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def test_two_trainings_write_identical_metrics_and_keep_timings_apart(tmp_path):
    exp = ExperimentConfig(dataset="synthetic", modalities=["a"], head="mlp", mlp={"hidden": 16},
                           train={"epochs": 4, "seeds": [0, 1], "device": "cpu", "batch_size": 8})
    data = make_synthetic(48, {"a": (1, 6)}, 3, multilabel=False, signal=1.0, seed=0)
    train_on_data(exp, data, tmp_path / "1", provenance={"params_sha256": params_hash(exp)})
    train_on_data(exp, data, tmp_path / "2", provenance={"params_sha256": params_hash(exp)})
    one, two = ((tmp_path / d / "metrics.json").read_bytes() for d in ("1", "2"))
    assert one == two
    doc = json.loads(one)
    assert "train_seconds" not in doc and "seed_seconds" not in doc
    assert set(doc["provenance"]["versions"]) == {*OUTPUT_PACKAGES, "ffmpeg"}
    assert doc["provenance"]["runtime"]["device"] == "cpu" and doc["provenance"]["runtime"]["torch_threads"] == 1
    assert doc["provenance"]["params_sha256"] == params_hash(exp)
    assert len(doc["per_seed"]["accuracy"]) == 2
    assert np.mean(doc["per_seed"]["accuracy"]) == pytest.approx(doc["metrics"]["accuracy"]["mean"])
    run = json.loads((tmp_path / "1" / "run.json").read_text())
    assert run["train_seconds"]["total"] > 0 and len(run["seed_seconds"]) == 2 and "commit" in run["git"]


def test_chance_levels():
    vocab = ["a", "b", "c", "d"]
    eye = np.eye(4)
    y_train = eye[[0, 0, 0, 1, 2]]
    y_eval = eye[[0, 1, 1, 2]]
    ch = chance_levels(y_train, y_eval, vocab, multilabel=False)
    assert ch == {"accuracy_uniform": 0.25, "majority_class": "a", "accuracy_majority": 0.25,
                  "mAP_random": pytest.approx((0.25 + 0.5 + 0.25) / 3)}   # 'd' is absent from eval: not in mAP
    ml = chance_levels(y_train, np.array([[1, 1, 0, 0], [1, 0, 0, 0]]), vocab, multilabel=True)
    assert ml == {"mAP_random": pytest.approx((1.0 + 0.5) / 2)}


def test_versions_and_params_hash():
    v = package_versions()
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert v["ffmpeg"] not in ("", "-")
    assert version_changes(v) == {}
    assert version_changes({**v, "torch": "0.1"}) == {"torch": ("0.1", v["torch"])}
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1}) != params_hash({"a": 2, "b": 2})


def _lock(md5: str, store: str = "s1") -> dict:
    return {"schema": "2.0", "stages": {
        "train@x": {"cmd": "emocache train x", "deps": [{"path": "heads", "md5": "d1"},
                                                        {"path": "cache/audio.zarr", "md5": store}],
                    "params": {"params.yaml": {"experiments.x": {"head": "mlp"}}},
                    "outs": [{"path": "metrics/x.json", "md5": md5}]},
        "train@y": {"cmd": "emocache train y", "outs": [{"path": "metrics/y.json", "md5": "m"}]}}}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_check_repro_names_changed_stages_and_files(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "x.json").write_text('{"a": 1}')
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(_lock("m1")))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "c")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"extract": {"cmd": "x", "outs": [
        {"cache/audio.zarr": {"persist": True}}]}}}))
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "c2")
    assert lock_changes(tmp_path) == [] and file_changes(tmp_path) == []
    (tmp_path / "metrics" / "x.json").write_text('{"a": 2}')           # the "rerun" wrote other numbers
    (tmp_path / "metrics" / "z.json").write_text('{}')                 # and an output nobody committed
    lock = _lock("m2", store="s2")   # the store's hash is history, not a result: not reported
    del lock["stages"]["train@y"]
    lock["stages"]["train@x"]["params"]["params.yaml"]["experiments.x"]["head"] = "logreg"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert lock_changes(tmp_path) == ["dvc.lock stage train@x: out metrics/x.json, params",
                                      "dvc.lock stage train@y: no longer produced"]
    assert file_changes(tmp_path) == ["metrics/x.json: differs from the committed file",
                                      "metrics/z.json: not committed (new output)"]
