"""What produced an output: package versions that change numbers, thread/device settings, the git state.

Split by how often it changes, so that committed metrics stay a function of (code, params, data):
  package_versions()  same on every run in one environment; recorded in metrics and store metadata
  git_state()         changes with every commit; only in per-run facts (metrics/runs/), never in a DVC metric
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import json
import subprocess
from pathlib import Path
from typing import Any, Optional

# Packages whose version can change an extractor's or a head's output (ffmpeg is added by package_versions).
OUTPUT_PACKAGES = ("torch", "numpy", "scikit-learn", "transformers", "timm", "ultralytics", "opensmile",
                   "mediapipe", "deep-sort-realtime", "opencv-python-headless")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """{package: version or '-' when not installed}, plus 'ffmpeg' (the first word after 'version')."""
    out = {}
    for pkg in OUTPUT_PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "-"
    out["ffmpeg"] = ffmpeg_version_short()
    return out


def ffmpeg_version_short() -> str:
    from pipeline import media

    try:
        line = media.ffmpeg_version()           # 'ffmpeg version 7.0.2-static https://...'
    except (OSError, subprocess.SubprocessError, ImportError):
        return "-"
    words = line.split()
    return words[2] if len(words) > 2 and words[1] == "version" else line


def version_changes(recorded: dict[str, str], running: Optional[dict[str, str]] = None) -> dict[str, tuple[str, str]]:
    """{package: (recorded, running)} for packages whose recorded version differs from the running one."""
    running = running if running is not None else package_versions()
    return {k: (v, running.get(k, "-")) for k, v in sorted(recorded.items()) if running.get(k, "-") != v}


def params_hash(*parts: Any) -> str:
    """Short sha256 of the JSON of `parts` (pydantic models are dumped first), keys sorted."""
    dumped = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(dumped, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_state(cwd: str | Path = ".") -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None}; None outside a git checkout or without git."""
    def git(*args: str) -> Optional[str]:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}
