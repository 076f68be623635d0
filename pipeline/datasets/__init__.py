"""List a dataset described in params.yaml: clips with ids, labels, text fields and splits."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Optional

from pipeline.config import PipelineConfig

from .adapters import ADAPTERS
from .base import (HASH_CACHE, SPLITS, TABLE_LABEL_SEP, Clip, ClipTableMissing, DatasetError, DatasetListing,
                   HashCache, Problem, assign_splits, build_vocab, clip_id_for, clip_table_rows, resolve_inside)

__all__ = ["list_dataset", "write_listing", "read_clip_table", "Clip", "DatasetListing", "DatasetError",
           "Problem", "SPLITS", "listing_paths"]


def list_dataset(cfg: PipelineConfig, name: str, hash_cache: Optional[HashCache] = None) -> DatasetListing:
    dcfg = cfg.dataset(name)
    root = cfg.path(dcfg.root)
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: root {root} is not a directory")
    if dcfg.manifest and dcfg.adapter == "csv":
        dcfg = dcfg.model_copy(update={"manifest": str(cfg.path(dcfg.manifest))})
    problems: list[Problem] = []
    raw = ADAPTERS[dcfg.adapter](name, dcfg, root, problems)
    hashes = hash_cache or HashCache(cfg.path(HASH_CACHE))

    clips: list[Clip] = []
    seen: dict[str, Clip] = {}
    for c in raw:
        try:
            joined = [lab for lab in c.labels if TABLE_LABEL_SEP in lab]
            if joined:   # the clip table joins a clip's labels with it: 'a|b' would come back as two labels
                raise DatasetError(f"{c.source}: label(s) {joined} contain {TABLE_LABEL_SEP!r}, which the clip "
                                   f"table uses to join labels; rename the label or split it with label_sep")
            if c.path:
                media = resolve_inside(root, c.path, c.source)
                try:   # strict: 'nosuchdir/../x.wav' must not pass because x.wav exists
                    (root / c.path).resolve(strict=True)
                    is_file = media.is_file()
                except OSError:
                    is_file = False
                if not is_file:
                    raise DatasetError(f"{c.source}: {_not_a_file(root / c.path, media)}")
                c.media_sha256 = hashes.sha256(media)
                c.media_size = hashes.stat_of(media)[0]
            elif not any(v for v in c.text.values()):
                raise DatasetError(f"{c.source}: clip has neither a media path nor any text")
            if c.end is not None and c.end <= c.start:
                raise DatasetError(f"{c.source}: segment end {c.end} is not after start {c.start}")
        except (DatasetError, OSError) as e:
            problems.append(Problem(name, c.source, c.path, str(e)))
            continue
        c.clip_id = clip_id_for(c.media_sha256, c.start, c.end, c.text, c.native_key)
        if c.clip_id in seen:
            problems.append(Problem(name, c.source, c.path,
                                    f"duplicate of {seen[c.clip_id].source} (same content and bounds): listed once"))
            continue
        seen[c.clip_id] = c
        clips.append(c)
    if hash_cache is None:
        hashes.save()

    vocab = build_vocab(clips, dcfg, problems, name)
    multilabel = dcfg.multilabel or any(len(c.labels) > 1 for c in clips)
    assign_splits(clips, dcfg.split)
    if dcfg.limit:
        kept = []
        for s in SPLITS:
            kept += [c for c in clips if c.split == s][: dcfg.limit]
        clips = kept
    return DatasetListing(name, clips, vocab, multilabel, problems)


def _not_a_file(listed: Path, resolved: Path) -> str:
    """Why a listed path is no media file: missing, a folder, a FIFO, or under a folder that does not exist."""
    import stat

    missing_dir = next((p for p in reversed(listed.parents) if not p.exists()), None)
    if missing_dir is not None and resolved.exists():
        return f"media path {listed} goes through {missing_dir}, which does not exist"
    if not resolved.exists():
        return f"media file not found: {resolved}"
    mode = resolved.stat().st_mode
    kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
    return f"media path {resolved} is {kind}, not a media file"


# Every column of the clip table, so a dataset with no clips still has a readable (header-only) table.
TABLE_COLUMNS = ["clip_id", "dataset", "path", "start", "end", "split", "group", "labels", "media_sha256",
                 "annotation", "source", "media_size"]


def listing_paths(cfg: PipelineConfig, name: str) -> tuple[Path, Path]:
    d = cfg.path(cfg.store.tables_dir)
    return d / f"{name}.csv", d / f"{name}.json"


def write_listing(cfg: PipelineConfig, listing: DatasetListing) -> tuple[Path, Path]:
    """The clip table (CSV) and its summary (JSON: vocabulary, counts, problems), written atomically."""
    table, summary = listing_paths(cfg, listing.name)
    table.parent.mkdir(parents=True, exist_ok=True)
    base = str(Path(cfg.base_dir).resolve()) + os.sep

    def project_relative(source: str) -> str:
        # "file:line" as the project names it: the table is a DVC output, so no checkout path may enter it
        return source[len(base):] if source.startswith(base) else source

    rows = [{**r, "source": project_relative(r["source"])} for r in clip_table_rows(listing)]
    fields = list(rows[0]) if rows else TABLE_COLUMNS
    doc = {**listing.summary(), "dataset_root": cfg.dataset(listing.name).root,   # as in params: no checkout path
           "problems": [{**p.__dict__, "source": project_relative(p.source)} for p in listing.problems]}

    def write_table(f) -> None:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    _atomic_write(table, write_table, newline="")
    _atomic_write(summary, lambda f: f.write(json.dumps(doc, indent=1, ensure_ascii=False)))
    return table, summary


def _atomic_write(path: Path, write, **open_kw) -> None:
    """Write via a temp file renamed into place; the temp file never outlives a failure (disk full...)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", **open_kw) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_clip_table(cfg: PipelineConfig, name: str):
    """(clips DataFrame, summary dict) as written by the datasets stage."""
    import pandas as pd

    table, summary = listing_paths(cfg, name)
    if not table.exists():
        raise ClipTableMissing(f"clip table for dataset {name!r} not found at {table}; run `emocache datasets list {name}` "
                                f"(or `dvc repro`) first")
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    for col in ("start",):
        df[col] = df[col].astype(float)
    # object dtype: a float column would turn "no end" (whole file) into NaN when other rows have an end
    df["end"] = pd.Series([float(v) if v != "" else None for v in df["end"]], index=df.index, dtype=object)
    return df, json.loads(summary.read_text())
