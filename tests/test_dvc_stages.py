"""The project's dvc.yaml on a temporary DVC repo: stages follow what they read.

A copy of the code, dvc.yaml and a tiny params.yaml (one dataset with eGeMAPS and MiniLM text on a few RAVDESS
wavs, two experiments) in a fresh git + DVC repo. Adding a video-only dataset reruns no experiment; changing
`extractors.text` reruns only the text experiment; `dvc exp run -S` on one experiment reruns only its train stage.
DVC tracks the feature manifests, never the stores."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CODE = ("emocache", "heads", "pipeline")
N_WAVS = 8

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]


def _params() -> dict:
    """The project's params with a tiny dataset and two experiments in place of the samples."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["runtime"].update(device="cpu", num_threads=1, batch_clips=4)
    p["datasets"] = {"talk": {"adapter": "csv", "root": "data/talk", "manifest": "data/talk/manifest.csv",
                              "text_fields": {"transcript": "transcript"},
                              "split": {"method": "random", "val": 0.0, "test": 0.5, "seed": 0},
                              "extractors": ["egemaps", "text.transcript"]}}
    p["extractors"]["text"]["max_length"] = 32
    p["experiments"] = {
        "talk_egemaps": {"dataset": "talk", "modalities": ["egemaps"], "head": "mlp",
                         "train": {"epochs": 2, "seeds": [0], "val_carve": 0.0}},
        "talk_text": {"dataset": "talk", "modalities": ["text.transcript"], "head": "logreg"}}
    return p


