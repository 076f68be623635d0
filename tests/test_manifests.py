"""Feature manifests (pipeline/manifests.py): what DVC tracks of the stores, on a small generated store."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emocache.config import Config
from pipeline.extractors.base import ClipFeatures
from heads.inputs import check_inputs, experiment_inputs, write_experiment_inputs
from pipeline.manifests import ManifestError, manifest_path, write_family_manifests
from pipeline.store import FeatureStore

IDS = [f"d-{i:02d}" for i in range(6)]


def _cfg(tmp_path: Path, extractors=("egemaps", "text.transcript")) -> Config:
    return Config.model_validate({
        "base_dir": str(tmp_path),
        "datasets": {"d": {"adapter": "csv", "root": "data", "manifest": "data/m.csv",
                           "split": {"method": "random", "val": 0.0, "test": 0.5, "seed": 0},
                           "extractors": list(extractors)}},
        "experiments": {"d_audio": {"dataset": "d", "modalities": ["egemaps"], "head": "mlp"},
                        "d_text": {"dataset": "d", "modalities": ["text.transcript"], "head": "logreg"}}})


def _table(cfg: Config, ids) -> None:
    d = cfg.path(cfg.store.tables_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "d.csv").write_text("clip_id,path,start,end,split\n" + "".join(f"{c},,0.0,,train\n" for c in ids))
    (d / "d.json").write_text('{"labels": [], "multilabel": false}')


def _put(cfg: Config, family: str, key: str, fp: str, ids) -> FeatureStore:
    st = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), family)
    if st.current_fingerprint(key) != fp:
        st.set_current(key, fp, {"extractor": key})
    st.write_segment(key, fp, [(c, ClipFeatures({"features": np.ones((1, 3), np.float32)}, np.zeros((1, 2))))
                               for c in ids])
    return st


def test_manifest_lists_the_datasets_present_clips_with_deterministic_bytes(tmp_path):
    cfg = _cfg(tmp_path)
    _table(cfg, IDS)
    _put(cfg, "audio", "egemaps", "fpA", IDS[3:] + ["other-dataset-clip"])
    _put(cfg, "audio", "egemaps", "fpA", IDS[:2])          # IDS[2] failed: not in the store
    [path] = write_family_manifests(cfg, "audio")
    assert path == manifest_path(cfg, "audio", "d", "egemaps")
    doc = json.loads(path.read_text())
    assert doc == {"dataset": "d", "extractor": "egemaps", "family": "audio", "fingerprint": "fpA",
                   "clip_ids": [c for c in IDS if c != IDS[2]]}
    first, mtime = path.read_bytes(), path.stat().st_mtime_ns
    write_family_manifests(cfg, "audio")
    assert path.read_bytes() == first and path.stat().st_mtime_ns == mtime   # unchanged: not rewritten
    # No text store yet: the key's manifest says so (no fingerprint, no clips); video: an empty folder.
    [text] = write_family_manifests(cfg, "text")
    assert json.loads(text.read_text())["fingerprint"] is None and json.loads(text.read_text())["clip_ids"] == []
    assert write_family_manifests(cfg, "video") == [] and (tmp_path / "cache/manifests/video").is_dir()


def test_keys_and_datasets_no_longer_in_params_lose_their_manifests(tmp_path):
    cfg = _cfg(tmp_path)
    _table(cfg, IDS)
    _put(cfg, "audio", "egemaps", "fpA", IDS)
    write_family_manifests(cfg, "audio")
    gone = tmp_path / "cache/manifests/audio/old_dataset"
    gone.mkdir()
    (gone / "egemaps.json").write_text("{}")
    cfg2 = _cfg(tmp_path, extractors=["text.transcript"])
    write_family_manifests(cfg2, "audio")
    assert not gone.exists() and not manifest_path(cfg, "audio", "d", "egemaps").exists()


def test_experiment_inputs_cover_exactly_its_keys_and_change_only_with_them(tmp_path):
    cfg = _cfg(tmp_path)
    _table(cfg, IDS)
    with pytest.raises(ManifestError, match=r"manifests/audio/d/egemaps\.json is missing.*extract_audio"):
        experiment_inputs(cfg, "d_audio")
    _put(cfg, "audio", "egemaps", "fpA", IDS)
    _put(cfg, "text", "text.transcript", "fpT", IDS)
    for fam in ("audio", "text"):
        write_family_manifests(cfg, fam)
    a, t = write_experiment_inputs(cfg, "d_audio"), write_experiment_inputs(cfg, "d_text")
    doc = json.loads(a.read_text())
    assert list(doc["inputs"]) == ["egemaps"] and doc["inputs"]["egemaps"]["fingerprint"] == "fpA"
    assert doc["inputs"]["egemaps"]["n_clips"] == len(IDS)
    before_a, before_t = a.read_bytes(), t.read_bytes()
    _put(cfg, "text", "text.transcript", "fpT2", IDS)      # a text param changed: new fingerprint
    write_family_manifests(cfg, "text")
    write_experiment_inputs(cfg, "d_audio"), write_experiment_inputs(cfg, "d_text")
    assert a.read_bytes() == before_a and t.read_bytes() != before_t
    bad = cfg.model_copy(deep=True)
    bad.experiments["d_audio"].modalities = ["vggish"]
    with pytest.raises(ManifestError, match="'vggish'.*does not extract"):
        experiment_inputs(bad, "d_audio")


def test_training_refuses_a_store_that_changed_outside_the_pipeline(tmp_path):
    cfg = _cfg(tmp_path)
    _table(cfg, IDS)
    st = _put(cfg, "audio", "egemaps", "fpA", IDS[:4])
    write_family_manifests(cfg, "audio")
    check_inputs(cfg, "d_audio", {"egemaps": st})          # no inputs file (trained by hand): nothing to check
    write_experiment_inputs(cfg, "d_audio")
    check_inputs(cfg, "d_audio", {"egemaps": st})
    _put(cfg, "audio", "egemaps", "fpA", IDS[4:])          # extracted outside DVC: not what dvc.lock pins
    st = FeatureStore.for_family(cfg.store, tmp_path, "audio")
    with pytest.raises(ManifestError, match=r"holds 6 clips .* says 4 .*dvc repro -f extract_audio"):
        check_inputs(cfg, "d_audio", {"egemaps": st})
    empty = FeatureStore(tmp_path / "elsewhere.zarr")       # store.dir pointed at another store
    with pytest.raises(ManifestError, match="holds 0 clips"):
        check_inputs(cfg, "d_audio", {"egemaps": empty})


def test_manifests_of_a_store_behind_a_url(tmp_path):
    """store.dir as an fsspec URL (an object store in production): the manifests still land on local disk."""
    cfg = _cfg(tmp_path)
    cfg.store.dir = f"file://{tmp_path}/remote"
    cfg.store.storage_options = {"auto_mkdir": True}
    _table(cfg, IDS)
    st = FeatureStore.for_family(cfg.store, tmp_path, "audio")
    assert st.root.startswith("file://")
    _put(cfg, "audio", "egemaps", "fpU", IDS[:3])
    [path] = write_family_manifests(cfg, "audio")
    assert path.is_relative_to(tmp_path / "cache" / "manifests")
    assert json.loads(path.read_text())["clip_ids"] == IDS[:3]
    write_experiment_inputs(cfg, "d_audio")
    check_inputs(cfg, "d_audio", {"egemaps": FeatureStore.for_family(cfg.store, tmp_path, "audio")})


def test_cli_writes_manifests_and_inputs(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from emocache.cli import app

    cfg = _cfg(tmp_path)
    raw = cfg.model_dump(include={"datasets", "experiments"}, exclude_unset=True)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": raw["datasets"], "experiments": raw["experiments"]}))
    _table(cfg, IDS)
    _put(cfg, "audio", "egemaps", "fpA", IDS)
    run = CliRunner().invoke
    r = run(app, ["manifests", "write", "--family", "audio", "-p", str(params)])
    assert r.exit_code == 0, r.output
    assert json.loads(manifest_path(cfg, "audio", "d", "egemaps").read_text())["clip_ids"] == IDS
    r = run(app, ["manifests", "inputs", "d_audio", "-p", str(params)])
    assert r.exit_code == 0 and r.output == "", r.output          # quiet: bookkeeping for DVC
    assert json.loads((tmp_path / "cache/manifests/inputs/d_audio.json").read_text())["inputs"]["egemaps"]
    r = run(app, ["manifests", "inputs", "d_text", "-p", str(params)])   # no text manifests written
    assert r.exit_code == 1 and "manifests/text/d/text.transcript.json is missing" in r.output
    r = run(app, ["manifests", "inputs", "nope", "-p", str(params)])
    assert r.exit_code == 2 and "unknown experiment 'nope'" in r.output
