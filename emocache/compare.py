"""`emocache compare [REV_A] [REV_B]`: each experiment's headline metric at two git revisions, with seed noise.

A side is a git revision (its committed metrics/<experiment>.json, read with `git show REV:./metrics/...`) or
the workspace (None). Each JSON holds mean and std over the experiment's seeds; a difference smaller than the
combined std sqrt(std_a^2 + std_b^2) is flagged as noise: another set of seeds could flip its sign.
"""
from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from pipeline.errors import UsageError

# The first of these an experiment reports is its headline metric (Mean: SVCEmotion's multi-label summary).
HEADLINE = ("Mean", "accuracy", "mAP", "f1_weighted")
WORKSPACE = "workspace"


class CompareError(UsageError, RuntimeError):
    pass


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise CompareError(f"cannot run git ({e}); compare reads committed metrics with `git show`") from e


def read_metrics(project: Path, metrics_dir: str, rev: Optional[str]) -> dict[str, dict]:
    """{experiment: metrics doc} at `rev` (None = the workspace). Non-experiment JSON is skipped."""
    docs: dict[str, dict] = {}
    if rev is None:
        for p in sorted((project / metrics_dir).glob("*.json")):
            _add(docs, p.read_text(), str(p))
        return docs
    ok = _git(project, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if ok.returncode != 0:
        raise CompareError(f"git revision {rev!r} not found in {project}"
                           + (f" ({ok.stderr.strip()})" if ok.stderr.strip() else ""))
    ls = _git(project, "ls-tree", "--name-only", rev, f"./{metrics_dir}/")
    if ls.returncode != 0:
        raise CompareError(f"git ls-tree {rev} {metrics_dir}/ failed: {ls.stderr.strip()}")
    for name in ls.stdout.splitlines():
        if not name.endswith(".json"):
            continue
        shown = _git(project, "show", f"{rev}:./{metrics_dir}/{Path(name).name}")
        if shown.returncode == 0:
            _add(docs, shown.stdout, f"{rev}:{name}")
    return docs


def _add(docs: dict, text: str, where: str) -> None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompareError(f"{where}: not valid JSON ({e})") from e
    if isinstance(doc, dict) and "experiment" in doc and "metrics" in doc:
        docs[doc["experiment"]] = doc


@dataclass
class Side:
    mean: Optional[float]
    std: Optional[float]
    n_seeds: int

    def cell(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.3f} ± {self.std:.3f}" if self.std is not None else f"{self.mean:.3f}"


@dataclass
class Row:
    experiment: str
    metric: str
    a: Side
    b: Side
    chance: Optional[float] = None

    @property
    def diff(self) -> Optional[float]:
        return None if self.a.mean is None or self.b.mean is None else self.b.mean - self.a.mean

    @property
    def combined_std(self) -> Optional[float]:
        if self.a.std is None or self.b.std is None:
            return None
        return math.sqrt(self.a.std ** 2 + self.b.std ** 2)

    @property
    def verdict(self) -> str:
        if self.a.mean is None:
            return "new"
        if self.b.mean is None:
            return "gone"
        d, s = self.diff, self.combined_std
        if d == 0:
            return "same"
        if min(self.a.n_seeds, self.b.n_seeds) < 2 or s is None:
            return "changed (1 seed: no noise estimate)"
        return "noise" if abs(d) < s else "beyond noise"


def _side(doc: Optional[dict], metric: str) -> Side:
    if doc is None:
        return Side(None, None, 0)
    v = doc.get("metrics", {}).get(metric) or {}
    return Side(v.get("mean"), v.get("std"), len(doc.get("seeds", [])))


def headline(doc: dict) -> Optional[str]:
    return next((m for m in HEADLINE if m in doc.get("metrics", {})), None)


def compare_rows(a: dict[str, dict], b: dict[str, dict], metrics: Optional[list[str]] = None) -> list[Row]:
    rows = []
    for name in sorted(set(a) | set(b)):
        da, db = a.get(name), b.get(name)
        wanted = metrics or [headline(db or da)]
        for m in wanted:
            if m is None:
                continue
            chance = ((db or da).get("chance") or {}).get({"accuracy": "accuracy_uniform", "mAP": "mAP_random"}.get(m, ""))
            rows.append(Row(name, m, _side(da, m), _side(db, m), chance))
    return rows


def environment_notes(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    """'package old -> new (experiments)' where an experiment's recorded package versions differ between sides."""
    changes: dict[str, list[str]] = {}
    for name in sorted(set(a) & set(b)):
        va = (a[name].get("provenance") or {}).get("versions") or {}
        vb = (b[name].get("provenance") or {}).get("versions") or {}
        if not va or not vb:
            continue
        for k in sorted(set(va) | set(vb)):
            if va.get(k) != vb.get(k):
                changes.setdefault(f"{k} {va.get(k, '-')} -> {vb.get(k, '-')}", []).append(name)
    return [f"{change} ({', '.join(names)})" for change, names in changes.items()]


HEADER = ("experiment", "metric", "seeds", "{a}", "{b}", "diff", "vs seed noise")


def _cells(r: Row) -> list[str]:
    d = r.diff
    return [r.experiment, r.metric + (f" (chance {r.chance:.3f})" if r.chance is not None else ""),
            f"{r.a.n_seeds or '-'}/{r.b.n_seeds or '-'}", r.a.cell(), r.b.cell(),
            "-" if d is None else f"{d:+.3f}", r.verdict]


def render(rows: list[Row], label_a: str, label_b: str, markdown: bool = False,
           notes: Optional[list[str]] = None) -> str:
    header = [h.format(a=label_a, b=label_b) for h in HEADER]
    body = [_cells(r) for r in rows]
    legend = (f"mean ± std over seeds (seeds: {label_a}/{label_b}); diff = {label_b} - {label_a}; "
              "noise = |diff| below the combined std sqrt(std_a² + std_b²)")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        lines += ["", legend]
    else:
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body]]
        lines.append(legend)
    if notes:
        lines.append("environment differs: " + "; ".join(notes))
    return "\n".join(lines)


def compare(project: str | Path, rev_a: Optional[str] = "HEAD", rev_b: Optional[str] = None,
            metrics_dir: str = "metrics", metrics: Optional[list[str]] = None) -> tuple[list[Row], list[str]]:
    """(rows, environment notes) for rev_a vs rev_b (None = workspace)."""
    project = Path(project)
    a, b = read_metrics(project, metrics_dir, rev_a), read_metrics(project, metrics_dir, rev_b)
    if not a and not b:
        raise CompareError(f"no experiment metrics in {metrics_dir}/ at {rev_a or WORKSPACE} or {rev_b or WORKSPACE}")
    return compare_rows(a, b, metrics), environment_notes(a, b)
