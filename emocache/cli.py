"""The `emocache` command. DVC stages call these subcommands; each is a thin layer over library code."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup


class _Commands(TyperGroup):
    """The one place errors become exit codes: an EmocacheError prints its message (no traceback) and exits
    with its kind's code (2 usage, 1 input, 3 weights, 4 storage; see pipeline/errors.py)."""

    def invoke(self, ctx):
        from pipeline.errors import EmocacheError

        try:
            return super().invoke(ctx)
        except EmocacheError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  help="Extract expensive multimodal features once into a cache; train small heads on it.")
datasets_app = typer.Typer(no_args_is_help=True, help="List, inspect and add datasets (params.yaml `datasets:`).")
app.add_typer(datasets_app, name="datasets")
weights_app = typer.Typer(no_args_is_help=True,
                          help="The models emocache knows (list) and the one command that downloads them (fetch).")
app.add_typer(weights_app, name="weights")

PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file (every tunable number lives there)")


_VERBOSE = False
VERBOSE = typer.Option(False, "--verbose", "-v", help="show progress and third-party log lines")


@app.callback()
def _main(verbose: bool = VERBOSE) -> None:
    """Extract expensive multimodal features once into a cache; train small heads on it."""
    global _VERBOSE
    _VERBOSE = verbose
    _setup_logging(verbose)   # before any command imports mediapipe / transformers (their env switches)


def _setup_logging(verbose: bool = False) -> None:
    from emocache.quiet import setup_logging

    setup_logging(verbose or _VERBOSE)


def _config(params: str, overrides: Optional[dict] = None):
    from emocache.config import load_config

    try:
        return load_config(params, overrides)
    except Exception as e:  # pydantic errors name the field; show them without a traceback
        typer.echo(f"error: {params}: {e}", err=True)
        raise typer.Exit(2)


def _rel(path, cfg) -> str:
    """A path relative to the project when it lies inside it (shorter lines)."""
    try:
        return str(Path(path).resolve().relative_to(Path(cfg.base_dir).resolve()))
    except ValueError:
        return str(path)


def _dataset_names(cfg, names: Optional[list[str]]) -> list[str]:
    names = names or list(cfg.datasets)
    unknown = [n for n in names if n not in cfg.datasets]
    if unknown:
        typer.echo(f"error: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(sorted(cfg.datasets)) or '(none)'}",
                   err=True)
        raise typer.Exit(2)
    return names


def _check_family(family: Optional[str]) -> Optional[str]:
    """None (every family) or one of the family stores: an unknown one would otherwise run no extractor, create
    an empty store of that name and exit 0."""
    from pipeline.catalog import FAMILIES

    if family is not None and family not in FAMILIES:
        typer.echo(f"error: unknown --family {family!r}; known: {', '.join(FAMILIES)}", err=True)
        raise typer.Exit(2)
    return family


# ---------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list(names: Optional[list[str]] = typer.Argument(None, help="datasets (default: all in params.yaml)"),
                  params: str = PARAMS, write: bool = typer.Option(True, help="write cache/datasets/<name>.csv/.json")):
    """List each dataset's clips: hash media, assign splits, write the clip table and summary."""
    _setup_logging()
    from pipeline.datasets import list_dataset, write_listing

    cfg = _config(params)
    for name in _dataset_names(cfg, names):
        t0 = time.perf_counter()
        listing = list_dataset(cfg, name)
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
            typer.echo(f"  wrote {_rel(table, cfg)} and {_rel(summary, cfg)} ({time.perf_counter() - t0:.1f} s)")


