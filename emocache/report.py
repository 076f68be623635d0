"""`emocache report`: one self-contained HTML page of what the project knows.

Sections: datasets (clip tables' summaries), extraction runs, each experiment's metrics with per-class AP bars,
PR curves, confusion matrix and loss curves (read from metrics/ and metrics/plots/, which `train` writes), the
metrics diff against a git revision (`dvc metrics diff --md REV`), and an emotion timeline per predicted video
(`emocache predict` JSON). Plots are matplotlib PNGs inlined as base64; no JavaScript, no external CSS, no CDN,
so the file opens offline and can be mailed around.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from emocache.config import Config
from pipeline.extractors.base import weights_label

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 1.2em 3em; color: #222; }}
h1 {{ border-bottom: 3px solid #345; padding-bottom: .2em; }}
h2 {{ margin-top: 2em; border-bottom: 1px solid #bbb; }}
table {{ border-collapse: collapse; margin: .6em 0; font-size: .9em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
th {{ background: #eef2f6; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.warn {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: .4em .8em; margin: .5em 0; }}
.note {{ color: #666; font-size: .9em; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }}
.plots img {{ max-width: 100%; border: 1px solid #eee; }}
nav a {{ margin-right: 1em; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="note">generated {generated} from <code>{base}</code></p>
<nav>{nav}</nav>
{body}
</body></html>
"""


# ---------------------------------------------------------------- small HTML helpers
def esc(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4f}"
    return str(v)


