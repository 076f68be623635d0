"""Head kinds behind one registry: a new kind is one class and one registry line, and train, the checkpoint and
`evaluate` serve it with no other change."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from emocache.config import ExperimentConfig
from heads.baselines import mean_pooled
from heads.registry import FitRecord, HeadKind, head_kind, known_kinds, register
from heads.scoring import truth
from heads.synthetic import make_synthetic

torch.set_num_threads(1)


@register("toy_centroid")   # the one registry line
class CentroidHead(HeadKind):
    """Nearest class centroid of the mean-pooled, concatenated modalities; softmax over negative distances."""

    uses_device = False

    def __init__(self, centroids: np.ndarray):
        self.centroids = centroids
        self.record = FitRecord()

    @classmethod
    def fit(cls, exp, data, keys, seed, device):
        if data.multilabel:
            raise ValueError("toy_centroid is single-label only")
        x, y = mean_pooled(data.inputs(data.splits["train"], keys)), truth(data, "train")
        return cls(np.stack([x[y == c].mean(0) for c in range(data.n_classes)]))

    def predict_proba(self, inputs):
        z = -((mean_pooled(inputs)[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def state(self):
        return {"toy_centroids": torch.from_numpy(self.centroids)}

    @classmethod
    def load(cls, state, exp, input_dims, n_classes, multilabel):
        return cls(state["toy_centroids"].numpy())


def _project(tmp_path, make_config, data, head: str, seeds=(0,)):
    """Config + clip table + one audio-family store holding the synthetic features, as `emocache train` finds them."""
    from pipeline.datasets import listing_paths
    from pipeline.extractors.base import ClipFeatures
    from pipeline.store import FeatureStore

    cfg = make_config(datasets={"toy": {"adapter": "csv", "root": str(tmp_path)}},
                      experiments={"toy_exp": {"dataset": "toy", "modalities": list(data.modalities), "head": head,
                                               "train": {"seeds": list(seeds), "device": "cpu", "epochs": 3,
                                                         "batch_size": 16}}})
    store = FeatureStore.for_family(cfg.store, cfg.path("."), "audio")
    for key, m in data.modalities.items():
        store.write_segment(key, "fp", [(cid, ClipFeatures({"features": m.x[i, :int(m.lengths[i])].numpy()},
                                                           np.zeros((int(m.lengths[i]), 2))))
                                        for i, cid in enumerate(data.clip_ids)])
        store.set_current(key, "fp", {"pretrained": True})
    split_of = {int(i): s for s, idx in data.splits.items() for i in idx}
    table, summary = listing_paths(cfg, "toy")
    table.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"clip_id": data.clip_ids, "split": [split_of[i] for i in range(len(data.clip_ids))],
                  "labels": [data.vocab[c] for c in data.targets().tolist()], "start": 0.0, "end": ""}
                 ).to_csv(table, index=False)
    summary.write_text(json.dumps({"labels": data.vocab, "multilabel": False}))
    return cfg


def test_a_new_kind_trains_and_evaluates_through_the_normal_paths(tmp_path, make_config):
    from emocache.evaluate import evaluate_experiment
    from heads.cli_glue import train_experiment

    assert "toy_centroid" in known_kinds() and head_kind("toy_centroid") is CentroidHead
    data = make_synthetic(90, {"vggish": (4, 8), "egemaps": (1, 6)}, 3, multilabel=False, signal=1.5, seed=4)
    cfg = _project(tmp_path, make_config, data, "toy_centroid")
    r = train_experiment(cfg, "toy_exp", tmp_path / "models", tmp_path / "metrics")
    written = json.loads((tmp_path / "metrics" / "toy_exp.json").read_text())
    assert written["head"] == "toy_centroid" and written["metrics"] == json.loads(json.dumps(r["metrics"]))
    assert written["metrics"]["accuracy"]["mean"] > 1 / 3 + 0.4          # chance is 1/3: the centroids learned
    assert written["epochs_run"] == [{}] and written["provenance"]["runtime"]["device"] == "cpu"
    doc = torch.load(tmp_path / "models" / "toy_exp" / "model.pt", weights_only=True)
    assert doc["head"] == "toy_centroid" and doc["toy_centroids"].shape == (3, 8 + 6)

    ev = evaluate_experiment(cfg, "toy_exp", tmp_path / "models")
    assert ev["head"] == "toy_centroid" and ev["split"] == "test"
    for k in ("accuracy", "f1_weighted", "f1_macro", "mAP"):            # one seed: evaluate repeats train exactly
        assert ev["metrics"][k] == written["metrics"][k]["mean"], k
    assert ev["confusion"] == written["confusion"]


@pytest.mark.parametrize("kind", ["linear", "mlp", "early_fusion", "nextvlad", "late_fusion", "logreg"])
def test_every_builtin_kind_reloads_to_the_probabilities_train_scored(kind, tmp_path):
    from heads.checkpoint import load_checkpoint
    from heads.train import run_seed, train_on_data

    mods = ["a"] if kind == "mlp" else ["a", "b"]
    data = make_synthetic(40, {"a": (3, 8), "b": (2, 4)}, 3, multilabel=kind in ("nextvlad", "late_fusion"),
                          signal=1.0, seed=5)
    exp = ExperimentConfig(dataset="synthetic", modalities=mods, head=kind,
                           train={"epochs": 2, "batch_size": 16, "seeds": [0], "device": "cpu", "val_carve": 0.0},
                           nextvlad={"transformer_ff_mult": 1, "se_dim": 16, "hidden": 16, "clusters": 2},
                           mlp={"hidden": 16})
    train_on_data(exp, data, tmp_path, name=kind)
    run = run_seed(kind, exp, data, 0, torch.device("cpu"))   # the same seed again: deterministic on CPU
    head = load_checkpoint(tmp_path / "model.pt")
    np.testing.assert_array_equal(head.predict_proba(data.inputs(data.splits["test"], mods)), run.probs["test"])


def test_unknown_kinds_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown head kind 'nope'; known kinds: linear, mlp"):
        head_kind("nope")
    with pytest.raises(ValueError, match="unknown head 'nope'.*late_fusion, logreg"):
        ExperimentConfig(dataset="d", modalities=["a"], head="nope")
    with pytest.raises(ValueError, match="built in"):
        register("mlp")(CentroidHead)


def test_known_kinds_import_no_framework():
    import subprocess
    import sys

    code = ("import sys; from heads.registry import known_kinds; known_kinds(); "
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"   # config validation names kinds without importing torch


def test_a_checkpoint_of_an_unregistered_kind_names_the_file(tmp_path):
    from heads.checkpoint import FORMAT, load_checkpoint

    path = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "head": "from_a_plugin", "experiment": {}}, path)
    with pytest.raises(ValueError, match=r"model\.pt: head kind 'from_a_plugin' is not registered"):
        load_checkpoint(path)
