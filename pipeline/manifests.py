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

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from emocache.config import Config

INPUTS = "inputs"   # the experiments' folder under manifests_dir (no family is called that)


class ManifestError(RuntimeError):
    """A manifest an experiment needs is missing or does not cover its modalities; names the file and the fix."""


def _dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Unchanged bytes are not rewritten; new ones go under a temporary name and are renamed into place."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def manifests_root(cfg: Config) -> Path:
    return cfg.path(cfg.store.manifests_dir)


def manifest_path(cfg: Config, family: str, dataset: str, key: str) -> Path:
    return manifests_root(cfg) / family / dataset / f"{key}.json"


def inputs_path(cfg: Config, experiment: str) -> Path:
    return manifests_root(cfg) / INPUTS / f"{experiment}.json"


def dataset_keys(cfg: Config, dataset: str) -> dict[str, str]:
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


def write_family_manifests(cfg: Config, family: str, datasets: Optional[list[str]] = None) -> list[Path]:
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
            _write_atomic(path, _dumps(manifest_doc(store, key, family, name, ids)))
            written.append(path)
        for stale in folder.glob("*.json"):
            if stale not in written:
                stale.unlink()
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name not in cfg.datasets:
                shutil.rmtree(d)
    return written


def experiment_inputs(cfg: Config, experiment: str) -> dict:
    """Per modality key of the experiment: its manifest's path, sha256, fingerprint and clip count."""
    exp = cfg.experiments[experiment]
    keys = dataset_keys(cfg, exp.dataset)
    inputs = {}
    for key in exp.modalities:
        if key not in keys:
            raise ManifestError(f"experiment {experiment!r} reads {key!r}, which dataset {exp.dataset!r} does not "
                                f"extract (its extractors: {', '.join(keys) or 'none'}); add it to "
                                f"datasets.{exp.dataset}.extractors in params.yaml")
        path = manifest_path(cfg, keys[key], exp.dataset, key)
        if not path.is_file():
            raise ManifestError(f"experiment {experiment!r}: feature manifest {path} is missing; run "
                                f"`dvc repro extract_{keys[key]}` (or `emocache extract --family {keys[key]}`)")
        data = path.read_bytes()
        doc = json.loads(data)
        inputs[key] = {"manifest": path.relative_to(manifests_root(cfg)).as_posix(),
                       "sha256": hashlib.sha256(data).hexdigest(),
                       "fingerprint": doc["fingerprint"], "n_clips": len(doc["clip_ids"])}
    return {"experiment": experiment, "dataset": exp.dataset, "inputs": inputs}


def write_experiment_inputs(cfg: Config, experiment: str) -> Path:
    path = inputs_path(cfg, experiment)
    _write_atomic(path, _dumps(experiment_inputs(cfg, experiment)))
    return path


def check_inputs(cfg: Config, experiment: str, stores: dict) -> None:
    """Before training: the stores still hold what the experiment's inputs file (what DVC recorded) says.

    The stores are not DVC outputs, so DVC cannot see one deleted, swapped (another store.dir) or extended outside
    the pipeline; training on it would not be what dvc.lock pins. Without an inputs file (`emocache train` run
    by hand) there is nothing to compare against and nothing is checked."""
    from pipeline.datasets import read_clip_table

    path = inputs_path(cfg, experiment)
    if not path.is_file():
        return
    doc = json.loads(path.read_text())
    ids = None
    for key, inp in doc["inputs"].items():
        if key not in stores:
            continue
        manifest = json.loads((manifests_root(cfg) / inp["manifest"]).read_text())
        st = stores[key]
        fp = st.current_fingerprint(key)
        if ids is None:
            ids = set(read_clip_table(cfg, doc["dataset"])[0]["clip_id"])
        have = sorted(ids & set(st.index(key, fp))) if fp is not None else []
        if fp != inp["fingerprint"] or have != manifest["clip_ids"]:
            family = manifest["family"]
            raise ManifestError(
                f"experiment {experiment!r}: store {st.root} holds {len(have)} clips of dataset {doc['dataset']!r} "
                f"for {key!r} under fingerprint {fp}, but {path} (what DVC recorded) says {inp['n_clips']} under "
                f"{inp['fingerprint']}: the store changed outside the pipeline. Run `dvc repro -f extract_{family}` "
                f"(extracts only what is missing and rewrites the manifests), or `dvc pull` / point store.dir at "
                f"the store these manifests describe")
