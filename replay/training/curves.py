"""The training curves of one run as a PNG: train loss and validation macro-F1 per epoch,
with the baselines' validation macro-F1 as horizontal lines (matplotlib, Agg).

:func:`curves_data` is what the figure shows, taken from a training summary; it goes into the
JSON report beside the PNG so the picture's numbers can be read back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def curves_path(artifact: str | Path) -> Path:
    """Where ``lobstream train`` puts the curves of ``artifact``: ``MODEL.pt`` ->
    ``MODEL.curves.png`` beside it."""
    p = Path(artifact)
    return p.with_name(p.stem + ".curves.png")


def curves_data(summary: dict[str, Any]) -> dict[str, Any]:
    """Per epoch: train loss and validation macro-F1 (the model's selection score), the best
    epoch, and each baseline's validation macro-F1 (primary head)."""
    hist = summary["training"]["history"]
    bases = {}
    for name, part in summary["baselines"].items():
        if isinstance(part, dict) and "validation" in part:
            bases[name] = float(part["validation"]["f1_macro"])
    return {
        "epoch": [int(e["epoch"]) for e in hist],
        "train_loss": [float(e["train_loss"]) for e in hist],
        "val_f1_macro": [float(e["val_f1_macro"]) for e in hist],
        "best_epoch": int(summary["training"]["best_epoch"]),
        "baselines_val_f1_macro": bases,
    }


def plot_curves(path: str | Path, summary: dict[str, Any], title: str = "") -> Path:
    """Write the curves of ``summary`` (a :func:`run_training` summary) to ``path``."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    d = curves_data(summary)
    fig, (ax_loss, ax_f1) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_loss.plot(d["epoch"], d["train_loss"], marker="o", lw=1.2, color="tab:blue")
    ax_loss.set_ylabel("train loss")
    ax_loss.grid(alpha=0.3)
    ax_f1.plot(d["epoch"], d["val_f1_macro"], marker="o", lw=1.4, color="black", label="model")
    if d["best_epoch"] in d["epoch"]:
        b = d["epoch"].index(d["best_epoch"])
        ax_f1.plot(d["epoch"][b], d["val_f1_macro"][b], "*", ms=13, color="gold",
                   mec="black", label=f"best (epoch {d['best_epoch']})")  # fmt: skip
    colours = {"majority": "tab:grey", "logistic": "tab:orange", "trend": "tab:green"}
    for name, f1 in d["baselines_val_f1_macro"].items():
        ax_f1.axhline(f1, ls="--", lw=1.0, color=colours.get(name, "tab:purple"),
                      label=f"{name} {f1:.3f}")  # fmt: skip
    ax_f1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("validation macro-F1")
    ax_f1.grid(alpha=0.3)
    ax_f1.legend(fontsize=8, loc="best")
    lab = summary.get("label", {})
    ax_loss.set_title(
        title
        or f"training curves: {lab.get('kind', '')} label, k = {lab.get('horizon', 0):g} "
        f"{lab.get('unit', '')}"
    )
    return _save(fig, path)


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # an optional plotting dependency: say how to get it
        raise ImportError("the training curves need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def plot_learning_curve(path: str | Path, points: list[dict[str, Any]], title: str = "") -> Path:
    """Validation (solid) and test (dotted) macro-F1 against training rows, one line per
    model name in ``points`` (each ``{name, training_rows, val_f1_macro, test_f1_macro}``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(p["name"] for p in points))
    for i, name in enumerate(names):
        ps = sorted((p for p in points if p["name"] == name), key=lambda p: p["training_rows"])
        x = [p["training_rows"] for p in ps]
        c = f"C{i}"
        ax.plot(x, [p["val_f1_macro"] for p in ps], marker="o", color=c, label=f"{name} val")
        ax.plot(x, [p["test_f1_macro"] for p in ps], ls=":", marker=".", color=c,
                label=f"{name} test")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel("macro-F1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "learning curve")
    return _save(fig, path)
