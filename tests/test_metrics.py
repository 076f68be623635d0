"""Metrics against values worked out by hand on small examples."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from heads.metrics import (fast_per_class_ap, multilabel_metrics, selection_score, singlelabel_metrics, summarize,
                           tune_thresholds)

# 4 clips x 2 classes
Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
S = np.array([[0.9, 0.2], [0.8, 0.6], [0.7, 0.4], [0.1, 0.3]])


def test_multilabel_ap_ra_map_mra_mean_by_hand():
    m = multilabel_metrics(Y, S, 0.5)
    # class 0 ranking 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = (1/1 + 2/3) / 2
    # class 1 ranking 0.6(+) 0.4(+) 0.3(-) 0.2(-): AP = 1
    assert m["ap"] == pytest.approx([(1 + 2 / 3) / 2, 1.0])
    # at 0.5: class 0 predicts [1,1,1,0] vs [1,0,1,0] -> 3/4 right; class 1 predicts [0,1,0,0] vs [0,1,1,0] -> 3/4
    assert m["ra"] == pytest.approx([0.75, 0.75])
    assert m["mAP"] == pytest.approx((5 / 6 + 1) / 2)
    assert m["mRA"] == pytest.approx(0.75)
    assert m["Mean"] == pytest.approx(((5 / 6 + 1) / 2 + 0.75) / 2)
    # class 0: TP 2 FP 1 FN 0 -> F1 0.8; class 1: TP 1 FP 0 FN 1 -> F1 2/3
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_per_class_thresholds_change_ra():
    m = multilabel_metrics(Y, S, np.array([0.75, 0.35]))
    # class 0 predicts [1,1,0,0]: 2/4 right; class 1 predicts [0,1,1,0]: 4/4 right
    assert m["ra"] == pytest.approx([0.5, 1.0])


def test_class_without_positives_is_nan_and_left_out_of_map():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]])
    m = multilabel_metrics(y, s)
    assert m["ap"][0] == pytest.approx(1.0) and np.isnan(m["ap"][1])
    assert m["mAP"] == pytest.approx(1.0)


def test_fast_ap_matches_sklearn_including_ties():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(int)
    s = np.round(rng.random((200, 6)), 1)           # many ties
    s[:, 5] = 0.5                                    # a constant column
    fast = fast_per_class_ap(y, s)
    ref = [average_precision_score(y[:, c], s[:, c]) for c in range(6)]
    assert fast == pytest.approx(ref, abs=1e-12)
    assert fast_per_class_ap(Y, S) == pytest.approx([5 / 6, 1.0])


def test_singlelabel_accuracy_and_f1_by_hand():
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])  # pred 0,1,1,2
    m = singlelabel_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(0.75)
    # per class F1: c0 P=1 R=1/2 -> 2/3; c1 P=1/2 R=1 -> 2/3; c2 -> 1
    assert m["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["f1_weighted"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert selection_score("accuracy", False, y, probs, 0.5) == pytest.approx(0.75)


def test_tuned_threshold_maximises_f1():
    y = np.array([[1], [1], [0], [1], [0]])
    s = np.array([[0.9], [0.6], [0.55], [0.3], [0.1]])
    # thresholds: 0.9 -> F1 .5; 0.6 -> .8; 0.55 -> 2*(2/3)(2/3)/(4/3)=.667; 0.3 -> 2*.75*1/1.75=.857; 0.1 -> .75
    assert tune_thresholds(y, s)[0] == pytest.approx(0.3)


def test_summarize_mean_std_over_seeds():
    runs = [{"mAP": 0.2, "ap": [0.1, np.nan]}, {"mAP": 0.4, "ap": [0.3, np.nan]}]
    s = summarize(runs)
    assert s["mAP"]["mean"] == pytest.approx(0.3) and s["mAP"]["std"] == pytest.approx(0.1)
    assert s["ap"]["mean"][0] == pytest.approx(0.2) and s["ap"]["mean"][1] is None