def table(header: list[str], rows: Iterable[Iterable], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = [f'<td class="num">{esc(_fmt(c))}</td>' if i >= numeric_from else f"<td>{esc(_fmt(c))}</td>"
                 for i, c in enumerate(r)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class Figures:
    """matplotlib figures -> <img src="data:image/png;base64,..."> tags."""

    def __init__(self, cfg: Config):
        import matplotlib

        matplotlib.use("Agg")   # no display; never opens a window
        import matplotlib.pyplot as plt

        # labels and file names are data: a '$' in one must print as '$', not start (broken) mathtext
        plt.rcParams["text.parse_math"] = False

        self.plt, self.dpi, self.width = plt, cfg.report.dpi, cfg.report.figure_width_in
        self.count = 0

    def new(self, height: float, width: Optional[float] = None):
        return self.plt.subplots(figsize=(width or self.width, height), dpi=self.dpi)

    def img(self, fig, alt: str) -> str:
        buf = io.BytesIO()
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(buf, format="png", dpi=self.dpi)
        self.plt.close(fig)
        self.count += 1
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


# ---------------------------------------------------------------- sections
def datasets_section(cfg: Config, figs: Figures) -> str:
    from pipeline.datasets import listing_paths

    parts = []
    for name in cfg.datasets:
        _, summary_path = listing_paths(cfg, name)
        if not summary_path.exists():
            parts.append(f"<h3>{esc(name)}</h3><p class='note'>not listed yet (<code>emocache datasets list "
                         f"{esc(name)}</code>)</p>")
            continue
        s = json.loads(summary_path.read_text())
        n = s["n_per_split"]
        parts.append(f"<h3>{esc(name)}</h3><p>{s['n_clips']} clips (train {n['train']}, val {n['val']}, "
                     f"test {n['test']}); {len(s['labels'])} labels{' (multi-label)' if s['multilabel'] else ''}; "
                     f"{s['n_problems']} problem(s)</p>")
        counts = s.get("label_counts", {})
        labels = s["labels"]
        splits = [sp for sp in ("train", "val", "test") if counts.get(sp)]
        if labels and splits:
            parts.append(table(["label", *splits], ([lab, *[counts[sp].get(lab, 0) for sp in splits]]
                                                    for lab in labels)))
            fig, ax = figs.new(0.3 * len(labels) + 1.0, figs.width * 0.7)
            left = np.zeros(len(labels))
            for sp in splits:
                v = np.asarray([counts[sp].get(lab, 0) for lab in labels], float)
                ax.barh(labels, v, left=left, label=sp)
                left += v
            ax.invert_yaxis()
            ax.set_xlabel("clips")
            ax.legend(loc="lower right", fontsize=8)
            ax.set_title(f"{name}: labels per split", fontsize=10)
            parts.append(f'<div class="plots">{figs.img(fig, f"{name} label counts")}</div>')
        for p in s.get("problems", [])[:5]:
            parts.append(f"<p class='note'>problem: {esc(p.get('source'))}: {esc(p.get('reason'))}</p>")
    return "".join(parts) or "<p class='note'>no datasets in params.yaml</p>"


def extraction_section(metrics_dir: Path) -> str:
    rows = []
    for p in sorted((metrics_dir / "runs").glob("extract_*.json")):   # the latest run's facts, not tracked
        doc = json.loads(p.read_text())
        for key, s in doc.get("extractors", {}).items():
            rate = s["done"] / s["seconds"] if s.get("seconds") and s.get("done") else "-"   # all cached
            rows.append([p.stem.removeprefix("extract_"), key, s.get("done", 0), s.get("skipped", 0),
                         s.get("failed", 0), s.get("empty", 0), float(s.get("seconds", 0.0)), rate,
                         weights_label(s.get("pretrained"), s.get("learned", True))])
    if not rows:
        return "<p class='note'>no extraction summaries in metrics/runs/ (written by `emocache extract`)</p>"
    return table(["family", "extractor", "done", "cached", "failed", "empty", "seconds", "clips/s", "weights"],
                 rows, numeric_from=2)


def _read_csv(path: Path) -> Optional[pd.DataFrame]:
    if not path.exists():
        return None
    df = pd.read_csv(path)
    return df if len(df) else None


def experiment_section(cfg: Config, name: str, doc: dict, plots_dir: Path, figs: Figures) -> str:
    parts = [f"<h3 id='exp-{esc(name)}'>{esc(name)}</h3>",
             f"<p>{esc(doc.get('head'))} head on {esc(' + '.join(doc.get('modalities', [])))}, dataset "
             f"{esc(doc.get('dataset'))}; evaluated on <b>{esc(doc.get('eval_split'))}</b> "
             f"({doc.get('n_clips', {}).get(doc.get('eval_split'), '?')} clips), seeds {esc(doc.get('seeds'))}</p>"]
    if not doc.get("all_pretrained", True):
        untrained = [k for k, v in doc.get("pretrained", {}).items() if v is not True]
        parts.append(f"<div class='warn'>features from extractors without pretrained weights: "
                     f"{esc(', '.join(untrained))} (pretrained: false) &mdash; these numbers do not measure "
                     f"the real models</div>")
    metrics = doc.get("metrics", {})
    parts.append(table(["metric", "mean", "std"], ([k, v.get("mean"), v.get("std")] for k, v in metrics.items()
                                                   if isinstance(v, dict))))
    imgs = []
    ap = _read_csv(plots_dir / "per_class_ap.csv")
    if ap is None and doc.get("per_class_ap"):
        ap = pd.DataFrame([{"class": c, "ap_mean": v["mean"], "ap_std": v["std"]}
                           for c, v in doc["per_class_ap"].items()])
    if ap is not None:
        fig, ax = figs.new(0.28 * len(ap) + 1.0, figs.width * 0.6)
        ax.barh(ap["class"].astype(str), ap["ap_mean"].fillna(0), xerr=ap.get("ap_std", None), color="#4a78a8",
                capsize=2)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("average precision (mean over seeds)")
        ax.set_title(f"{name}: per-class AP", fontsize=10)
        imgs.append(figs.img(fig, f"{name} per-class AP"))
    pr = _read_csv(plots_dir / "pr_curves.csv")
    if pr is not None:
        fig, ax = figs.new(4.0, figs.width * 0.6)
        for cls in list(dict.fromkeys(pr["class"]))[: cfg.report.max_pr_classes]:
            d = pr[pr["class"] == cls]   # file order = sklearn's curve order (recall falling)
            ax.plot(d["recall"], d["precision"], label=str(cls), lw=1.2)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{name}: precision-recall ({doc.get('eval_split')})", fontsize=10)
        imgs.append(figs.img(fig, f"{name} PR curves"))
    conf = _read_csv(plots_dir / "confusion.csv")
    classes = doc.get("classes") or []
    if conf is not None and classes:
        pos = {c: i for i, c in enumerate(classes)}
        m = np.zeros((len(classes), len(classes)), int)
        for a, p in zip(conf["actual"].astype(str), conf["predicted"].astype(str)):
            if a in pos and p in pos:
                m[pos[a], pos[p]] += 1
        size = 0.45 * len(classes) + 1.5
        fig, ax = figs.new(size, size + 0.6)
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{name}: confusion (kept seed)", fontsize=10)
        imgs.append(figs.img(fig, f"{name} confusion matrix"))
    loss = _read_csv(plots_dir / "loss.csv")
    if loss is not None and "train_loss" in loss:
        fig, ax = figs.new(3.0, figs.width * 0.6)
        for (seed, mod), d in loss.groupby(["seed", "modality"]):
            ax.plot(d["epoch"], d["train_loss"], lw=1, label=f"train {mod} s{seed}")
            if d["val_loss"].notna().any():
                ax.plot(d["epoch"], d["val_loss"], lw=1, ls="--", label=f"val {mod} s{seed}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6, ncol=2)
        ax.set_title(f"{name}: loss", fontsize=10)
        imgs.append(figs.img(fig, f"{name} loss curves"))
    parts.append(f'<div class="plots">{"".join(imgs)}</div>')
    return "".join(parts)


def experiments_section(cfg: Config, metrics_dir: Path, figs: Figures,
                        only: Optional[list[str]] = None) -> tuple[str, list[str]]:
    names = []
    parts = []
    for p in sorted(metrics_dir.glob("*.json")):
        if only and p.stem not in only:
            continue
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            parts.append(f"<p class='warn'>{esc(p)}: not valid JSON ({esc(e)})</p>")
            continue
        if "metrics" not in doc:
            continue
        names.append(p.stem)
        parts.append(experiment_section(cfg, p.stem, doc, metrics_dir / "plots" / p.stem, figs))
    if names:
        overview = table(["experiment", "head", "modalities", "eval split", "main metric", "mean", "std", "pretrained"],
                         (_overview_row(n, json.loads((metrics_dir / f"{n}.json").read_text())) for n in names),
                         numeric_from=5)
        parts.insert(0, overview)
    return "".join(parts) or f"<p class='note'>no experiment metrics in {esc(metrics_dir)}</p>", names


def _overview_row(name: str, doc: dict) -> list:
    m = doc.get("metrics", {})
    key = next((k for k in ("Mean", "f1_weighted", "accuracy", "mAP") if k in m), next(iter(m), ""))
    v = m.get(key, {})
    return [name, doc.get("head"), "+".join(doc.get("modalities", [])), doc.get("eval_split"), key,
            v.get("mean"), v.get("std"), "yes" if doc.get("all_pretrained") else "NO"]


# ---------------------------------------------------------------- dvc metrics diff
def metrics_diff(cfg: Config, rev: str) -> tuple[Optional[str], str]:
    """(markdown table or None, message). Runs `dvc metrics diff --md REV` in the project directory."""
    cmd = [sys.executable, "-m", "dvc", "metrics", "diff", "--md", rev]
    try:
        proc = subprocess.run(cmd, cwd=cfg.base_dir, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=cfg.report.dvc_timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd[1:])}` timed out after {cfg.report.dvc_timeout_s:.0f} s"
    note = proc.stderr.strip()
    if proc.returncode != 0:
        return None, f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {note or proc.stdout.strip()}"
    return proc.stdout, note


def markdown_table(md: str) -> str:
    """A GitHub pipe table (what `dvc metrics diff --md` prints) as an HTML table."""
    rows = [ln.strip().strip("|").split("|") for ln in md.splitlines() if ln.strip().startswith("|")]
    rows = [[c.strip() for c in r] for r in rows if not all(set(c.strip()) <= set("-: ") for c in r)]
    if not rows:
        return "<p class='note'>no metric changed</p>"
    return table(rows[0], rows[1:], numeric_from=2)


def compare_section(cfg: Config, rev: str, metrics_dir: Path) -> str:
    """The `emocache compare REV` table: headline metric per experiment, mean ± std over seeds, noise flag."""
    from emocache.compare import CompareError, WORKSPACE, compare, render

    rel = os.path.relpath(metrics_dir, cfg.base_dir)
    try:
        rows, notes = compare(cfg.base_dir, rev, None, rel)
    except CompareError as e:
        return f"<div class='warn'>{esc(e)}</div>"
    text = render(rows, rev, WORKSPACE, markdown=True, notes=notes).splitlines()
    legend = [ln for ln in text if not ln.startswith("|") and ln.strip()]
    return (f"<p><code>emocache compare {esc(rev)}</code>: workspace against <code>{esc(rev)}</code></p>"
            + markdown_table("\n".join(ln for ln in text if ln.startswith("|")))
            + "".join(f"<p class='note'>{esc(ln)}</p>" for ln in legend))


def diff_section(cfg: Config, rev: Optional[str], metrics_dir: Optional[Path] = None) -> str:
    if not rev:
        return "<p class='note'>no revision given (<code>emocache report --rev HEAD~1</code> compares against one)</p>"
    md, note = metrics_diff(cfg, rev)
    out = compare_section(cfg, rev, metrics_dir or cfg.path("metrics"))
    out += f"<p>all metrics: workspace against <code>{esc(rev)}</code> (<code>dvc metrics diff --md {esc(rev)}</code>)</p>"
    if md is None:
        return out + f"<div class='warn'>{esc(note)}</div>"
    if note:
        out += f"<p class='note'>{esc(note)}</p>"
    return out + (markdown_table(md) if md.strip() else "<p class='note'>no metric changed</p>")


# ---------------------------------------------------------------- predictions
def prediction_files(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.json")) if p.is_dir() else [p] if p.is_file() else []
    return out


def prediction_section(doc: dict, figs: Figures) -> str:
    head = doc["head"]
    classes = head["classes"]
    thr = np.asarray([head["thresholds"][c] for c in classes])
    title = f"{esc(Path(doc['video']).name)} &mdash; {esc(head['run'])}"
    parts = [f"<h3>{title}</h3>",
             f"<p>{doc['duration_s']:.1f} s; {esc(head['kind'])} head on {esc(' + '.join(head['modalities']))}; "
             f"{len(doc['segments'])} speech segment(s); thresholds: {esc(head['thresholds_source'])}</p>"]
    if not doc.get("all_pretrained", True):
        parts.append("<div class='warn'>features from extractors without pretrained weights (pretrained: false)</div>")
    if doc.get("vad_note"):
        parts.append(f"<p class='note'>{esc(doc['vad_note'])}</p>")
    imgs = []
    segs = [s for s in doc["segments"] if "scores" in s]
    if segs:
        # timeline: one row per emotion, each segment painted with its score; gaps (no speech) stay blank
        fig, (ax, ax2) = figs.plt.subplots(2, 1, figsize=(figs.width, 0.32 * len(classes) + 2.6), dpi=figs.dpi,
                                           sharex=True, gridspec_kw={"height_ratios": [len(classes), 3]},
                                           layout="constrained")
        cmap = figs.plt.get_cmap("viridis")
        for s in segs:
            for i, c in enumerate(classes):
                v = s["scores"][c]
                ax.add_patch(figs.plt.Rectangle((s["start"], i - 0.45), s["end"] - s["start"], 0.9,
                                                color=cmap(v), lw=0))
                if v >= thr[i]:
                    ax.plot([s["start"], s["end"]], [i + 0.45, i + 0.45], color="#d62728", lw=2)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_ylim(len(classes) - 0.5, -0.5)
        ax.set_title("emotion timeline (colour = score; red bar = above threshold)", fontsize=10)
        sm = figs.plt.cm.ScalarMappable(cmap=cmap, norm=figs.plt.Normalize(0, 1))
        fig.colorbar(sm, ax=[ax, ax2], fraction=0.03, pad=0.01)   # both panels shrink: time axes stay aligned
        top = [max(classes, key=lambda c: s["scores"][c]) for s in segs]
        for s, c in zip(segs, top):
            ax2.plot([s["start"], s["end"]], [s["scores"][c]] * 2, lw=3)
            ax2.text((s["start"] + s["end"]) / 2, s["scores"][c] + 0.04, c, ha="center", fontsize=7)
        ax2.set_ylim(0, 1.15)
        ax2.set_xlim(0, doc["duration_s"])
        ax2.set_ylabel("top score", fontsize=8)
        ax2.set_xlabel("time (s)")
        imgs.append(figs.img(fig, f"{Path(doc['video']).name} emotion timeline"))
    levels = [(k, v) for k, v in doc["video_level"].items() if "scores" in v]
    if levels:
        # the real-world MER system's bar chart: one bar per emotion, dotted threshold, highlighted when above it
        fig, axes = figs.plt.subplots(1, len(levels), figsize=(figs.width, 3.2), dpi=figs.dpi, squeeze=False)
        for ax, (k, v) in zip(axes[0], levels):
            vals = np.asarray([v["scores"][c] for c in classes])
            ax.bar(range(len(classes)), vals, color=np.where(vals >= thr, "#d62728", "#9db4cc"))
            for i, t in enumerate(thr):
                ax.plot([i - 0.4, i + 0.4], [t, t], ls=":", color="black", lw=1)
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(k.replace("_", " "), fontsize=9)
        imgs.append(figs.img(fig, f"{Path(doc['video']).name} video-level scores"))
    parts.append(f'<div class="plots">{"".join(imgs)}</div>')
    rows = [[f"{s['start']:.2f}-{s['end']:.2f}", s.get("top", "-"), ", ".join(s.get("above_threshold", [])) or "-",
             s.get("note", "")] for s in doc["segments"]]
    rows += [[k, v.get("top", "-"), ", ".join(v.get("above_threshold", [])) or "-", v.get("note", "")]
             for k, v in doc["video_level"].items()]
    parts.append(table(["segment (s)", "top emotion", "above threshold", "note"], rows, numeric_from=99))
    return "".join(parts)


# ---------------------------------------------------------------- the page
def build_report(cfg: Config, out: str | Path, metrics_dir: str | Path = "metrics", rev: Optional[str] = None,
                 predictions: Iterable[str | Path] = (), experiments: Optional[list[str]] = None) -> dict:
    """Write the HTML page; returns {'path', 'n_plots', 'experiments', 'predictions'}."""
    figs = Figures(cfg)
    metrics_dir = cfg.path(metrics_dir)
    sections = [("datasets", "Datasets", datasets_section(cfg, figs)),
                ("extraction", "Feature extraction", extraction_section(metrics_dir))]
    exp_html, names = experiments_section(cfg, metrics_dir, figs, experiments)
    sections.append(("experiments", "Experiments", exp_html))
    sections.append(("diff", "Metrics diff", diff_section(cfg, rev, metrics_dir)))
    pred_files = prediction_files(predictions)
    pred_parts = []
    for p in pred_files:
        try:
            pred_parts.append(prediction_section(json.loads(p.read_text()), figs))
        except (json.JSONDecodeError, KeyError) as e:
            pred_parts.append(f"<div class='warn'>{esc(p)}: not a prediction file ({esc(type(e).__name__)}: {esc(e)})</div>")
    sections.append(("predictions", "Predicted videos",
                     "".join(pred_parts) or "<p class='note'>no prediction files (<code>emocache predict</code> "
                                            "writes them)</p>"))
    body = "".join(f"<h2 id='{sid}'>{esc(title)}</h2>{content}" for sid, title, content in sections)
    nav = "".join(f"<a href='#{sid}'>{esc(title)}</a>" for sid, title, _ in sections)
    page = PAGE.format(title="emocache report", generated=time.strftime("%Y-%m-%d %H:%M:%S"),
                       base=esc(cfg.base_dir), nav=nav, body=body)
    out = cfg.path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return {"path": str(out), "n_plots": figs.count, "experiments": names, "predictions": [str(p) for p in pred_files]}
