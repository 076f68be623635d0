"""Schedules sized to the data, the deterministic val carve-out, and model selection that never sees test."""
import json

import numpy as np
import pytest
import torch

from emocache.config import ExperimentConfig, TrainConfig
from heads.data import carve_validation, without_split
from heads.schedule import EarlyStopper, lr_factor, resolve_schedule
from heads.synthetic import make_synthetic

torch.set_num_threads(1)


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("n", [100, 1_000, 10_000, 100_000])
def test_auto_recipe_adapts_batch_and_epochs_to_the_dataset(n):
    s = resolve_schedule(TrainConfig(), n)
    a = TrainConfig().adaptive
    assert a.min_batch <= s.batch_size <= a.max_batch and s.optimizer == "adamw" and s.lr_schedule == "cosine"
    assert a.min_epochs <= s.epochs <= a.max_epochs
    # about target_steps optimizer steps unless an epoch bound binds
    if a.min_epochs < s.epochs < a.max_epochs:
        assert abs(s.total_steps - a.target_steps) <= s.steps_per_epoch
    assert s.early_stop_patience >= a.min_patience and 0 < s.warmup_steps < s.total_steps


def test_paper_recipes_are_presets_and_params_win():
    s = resolve_schedule(TrainConfig(recipe="svcemotion"), 43_000)
    assert (s.optimizer, s.lr, s.batch_size, s.epochs, s.lr_schedule, s.lr_milestones, s.weight_decay,
            s.early_stop_patience, s.warmup_steps) == ("adam", 1e-4, 6, 300, "multistep", [150, 230], 1e-5, 0, 0)
    p = resolve_schedule(TrainConfig(recipe="peng"), 500)
    assert (p.lr, p.batch_size, p.epochs, p.lr_schedule) == (1e-4, 16, 100, "constant")
    mine = resolve_schedule(TrainConfig(recipe="svcemotion", epochs=60, batch_size=64), 43_000)
    assert (mine.epochs, mine.batch_size, mine.lr) == (60, 64, 1e-4)
    with pytest.raises(ValueError, match="train.recipe"):
        TrainConfig(recipe="nope")


def test_lr_factor_warmup_cosine_and_multistep():
    s = resolve_schedule(TrainConfig(epochs=10, batch_size=10, warmup=0.1), 100)   # 10 steps/epoch, 100 steps
    f = [lr_factor(s, i) for i in range(s.total_steps)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)                 # warm-up over 10 steps
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01             # cosine down to ~0
    m = resolve_schedule(TrainConfig(recipe="svcemotion"), 60)
    assert lr_factor(m, 149 * m.steps_per_epoch) == 1.0
    assert lr_factor(m, 150 * m.steps_per_epoch) == pytest.approx(0.1)
    assert lr_factor(m, 230 * m.steps_per_epoch) == pytest.approx(0.01)


def test_early_stopper():
    st = EarlyStopper(3)
    for epoch, score in enumerate([0.1, 0.5, 0.4, 0.5, 0.45], start=1):
        st.update(epoch, score)
    assert st.best_epoch == 2 and not st.should_stop(4) and st.should_stop(5)
    assert not EarlyStopper(0).should_stop(1000)


# ---------------------------------------------------------------- splits
def test_val_carve_is_deterministic_and_disjoint():
    data = make_synthetic(200, {"x": (1, 4)}, 3, multilabel=False, seed=0)
    data.splits["val"] = torch.zeros(0, dtype=torch.int64)
    a = carve_validation(data, 0.2)
    assert len(a.splits["val"]) == round(0.2 * len(data.splits["train"]))
    assert not set(a.splits["val"].tolist()) & set(a.splits["train"].tolist())
    assert set(a.splits["val"].tolist()) | set(a.splits["train"].tolist()) == set(data.splits["train"].tolist())
    # same clips whatever the order of the training rows
    shuffled = carve_validation(type(data)(**{**data.__dict__, "splits": dict(
        data.splits, train=data.splits["train"].flip(0))}), 0.2)
    assert sorted(shuffled.splits["val"].tolist()) == sorted(a.splits["val"].tolist())
    assert carve_validation(make_synthetic(50, {"x": (1, 4)}, 3, False), 0.2).meta.get("val_carved") is None  # has val


def test_without_split_drops_every_test_row():
    data = make_synthetic(120, {"x": (3, 4)}, 3, multilabel=True, seed=0)
    test_ids = {data.clip_ids[i] for i in data.splits["test"].tolist()}
    view = without_split(data, "test")
    assert not test_ids & set(view.clip_ids) and len(view.splits["test"]) == 0
    assert len(view.y) == len(view.clip_ids) == len(data.clip_ids) - len(test_ids)
    for s in ("train", "val"):
        assert [view.clip_ids[i] for i in view.splits[s].tolist()] == [data.clip_ids[i] for i in data.splits[s].tolist()]
        assert torch.equal(view.y[view.splits[s]], data.y[data.splits[s]])


# ---------------------------------------------------------------- emocache tune
def tune_exp(**tune):
    return ExperimentConfig(dataset="synthetic", modalities=["x"], head="mlp",
                            train={"seeds": [0, 1], "device": "cpu", "epochs": 15},
                            tune={"trials": 4, "hidden": [16, 32], "prune_startup_trials": 2, **tune})


