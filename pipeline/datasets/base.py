"""Clips, their ids, label vocabularies and splits — shared by every dataset adapter.

clip id = sha256(content hash of the media bytes + segment bounds), or of the text for
text-only clips, so the same clip listed by two datasets (or a renamed file) maps to the
same id and is extracted once.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import DatasetConfig, SplitConfig
from pipeline.weights import sha256_file
from pipeline.errors import InputError

SPLITS = ("train", "val", "test")


@dataclass
class Clip:
    dataset: str
    path: Optional[str]                      # media path relative to the dataset root (None: text-only clip)
    start: float = 0.0
    end: Optional[float] = None
    labels: list[str] = field(default_factory=list)
    text: dict[str, Optional[str]] = field(default_factory=dict)
    group: Optional[str] = None
    split: Optional[str] = None
    annotation: dict = field(default_factory=dict)
    source: str = ""                         # where the clip was listed (file:line), for error messages
    media_sha256: Optional[str] = None
    native_key: Optional[str] = None         # the dataset's own id (MELD 'train/dia3_utt1'): keeps text-only clips apart
    clip_id: Optional[str] = None
    media_size: Optional[int] = None         # size of the file hashed at listing: checked again (with its sha256,
                                             # via the hash cache) when it is opened for decoding


@dataclass
class Problem:
    """A listed clip that cannot be used; kept so nothing is dropped silently."""

    dataset: str
    source: str
    path: Optional[str]
    reason: str


@dataclass
class DatasetListing:
    name: str
    clips: list[Clip]
    labels: list[str]
    multilabel: bool
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> dict:
        counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        for c in self.clips:
            for lab in c.labels:
                counts.setdefault(c.split or "unsplit", {})
                counts[c.split or "unsplit"][lab] = counts[c.split or "unsplit"].get(lab, 0) + 1
        return {"dataset": self.name, "n_clips": len(self.clips),
                "n_per_split": {s: sum(1 for c in self.clips if c.split == s) for s in SPLITS},
                "labels": self.labels, "multilabel": self.multilabel, "label_counts": counts,
                "n_problems": len(self.problems)}


class ClipTableMissing(InputError, FileNotFoundError):
    """A dataset's clip table has not been written yet (`emocache datasets list NAME`)."""


class DatasetError(InputError, ValueError):
    pass


# ---------------------------------------------------------------- paths and hashes
def resolve_inside(root: Path, rel: str, source: str) -> Path:
    """The media path, refusing anything that resolves outside the dataset root."""
    if "\x00" in rel:
        raise DatasetError(f"{source}: path {rel!r} contains a NUL byte")
    root_r = root.resolve()
    try:
        p = (root / rel).resolve()
    except RuntimeError:   # Python's word for a symlink loop
        raise DatasetError(f"{source}: path {rel!r} is a symlink loop") from None
    if root_r != p and root_r not in p.parents:
        raise DatasetError(f"{source}: path {rel!r} resolves outside the dataset root {root}")
    return p


TABLE_LABEL_SEP = "|"   # a clip table joins a multi-label clip's class names with this
HASH_CACHE = ".emocache/file_hashes.json"   # under base_dir: listing and decode-time checks share it


