"""What one experiment reads, pinned for DVC: `cache/manifests/inputs/<experiment>.json`.

`train@<exp>` cannot list a different number of manifest deps per experiment, so the `inputs@<exp>` stage
projects the per-(dataset, extractor) feature manifests (pipeline/manifests.py) onto exactly the keys the
experiment reads; its bytes change only when one of those manifests does. Before training, check_inputs
confirms the stores still hold what DVC recorded (they are not DVC outputs themselves).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from heads.config import HeadsConfig
from pipeline.manifests import (ManifestError, canonical_json, dataset_keys, inputs_path, manifest_path,
                                manifests_root, write_atomic)


def experiment_inputs(cfg: HeadsConfig, experiment: str) -> dict:
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


def write_experiment_inputs(cfg: HeadsConfig, experiment: str) -> Path:
    path = inputs_path(cfg, experiment)
    write_atomic(path, canonical_json(experiment_inputs(cfg, experiment)))
    return path


def check_inputs(cfg: HeadsConfig, experiment: str, stores: dict) -> None:
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
