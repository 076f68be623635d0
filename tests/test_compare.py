"""`emocache compare` on a temporary git repository: committed metrics vs the workspace and vs another commit."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emocache.cli import app
from emocache.compare import Row, Side, compare

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True,
                   capture_output=True)


def metrics_doc(name: str, acc: list[float], versions: str = "2.0") -> dict:
    import numpy as np

    return {"experiment": name, "head": "mlp", "modalities": ["egemaps"], "seeds": list(range(len(acc))),
            "eval_split": "test", "metrics": {"accuracy": {"mean": float(np.mean(acc)), "std": float(np.std(acc))}},
            "per_seed": {"accuracy": acc}, "chance": {"accuracy_uniform": 0.125},
            "provenance": {"versions": {"torch": versions}}}


def write(repo: Path, name: str, doc: dict) -> None:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics" / f"{name}.json").write_text(json.dumps(doc))


@pytest.fixture()
def repo(tmp_path):
    write(tmp_path, "a", metrics_doc("a", [0.50, 0.52, 0.54]))
    write(tmp_path, "b", metrics_doc("b", [0.30, 0.31, 0.29]))
    (tmp_path / "metrics" / "notes.json").write_text("{}")          # not an experiment: skipped
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "first")
    write(tmp_path, "a", metrics_doc("a", [0.51, 0.53, 0.55]))      # +0.01: inside the seed noise
    write(tmp_path, "b", metrics_doc("b", [0.40, 0.41, 0.39]))      # +0.10: well beyond it
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "second")
    write(tmp_path, "b", metrics_doc("b", [0.40, 0.41, 0.39], versions="2.1"))
    write(tmp_path, "c", metrics_doc("c", [0.7]))                    # only in the workspace, one seed
    return tmp_path


def test_head_vs_previous_commit_flags_noise(repo):
    rows, notes = compare(repo, "HEAD~1", "HEAD")
    by = {r.experiment: r for r in rows}
    assert set(by) == {"a", "b"} and notes == []
    assert by["a"].diff == pytest.approx(0.01) and by["a"].verdict == "noise"
    assert by["a"].combined_std == pytest.approx((2 * (0.02 * (2 / 3) ** 0.5) ** 2) ** 0.5)
    assert by["b"].diff == pytest.approx(0.10) and by["b"].verdict == "beyond noise"
    assert by["b"].a.n_seeds == 3 and by["b"].chance == 0.125


def test_default_is_head_vs_workspace_with_new_experiments_and_versions(repo):
    rows, notes = compare(repo)
    by = {r.experiment: r for r in rows}
    assert by["a"].verdict == "same" and by["b"].verdict == "same"
    assert by["c"].verdict == "new" and by["c"].a.mean is None and by["c"].b.n_seeds == 1
    assert notes == ["torch 2.0 -> 2.1 (b)"]


def test_one_seed_has_no_noise_estimate():
    r = Row("x", "accuracy", Side(0.5, 0.0, 1), Side(0.6, 0.0, 1))
    assert r.verdict == "changed (1 seed: no noise estimate)"


def test_cli_text_and_markdown(repo, monkeypatch):
    monkeypatch.chdir(repo)
    res = CliRunner().invoke(app, ["compare", "HEAD~1"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["experiment", "metric", "seeds", "HEAD~1", "workspace", "diff", "vs", "seed", "noise"]
    row_b = next(ln for ln in lines if ln.startswith("b "))
    assert "0.300 ± 0.008" in row_b and "0.400 ± 0.008" in row_b and "+0.100" in row_b and "beyond noise" in row_b
    assert "(chance 0.125)" in row_b and "3/3" in row_b
    assert any(ln.startswith("c ") and "new" in ln for ln in lines)
    assert "environment differs: torch 2.0 -> 2.1 (b)" in res.stdout
    md = CliRunner().invoke(app, ["compare", "HEAD~1", "HEAD", "--md"]).stdout.splitlines()
    assert md[0] == "| experiment | metric | seeds | HEAD~1 | HEAD | diff | vs seed noise |" and md[1].startswith("|---")
    assert any(ln.startswith("| a | accuracy (chance 0.125) | 3/3 |") and ln.endswith("| noise |") for ln in md)


def test_unknown_revision_is_a_clear_error(repo, monkeypatch):
    monkeypatch.chdir(repo)
    res = CliRunner().invoke(app, ["compare", "no-such-rev"])
    assert res.exit_code == 2 and "git revision 'no-such-rev' not found" in res.stderr