def poisoned(data):
    """Test labels flipped and test features replaced by noise: anything that read them would change."""
    y, x = data.y.clone(), data.modalities["x"].x.clone()
    t = data.splits["test"]
    y[t] = 1 - y[t]
    x[t] = torch.randn_like(x[t]) * 100
    mods = {"x": type(data.modalities["x"])(x, data.modalities["x"].lengths)}
    return type(data)(data.clip_ids, mods, y, data.splits, data.vocab, data.multilabel, dict(data.meta))


@pytest.mark.slow   # two 4-trial searches + a 2-seed retrain: ~15 s on an idle core, ~50 s on a loaded one
def test_search_never_reads_test_and_result_is_written_like_train(tmp_path):
    from heads.tune import search, tune_on_data

    data = make_synthetic(300, {"x": (2, 8)}, 4, multilabel=False, signal=0.5, seed=3)
    # the networks on the val split (epochs, pruning); cross-validation and logreg: the test below
    exp = tune_exp(heads=["linear", "mlp"], cv_folds=0)
    clean, dirty = search(exp, data), search(exp, poisoned(data))
    assert [(t["state"], t["value"], t["params"]) for t in clean.trials] == \
           [(t["state"], t["value"], t["params"]) for t in dirty.trials]
    assert clean.params == dirty.params and len(clean.trials) == 4
    assert clean.params["head"] in {"linear", "mlp"}

    r = tune_on_data(exp, data, tmp_path, name="tiny_tuned")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["tuning"]["params"] == r["tuning"]["params"] and written["head"] == r["tuning"]["params"]["head"]
    assert written["tuning"]["split"] == "val" and written["tuning"]["n_trials"] == 4
    assert written["eval_split"] == "test" and written["seeds"] == [0, 1]
    assert written["schedule"]["epochs"] == r["tuning"]["params"]["epochs"]
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "plots" / "tune_trials.csv").is_file()
    assert r["metrics"]["accuracy"]["mean"] > 0.5          # chance is 0.25


def test_search_needs_validation():
    from heads.tune import search

    data = make_synthetic(60, {"x": (1, 4)}, 2, multilabel=False, seed=0)
    data.splits["val"] = torch.zeros(0, dtype=torch.int64)
    exp = tune_exp().model_copy(update={"train": TrainConfig(val_carve=0.0, device="cpu")})
    with pytest.raises(ValueError, match="validation split"):
        search(exp, data)


def test_small_val_is_replaced_by_cross_validation_over_train_and_val():
    from heads.tune import cv_splits

    data = make_synthetic(90, {"x": (1, 4)}, 3, multilabel=False, seed=1)
    space = tune_exp(cv_folds=3, cv_below_clips=50).tune
    folds = cv_splits(data, space)
    pool = set(data.splits["train"].tolist()) | set(data.splits["val"].tolist())
    test = set(data.splits["test"].tolist())
    assert len(folds) == 3
    assert sorted(i for d in folds for i in d.splits["val"].tolist()) == sorted(pool)   # each clip validates once
    for d in folds:
        tr, va = set(d.splits["train"].tolist()), set(d.splits["val"].tolist())
        assert tr | va == pool and not tr & va and not (tr | va) & test
        assert torch.equal(d.splits["test"], data.splits["test"])
    assert cv_splits(data, tune_exp(cv_folds=3, cv_below_clips=len(data.splits["val"])).tune) == []
    assert cv_splits(data, tune_exp(cv_folds=0, cv_below_clips=10_000).tune) == []


@pytest.mark.slow   # two 5-trial 3-fold searches on 120 clips: ~10 s on an idle core
def test_cross_validated_search_with_logreg_never_reads_test(tmp_path):
    from heads.tune import search, tune_on_data

    data = make_synthetic(120, {"x": (2, 8)}, 4, multilabel=False, signal=1.0, seed=5)
    exp = tune_exp(trials=5, cv_folds=3, cv_below_clips=1000, heads=["linear", "mlp", "logreg"])
    clean, dirty = search(exp, data), search(exp, poisoned(data))
    assert [(t["state"], t["value"], t["params"]) for t in clean.trials] == \
           [(t["state"], t["value"], t["params"]) for t in dirty.trials]
    assert clean.summary()["split"] == "cv" and clean.summary()["cv_folds"] == 3
    assert {t["state"] for t in clean.trials} <= {"COMPLETE", "PRUNED"}   # networks pruned fold by fold
    assert {t["params"]["head"] for t in clean.trials} <= {"linear", "mlp", "logreg"}

    only_lr = tune_exp(trials=3, cv_folds=3, cv_below_clips=1000, heads=["logreg"])
    r = tune_on_data(only_lr, data, tmp_path, name="lr_tuned")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["head"] == "logreg" and 1e-3 <= written["tuning"]["params"]["c"] <= 1e2
    assert set(written["tuning"]["params"]) == {"head", "c"}
    assert r["metrics"]["accuracy"]["mean"] > 0.5          # chance is 0.25


def test_logreg_cannot_be_searched_on_the_loss():
    from heads.tune import search

    data = make_synthetic(60, {"x": (1, 4)}, 2, multilabel=False, seed=0)
    exp = tune_exp(heads=["logreg", "mlp"])
    exp = exp.model_copy(update={"train": exp.train.model_copy(update={"select_metric": "loss"})})
    with pytest.raises(ValueError, match="loss"):
        search(exp, data)
