"""Heads: building blocks against their formulas, data loading from a real store, and tiny training runs."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from emocache.config import ExperimentConfig
from heads.data import load_head_data, uniform_rows
from heads.fusion import fuse, fusion_weights, normalise_weights, simplex_grid, tune_weights
from heads.losses import EPCELoss, build_loss, class_polarity, pos_weight
from heads.models import NeXtVLAD, RowEncoder, SEFusion, SequenceEncoder
from heads.neural import build_head
from heads.synthetic import make_synthetic
from heads.train import train_on_data

torch.set_num_threads(1)


def exp_config(head, modalities, **train):
    tc = {"epochs": 12, "lr": 3e-3, "batch_size": 16, "lr_milestones": [9], "seeds": [0, 1], "device": "cpu",
          **train}
    return ExperimentConfig(dataset="synthetic", modalities=modalities, head=head, train=tc,
                            nextvlad={"transformer_ff_mult": 1, "se_dim": 32, "hidden": 32},
                            mlp={"hidden": 32})


# ---------------------------------------------------------------- NeXtVLAD / Transformer branch
def test_nextvlad_shape_and_padding_does_not_change_output():
    torch.manual_seed(0)
    vlad = NeXtVLAD(dim=16, expansion=2, groups=8, clusters=4).eval()
    x = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 4, 1])
    mask = torch.arange(7)[None] < lengths[:, None]
    out = vlad(x, mask)
    assert out.shape == (3, 4 * (2 * 16 // 8)) == (3, vlad.out_dim)
    # garbage in the padded frames, or extra padded frames, must not move the output
    noisy = torch.where(mask[..., None], x, torch.randn_like(x) * 100)
    assert torch.allclose(vlad(noisy, mask), out, atol=1e-6)
    longer = torch.cat([x, torch.randn(3, 5, 16)], dim=1)
    assert torch.allclose(vlad(longer, torch.arange(12)[None] < lengths[:, None]), out, atol=1e-6)
    # each clip on its own, without padding, gives the same vector
    assert torch.allclose(vlad(x[1:2, :4], torch.ones(1, 4, dtype=torch.bool)), out[1:2], atol=1e-6)


def test_sequence_encoder_masks_padding_and_missing_modality():
    torch.manual_seed(0)
    cfg = exp_config("nextvlad", ["pose"]).nextvlad
    enc = SequenceEncoder(99, cfg).eval()          # 99 is not a multiple of 4 heads: projected to 100
    x = torch.randn(3, 6, 99)
    lengths = torch.tensor([6, 3, 0])
    out = enc(x, lengths)
    assert out.shape == (3, enc.out_dim) and torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(enc.out_dim))             # missing modality -> zero vector
    pad = torch.arange(6)[None, :, None] >= lengths[:, None, None]
    assert torch.allclose(enc(torch.where(pad, torch.randn_like(x) * 50, x), lengths), out, atol=1e-5)
    assert torch.allclose(enc(x[1:2, :3], lengths[1:2]), out[1:2], atol=1e-5)


# ---------------------------------------------------------------- SE block
def test_se_block_matches_formula():
    torch.manual_seed(0)
    se = SEFusion(in_dim=10, dim=8, reduction=2)
    for bn in (se.bn1, se.bn2):   # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    se.eval()
    f = torch.randn(5, 10)

    def bn(z, m):
        return (z - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    f1 = torch.relu(bn(f @ se.w1.weight.T + se.w1.bias, se.bn1))
    f2 = torch.sigmoid(bn(torch.relu(f1 @ se.w2.weight.T + se.w2.bias), se.bn2) @ se.w3.weight.T + se.w3.bias)
    assert torch.allclose(se(f), f1 * f2, atol=1e-6)
    assert se(f).shape == (5, 8)


# ---------------------------------------------------------------- MLP row encoder (SVCEmotion)
def test_row_encoder_trains_on_one_real_row_and_evaluates_on_the_mean():
    x = torch.zeros(2, 4, 3)
    x[0, :3] = torch.tensor([[1.0], [2.0], [3.0]])   # clip 0 has 3 rows (values 1,2,3), clip 1 has none
    x[0, 3] = 99.0                                   # padding garbage
    lengths = torch.tensor([3, 0])
    enc = RowEncoder(3)
    enc.eval()
    assert torch.allclose(enc(x, lengths), torch.tensor([[2.0] * 3, [0.0] * 3]))
    enc.train()
    torch.manual_seed(0)
    seen = {float(enc(x, lengths)[0, 0]) for _ in range(60)}
    assert seen == {1.0, 2.0, 3.0}
    assert torch.equal(enc(x, lengths)[1], torch.zeros(3))


def test_mlp_head_takes_one_modality():
    with pytest.raises(ValueError, match="early_fusion"):
        build_head("mlp", exp_config("mlp", ["a", "b"]), {"a": 4, "b": 4}, 3)


# ---------------------------------------------------------------- losses
def test_pos_weight_is_negatives_over_positives():
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    assert pos_weight(y).tolist() == pytest.approx([1 / 3, 3 / 1, 1.0])   # no positives -> 1
    loss = build_loss(exp_config("mlp", ["a"]).train, ["x", "y", "z"], True, y)
    assert loss.pos_weight.tolist() == pytest.approx([1 / 3, 3.0, 1.0])


def test_ep_ce_penalises_wrong_polarity_by_hand():
    vocab = ["joy", "neutral", "anger"]
    assert class_polarity(vocab, {}) == [1, 0, -1]
    loss = EPCELoss([1, 0, -1], {"positive": 0.5, "neutral": 0.3, "negative": 0.2})
    logits = torch.tensor([[2.0, 1.0, 0.0],     # true joy, predicted joy: same polarity -> plain CE
                           [0.0, 0.0, 3.0]])    # true neutral, predicted anger: weight 1 + 0.3
    target = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert float(loss(logits, target)) == pytest.approx(float((ce[0] + 1.3 * ce[1]) / 2))
    with pytest.raises(ValueError, match="train.polarity"):
        class_polarity(["joy", "meh"], {})


# ---------------------------------------------------------------- late fusion
def test_late_fusion_weights_sum_to_one():
    assert normalise_weights([2, 1, 1], 3).tolist() == pytest.approx([0.5, 0.25, 0.25])
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66 and np.allclose(grid.sum(1), 1)
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.4).astype(float)
    good, noise = np.clip(y * 0.8 + 0.1, 0, 1), rng.random((40, 3))
    w = tune_weights([noise, good], lambda p: -np.abs(p - y).mean(), 0.1)
    assert w.sum() == pytest.approx(1) and w[1] == pytest.approx(1.0)   # all weight on the informative head
    w, source = fusion_weights([1, 3], None, None, 0.1, 2)
    assert w.tolist() == pytest.approx([0.25, 0.75]) and source == "params"
    assert np.allclose(fuse([noise, good], w), 0.25 * noise + 0.75 * good)


# ---------------------------------------------------------------- data from a real store
def test_load_head_data_from_store(tmp_path):
    from pipeline.extractors.base import ClipFeatures
    from pipeline.store import FeatureStore

    store = FeatureStore(tmp_path / "audio.zarr")
    rows = {"c1": 3, "c2": 1, "c3": 7}       # c4 is missing from the store
    clips = [(c, ClipFeatures({"features": np.full((t, 4), i + 1, np.float32) + np.arange(t)[:, None]},
                              np.stack([np.arange(t), np.arange(t) + 1], 1)))
             for i, (c, t) in enumerate(rows.items())]
    store.write_segment("vggish", "fp0", clips)
    store.set_current("vggish", "fp0", {"pretrained": False})
    table = pd.DataFrame({"clip_id": ["c1", "c2", "c3", "c4"], "split": ["train", "train", "val", "test"],
                          "labels": ["a|b", "b", "", "c"]})
    data = load_head_data(table, ["a", "b", "c"], True, {"vggish": store}, max_frames=5)
    m = data.modalities["vggish"]
    assert m.x.shape == (4, 5, 4) and m.lengths.tolist() == [3, 1, 5, 0]
    assert torch.equal(m.x[3], torch.zeros(5, 4))                        # missing clip: zeros, masked
    assert m.x[2, :, 0].tolist() == [3 + r for r in uniform_rows(7, 5)]  # 7 rows thinned evenly to 5
    assert uniform_rows(7, 5).tolist() == [0, 2, 3, 4, 6]
    assert data.y.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert {s: i.tolist() for s, i in data.splits.items()} == {"train": [0, 1], "val": [2], "test": [3]}
    with pytest.raises(ValueError, match="not in the vocabulary"):
        load_head_data(table.assign(labels=["a", "b", "zzz", "c"]), ["a", "b", "c"], False, {"vggish": store}, 5)


# ---------------------------------------------------------------- end to end
def test_tiny_training_learns_separable_single_label(tmp_path):
    data = make_synthetic(240, {"vggish": (6, 16), "text": (1, 8)}, 4, multilabel=False, signal=0.6, seed=1)
    exp = exp_config("early_fusion", ["vggish", "text"])
    r = train_on_data(exp, data, tmp_path, name="tiny", pretrained={"vggish": False, "text": True})
    assert r["metrics"]["accuracy"]["mean"] > 0.25 + 0.4          # chance is 0.25
    assert r["pretrained"] == {"vggish": False, "text": True} and r["all_pretrained"] is False
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["accuracy"] == r["metrics"]["accuracy"]
    for f in ("loss.csv", "pr_curves.csv", "per_class_ap.csv", "confusion.csv"):
        assert (tmp_path / "plots" / f).stat().st_size > 20
    # one loss row per epoch run; early stopping may end a seed before its 12 epochs, never before its best
    ran = [e["vggish+text"] for e in r["epochs_run"]]
    assert len(pd.read_csv(tmp_path / "plots" / "loss.csv")) == sum(ran)
    assert all(b["vggish+text"] <= e <= 12 for b, e in zip(r["best_epoch"], ran))
    assert r["schedule"]["epochs"] == 12 and r["schedule"]["lr_schedule"] == "multistep"

    # the checkpoint loads with weights_only=True and predicts what the run measured
    from heads.checkpoint import load_checkpoint

    head = load_checkpoint(tmp_path / "model.pt")
    test = data.splits["test"]
    acc = (head.predict_proba(data.inputs(test)).argmax(1) == data.targets(test).numpy()).mean()
    assert acc > 0.65 and head.vocab == data.vocab


def test_tiny_nextvlad_and_late_fusion_multilabel(tmp_path):
    data = make_synthetic(160, {"swin": (8, 24), "pose": (8, 11)}, 5, multilabel=True, signal=0.8, seed=2)
    prevalence = float(data.y.mean())
    nv = train_on_data(exp_config("nextvlad", ["swin", "pose"], epochs=8), data, tmp_path / "nv")
    assert nv["metrics"]["mAP"]["mean"] > prevalence + 0.3     # a random ranking scores about the prevalence
    assert set(nv["per_class_ap"]) == set(data.vocab) and "thresholds" in nv
    lf = train_on_data(exp_config("late_fusion", ["swin", "pose"], epochs=8), data, tmp_path / "lf")
    w = lf["late_fusion_weights"]["mean"]
    assert sum(w.values()) == pytest.approx(1) and lf["late_fusion_weights"]["source"] == "tuned on val"
    assert lf["metrics"]["mAP"]["mean"] > prevalence + 0.3
    lr = train_on_data(exp_config("logreg", ["swin", "pose"]), data, tmp_path / "lr")
    assert lr["metrics"]["mAP"]["mean"] > prevalence + 0.3


def test_run_experiment_from_stores_records_pretrained_flags(tmp_path, make_config):
    """The params.yaml path: Config + {key: FeatureStore} + clip table -> metrics.json, plots, checkpoint."""
    from heads.train import run_experiment
    from pipeline.extractors.base import ClipFeatures
    from pipeline.store import FeatureStore

    data = make_synthetic(60, {"vggish": (4, 8), "egemaps": (1, 6)}, 3, multilabel=False, signal=1.0, seed=3)
    stores = {}
    for key, pretrained in (("vggish", False), ("egemaps", True)):
        m = data.modalities[key]
        store = FeatureStore(tmp_path / f"{key}.zarr")
        # the last clip is missing from the egemaps store: it must still train, masked
        n = len(data.clip_ids) - (key == "egemaps")
        clips = [(data.clip_ids[i], ClipFeatures({"features": m.x[i, :int(m.lengths[i])].numpy()},
                                                 np.zeros((int(m.lengths[i]), 2)))) for i in range(n)]
        store.write_segment(key, "fp", clips)
        store.set_current(key, "fp", {"pretrained": pretrained})
        stores[key] = store
    split_of = {int(i): s for s, idx in data.splits.items() for i in idx}
    table = pd.DataFrame({"clip_id": data.clip_ids, "split": [split_of[i] for i in range(60)],
                          "labels": [data.vocab[c] for c in data.targets().tolist()]})
    cfg = make_config(datasets={"toy": {"adapter": "csv", "root": str(tmp_path)}},
                      experiments={"toy_late": {"dataset": "toy", "modalities": ["vggish", "egemaps"],
                                                "head": "late_fusion", "late_fusion_weights": [3, 1],
                                                "train": {"epochs": 4, "batch_size": 8, "lr": 3e-3,
                                                          "seeds": [0], "device": "cpu"}}})
    r = run_experiment(cfg, "toy_late", stores, table, data.vocab, False, tmp_path / "out")
    assert r["pretrained"] == {"vggish": False, "egemaps": True} and r["all_pretrained"] is False
    assert r["coverage"]["egemaps"] == pytest.approx(59 / 60)
    assert r["late_fusion_weights"]["mean"] == pytest.approx({"vggish": 0.75, "egemaps": 0.25})
    assert r["late_fusion_weights"]["source"] == "params"
    assert np.asarray(r["confusion"]).sum() == r["n_clips"]["test"]
    doc = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert doc["vocab"] == data.vocab and doc["fusion_weights"] == pytest.approx([0.75, 0.25])
    assert set(doc["heads"]) == {"vggish", "egemaps"}


def test_unlabelled_single_label_rows_are_skipped_not_fatal(tmp_path):
    import numpy as np
    import pandas as pd

    from heads.data import load_head_data
    from pipeline.extractors.base import ClipFeatures
    from pipeline.store import FeatureStore

    store = FeatureStore(tmp_path / "s")
    store.set_current("egemaps", "fp", {"pretrained": True})
    store.write_segment("egemaps", "fp", [(c, ClipFeatures({"features": np.ones((1, 3), np.float32)}, [[0, 1]]))
                                          for c in ["c1", "c2", "c3"]])
    table = pd.DataFrame({"clip_id": ["c1", "c2", "c3"], "split": ["train", "train", "test"],
                          "labels": ["a", "", "b"]})
    data = load_head_data(table, ["a", "b"], False, {"egemaps": store}, 5)
    assert data.clip_ids == ["c1", "c3"] and data.meta["unlabelled_skipped"] == 1