def _sh(args: list[str], cwd: Path, env: dict) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True)
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _git(cwd: Path, env: dict, *args: str) -> str:
    return _sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd, env)


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("dvcstages")
    repo = work / "repo"
    repo.mkdir()
    for d in CODE:
        shutil.copytree(REPO / d, repo / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "dvc.yaml", repo)
    (repo / ".gitignore").write_text("__pycache__/\n/weights/\n/metrics/runs/\n/cache/*.zarr\n")
    talk = repo / "data" / "talk"
    talk.mkdir(parents=True)
    rows = ["path,labels,transcript"]
    wavs = sorted((shared_data / "ravdess_subset" / "Actor_01").glob("*.wav"))
    # RAVDESS names: modality-channel-emotion-intensity-statement-repetition-actor; two emotions, both statements.
    wavs = [w for w in wavs if w.name.split("-")[2] in ("01", "05")][:N_WAVS]
    assert len(wavs) == N_WAVS
    for w in wavs:
        shutil.copy(w, talk)
        statement = "Kids are talking by the door" if w.name.split("-")[4] == "01" else "Dogs are sitting by the door"
        rows.append(f"{w.name},{'neutral' if w.name.split('-')[2] == '01' else 'angry'},{statement}")
    (talk / "manifest.csv").write_text("\n".join(rows) + "\n")
    (repo / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    env = dict(os.environ)
    env.update(PYTHONPATH=str(repo), PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1", DVC_NO_ANALYTICS="1")
    _git(repo, env, "init", "-q")
    _sh([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-q", "-m", "project")
    return repo, env


def _repro(repo: Path, env: dict, *args: str) -> set[str]:
    return _ran(_sh([sys.executable, "-m", "dvc", *(args or ("repro",))], repo, env))


def test_stages_rerun_exactly_what_reads_a_change(dvc_repo):
    repo, env = dvc_repo
    dvc = [sys.executable, "-m", "dvc"]
    ran = _repro(repo, env)
    assert {"extract_audio", "extract_text", "train@talk_egemaps", "train@talk_text"} <= ran
    # DVC tracks manifests, not stores: the lock names no store; the store exists, ignored by git.
    lock = (repo / "dvc.lock").read_text()
    assert ".zarr" not in lock and "cache/manifests/audio" in lock
    assert (repo / "cache" / "audio.zarr").is_dir() and "zarr" not in _git(repo, env, "status", "--porcelain")
    man = json.loads((repo / "cache/manifests/audio/talk/egemaps.json").read_text())
    table = (repo / "cache/datasets/talk.csv").read_text().splitlines()
    assert man["fingerprint"] and len(man["clip_ids"]) == N_WAVS == len(table) - 1
    assert man["clip_ids"] == sorted(man["clip_ids"])
    inputs = json.loads((repo / "cache/manifests/inputs/talk_egemaps.json").read_text())
    assert list(inputs["inputs"]) == ["egemaps"] and inputs["inputs"]["egemaps"]["n_clips"] == N_WAVS
    st = subprocess.run(dvc + ["status", "--json"], cwd=repo, env=env, text=True, capture_output=True)
    assert st.returncode == 0 and json.loads(st.stdout) == {}, st.stdout + st.stderr
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-q", "-m", "repro")

    # A video-only dataset: its listing and the video extraction run, no experiment does.
    shutil.copy(REPO / "data" / "sample" / "videos" / "single_face.mp4", repo / "data")
    (repo / "data" / "clips.csv").write_text("path,labels\nsingle_face.mp4,\n")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["datasets"]["clips"] = {"adapter": "csv", "root": "data", "manifest": "data/clips.csv",
                              "split": {"method": "random", "val": 0.0, "test": 0.0, "seed": 0},
                              "extractors": ["tracks"]}
    p["extractors"]["video"]["detector"]["kind"] = "face"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ran = _repro(repo, env)
    assert {"datasets@clips", "extract_video"} <= ran and not {s for s in ran if s.startswith("train@")}, ran
    assert json.loads((repo / "cache/manifests/video/clips/tracks.json").read_text())["clip_ids"]

    # A text extractor param: the text features get a new fingerprint; only the text experiment retrains.
    p["extractors"]["text"]["max_length"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ran = _repro(repo, env)
    assert "extract_text" in ran and "extract_audio" not in ran and "extract_video" not in ran, ran
    assert {s for s in ran if s.startswith("train@")} == {"train@talk_text"}, ran
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-q", "-m", "video dataset, shorter text")

    # An experiment param through `dvc exp run -S`: its train stage only.
    ran = _repro(repo, env, "exp", "run", "-S", "experiments.talk_egemaps.train.epochs=3")
    assert ran == {"train@talk_egemaps"}, ran


# Printing and logging only: what these run does not reach any output DVC tracks.
NOT_RESULTS = {"emocache/cli.py", "emocache/quiet.py", "emocache/progress.py", "emocache/__init__.py"}


def _project_modules(stderr: str, root: Path) -> set[str]:
    """Project files a `python -X importtime` run imported (its stderr), relative to `root`."""
    out = set()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        mod = line.rsplit("|", 1)[1].strip()
        if mod.split(".")[0] not in CODE:
            continue
        base = root / mod.replace(".", "/")
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                out.add(f.relative_to(root).as_posix())
    return out


def _code_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if "${" not in d and d.split("/")[0] in CODE]


def _uncovered(files: set[str], deps: list[str], root: Path) -> set[str]:
    """Files under no dep; an empty module (a package's __init__.py) runs nothing and needs none."""
    return {f for f in files - NOT_RESULTS if (root / f).stat().st_size
            and not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}


def test_stages_depend_on_the_code_they_run(dvc_repo):
    """Every project module `emocache train` / `emocache extract` imports while running lies under a dep of its
    stage, so a code change DVC does not see cannot change a result."""
    repo, env = dvc_repo
    if not (repo / "dvc.lock").exists():   # run on its own: the stores and clip tables come from a first repro
        _repro(repo, env)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, cmd, stage in (("train@", ["train", "talk_egemaps"], stages["train"]["do"]),
                             ("extract_audio", ["extract", "--family", "audio"], stages["extract_audio"]),
                             ("inputs@", ["manifests", "inputs", "talk_text"], stages["inputs"]["do"])):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", "from emocache.cli import main; main()", *cmd],
                           cwd=repo, env=env, text=True, capture_output=True)
        assert r.returncode == 0, r.stderr[-3000:]
        imported = _project_modules(r.stderr, repo)
        assert {"emocache/config.py", "pipeline/manifests.py"} <= imported, imported
        if _uncovered(imported, _code_deps(stage), repo):
            missing[name] = sorted(_uncovered(imported, _code_deps(stage), repo))
    assert missing == {}, f"add these to the stages' deps in dvc.yaml (or to NOT_RESULTS if they only print): {missing}"