@datasets_app.command("show")
def datasets_show(name: str, params: str = PARAMS):
    """Splits and label counts of one dataset (from its clip table)."""
    from pipeline.datasets import read_clip_table

    cfg = _config(params)
    _dataset_names(cfg, [name])
    df, summary = read_clip_table(cfg, name)
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
def extract(family: Optional[str] = typer.Option(None, help="audio | text | video | text_states | audio_states (default: all)"),
            dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="datasets (default: all)"),
            params: str = PARAMS,
            summary_json: Optional[str] = typer.Option(None, help="write the run summary here"),
            verbose: bool = VERBOSE):
    """Run the extractors each dataset asks for; only clips missing from the store are processed.

    Decodes each media file once for all extractors of the family, commits every
    `store.flush_clips` clips, records failed clips in the store's failure table and goes on.
    """
    _setup_logging(verbose)
    from pipeline.extract import extract as run_extract

    cfg = _config(params)
    names = _dataset_names(cfg, dataset)
    family = _check_family(family)
    try:
        summary = run_extract(cfg, names, family)
    except KeyboardInterrupt:
        typer.echo("interrupted: clips committed before Ctrl-C are complete; nothing of the clips in progress "
                   "was stored. Rerun to continue (only missing clips are extracted)", err=True)
        raise typer.Exit(130)
    _write_manifests(cfg, names, family)
    for line in summary.lines():
        typer.echo(line)
    for f in summary.failures[:20]:
        typer.echo(f"  failed: {f['extractor']} {f['path'] or f['clip_id']}: {f['stage']}: {f['error']}")
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(summary.as_dict(), indent=1))


def _write_manifests(cfg, names: list[str], family: Optional[str]) -> None:
    """What DVC tracks of the stores (pipeline/manifests.py): per dataset and extractor, fingerprint + clip ids."""
    from pipeline.manifests import dataset_keys, write_family_manifests

    families = [family] if family else sorted({f for n in names for f in dataset_keys(cfg, n).values()})
    for fam in families:
        write_family_manifests(cfg, fam, names)


manifests_app = typer.Typer(no_args_is_help=True,
                            help="The small files DVC tracks in place of the stores (pipeline/manifests.py).")
app.add_typer(manifests_app, name="manifests")


@manifests_app.command("write")
def manifests_write(family: Optional[str] = typer.Option(None, help="audio | text | video | text_states | audio_states (default: all)"),
                    dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="datasets (default: all)"),
                    params: str = PARAMS):
    """Rewrite the feature manifests from the store as it is (e.g. after pointing store.dir at a shared store)."""
    cfg = _config(params)
    names = _dataset_names(cfg, dataset)
    family = _check_family(family)
    _write_manifests(cfg, names, family)
    typer.echo(f"manifests of {', '.join(names)} written under {_rel(cfg.path(cfg.store.manifests_dir), cfg)}")


@manifests_app.command("inputs")
def manifests_inputs(experiments: list[str] = typer.Argument(..., help="experiments from params.yaml"),
                     params: str = PARAMS, verbose: bool = VERBOSE):
    """Write <manifests_dir>/inputs/<experiment>.json: the manifests of exactly the keys the experiment reads
    (the `inputs@<experiment>` stage; `train@<experiment>` depends on this file). Quiet unless --verbose."""
    from heads.inputs import write_experiment_inputs

    cfg = _config(params)
    for name in experiments:
        if name not in cfg.experiments:
            typer.echo(f"error: unknown experiment {name!r}; known: {', '.join(sorted(cfg.experiments))}", err=True)
            raise typer.Exit(2)
        path = write_experiment_inputs(cfg, name)
        if verbose or _VERBOSE:
            typer.echo(f"wrote {_rel(path, cfg)}")


# ---------------------------------------------------------------- status
@app.command()
def status(params: str = PARAMS):
    """Per dataset and extractor: clips cached, stale (older fingerprint only), failed; store sizes."""
    from emocache.status import collect_status

    cfg = _config(params)
    for line in collect_status(cfg):
        typer.echo(line)


store_app = typer.Typer(no_args_is_help=True, help="Maintain the feature stores under store.dir.")
app.add_typer(store_app, name="store")


