"""Classification metrics as LOBCAST reports them, in numpy only.

One function, ``classification_report``, used by training (early stopping on macro-F1), the
backtest and the demo, so every number the project prints is computed the same way. Its
formulas live in ``report_from_confusion`` (the streaming backtest adds confusion matrices up
chunk by chunk and calls it once), so each metric has one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lobstream.kernels.dtypes import CLASS_NAMES


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    # bincount of the pair index is one pass and exact in int64.
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # sklearn's zero_division=0: a ratio with a zero denominator counts as 0, not NaN.
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _labels(y: Any, name: str, n_classes: int) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D class labels, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise ValueError(
                f"{name} must hold integer class labels, got dtype {a.dtype} with fractions; "
                "pass argmax of probabilities, not the probabilities"
            )
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(
            f"{name} holds labels in [{a.min()}, {a.max()}], expected 0..{n_classes - 1} "
            f"(classes {_names(n_classes)})"
        )
    return a


def _names(n_classes: int) -> tuple[str, ...]:
    return CLASS_NAMES if n_classes == 3 else tuple(str(i) for i in range(n_classes))


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    n_classes: int = 3,
) -> dict[str, Any]:
    """Accuracy, F1 (macro and weighted), per-class scores, MCC, Cohen's kappa, confusion.

    Parameters
    ----------
    y_true, y_pred : array-like (N,) of int
        True and predicted class labels in 0..n_classes-1 (0 down, 1 flat, 2 up). Not modified.
    n_classes : int
        Number of classes. Every class counts in the averages, even one absent from both
        arrays (its scores are then 0), so a model that never predicts a class is penalised.

    Returns
    -------
    dict
        ``n`` (int), ``accuracy``, ``f1_macro`` (unweighted mean of the per-class F1),
        ``f1_weighted`` (per-class F1 weighted by true support: sklearn's ``average=
        'weighted'``, which is the F1 the DeepLOB paper reports; LOBCAST reports macro),
        ``precision_macro``, ``recall_macro``, ``mcc`` (multiclass Matthews correlation,
        Gorodkin's R_K), ``kappa`` (Cohen's, unweighted), ``per_class`` (list, one dict per
        class: ``name``, ``precision``, ``recall``, ``f1``, ``support``) and ``confusion``
        (list of lists of int, rows = true class, columns = predicted class). Ratios with a
        zero denominator (a class never predicted, MCC or kappa of a constant input) are 0.
        All values are plain Python numbers, ready for JSON.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    yt = _labels(y_true, "y_true", n_classes)
    yp = _labels(y_pred, "y_pred", n_classes)
    if yt.shape != yp.shape:
        raise ValueError(
            f"y_true has {yt.size} labels but y_pred has {yp.size}; they must pair one to one"
        )
    if yt.size == 0:
        raise ValueError("classification_report needs at least one label, got empty arrays")
    return report_from_confusion(_confusion(yt, yp, n_classes))


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int = 3
) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = true class, columns = predicted class.

    The counts :func:`classification_report` scores; chunks of a stream can be counted one by
    one, added up, and given to :func:`report_from_confusion`. Inputs as there; empty allowed.
    """
    yt = _labels(y_true, "y_true", n_classes)
    yp = _labels(y_pred, "y_pred", n_classes)
    if yt.shape != yp.shape:
        raise ValueError(
            f"y_true has {yt.size} labels but y_pred has {yp.size}; they must pair one to one"
        )
    return _confusion(yt, yp, n_classes).astype(np.int64)


def report_from_confusion(confusion: Sequence[Sequence[int]] | np.ndarray) -> dict[str, Any]:
    """:func:`classification_report` from a confusion matrix (streaming scorers add these up).

    Parameters
    ----------
    confusion : array-like (n_classes, n_classes) of int
        Counts, rows = true class, columns = predicted class. Not modified.

    Returns
    -------
    dict
        The same keys and values as :func:`classification_report` of the labels it counts.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(
            f"confusion must be a square (n_classes, n_classes) matrix with n_classes >= 2, "
            f"got shape {cm.shape}"
        )
    if cm.size and not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(f"confusion must hold integer counts, got dtype {cm.dtype}")
    cm = cm.astype(np.int64)
    if cm.min() < 0:
        raise ValueError(f"confusion holds a negative count ({cm.min()}); counts are >= 0")
    if cm.sum() == 0:
        raise ValueError(
            "the confusion matrix counts no labels (all zero); a report needs at least one "
            "labelled prediction"
        )
    n_classes = cm.shape[0]
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true counts per class
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * tp, predicted + support)  # = 2PR/(P+R), defined when P+R = 0
    correct = float(tp.sum())
    # Gorodkin's multiclass MCC and Cohen's kappa, both from the confusion marginals.
    s2 = float(n) * n
    pt = float(np.dot(predicted.astype(np.float64), support.astype(np.float64)))
    mcc_den = np.sqrt(
        (s2 - float(np.dot(predicted, predicted))) * (s2 - float(np.dot(support, support)))
    )
    mcc = (correct * n - pt) / mcc_den if mcc_den > 0 else 0.0
    p_o, p_e = correct / n, pt / s2
    kappa = (p_o - p_e) / (1.0 - p_e) if p_e < 1.0 else 0.0
    names = _names(n_classes)
    return {
        "n": n,
        "accuracy": p_o,
        "f1_macro": float(f1.mean()),
        "f1_weighted": float(np.dot(f1, support) / n),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "mcc": float(mcc),
        "kappa": float(kappa),
        "per_class": [
            {
                "name": names[k],
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k in range(n_classes)
        ],
        "confusion": cm.astype(int).tolist(),
    }


def format_report(d: dict[str, Any]) -> str:
    """A plain-text table of a ``classification_report`` result, for terminals and logs."""
    lines = [f"{'class':<8}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c in d["per_class"]:
        lines.append(
            f"{c['name']:<8}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}"
            f"{c['support']:>10d}"
        )
    lines.append("")
    lines.append(f"{'accuracy':<14}{d['accuracy']:.4f}   n = {d['n']}")
    lines.append(f"{'f1 macro':<14}{d['f1_macro']:.4f}")
    lines.append(f"{'f1 weighted':<14}{d['f1_weighted']:.4f}   (sklearn 'weighted', as DeepLOB)")
    lines.append(f"{'mcc':<14}{d['mcc']:.4f}")
    lines.append(f"{'kappa':<14}{d['kappa']:.4f}")
    names = [c["name"] for c in d["per_class"]]
    width = max(8, *(len(x) for x in names)) + 2
    lines.append("")
    lines.append("confusion (rows = true, columns = predicted)")
    lines.append(" " * width + "".join(f"{x:>{width}}" for x in names))
    for name, row in zip(names, d["confusion"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)
