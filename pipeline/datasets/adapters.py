"""Dataset adapters: each turns a dataset's own layout into a list of `Clip`s (before hashing/splitting).

- csv:     generic CSV/TSV manifest with a column mapping
- meld:    MELD `*_sent_emo.csv` (its own train/dev/test split; group = dialogue)
- ravdess: RAVDESS file names `03-01-05-01-02-01-12.wav` (group = actor)
- folder:  class-per-folder trees (VideoEmotion-8 style)
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable, Iterator, Optional

from pipeline.config import DatasetConfig

from .base import Clip, DatasetError, Problem, clean_labels

Adapter = Callable[[str, DatasetConfig, Path, list[Problem]], list[Clip]]
ADAPTERS: dict[str, Adapter] = {}


def adapter(name: str):
    def deco(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn
    return deco


def read_table(path: Path, delimiter: Optional[str] = None,
               problems: Optional[list[Problem]] = None, dataset: str = "") -> Iterator[tuple[int, dict]]:
    """Rows of a CSV/TSV with their 1-based line numbers.

    Non-UTF-8 bytes name the file and line. With `problems` given, a row holding such bytes is
    recorded there and skipped, so one bad row does not cost the dataset; a file in which no
    data row decodes (another encoding altogether) is still refused as a whole.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        bad_bytes = False
    except UnicodeDecodeError as e:
        first_bad = raw[: e.start].count(b"\n") + 1
        first_msg = f"{path}:{first_bad}: not valid UTF-8 ({e.reason} at byte {e.start})"
        if problems is None or first_bad == 1:      # no way to report per row, or the header itself
            raise DatasetError(first_msg) from None
        text = raw.decode("utf-8-sig", errors="surrogateescape")   # bad bytes -> lone surrogates
        bad_bytes = True
    delim = delimiter or ("\t" if path.suffix.lower() in {".tsv", ".tab"} else ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    dup = sorted({c for c in reader.fieldnames or () if (reader.fieldnames or []).count(c) > 1})
    if dup:   # csv.DictReader would silently keep the last one
        raise DatasetError(f"{path}:1: duplicated header column(s) {dup}")
    good, skipped = [], []
    rows = iter(reader)
    last = 1                                   # physical line where the previous row ended
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as e:                 # e.g. a field over csv's 128 KB limit: that row only
            skipped.append(Problem(dataset, f"{path}:{last + 1}", None, f"{path}:{last + 1}: {e} (row skipped)"))
            continue
        values = [v for v in row.values() if isinstance(v, str)]
        # a quoted field may span lines: the row starts that many lines before where the reader stands
        # (a field an unclosed quote ran to the end of the file also holds the last line's newline)
        start = reader.line_num - sum(v.count("\n") - v.endswith("\n") for v in values)
        last = reader.line_num
        merged = _swallowed_rows(values, delim, len(reader.fieldnames or ()))
        if merged:
            skipped.append(Problem(dataset, f"{path}:{start}", _clean(row.get("path")),
                                   f"{path}:{start}: unbalanced quote: the row runs to line {last} and holds "
                                   f"{merged} line(s) that look like rows of their own (row skipped; close the quote)"))
            continue
        if bad_bytes and any(_has_surrogate(v) for v in [*row.values(), *row.keys()] if isinstance(v, str)):
            skipped.append(Problem(dataset, f"{path}:{start}", _clean(row.get("path")),
                                   f"{path}:{start}: not valid UTF-8 (row skipped; save the manifest as UTF-8)"))
            continue
        good.append((start, row))
    if bad_bytes and not good:
        raise DatasetError(first_msg)
    if problems is not None:
        problems.extend(skipped)
    elif skipped:                              # no way to report per row: the first bad row refuses the file
        raise DatasetError(skipped[0].reason)
    yield from good


def _swallowed_rows(values: list[str], delim: str, n_cols: int) -> int:
    """Lines inside a multi-line field that have a row's worth of delimiters: an unclosed quote ate them."""
    if n_cols < 2:
        return 0
    return sum(1 for v in values if "\n" in v for ln in v.split("\n")[1:] if ln.count(delim) >= n_cols - 1)


def _has_surrogate(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _clean(v) -> Optional[str]:
    return v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else None


def _float(v, source: str, col: str) -> Optional[float]:
    if v is None or str(v).strip() == "":
        return None
    try:
        x = float(v)
    except ValueError:
        raise DatasetError(f"{source}: column {col!r} is not a number: {v!r}") from None
    if not math.isfinite(x) or x < 0:   # 'nan', 'inf' and negative times parse as floats but are no bounds
        raise DatasetError(f"{source}: column {col!r} must be a finite time >= 0 s, got {v!r}")
    return x


@adapter("csv")
def list_csv(name: str, cfg: DatasetConfig, root: Path, problems: list[Problem]) -> list[Clip]:
    if not cfg.manifest:
        raise DatasetError(f"dataset {name!r}: adapter csv needs `manifest`")
    manifest = Path(cfg.manifest)
    cols = {"path": "path", "start": "start", "end": "end", "labels": "labels", "split": "split",
            "group": "group", "target_box": "target_box", "target_time": "target_time", **cfg.columns}
    clips, checked = [], False
    for line, row in read_table(manifest, cfg.delimiter, problems, name):
        if not checked:
            _check_mapped_columns(manifest, row, cfg)
            checked = True
        source = f"{manifest}:{line}"
        try:
            text = {field: (row.get(col) or None) for field, col in cfg.text_fields.items()}
            ann = {}
            if row.get(cols["target_box"]):
                ann["target_box"] = [float(x) for x in row[cols["target_box"]].replace(";", " ").split()]
            if row.get(cols["target_time"]):
                ann["target_time"] = float(row[cols["target_time"]])
            split = (row.get(cols["split"]) or "").strip().lower() or None
            clips.append(Clip(dataset=name, path=(row.get(cols["path"]) or "").strip() or None,
                              start=_float(row.get(cols["start"]), source, cols["start"]) or 0.0,
                              end=_float(row.get(cols["end"]), source, cols["end"]),
                              labels=clean_labels(row.get(cols["labels"]), cfg.label_sep),
                              text=text, group=(row.get(cols["group"]) or None), split=_norm_split(split),
                              annotation=ann, source=source))
        except (DatasetError, ValueError) as e:
            problems.append(Problem(name, source, row.get(cols["path"]), str(e)))
    return clips


def _check_mapped_columns(manifest: Path, row: dict, cfg: DatasetConfig) -> None:
    """A column params.yaml maps explicitly (`columns:` role -> name) must exist in the manifest header."""
    mapped = {f"columns.{k}": v for k, v in cfg.columns.items()}
    missing = {k: v for k, v in mapped.items() if v not in row}
    if missing:
        raise DatasetError(f"{manifest}: mapped column(s) not in the header: "
                           + ", ".join(f"{k} -> {v!r}" for k, v in missing.items())
                           + f"; header: {[c for c in row if c is not None]}")


def _norm_split(s: Optional[str]) -> Optional[str]:
    return {"dev": "val", "valid": "val", "validation": "val"}.get(s or "", s)


# MELD.Raw keeps each split's utterance videos in its own folder.
MELD_VIDEO_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


@adapter("meld")
def list_meld(name: str, cfg: DatasetConfig, root: Path, problems: list[Problem]) -> list[Clip]:
    pattern = cfg.manifest or "*_sent_emo.csv"
    files = sorted(root.glob(pattern))
    if not files:
        raise DatasetError(f"dataset {name!r}: no MELD tables matching {pattern!r} under {root}")
    clips = []
    for f in files:
        own = f.name.split("_", 1)[0].lower()           # train / dev / test
        for line, row in read_table(f, None, problems, name):
            source = f"{f}:{line}"
            dia, utt = row.get("Dialogue_ID"), row.get("Utterance_ID")
            video = f"{MELD_VIDEO_DIRS.get(own, own)}/dia{dia}_utt{utt}.mp4"
            clips.append(Clip(dataset=name, path=video if (root / video).exists() else None,
                              labels=clean_labels(row.get("Emotion"), None),
                              text={"transcript": row.get("Utterance")}, group=f"{own}-dia{dia}",
                              split=_norm_split(own), annotation={"speaker": row.get("Speaker", "")},
                              native_key=f"{own}/dia{dia}_utt{utt}", source=source))
    return clips


RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                    "06": "fearful", "07": "disgust", "08": "surprised"}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}