@store_app.command("compact")
def store_compact(key: Optional[list[str]] = typer.Option(None, "--key", "-k", help="extractor keys (default: all)"),
                  params: str = PARAMS):
    """Merge small committed segments into ones of up to store.compact_clips clips (kill -9 safe; waits for a
    running extract). One line per key."""
    from pipeline.store_compact import compact_cache

    cfg = _config(params)
    for c in compact_cache(cfg.store, Path(cfg.base_dir), key or None):
        typer.echo(c.line())


@app.command()
def doctor(params: str = PARAMS):
    """Check ffmpeg, torch device, each extractor's weights and key package versions."""
    from emocache.doctor import run_doctor

    cfg = _config(params)
    ok = run_doctor(cfg, typer.echo)
    raise typer.Exit(0 if ok else 1)


# ---------------------------------------------------------------- weights
@weights_app.command("list")
def weights_list(params: str = PARAMS, as_json: bool = typer.Option(False, "--json", help="machine-readable")):
    """Every known model: extractor, file, source, size, sha256 pin, licence, present (path) or missing."""
    from emocache.weights import list_json, list_lines

    cfg = _config(params)
    if as_json:
        typer.echo(json.dumps(list_json(cfg), indent=1))
        return
    for line in list_lines(cfg):
        typer.echo(line)


@weights_app.command("fetch")
def weights_fetch(names: Optional[list[str]] = typer.Argument(None, help="models from `emocache weights list`"),
                  missing: bool = typer.Option(False, "--missing", help="what these params use and this machine lacks"),
                  all_: bool = typer.Option(False, "--all", help="every model in the catalog"),
                  mirror: Optional[str] = typer.Option(None, help="fetch <URL>/<file name> instead of the official "
                                                                  "source (also env EMOCACHE_WEIGHTS_MIRROR, params "
                                                                  "weights.fetch.mirror); same pins"),
                  dry_run: bool = typer.Option(False, "--dry-run", help="print what would be fetched"),
                  params: str = PARAMS):
    """Download models into weights.dir (hub repos: the Hugging Face cache), verified against their pins.

    The only command that uses the network. Partial downloads resume; a failed or mismatching download leaves no file under the real name."""  # noqa: E501
    from emocache.weights import fetch_options, select
    from pipeline.weights_fetch import fetch

    cfg = _config(params)
    entries = select(cfg, names or [], missing, all_)
    if not entries:
        typer.echo("nothing to fetch: every model these params use is present")
        return
    _, errors = fetch(entries, fetch_options(cfg, mirror, dry_run, lambda m: typer.echo(m, err=m.startswith("error"))))
    if errors:
        typer.echo(f"weights fetch: {len(errors)} of {len(entries)} failed", err=True)
        raise typer.Exit(1)


# ---------------------------------------------------------------- heads
@app.command()
def train(experiment: str = typer.Argument(..., help="experiment name from params.yaml `experiments:`"),
          params: str = PARAMS, out: str = typer.Option("models", help="checkpoints go to <out>/<experiment>/"),
          metrics_dir: str = typer.Option("metrics", help="metrics JSON and plot data go here"),
          verbose: bool = VERBOSE):
    """Train and evaluate a head on cached features only (no extractor runs).

    Prints one line per seed and a summary line; the metrics go to <metrics-dir>/<experiment>.json (a function
    of code, params and data) and the run's timings and git state to <metrics-dir>/runs/<experiment>.json."""
    _setup_logging(verbose)
    from heads.cli_glue import train_experiment

    cfg = _config(params)
    if experiment not in cfg.experiments:
        typer.echo(f"error: unknown experiment {experiment!r}; known: {', '.join(sorted(cfg.experiments))}", err=True)
        raise typer.Exit(2)
    result = train_experiment(cfg, experiment, Path(out), Path(metrics_dir))
    for line in _seed_lines(result):
        typer.echo(line)
    typer.echo(_train_summary(cfg, experiment, result, out))


