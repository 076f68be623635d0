"""Feature manifests: the small files DVC tracks in place of the feature stores.

DVC hashes every file of a tracked directory on every `dvc status`; a store of 100k clips is tens of thousands of
segment files, so tracking the stores made a no-op status grow with the cache. The stores are append-only and
fingerprinted: what a head reads from them is fully named by (extractor key, fingerprint, clip ids). That is what
the extract stages write and DVC tracks:

    <manifests_dir>/<family>/<dataset>/<key>.json     one per dataset and extractor key it asks for:
        {"dataset", "extractor", "family", "fingerprint", "clip_ids": sorted ids of the dataset's clips present}
    <manifests_dir>/inputs/<experiment>.json          what one experiment reads: per modality key, its manifest's
        path, sha256, fingerprint and clip count (written by the `inputs@<experiment>` stage)

The inputs file exists because dvc.yaml cannot list a per-experiment number of deps: the inputs stage depends on
every manifest and rewrites the same bytes unless one the experiment reads changed, so `train@<experiment>` reruns
exactly when its own features changed. Bytes are deterministic (sorted keys, no timestamps).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from pipeline.config import PipelineConfig
from pipeline.errors import InputError

INPUTS = "inputs"   # the experiments' folder under manifests_dir (no family is called that)


class ManifestError(InputError, RuntimeError):
    """A manifest an experiment needs is missing or does not cover its modalities; names the file and the fix."""


def canonical_json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Unchanged bytes are not rewritten; new ones go under a temporary name and are renamed into place."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def manifests_root(cfg: PipelineConfig) -> Path:
    return cfg.path(cfg.store.manifests_dir)


def manifest_path(cfg: PipelineConfig, family: str, dataset: str, key: str) -> Path:
    return manifests_root(cfg) / family / dataset / f"{key}.json"


def inputs_path(cfg: PipelineConfig, experiment: str) -> Path:
    return manifests_root(cfg) / INPUTS / f"{experiment}.json"


def dataset_keys(cfg: PipelineConfig, dataset: str) -> dict[str, str]:
    """{store key: family} for the extractors a dataset asks for."""
    from pipeline.extractors.base import build_extractor

    out = {}
    for spec in cfg.dataset(dataset).extractors:
        ext = build_extractor(cfg, spec)
        out[ext.key] = ext.family
    return out


def manifest_doc(store, key: str, family: str, dataset: str, clip_ids: Iterable[str]) -> dict:
    """The manifest of one (dataset, key): its current fingerprint and the dataset's clips stored under it."""
    fp = store.current_fingerprint(key) if store is not None else None
    present = set(store.index(key, fp, refresh=True)) if fp is not None else set()
    return {"dataset": dataset, "extractor": key, "family": family, "fingerprint": fp,
            "clip_ids": sorted(set(clip_ids) & present)}


def write_family_manifests(cfg: PipelineConfig, family: str, datasets: Optional[list[str]] = None) -> list[Path]:
    """Write the manifests of one family for `datasets` (default: all in params); return the files written.

    Files of datasets no longer in params and of keys a dataset no longer asks for are removed, so the family's
    folder is a function of (params, store) when every dataset is written (what the extract stage does)."""
    from pipeline.datasets import read_clip_table
    from pipeline.store import FeatureStore, store_path

    root = manifests_root(cfg) / family
    root.mkdir(parents=True, exist_ok=True)   # a DVC output even when no dataset asks for this family
    names = list(datasets or cfg.datasets)
    location = store_path(cfg.store, Path(cfg.base_dir), family)
    store = None
    if "://" in location or Path(location).exists():
        store = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), family)
    written: list[Path] = []
    for name in names:
        keys = {k: f for k, f in dataset_keys(cfg, name).items() if f == family}
        folder = root / name
        if not keys:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        table, _ = read_clip_table(cfg, name)
        ids = list(table["clip_id"])
        for key in sorted(keys):
            path = folder / f"{key}.json"
            write_atomic(path, canonical_json(manifest_doc(store, key, family, name, ids)))
            written.append(path)
        for stale in folder.glob("*.json"):
            if stale not in written:
                stale.unlink()
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name not in cfg.datasets:
                shutil.rmtree(d)
    return written