def parse_ravdess_name(stem: str) -> dict:
    parts = stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise DatasetError(f"not a RAVDESS file name (expected 7 numeric fields like 03-01-05-01-02-01-12): {stem!r}")
    modality, channel, emo, inten, stmt, rep, actor = parts
    if emo not in RAVDESS_EMOTIONS:
        raise DatasetError(f"RAVDESS file {stem!r}: unknown emotion code {emo}")
    return {"modality": modality, "vocal_channel": channel, "emotion": RAVDESS_EMOTIONS[emo],
            "intensity": RAVDESS_INTENSITY.get(inten, inten), "statement": RAVDESS_STATEMENTS.get(stmt, stmt),
            "repetition": int(rep), "actor": int(actor)}


@adapter("ravdess")
def list_ravdess(name: str, cfg: DatasetConfig, root: Path, problems: list[Problem]) -> list[Clip]:
    clips = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in cfg.extensions or _hidden(p, root):
            continue
        rel = str(p.relative_to(root))
        if _bad_name(rel, name, problems):
            continue
        try:
            meta = parse_ravdess_name(p.stem)
        except DatasetError as e:
            problems.append(Problem(name, rel, rel, str(e)))
            continue
        clips.append(Clip(dataset=name, path=rel, labels=[meta["emotion"]],
                          text={"transcript": meta["statement"]}, group=f"actor{meta['actor']:02d}",
                          annotation={k: meta[k] for k in ("intensity", "statement", "repetition", "actor")},
                          source=rel))
    return clips


@adapter("folder")
def list_folder(name: str, cfg: DatasetConfig, root: Path, problems: list[Problem]) -> list[Clip]:
    clips = []
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if _bad_name(class_dir.name, name, problems):
            continue
        n = len(clips)
        for p in sorted(class_dir.rglob("*")):
            if p.is_file() and p.suffix.lower() in cfg.extensions and not _hidden(p, root):
                rel = str(p.relative_to(root))
                if not _bad_name(rel, name, problems):
                    clips.append(Clip(dataset=name, path=rel, labels=[class_dir.name], group=None, source=rel))
        if len(clips) == n:
            problems.append(Problem(name, class_dir.name, None, f"class folder {class_dir.name!r} holds no media "
                                    f"({', '.join(cfg.extensions)}): no class"))
    return clips


def _hidden(p: Path, root: Path) -> bool:
    """Hidden files and folders (.ipynb_checkpoints, macOS '._x.mp4' resource forks) are not data."""
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _bad_name(rel: str, dataset: str, problems: list[Problem]) -> bool:
    """A file name that is not valid UTF-8 cannot go into the (UTF-8) clip table: a problem of its own."""
    if not _has_surrogate(rel):
        return False
    shown = _clean(rel)
    problems.append(Problem(dataset, shown, None, f"{shown}: file name is not valid UTF-8 (rename the file)"))
    return True
