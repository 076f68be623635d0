"""The layering is a contract, not a convention: `lint-imports` checks pyproject.toml's import contracts
(emocache -> heads -> pipeline, downward only; no import circles between sibling modules)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache", "--config", str(REPO / "pyproject.toml")], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    # The check itself must bite: a copy of the packages with one pipeline module importing emocache fails.
    import shutil

    for pkg in ("emocache", "heads", "pipeline"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "pipeline" / "threads.py"
    bad.write_text("from emocache import cli  # upward\n" + bad.read_text())
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache", "--config", str(tmp_path / "pyproject.toml")], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "pipeline.threads -> emocache.cli" in r.stdout
