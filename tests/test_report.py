"""`emocache report` on a real tiny project, rendered in headless Chromium.

The project (temp dir, its own git + DVC repo): RAVDESS sample -> eGeMAPS -> a 3-epoch MLP, one prediction on
data/sample/videos/Megamind.avi, metrics committed, then the head retrained with another seed so
`dvc metrics diff --md HEAD` has something to show. Chromium loads the file offline; the page must log no console
error, hold every plot as an inline PNG, and screenshot to a non-blank image.
"""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from emocache.cli import app

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
DATA_PNG = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}: exit {res.exit_code}\n{res.stdout}\n{res.stderr}\n{res.exception!r}"
    return res


def git(cwd: Path, *args):
    subprocess.run(["git", "-c", "user.name=emocache-test", "-c", "user.email=test@example.invalid", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def no_analytics():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")   # dvc would otherwise try to report usage
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory, no_analytics):
    if shutil.which("git") is None:
        pytest.skip("git is not installed (the metrics diff needs a git repo)")
    d = tmp_path_factory.mktemp("report_project")
    exp = {"dataset": "rav", "modalities": ["egemaps"], "head": "mlp",
           "train": {"epochs": 3, "seeds": [0], "num_threads": 1, "device": "cpu"}}
    params = {"store": {"dir": "cache"}, "runtime": {"device": "cpu", "num_threads": 1},
              "datasets": {"rav": {"adapter": "ravdess", "root": str(REPO / "data/sample/ravdess"),
                                   "split": {"method": "group", "group_by": "actor", "val": 0.0, "test": 0.5},
                                   "limit": 6, "extractors": ["egemaps"]}},   # 6 clips per split keep it quick
              "experiments": {"rav_egemaps": exp}}
    p = d / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    run("datasets", "list", "--params", p)
    run("extract", "--params", p, "--summary-json", d / "metrics/runs/extract_audio.json")
    run("train", "rav_egemaps", "--params", p, "--out", d / "models", "--metrics-dir", d / "metrics")
    run("predict", REPO / "data/sample/videos/Megamind.avi", "--head", "rav_egemaps", "--params", p,
        "--models", d / "models")
    # commit these metrics, then retrain with another seed: the workspace differs from HEAD
    (d / "dvc.yaml").write_text("metrics:\n  - metrics/rav_egemaps.json\n")
    (d / ".gitignore").write_text("cache/\nmodels/\npredictions/\n.emocache/\n")
    git(d, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=d, check=True, capture_output=True)
    git(d, "add", "-A")
    git(d, "commit", "-q", "-m", "first metrics")
    params["experiments"]["rav_egemaps"]["train"]["seeds"] = [1]
    p.write_text(yaml.safe_dump(params))
    run("train", "rav_egemaps", "--params", p, "--out", d / "models", "--metrics-dir", d / "metrics")
    return d


@pytest.fixture(scope="module")
def report(project):
    res = run("report", "--params", project / "params.yaml", "--rev", "HEAD")
    assert "1 experiment(s), 1 prediction(s)" in res.stdout
    return project / "report.html"


def test_report_is_self_contained_with_every_section(report):
    html = report.read_text()
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html), "no external resource"
    for heading in ("Datasets", "Feature extraction", "Experiments", "Metrics diff", "Predicted videos"):
        assert f">{heading}</h2>" in html
    plots = {alt: data for alt, data in DATA_PNG.findall(html)}
    for alt in ("rav label counts", "rav_egemaps per-class AP", "rav_egemaps PR curves",
                "rav_egemaps confusion matrix", "rav_egemaps loss curves", "Megamind.avi emotion timeline",
                "Megamind.avi video-level scores"):
        assert alt in plots, f"missing plot {alt!r}; have {sorted(plots)}"
    from PIL import Image

    for alt, data in plots.items():   # each inline PNG decodes and is not blank
        im = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
        assert im.shape[0] > 100 and im.shape[1] > 200 and im.std() > 5, alt
    assert "features from extractors without pretrained weights" not in html   # eGeMAPS is pretrained


def test_report_metrics_diff_against_head(report, project):
    html = report.read_text()
    diff = html[html.index("id='diff'"):html.index("id='predictions'")]
    assert "<table>" in diff, diff[:2000]
    assert "metrics/rav_egemaps.json" in diff and "HEAD" in diff and "workspace" in diff
    # seed 0 (committed) vs seed 1 (workspace): at least the checkpoint seed changed
    assert "checkpoint.seed" in diff
    # the `emocache compare HEAD` table: one row per experiment, mean ± std over seeds, noise verdict
    assert "emocache compare HEAD" in diff and "vs seed noise" in diff
    row = re.search(r"<tr><td>rav_egemaps</td>.*?</tr>", diff)
    assert row and "1/1" in row.group(0) and ("1 seed: no noise estimate" in row.group(0) or "same" in row.group(0))


def test_report_without_a_git_repo_says_why(tmp_path, report, project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base_dir"] = str(tmp_path)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    run("report", "--params", p, "--rev", "HEAD", "--metrics-dir", project / "metrics",
        "--predictions", project / "predictions")
    html = (tmp_path / "report.html").read_text()
    diff = html[html.index("id='diff'"):html.index("id='predictions'")]
    assert "class='warn'" in diff and "failed" in diff
    assert "Megamind.avi emotion timeline" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run([*common, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                           "--window-size=1200,2000", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "Uncaught" in ln or "ERROR:CONSOLE" in ln
               or ":CONSOLE(" in ln]
    assert not console, console
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (2000, 1200)
    assert im.std() > 10 and len(np.unique(im.reshape(-1, 3), axis=0)) > 50   # text and plots, not a blank page
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(DATA_PNG.findall(dom.stdout)) >= 7       # the parsed DOM holds every inline plot
    assert "emocache report" in dom.stdout and "<table>" in dom.stdout