def _seed_lines(result: dict) -> list[str]:
    """One line per seed: its headline metric on the eval split, best epoch, seconds."""
    per_seed, m = result.get("per_seed", {}), result.get("metrics", {})
    key = next((k for k in ("Mean", "f1_weighted", "accuracy", "mAP") if k in per_seed), None)
    lines = []
    for i, seed in enumerate(result.get("seeds", [])):
        best = result.get("best_epoch", [None] * (i + 1))[i] if result.get("n_clips", {}).get("val") else None
        best = "  best epoch " + ", ".join(f"{k} {v}" for k, v in best.items()) if isinstance(best, dict) and best \
            else ""   # without a val split every seed keeps its last epoch
        secs = (result.get("seed_seconds") or [0.0] * (i + 1))[i]
        extra = "  ".join(f"{k} {per_seed[k][i]:.4f}" for k in ("accuracy", "mAP") if k in per_seed and k != key)
        lines.append(f"  seed {seed}: {result.get('eval_split')} {key} {per_seed[key][i]:.4f}  {extra}{best}  "
                     f"{secs:.2f} s" if key else f"  seed {seed}: {secs:.2f} s")
    return lines


@app.command()
def tune(experiment: str = typer.Argument(..., help="experiment name from params.yaml `experiments:`"),
         trials: Optional[int] = typer.Option(None, "--trials", "-n", help="search trials (default: its tune.trials)"),
         name: Optional[str] = typer.Option(None, help="output name (default: <experiment>_tuned)"),
         params: str = PARAMS, out: str = typer.Option("models", help="checkpoints go to <out>/<name>/"),
         metrics_dir: str = typer.Option("metrics", help="metrics JSON and plot data go here")):
    """Search head hyper-parameters with Optuna on the validation split only (head kind, lr, weight decay,
    width, dropout, epochs, class balance; space in the experiment's `tune:`), then retrain the best setting
    over the experiment's seeds and write it as `train` does, the chosen params under "tuning"."""
    _setup_logging()
    from heads.cli_glue import train_experiment

    cfg = _config(params)
    if experiment not in cfg.experiments:
        typer.echo(f"error: unknown experiment {experiment!r}; known: {', '.join(sorted(cfg.experiments))}", err=True)
        raise typer.Exit(2)
    if trials is not None and trials < 1:
        typer.echo("error: --trials must be at least 1", err=True)
        raise typer.Exit(2)
    out_name = name or f"{experiment}_tuned"
    n = trials or cfg.experiments[experiment].tune.trials
    result = train_experiment(cfg, experiment, Path(out), Path(metrics_dir), trials=n, out_name=out_name)
    t = result["tuning"]
    typer.echo(f"tune {experiment}: {t['n_trials']} trials ({t['n_pruned']} pruned) in {t['seconds']:.1f} s; best "
               f"val {t['metric']} {t['val_score']:.4f} with {json.dumps(t['params'])}", err=True)
    typer.echo(_train_summary(cfg, experiment, result, out, out_name), err=True)


def _train_summary(cfg, experiment: str, result: dict, out: str, name: Optional[str] = None) -> str:
    """One line at the end of the stage: clips, seeds x epochs, time, throughput, the headline metric.
    name: the run's output name when it is not the experiment's (tune)."""
    exp = cfg.experiments[experiment].model_copy(update={"head": result.get("head", cfg.experiments[experiment].head)})
    name = name or experiment
    n = result.get("n_clips", {})
    secs = result.get("train_seconds", {}).get("total", 0.0)
    runs = result.get("epochs_run", [])   # per seed: {network: epochs}, one network per modality in late fusion
    passes = max(1, len(runs[0])) if runs else 1          # a closed-form fit (logreg) ran no epochs: {}
    ran = [sum(r.values()) for r in runs]
    epochs = round(sum(ran) / len(ran) / passes) if ran else 0
    work = n.get("train", 0) * epochs * len(result.get("seeds", [])) * passes
    rate = f"{work / secs:.0f} clip-epochs/s" if secs > 0 and work else "-"
    m = result.get("metrics", {})
    key = next((k for k in ("Mean", "f1_weighted", "accuracy", "mAP") if k in m), None)
    headline = f"; {result.get('eval_split')} {key} {m[key]['mean']:.4f} ± {m[key]['std']:.4f}" if key else ""
    pre = "" if result.get("all_pretrained", True) else "  (features not all pretrained)"
    return (f"train {name}: {exp.head} on {'+'.join(exp.modalities)}; clips train/val/test "
            f"{n.get('train', 0)}/{n.get('val', 0)}/{n.get('test', 0)}; {len(result.get('seeds', []))} seed(s) x "
            f"{f'{epochs} epochs' if epochs else 'one fit'} in {secs:.2f} s ({rate}){headline}; "
            f"checkpoint {Path(out) / name / 'model.pt'}{pre}")