class HashCache:
    """sha256 of files, remembered by (path, size, mtime) so unchanged files are hashed once."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.data: dict[str, dict] = {}
        if path and path.exists():
            try:
                self.data = json.loads(path.read_text())
            except json.JSONDecodeError:
                self.data = {}

    def sha256(self, p: Path) -> str:
        st = p.stat()
        key = str(p)
        hit = self.data.get(key)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        digest = sha256_file(p)
        self.data[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        return digest

    def stat_of(self, p: Path) -> tuple[Optional[int], Optional[int]]:
        """(size, mtime_ns) the file had when it was hashed."""
        hit = self.data.get(str(p)) or {}
        return hit.get("size"), hit.get("mtime_ns")

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            try:
                tmp.write_text(json.dumps(self.data))
                os.replace(tmp, self.path)
            except BaseException:   # disk full: no temp file left behind
                tmp.unlink(missing_ok=True)
                raise


def clip_id_for(media_sha256: Optional[str], start: float, end: Optional[float],
                text: dict[str, Optional[str]], native_key: Optional[str] = None) -> str:
    if media_sha256:
        blob = f"media:{media_sha256}|{start:.3f}|{'' if end is None else f'{end:.3f}'}"
    else:
        # Text-only: the text itself, plus the dataset's own utterance id where it has one, so two
        # utterances that say "Okay." stay two samples while a row listed twice is one clip.
        blob = "text:" + json.dumps({k: v for k, v in sorted(text.items()) if v}, ensure_ascii=False)
        if native_key:
            blob += f"|key:{native_key}"
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------- labels
def clean_labels(raw, sep: Optional[str]) -> list[str]:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return []
    s = str(raw).strip()
    if not s or s.lower() in {"nan", "none", "null"}:
        return []
    parts = s.split(sep) if sep else [s]
    return [p.strip() for p in parts if p.strip()]


def build_vocab(clips: list[Clip], cfg: DatasetConfig, problems: list[Problem], name: str) -> list[str]:
    seen = sorted({lab for c in clips for lab in c.labels})
    if cfg.labels is None:
        return seen
    vocab = list(cfg.labels)
    known = set(vocab)
    for c in clips:
        unknown = [lab for lab in c.labels if lab not in known]
        if unknown:
            problems.append(Problem(name, c.source, c.path, f"unknown label(s) {unknown}; vocabulary: {vocab}"))
            c.labels = [lab for lab in c.labels if lab in known]
    return vocab


# ---------------------------------------------------------------- splits
def split_group(c: Clip, split: SplitConfig) -> str:
    """The unit a group split keeps together: the annotation value(s) `split.group_by` names
    (RAVDESS: actor, repetition, intensity, statement, or a list of them), else the adapter's group."""
    keys = [split.group_by] if isinstance(split.group_by, str) else list(split.group_by or [])
    if keys and keys != ["group"]:
        missing = [k for k in keys if k not in c.annotation]
        if missing:
            raise DatasetError(f"{c.source}: split.group_by is {split.group_by!r} but the clip has no "
                               f"annotation {', '.join(map(repr, missing))} "
                               f"(it has: {', '.join(sorted(c.annotation)) or 'none'})")
        return "|".join(f"{k}={c.annotation[k]}" for k in keys)
    return c.group or c.clip_id or ""


def assign_splits(clips: list[Clip], split: SplitConfig) -> None:
    """Group-disjoint (by film/actor/dialogue, or the annotation `group_by` names), random, or the
    dataset's own split; fixed seed."""
    if split.method == "own":
        for c in clips:
            if c.split not in SPLITS:
                raise DatasetError(f"{c.source}: split.method is 'own' but the clip has split {c.split!r}")
        return
    rng = np.random.default_rng(split.seed)
    if split.method == "group":
        groups = sorted({split_group(c, split) for c in clips})
    else:
        groups = sorted({c.clip_id or "" for c in clips})
    order = [groups[i] for i in rng.permutation(len(groups))]
    n = len(order)
    n_test = int(round(split.test * n)) if split.test > 0 else 0
    n_val = int(round(split.val * n)) if split.val > 0 else 0
    if split.test > 0 and n >= 2:
        n_test = max(1, n_test)
    if split.val > 0 and n - n_test >= 2:
        n_val = max(1, n_val)
    which = {g: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, g in enumerate(order)}
    for c in clips:
        key = split_group(c, split) if split.method == "group" else (c.clip_id or "")
        c.split = which[key]


def clip_table_rows(listing: DatasetListing) -> list[dict]:
    fields = sorted({f for c in listing.clips for f in c.text})
    rows = []
    for c in listing.clips:
        d = asdict(c)
        row = {"clip_id": c.clip_id, "dataset": c.dataset, "path": c.path or "", "start": c.start,
               "end": "" if c.end is None else c.end, "split": c.split, "group": c.group or "",
               "labels": TABLE_LABEL_SEP.join(c.labels), "media_sha256": c.media_sha256 or "",
               "annotation": json.dumps(c.annotation) if c.annotation else "", "source": c.source,
               "media_size": "" if c.media_size is None else c.media_size}
        for f in fields:
            row[f"text_{f}"] = d["text"].get(f) or ""
        rows.append(row)
    return rows
