"""`make check-repro`: do the committed metrics and dvc.lock still follow from the committed code?

Clones HEAD into a temporary folder (uncommitted changes are not part of the check), runs `dvc repro` there
once, and fails when anything DVC tracks comes out different from what is committed, naming the experiment
and the metric: `dvc metrics diff` for the numbers, a byte comparison for the metrics JSON and plot files
(per-seed lists are not DVC metrics), and the stages whose dvc.lock entries changed, the extract stages' feature
manifests included (fingerprints + clip ids: a function of code, params and data; the stores themselves are not
DVC outputs). Hashes of any `persist: true` output are left out of that comparison (see persistent_outs).

    python -m emocache.checkrepro [--keep] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

# Ignored by git, but a fresh clone's pipeline needs them the way the project has them (real weights, if any).
LINKED = ("weights",)


def sh(args: list[str], cwd: Path, env: Optional[dict] = None, log=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, text=True,
                          stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE)


def clone(project: Path, dest: Path) -> str:
    r = sh(["git", "clone", "-q", "--no-hardlinks", str(project), str(dest)], cwd=project)
    if r.returncode != 0:
        raise SystemExit(f"check-repro: git clone of {project} failed: {r.stderr.strip()}")
    for name in LINKED:
        if (project / name).exists() and not (dest / name).exists():
            (dest / name).symlink_to((project / name).resolve())
    return sh(["git", "rev-parse", "--short", "HEAD"], cwd=dest).stdout.strip()


def repro_env(repo: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")   # `emocache`, `dvc`
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE", "DVC_NO_ANALYTICS"):
        env.setdefault(k, "1")
    return env


def metric_changes(repo: Path, env: dict) -> list[str]:
    """'experiment: metric old -> new' for every DVC metric that differs between HEAD and the rerun."""
    r = sh([sys.executable, "-m", "dvc", "metrics", "diff", "--json", "HEAD"], cwd=repo, env=env)
    if r.returncode != 0:
        return [f"dvc metrics diff failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}"]
    out = []
    for path, metrics in sorted((json.loads(r.stdout or "{}")).items()):
        name = Path(path).stem
        for key, d in sorted(metrics.items()):
            out.append(f"{name}: {key} {d.get('old')} -> {d.get('new')}")
    return out


def file_changes(repo: Path) -> list[str]:
    """Tracked files the rerun changed or created under metrics/ (plots, per-seed lists, new experiments)."""
    r = sh(["git", "status", "--porcelain", "--untracked-files=all", "--", "metrics", "dvc.lock"], cwd=repo)
    out = []
    for line in r.stdout.splitlines():
        state, path = line[:2].strip(), line[3:]
        if path == "dvc.lock":
            continue
        out.append(f"{path}: {'not committed (new output)' if state == '??' else 'differs from the committed file'}")
    return out


def persistent_outs(repo: Path) -> set[str]:
    """Outputs dvc.yaml marks `persist: true`: append-only caches whose bytes record when each part was written
    (names, timestamps), so their hashes depend on the cache's history, not only on (code, params, data). The
    feature stores used to be such outputs; DVC now tracks their manifests instead (pipeline/manifests.py)."""
    doc = yaml.safe_load((repo / "dvc.yaml").read_text()) or {}
    out = set()
    for st in (doc.get("stages") or {}).values():
        for o in (st.get("do", st) or {}).get("outs", []) or []:
            if isinstance(o, dict):
                out |= {path for path, opts in o.items() if (opts or {}).get("persist")}
    return out


def _entry(e: dict, skip: set[str]) -> dict:
    return {"path": e["path"]} if e["path"] in skip else e


def lock_changes(repo: Path) -> list[str]:
    """Per stage, which deps/outs/params of dvc.lock differ from the committed lock (store hashes aside)."""
    skip = persistent_outs(repo) if (repo / "dvc.yaml").exists() else set()
    shown = sh(["git", "show", "HEAD:dvc.lock"], cwd=repo)
    old = yaml.safe_load(shown.stdout)["stages"] if shown.returncode == 0 else {}
    new = yaml.safe_load((repo / "dvc.lock").read_text())["stages"] if (repo / "dvc.lock").exists() else {}
    out = []
    for stage in sorted(set(old) | set(new)):
        a, b = old.get(stage), new.get(stage)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"dvc.lock stage {stage}: {'not in the committed lock' if a is None else 'no longer produced'}")
            continue
        what = []
        for part in ("deps", "outs"):
            pa = {e["path"]: _entry(e, skip) for e in a.get(part, [])}
            pb = {e["path"]: _entry(e, skip) for e in b.get(part, [])}
            what += [f"{part[:-1]} {p}" for p in sorted(set(pa) | set(pb)) if pa.get(p) != pb.get(p)]
        if a.get("params") != b.get("params"):
            what.append("params")
        if a.get("cmd") != b.get("cmd"):
            what.append("cmd")
        if what:
            out.append(f"dvc.lock stage {stage}: " + ", ".join(what))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".", help="the git checkout to check (default: here)")
    ap.add_argument("--workdir", default=None, help="clone here instead of a new temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its dvc repro log is repro.log)")
    args = ap.parse_args(argv)
    top = sh(["git", "rev-parse", "--show-toplevel"], cwd=Path(args.project))
    if top.returncode != 0:
        print(f"check-repro: {args.project} is not a git checkout", file=sys.stderr)
        return 2
    project = Path(top.stdout.strip())
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="emocache-repro-"))
    repo = work / "repo"
    t0 = time.perf_counter()
    try:
        rev = clone(project, repo)
        dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project).stdout.strip()
        print(f"check-repro: dvc repro of commit {rev} in a fresh clone ({repo})"
              + ("; uncommitted changes in the workspace are not part of it" if dirty else ""), flush=True)
        env = repro_env(repo)
        log_path = work / "repro.log"
        with open(log_path, "w") as log:
            r = sh([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, log=log)
        if r.returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
            print(f"check-repro: dvc repro failed (exit {r.returncode}); last lines of {log_path}:\n{tail}",
                  file=sys.stderr)
            args.keep = True
            return 1
        problems = metric_changes(repo, env) + file_changes(repo) + lock_changes(repo)
        secs = time.perf_counter() - t0
        if problems:
            print(f"check-repro: FAILED after {secs:.0f} s: the committed results are not what commit {rev} "
                  f"produces ({len(problems)} difference(s)):", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            print("  rerun `dvc repro` and commit metrics/ and dvc.lock, or find what made the run differ "
                  "(versions and threads: the 'provenance' block of each metrics JSON)", file=sys.stderr)
            return 1
        skipped = sorted(persistent_outs(repo))
        print(f"check-repro: OK in {secs:.0f} s: every committed metric, plot file and dvc.lock entry is "
              f"reproduced by commit {rev}"
              + (f" (append-only caches aside: {', '.join(skipped)})" if skipped else ""))
        return 0
    finally:
        if args.keep:
            print(f"check-repro: clone kept in {repo}")
        elif not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