@app.command()
def evaluate(experiment: str = typer.Argument(..., help="experiment whose checkpoint <models>/<experiment>/model.pt "
                                                         "is scored"),
             params: str = PARAMS, models: str = typer.Option("models", help="folder holding <experiment>/model.pt"),
             split: Optional[str] = typer.Option(None, help="train | val | test (default: test, else val, else train)"),
             out: Optional[str] = typer.Option(None, help="also write the metrics JSON here (never overwrites "
                                                          "train's metrics/<experiment>.json unless you point it there)")):
    """Re-evaluate a trained checkpoint on the cached split: no training, no extraction.

    Uses the checkpoint's own experiment settings (modalities, max_frames, per-class thresholds) and the current
    clip table and stores, so it repeats what `train` reported for the kept seed or shows what a cache change did.
    """
    _setup_logging()
    from emocache.evaluate import evaluate_experiment

    cfg = _config(params)
    result = evaluate_experiment(cfg, experiment, models, split)
    typer.echo(f"{experiment}: {result['head']} on {'+'.join(result['modalities'])}, {result['split']} split "
               f"({result['n_clips']} clips), checkpoint seed {result['seed']}")
    for k, v in result["metrics"].items():
        typer.echo(f"  {k:<14} {v:.4f}" if isinstance(v, float) else f"  {k:<14} {v}")
    if not result["all_pretrained"]:
        typer.echo("  note: features from untrained extractors (pretrained: false)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        typer.echo(f"  wrote {out}")


# ---------------------------------------------------------------- user-facing
@app.command()
def predict(video: str = typer.Argument(..., help="a video or audio file"),
            head: str = typer.Option(..., "--head", help="trained run: an experiment name (models/<name>/model.pt), "
                                                         "a run folder or a model.pt path"),
            params: str = PARAMS,
            transcript: Optional[str] = typer.Option(None, help="what is said in the video; required by heads that "
                                                                "read text (there is no speech-to-text here)"),
            out: Optional[str] = typer.Option(None, help="output folder (default: params predict.out_dir)"),
            models: str = typer.Option("models", help="where experiment names are looked up")):
    """Emotion scores for one new video: per speech segment (voice-activity detection) and for the whole video.

    Runs the head's extractors on the video through the normal stores (a video seen before is not extracted
    again), cuts speech with Silero VAD (params predict.vad), scores each segment (audio heads) and the whole
    clip, and writes <video>_<run>.json and .csv: per-segment scores, the duration-weighted mean of the segment
    scores, the whole-clip scores, and which emotions pass the head's per-class thresholds (0.5 by default).
    """
    _setup_logging()
    from emocache.predict import predict_video, summary_lines, write_outputs

    cfg = _config(params)
    if not Path(video).is_file():
        typer.echo(f"error: {video}: no such file", err=True)
        raise typer.Exit(2)
    result = predict_video(cfg, video, head, transcript, models)
    jpath, cpath = write_outputs(result, cfg.path(out or cfg.predict.out_dir))
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"wrote {jpath} and {cpath}")


