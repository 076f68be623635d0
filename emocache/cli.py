"""The `emocache` command. DVC stages call these subcommands; each is a thin layer over library code."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Extract expensive multimodal features once into a cache; train small heads on it.")
datasets_app = typer.Typer(no_args_is_help=True, help="List, inspect and add datasets (params.yaml `datasets:`).")
app.add_typer(datasets_app, name="datasets")

PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file (every tunable number lives there)")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _config(params: str, overrides: Optional[dict] = None):
    from emocache.config import load_config

    try:
        return load_config(params, overrides)
    except Exception as e:  # pydantic errors name the field; show them without a traceback
        typer.echo(f"error: {params}: {e}", err=True)
        raise typer.Exit(2)


def _dataset_names(cfg, names: Optional[list[str]]) -> list[str]:
    names = names or list(cfg.datasets)
    unknown = [n for n in names if n not in cfg.datasets]
    if unknown:
        typer.echo(f"error: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(sorted(cfg.datasets)) or '(none)'}",
                   err=True)
        raise typer.Exit(2)
    return names


# ---------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list(names: Optional[list[str]] = typer.Argument(None, help="datasets (default: all in params.yaml)"),
                  params: str = PARAMS, write: bool = typer.Option(True, help="write cache/datasets/<name>.csv/.json")):
    """List each dataset's clips: hash media, assign splits, write the clip table and summary."""
    _setup_logging()
    from pipeline.datasets import DatasetError, list_dataset, write_listing

    cfg = _config(params)
    for name in _dataset_names(cfg, names):
        try:
            listing = list_dataset(cfg, name)
        except DatasetError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)
        s = listing.summary()
        typer.echo(f"{name}: {s['n_clips']} clips  train/val/test = "
                   f"{s['n_per_split']['train']}/{s['n_per_split']['val']}/{s['n_per_split']['test']}  "
                   f"{len(s['labels'])} labels{' (multi-label)' if s['multilabel'] else ''}  "
                   f"problems {s['n_problems']}")
        for p in listing.problems[:10]:
            typer.echo(f"  problem: {p.source}: {p.reason}")
        if len(listing.problems) > 10:
            typer.echo(f"  ... {len(listing.problems) - 10} more (see the summary JSON)")
        if write:
            table, summary = write_listing(cfg, listing)
            typer.echo(f"  wrote {table} and {summary}")


@datasets_app.command("show")
def datasets_show(name: str, params: str = PARAMS):
    """Splits and label counts of one dataset (from its clip table)."""
    from pipeline.datasets import read_clip_table

    cfg = _config(params)
    _dataset_names(cfg, [name])
    try:
        df, summary = read_clip_table(cfg, name)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: {len(df)} clips, labels: {', '.join(summary['labels']) or '(unlabelled)'}")
    for split, counts in summary["label_counts"].items():
        if counts:
            typer.echo(f"  {split:<6} " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))


@datasets_app.command("add")
def datasets_add(name: str, source: str = typer.Argument(..., help="a CSV/TSV manifest or a class-per-folder directory"),
                 params: str = PARAMS, root: Optional[str] = typer.Option(None, help="media root (default: the CSV's folder)"),
                 extractors: str = typer.Option("vggish,egemaps", help="comma-separated extractors to run on it")):
    """Add a dataset entry to params.yaml (CSV manifest -> csv adapter; folder -> folder adapter)."""
    import yaml

    src = Path(source)
    if not src.exists():
        typer.echo(f"error: {source} does not exist", err=True)
        raise typer.Exit(2)
    entry = ({"adapter": "folder", "root": str(src), "split": {"method": "random", "val": 0.1, "test": 0.2, "seed": 0}}
             if src.is_dir() else
             {"adapter": "csv", "root": root or str(src.parent), "manifest": str(src),
              "split": {"method": "random", "val": 0.1, "test": 0.2, "seed": 0}})
    entry["extractors"] = [e for e in extractors.split(",") if e]
    p = Path(params)
    raw = yaml.safe_load(p.read_text()) if p.exists() else {}
    if name in (raw.get("datasets") or {}):
        typer.echo(f"error: dataset {name!r} already in {params}", err=True)
        raise typer.Exit(2)
    # Append as text so the file's comments survive.
    block = yaml.safe_dump({name: entry}, sort_keys=False, default_flow_style=None)
    text = p.read_text() if p.exists() else ""
    if "datasets:" not in text:
        text += "\ndatasets:\n"
    lines = text.splitlines(keepends=True)
    i = next(i for i, ln in enumerate(lines) if ln.startswith("datasets:"))
    j = i + 1
    while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
        j += 1
    lines[j:j] = ["  " + ln + "\n" for ln in block.rstrip().splitlines()]
    p.write_text("".join(lines))
    _config(params)  # validate
    typer.echo(f"added dataset {name!r} to {params}; next: emocache datasets list {name}")


# ---------------------------------------------------------------- extract
@app.command()
def extract(family: Optional[str] = typer.Option(None, help="audio | text | video (default: all)"),
            dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="datasets (default: all)"),
            params: str = PARAMS,
            summary_json: Optional[str] = typer.Option(None, help="write the run summary here"),
            verbose: bool = False):
    """Run the extractors each dataset asks for; only clips missing from the store are processed.

    Decodes each media file once for all extractors of the family, commits every
    `store.flush_clips` clips, records failed clips in the store's failure table and goes on.
    """
    _setup_logging(verbose)
    from pipeline.runner import extract as run_extract
    from pipeline.weights import MissingWeightsError

    cfg = _config(params)
    names = _dataset_names(cfg, dataset)
    try:
        summary = run_extract(cfg, names, family)
    except MissingWeightsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3)
    except KeyError as e:  # unknown extractor / dataset names: the message lists the known ones
        typer.echo(f"error: {e.args[0] if e.args else e}", err=True)
        raise typer.Exit(2)
    for line in summary.lines():
        typer.echo(line)
    for f in summary.failures[:20]:
        typer.echo(f"  failed: {f['extractor']} {f['path'] or f['clip_id']}: {f['stage']}: {f['error']}")
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(summary.as_dict(), indent=1))


# ---------------------------------------------------------------- status
@app.command()
def status(params: str = PARAMS):
    """Per dataset and extractor: clips cached, stale (older fingerprint only), failed; store sizes."""
    from emocache.status import collect_status

    cfg = _config(params)
    for line in collect_status(cfg):
        typer.echo(line)


@app.command()
def doctor(params: str = PARAMS):
    """Check ffmpeg, torch device, each extractor's weights and key package versions."""
    from emocache.doctor import run_doctor

    cfg = _config(params)
    ok = run_doctor(cfg, typer.echo)
    raise typer.Exit(0 if ok else 1)


# ---------------------------------------------------------------- heads
@app.command()
def train(experiment: str = typer.Argument(..., help="experiment name from params.yaml `experiments:`"),
          params: str = PARAMS, out: str = typer.Option("models", help="checkpoints go to <out>/<experiment>/"),
          metrics_dir: str = typer.Option("metrics", help="metrics JSON and plot data go here")):
    """Train and evaluate a head on cached features only (no extractor runs)."""
    _setup_logging()
    from heads.cli_glue import train_experiment

    cfg = _config(params)
    if experiment not in cfg.experiments:
        typer.echo(f"error: unknown experiment {experiment!r}; known: {', '.join(sorted(cfg.experiments))}", err=True)
        raise typer.Exit(2)
    result = train_experiment(cfg, experiment, Path(out), Path(metrics_dir))
    typer.echo(json.dumps(result, indent=1))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
