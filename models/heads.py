"""Multi-horizon heads: one network, H label horizons, one softmax over (down, flat, up) each.

Any zoo architecture ends in H heads by widening its output layer to ``n_classes = 3 H``
(config field): the module's logits (B, 3 H) hold head h in columns ``3 h .. 3 h + 2``, so
TorchScript export, the incremental kernels and fine-tuning need nothing per architecture.
Probabilities come out as (B, H, 3) for H > 1 and (B, 3) for a single head, as before.

The manifest of a multi-head artifact lists its heads::

    "heads": [{"label": {...}, "loss_weight": 0.2, "metrics": {...}, "baselines": {...},
               "class_balance": {...}}, ...]

and keeps ``label``, ``metrics`` and ``baselines`` of head 0, the *primary* head (the first
horizon given), so every reader of single-head manifests sees a valid single-head artifact.
:func:`head_manifest` is the manifest as head ``h`` alone: the backtest scores each head with
the single-head evaluator through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lobstream.kernels.dtypes import MAX_HEADS  # the signal record has room for this many

N_CLASSES = 3


def n_heads(manifest: dict[str, Any]) -> int:
    """Heads of an artifact: ``len(manifest["heads"])``, 1 for single-head manifests."""
    heads = manifest.get("heads")
    return len(heads) if heads else 1


def model_heads(model: nn.Module) -> int:
    """Heads of a zoo model: its output width over 3 (``config.n_classes = 3 H``)."""
    return max(1, int(model.config.n_classes) // N_CLASSES)


def check_heads(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's heads against its config (None when consistent): H
    heads need ``config.n_classes = 3 H``, each with a label, and at most :data:`MAX_HEADS`."""
    heads = manifest.get("heads")
    width = int((manifest.get("config") or {}).get("n_classes", N_CLASSES))
    h = len(heads) if heads else 1
    if heads is not None and (not isinstance(heads, list) or not heads):
        return f"'heads' must be a non-empty list, got {heads!r}"
    if heads and not all(isinstance(x, dict) and "label" in x for x in heads):
        return "every entry of 'heads' needs a 'label'"
    if h > MAX_HEADS:
        return f"{h} heads; at most {MAX_HEADS}"
    if width != N_CLASSES * h:
        return f"config n_classes = {width} but {h} head(s) need {N_CLASSES * h}"
    return None


def head_manifest(manifest: dict[str, Any], h: int) -> dict[str, Any]:
    """The manifest of head ``h`` as if it were a single-head artifact (label, metrics,
    baselines and training class balance of that head); head 0 of a single-head manifest is
    the manifest itself."""
    heads = manifest.get("heads")
    if not heads:
        if h != 0:
            raise IndexError(f"a single-head manifest has head 0 only, asked for head {h}")
        return manifest
    head = heads[h]
    out = {k: v for k, v in manifest.items() if k != "heads"}
    out["label"] = head["label"]
    for key in ("metrics", "baselines"):
        if key in head:
            out[key] = head[key]
    if "class_balance" in head:
        out["trained_on"] = {
            **(manifest.get("trained_on") or {}),
            "class_balance": head["class_balance"],
        }
    out["head"] = h
    return out


def out_shape(n: int) -> tuple[int, ...]:
    """Shape of one window's probabilities for ``n`` heads: (3,) or (n, 3)."""
    return (N_CLASSES,) if n == 1 else (n, N_CLASSES)


def softmax_heads(logits: Tensor, n: int) -> Tensor:
    """Probabilities of logits (B, 3 n): (B, 3) for one head, (B, n, 3) for several."""
    if n == 1:
        return torch.softmax(logits, dim=1)
    return torch.softmax(logits.reshape(logits.shape[0], n, N_CLASSES), dim=2)


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """Predicted class per window and head: probs (..., 3) -> (...) int64."""
    return np.asarray(probs).argmax(axis=-1).astype(np.int64)


def parse_horizons(value: str) -> tuple[float, ...]:
    """``"10,50,100"`` -> (10.0, 50.0, 100.0); refuses repeats, non-positive values and more
    than :data:`MAX_HEADS`."""
    try:
        out = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"horizons {value!r}: expected comma-separated numbers") from None
    if not out or any(not h > 0 for h in out):
        raise ValueError(f"horizons {value!r}: expected positive numbers")
    if len(set(out)) != len(out):
        raise ValueError(f"horizons {value!r}: a horizon is given twice")
    if len(out) > MAX_HEADS:
        raise ValueError(f"horizons {value!r}: at most {MAX_HEADS} heads (the signal record's)")
    return out


def parse_loss_weights(value: str | None, n: int) -> tuple[float, ...]:
    """Per-head loss weights: ``None`` -> equal weights; else ``n`` non-negative numbers, not
    all zero, scaled to sum to 1."""
    if value is None:
        return tuple([1.0 / n] * n)
    try:
        w = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"loss weights {value!r}: expected comma-separated numbers") from None
    if len(w) != n:
        raise ValueError(f"loss weights {value!r}: {len(w)} numbers for {n} horizons")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"loss weights {value!r}: expected numbers >= 0, not all 0")
    s = sum(w)
    return tuple(x / s for x in w)


class HeadsLoss(nn.Module):
    """Weighted sum of per-head class-weighted cross-entropies.

    Parameters
    ----------
    class_weights : (H, 3) inverse-frequency weights of each head's training labels.
    loss_weights : (H,) summing to 1.

    forward: logits (B, 3 H), labels (B, H) int64 -> scalar. With H = 1 and labels (B,), it is
    the single-head loss exactly.
    """

    def __init__(self, class_weights: np.ndarray, loss_weights: Sequence[float]) -> None:
        super().__init__()
        cw = torch.as_tensor(np.asarray(class_weights, dtype=np.float32).reshape(-1, N_CLASSES))
        self.n = int(cw.shape[0])
        if len(loss_weights) != self.n:
            raise ValueError(f"{len(loss_weights)} loss weights for {self.n} heads")
        self.register_buffer("cw", cw)
        self.register_buffer("lw", torch.tensor(list(loss_weights), dtype=torch.float32))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.n == 1:
            y = labels.reshape(-1)
            return nn.functional.cross_entropy(logits, y, weight=self.cw[0])
        lg = logits.reshape(logits.shape[0], self.n, N_CLASSES)
        total = logits.new_zeros(())
        for h in range(self.n):
            ce = nn.functional.cross_entropy(lg[:, h], labels[:, h], weight=self.cw[h])
            total = total + self.lw[h] * ce
        return total


def selection_score(reports: Sequence[dict[str, Any]], loss_weights: Sequence[float]) -> float:
    """Early-stopping score of a multi-head model: per-head macro-F1 weighted by the loss
    weights (the single head's macro-F1 when there is one)."""
    return float(sum(w * r["f1_macro"] for w, r in zip(loss_weights, reports, strict=True)))