@app.command()
def detect(files: list[str] = typer.Argument(..., help="images, or videos (every frame)"),
           params: str = PARAMS,
           weights: Optional[str] = typer.Option(None, help="a YOLO weights file (sets detector.kind: yolo)"),
           json_out: Optional[str] = typer.Option(None, "--json", help="write the detections here")):
    """Run the configured person detector (the tracks stage's own) on images or every frame of videos:
    {file: [[class, confidence, [x1, y1, x2, y2]], ...]} in each file's own pixels ('file#frameN' per frame)."""
    from emocache.video_tools import detect_files

    cfg = _config(params, _detector_overrides(weights))
    found, ext = detect_files(cfg, files)
    kind, why = ext.detector_choice()
    n = sum(len(v) for v in found.values())
    typer.echo(f"detect: {n} detections in {len(found)} image(s)/frame(s); detector {kind} ({why}); "
               f"{ext.detector.weights.path or ext.detector.weights.source}")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(found, indent=1))
        typer.echo(f"wrote {json_out}")
    else:
        typer.echo(json.dumps(found))


@app.command()
def tracks(video: str = typer.Argument(..., help="a video file"), params: str = PARAMS,
           weights: Optional[str] = typer.Option(None, help="a YOLO weights file (sets detector.kind: yolo)"),
           csv_out: Optional[str] = typer.Option(None, "--csv", help="write MOTChallenge rows here (1-based "
                                                                      "decoded-frame numbers, decoded pixels)"),
           overlay: Optional[str] = typer.Option(None, help="write an MP4 with boxes, track ids and the target")):
    """Person tracks of one video exactly as the extract stage computes them (media.decode_fps, max_side)."""
    from emocache.video_tools import track_video

    cfg = _config(params, _detector_overrides(weights))
    r = track_video(cfg, video, csv_out, overlay)
    target = f"target {r['target_id']} ({r['target_by']})" if r["target_id"] >= 0 else f"no target ({r['reason']})"
    typer.echo(f"tracks {video}: {r['frames']} frames at {r['fps']:g} fps ({r['frame_size'][0]}x{r['frame_size'][1]}), "
               f"{r['tracks']} tracks, {r['rows']} rows, {target}, shot cuts at {r['shot_starts']}; "
               f"detector {r['detector']} ({r['detector_why']})")
    for what in ("csv", "overlay"):
        if r[what]:
            typer.echo(f"  wrote {r[what]}")


def _detector_overrides(weights: Optional[str]) -> Optional[dict]:
    if weights is None:
        return None
    if not Path(weights).is_file():
        typer.echo(f"error: {weights}: no such file", err=True)
        raise typer.Exit(2)
    return {"extractors": {"video": {"detector": {"kind": "yolo", "weights_file": str(Path(weights).resolve())}}}}


@app.command()
def report(params: str = PARAMS,
           out: Optional[str] = typer.Option(None, help="HTML file to write (default: params report.out)"),
           metrics_dir: str = typer.Option("metrics", help="where `train` wrote <experiment>.json and plots/"),
           rev: Optional[str] = typer.Option(None, help="git revision to diff metrics against "
                                                        "(`dvc metrics diff --md REV`), e.g. HEAD~1"),
           predictions: Optional[list[str]] = typer.Option(None, "--predictions",
                                                           help="prediction JSON files or folders "
                                                                "(default: params predict.out_dir)"),
           experiment: Optional[list[str]] = typer.Option(None, "--experiment", "-e",
                                                          help="only these experiments (default: all with metrics)")):
    """Write one self-contained HTML page: datasets, extraction runs, per-experiment metrics with per-class AP
    bars, PR curves, confusion matrices and loss curves, the metrics diff against a git revision, and an
    emotion timeline per predicted video. Plots are inline PNGs; no JavaScript, CSS or fonts are fetched."""
    _setup_logging()
    from emocache.report import build_report

    cfg = _config(params)
    preds = predictions or [str(cfg.path(cfg.predict.out_dir))]
    info = build_report(cfg, out or cfg.report.out, metrics_dir, rev, preds, experiment)
    typer.echo(f"wrote {info['path']}: {len(info['experiments'])} experiment(s), "
               f"{len(info['predictions'])} prediction(s), {info['n_plots']} plot(s)")


