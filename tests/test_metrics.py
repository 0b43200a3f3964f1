"""classification_report against hand-computed values and invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.models.metrics import classification_report, format_report


def test_hand_computed_example() -> None:
    # confusion (rows true): [[2,1,0],[0,1,1],[0,0,2]]
    yt = [0, 1, 2, 2, 1, 0, 0]
    yp = [0, 2, 2, 2, 1, 1, 0]
    d = classification_report(yt, yp)
    assert d["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert d["n"] == 7
    assert d["accuracy"] == pytest.approx(5 / 7)
    pc = d["per_class"]
    assert [c["name"] for c in pc] == ["down", "flat", "up"]
    assert [c["support"] for c in pc] == [3, 2, 2]
    assert [c["precision"] for c in pc] == pytest.approx([1.0, 0.5, 2 / 3])
    assert [c["recall"] for c in pc] == pytest.approx([2 / 3, 0.5, 1.0])
    assert [c["f1"] for c in pc] == pytest.approx([0.8, 0.5, 0.8])
    assert d["f1_macro"] == pytest.approx(0.7)
    assert d["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 * 0.8) / 7)
    # MCC = (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) = 19 / 32
    assert d["mcc"] == pytest.approx(19 / 32)
    # kappa = (p_o - p_e) / (1 - p_e), p_o = 5/7, p_e = 16/49 -> 19/33
    assert d["kappa"] == pytest.approx(19 / 33)


def test_binary_mcc_matches_phi_formula() -> None:
    yt = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 1])
    yp = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 1])
    tp, tn, fp, fn = 5, 3, 1, 1
    phi = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert classification_report(yt, yp, n_classes=2)["mcc"] == pytest.approx(phi)


def test_perfect_prediction() -> None:
    y = [0, 1, 2, 1, 0]
    d = classification_report(y, y)
    for k in ("accuracy", "f1_macro", "f1_weighted", "mcc", "kappa"):
        assert d[k] == pytest.approx(1.0)


def test_constant_predictor_scores_zero_not_nan() -> None:
    d = classification_report([0, 1, 2, 1], [1, 1, 1, 1])
    assert d["mcc"] == 0.0 and d["kappa"] == 0.0
    assert d["per_class"][0]["precision"] == 0.0  # never predicted: 0 by convention
    assert d["per_class"][1]["recall"] == 1.0
    assert d["f1_macro"] == pytest.approx((0 + 2 * 2 / 6 + 0) / 3)


def test_absent_class_counts_in_macro_average() -> None:
    d = classification_report([0, 0, 1], [0, 0, 1])
    assert d["per_class"][2]["support"] == 0
    assert d["f1_macro"] == pytest.approx(2 / 3)
    assert d["f1_weighted"] == pytest.approx(1.0)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=200))
def test_invariants(pairs: list[tuple[int, int]]) -> None:
    yt = np.array([a for a, _ in pairs])
    yp = np.array([b for _, b in pairs])
    d = classification_report(yt, yp)
    cm = np.array(d["confusion"])
    assert cm.sum() == len(pairs)
    assert list(cm.sum(axis=1)) == [c["support"] for c in d["per_class"]]
    assert d["accuracy"] == pytest.approx(np.mean(yt == yp))
    for k in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
        assert 0.0 <= d[k] <= 1.0
    assert -1.0 - 1e-12 <= d["mcc"] <= 1.0 + 1e-12
    assert d["kappa"] <= 1.0 + 1e-12
    # Swapping truth and prediction transposes the confusion and leaves MCC and kappa alone.
    s = classification_report(yp, yt)
    assert s["confusion"] == cm.T.tolist()
    assert s["mcc"] == pytest.approx(d["mcc"], abs=1e-12)
    assert s["kappa"] == pytest.approx(d["kappa"], abs=1e-12)
    # Relabelling the classes consistently permutes per-class scores, not the summaries.
    perm = np.array([2, 0, 1])
    r = classification_report(perm[yt], perm[yp])
    for k in ("accuracy", "f1_macro", "f1_weighted", "mcc", "kappa"):
        assert r[k] == pytest.approx(d[k], abs=1e-12)
    assert format_report(d).count("\n") > 5


@pytest.mark.parametrize(
    ("yt", "yp", "match"),
    [
        ([0, 1], [0], "pair one to one"),
        ([0, 3], [0, 1], r"expected 0\.\.2"),
        ([0, -1], [0, 1], r"expected 0\.\.2"),
        ([], [], "at least one"),
        ([[0, 1]], [[0, 1]], "1-D"),
        ([0, 1], [0.2, 0.9], "integer class labels"),
    ],
)
def test_bad_input_refused(yt, yp, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_report(yt, yp)


def test_json_ready() -> None:
    import json

    d = classification_report(np.array([0, 1, 2], dtype=np.int8), np.array([0, 1, 1]))
    assert json.loads(json.dumps(d)) == d