@app.command()
def results(metrics_dir: str = typer.Option("metrics", help="where `emocache train` wrote <experiment>.json"),
            params: str = PARAMS):
    """One line per trained experiment: headline metrics (mean +- std over seeds) beside chance, the features'
    weights; then one line each on what the experiment shows (params `about:`) and what chance scores."""
    from emocache.config import load_config

    try:
        exps = load_config(params).experiments
    except Exception:   # results still list the metrics without a readable params file
        exps = {}
    rows, notes = [], []
    for f in sorted(Path(metrics_dir).glob("*.json")):
        doc = json.loads(f.read_text())
        if "experiment" not in doc:
            continue
        m, ch = doc.get("metrics", {}), doc.get("chance") or {}
        cell = lambda k: f"{m[k]['mean']:.3f}±{m[k]['std']:.3f}" if k in m else "-"  # noqa: E731
        num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        feats = (doc.get("provenance") or {}).get("features") or {}
        weights = {k: (feats.get(k) or {}).get("weights") or ("pretrained" if v else "pretrained: false (random init)")
                   for k, v in doc.get("pretrained", {}).items()}
        split = doc.get("eval_split", "-")
        chance = "/".join(num(ch.get(k)) for k in ("accuracy_uniform", "mAP_random")) if ch else "-"
        rows.append((doc["experiment"], f"{doc['head']}({'+'.join(doc['modalities'])})",
                     f"{split} {doc.get('n_clips', {}).get(split, '?')}", str(len(doc.get("seeds", []))),
                     cell("accuracy"), cell("f1_weighted"), cell("mAP"), chance))
        about = getattr(exps.get(doc["experiment"]), "about", "") or "(no `about:` in params)"
        if "accuracy_majority" in ch:
            about += f"; always '{ch['majority_class']}': accuracy {ch['accuracy_majority']:.3f}"
        weak = [f"{k}: {w}" for k, w in weights.items() if w != "pretrained"]
        notes.append((doc["experiment"], about + (f" [{', '.join(weak)}]" if weak else "")))
    if not rows:
        typer.echo(f"no experiment metrics in {metrics_dir}/ (run `dvc repro` or `emocache train EXPERIMENT`)")
        return
    head = ("experiment", "head(features)", "eval clips", "seeds", "accuracy", "weighted F1", "mAP",
            "chance acc/mAP")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    typer.echo("what each shows (chance: a random class / scores unrelated to the labels, same split):")
    w = max(len(n) for n, _ in notes)
    for name, line in notes:
        typer.echo(f"  {name.ljust(w)}  {line}")


@app.command()
def compare(rev_a: str = typer.Argument("HEAD", help="git revision of the first side"),
            rev_b: Optional[str] = typer.Argument(None, help="git revision of the second side (default: the "
                                                             "workspace's metrics/)"),
            md: bool = typer.Option(False, "--md", help="a Markdown table (for a pull request)"),
            metric: Optional[list[str]] = typer.Option(None, "--metric", "-m",
                                                       help="metrics to compare (default: each experiment's "
                                                            "headline: Mean, else accuracy, else mAP)"),
            metrics_dir: str = typer.Option("metrics", help="metrics folder, relative to the project")):
    """Headline metrics per experiment at two revisions: mean +- std over seeds, the difference, and whether it
    is larger than the seeds' noise (|diff| < sqrt(std_a^2 + std_b^2) is flagged as noise)."""
    from emocache.compare import WORKSPACE
    from emocache.compare import compare as run_compare
    from emocache.compare import render

    rows, notes = run_compare(Path.cwd(), rev_a, rev_b, metrics_dir, metric)
    typer.echo(render(rows, rev_a, rev_b or WORKSPACE, md, notes))


def main() -> None:  # pragma: no cover
    try:
        app()
    except KeyboardInterrupt:   # Ctrl-C outside a command's own handling (start-up, imports): no traceback
        typer.echo("interrupted", err=True)
        raise SystemExit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
