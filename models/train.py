"""Training of any zoo model on windows and labels: seeded, class-weighted AdamW, early stopping
on validation macro-F1, progress per epoch through a callback.

Data come as :class:`Windows`: flat feature rows plus the index of each window's last row, so
the (N, 1, T, F) tensor of all windows is never built; a batch is copied by index with the
window copy every model input goes through (:mod:`lobstream.kernels.windows`). File formats
and splits live in :mod:`lobstream.replay.training.dataset`.

Subsampling (``max_train_windows``): each epoch trains on a random subset of that many
training windows, drawn without replacement from a generator seeded by ``seed`` and the epoch
number, so successive epochs see different windows and a rerun sees the same ones. Validation
uses every validation window unless ``max_eval_windows`` is set; then an evenly strided subset
(fixed across epochs, so epochs compare on the same windows).

Causal models (``causal = True``, e.g. ``cnn_causal``) train by sequence by default
(:mod:`lobstream.models.causal.seqtrain`): chunks of about ``chunk_rows`` consecutive rows, features
once per chunk, one optimizer step per chunk over all its windows, epochs a shuffled order of
chunks cut at ``max_train_windows`` windows. Same loss as per-window training on the same
windows; ``sequence=False`` trains them per window like any other model. Their validation and
``predict`` go by sequence too.

CPU by default (``torch.set_num_threads(threads)``); ``device="cuda"`` or ``"auto"`` trains on
a GPU when present, with mixed precision (float16 autocast and a gradient scaler) there.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lobstream.kernels.windows import copy_windows
from lobstream.models.artifact import resolve_device
from lobstream.models.baselines import class_weights
from lobstream.models.causal.seqtrain import (
    chunk_logits,
    chunk_windows,
    epoch_chunks,
    is_causal,
    plan_chunks,
    predict_sequence,
)
from lobstream.models.heads import (
    HeadsLoss,
    argmax_classes,
    model_heads,
    out_shape,
    selection_score,
    softmax_heads,
)
from lobstream.models.metrics import classification_report

logger = logging.getLogger(__name__)


class Windows:
    """Sliding (T, F) windows over flat rows, with one label per window.

    Parameters
    ----------
    rows : ndarray (M, F) float32
        Feature rows; shared, never copied or modified.
    ends : ndarray (N,) int64
        Row index of each window's last row (window = rows ``end - T + 1 .. end``).
    labels : ndarray (N,) or (N, H) int
        Class of each window in {0, 1, 2}; one column per head for a multi-horizon model
        (:mod:`lobstream.models.heads`).
    window : int
        T.
    """

    def __init__(self, rows: np.ndarray, ends: np.ndarray, labels: np.ndarray, window: int):
        if rows.ndim != 2 or rows.dtype != np.float32:
            raise ValueError(f"rows must be (M, F) float32, got {rows.shape} {rows.dtype}")
        ends = np.asarray(ends, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.ndim not in (1, 2) or labels.shape[0] != ends.shape[0]:
            raise ValueError(
                f"labels {labels.shape} must be (N,) or (N, H) for {ends.shape[0]} window ends"
            )
        if ends.size and (ends.min() < window - 1 or ends.max() >= rows.shape[0]):
            raise ValueError(
                f"window ends must lie in [{window - 1}, {rows.shape[0] - 1}] for T={window}"
            )
        if rows.shape[0] < window:
            raise ValueError(f"{rows.shape[0]} rows hold no window of T={window} rows")
        self.rows = rows
        self.ends = ends
        self.labels = labels
        self.window = int(window)

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    @property
    def n_heads(self) -> int:
        """Label columns: 1 for (N,) labels, H for (N, H)."""
        return 1 if self.labels.ndim == 1 else int(self.labels.shape[1])

    def batch(self, idx: np.ndarray) -> np.ndarray:
        """Windows ``idx`` as a new (B, 1, T, F) float32 array (a copy, not a view)."""
        starts = self.ends[idx] - self.window + 1
        out = np.empty((len(starts), 1, self.window, self.rows.shape[1]), np.float32)
        copy_windows(self.rows, starts, out)
        return out

    def subset(self, idx: np.ndarray) -> Windows:
        """The windows ``idx`` (same rows)."""
        return Windows(self.rows, self.ends[idx], self.labels[idx], self.window)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (all that a rerun needs besides the data and the model config)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2  # AdamW's decoupled decay
    patience: int = 3  # epochs without a better validation macro-F1 before stopping
    seed: int = 0
    max_train_windows: int | None = None  # per-epoch random subset (see module docstring)
    max_eval_windows: int | None = None  # strided validation subset
    class_weighted: bool = True  # inverse-frequency weights in the loss
    device: str = "cpu"  # "cpu", "cuda", "auto"
    threads: int = 1  # torch CPU threads: the machine is shared
    eval_batch_size: int = 512
    sequence: bool = True  # causal models: train by chunks of rows (models.causal.seqtrain)
    # Sequence training: chunk_rows - T + 1 windows share chunk_rows rows of convolutions, and
    # a step mixes chunks_per_step chunks from random places of the day. Windows one row apart
    # are near-duplicates (their labels mostly agree), so what a step learns goes with the
    # number of places more than of windows. GOOG k=50, cnn_causal: over 600 steps, 6 places x
    # 11 windows a step learned less than 64 random windows; in equal wall time, 32 places x
    # 29 windows reached 0.276 validation macro-F1 against 0.214 for 64 random windows a step.
    # 128 rows at T=100: 4.4 rows of convolutions a window instead of 100.
    chunk_rows: int = 128
    chunks_per_step: int = 32
    # multi-horizon models: per-head loss weights (sum 1; None: equal), also the weights of
    # the per-head validation macro-F1 that early stopping follows
    loss_weights: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """The best model (by validation macro-F1, in eval mode), per-epoch history, metrics."""

    model: nn.Module
    history: list[dict[str, Any]]
    val_metrics: dict[str, Any]
    best_epoch: int
    seconds: float
    config: TrainConfig = field(default_factory=TrainConfig)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy's legacy generator (model initialisation draws from torch)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@torch.no_grad()
def predict(
    model: nn.Module,
    windows: Windows,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes (N,) int64 and probabilities (N, 3) float32 of every window; for a
    model of H > 1 heads, (N, H) and (N, H, 3).

    The model is put in eval mode (and left so). Causal models predict by sequence (features
    once per stretch of rows), equal up to float re-association.
    """
    device = torch.device(device)
    model.eval()
    heads = model_heads(model)
    if is_causal(model):
        # a chunk's activations are far smaller than a batch's of as many windows
        probs = predict_sequence(model, windows, chunk_rows=4 * batch_size, device=device)
        return argmax_classes(probs), probs
    n = len(windows)
    probs = np.empty((n, *out_shape(heads)), dtype=np.float32)
    for a in range(0, n, batch_size):
        idx = np.arange(a, min(a + batch_size, n))
        x = torch.from_numpy(windows.batch(idx)).to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(x)
        probs[a : a + len(idx)] = softmax_heads(logits.float(), heads).cpu().numpy()
    return argmax_classes(probs), probs


def evaluate(
    model: nn.Module,
    windows: Windows,
    *,
    batch_size: int = 512,
    device: str = "cpu",
    loss_weights: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """``classification_report`` of the model on every window.

    A multi-head model gives ``{"heads": [report per head], "f1_macro": ..., "accuracy":
    ...}``, the last two weighted by ``loss_weights`` (equal when None): what early stopping
    follows."""
    pred, _ = predict(model, windows, batch_size=batch_size, device=device)
    y = windows.labels.astype(np.int64)
    if pred.ndim == 1:
        return classification_report(y, pred)
    n = pred.shape[1]
    reports = [classification_report(y[:, h], pred[:, h]) for h in range(n)]
    w = loss_weights or tuple([1.0 / n] * n)
    return {
        "heads": reports,
        "f1_macro": selection_score(reports, w),
        "accuracy": float(sum(wh * r["accuracy"] for wh, r in zip(w, reports, strict=True))),
    }


def _strided(n: int, k: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def _keep_frozen_in_eval(model: nn.Module) -> None:
    """Frozen BatchNorm layers (fine-tuning) keep the parent's running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _heads_loss(
    model: nn.Module, train: Windows, config: TrainConfig
) -> tuple[HeadsLoss, tuple[float, ...]]:
    """The loss (each head's class-weighted cross-entropy) and the heads' weights in it."""
    heads = model_heads(model)
    if train.n_heads != heads:
        raise ValueError(
            f"the model has {heads} head(s) but the windows carry {train.n_heads} label column(s)"
        )
    cols = train.labels.astype(np.int64).reshape(len(train), heads)
    cw = np.stack(
        [class_weights(cols[:, h]) if config.class_weighted else np.ones(3) for h in range(heads)]
    )
    lw = tuple(config.loss_weights or [1.0 / heads] * heads)
    return HeadsLoss(cw, lw), lw


def _batches(
    model: nn.Module,
    train: Windows,
    config: TrainConfig,
    device: torch.device,
    chunks: list,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, Callable[[], Tensor]]]:
    """(window indices, logits of those windows) per optimizer step of one epoch: chunks of
    consecutive rows through a causal model when ``chunks`` (sequence training), else random
    windows."""
    if chunks:
        order = epoch_chunks(chunks, rng, config.max_train_windows)
        for a in range(0, len(order), config.chunks_per_step):
            step = order[a : a + config.chunks_per_step]
            yield (
                chunk_windows(step),
                lambda step=step: chunk_logits(model, train.rows, step, train.window, device),
            )
        return
    n = len(train)
    if config.max_train_windows is not None and config.max_train_windows < n:
        order = rng.choice(n, size=config.max_train_windows, replace=False)
    else:
        order = rng.permutation(n)
    for a in range(0, len(order), config.batch_size):
        idx = order[a : a + config.batch_size]
        if len(idx) < 2:
            continue  # BatchNorm needs more than one sample
        x = torch.from_numpy(train.batch(idx)).to(device, non_blocking=True)
        yield idx, lambda x=x: model(x)


def train_model(
    model: nn.Module,
    train: Windows,
    val: Windows,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[dict[str, Any]], None] | None = None,
    step_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place and return it with its best validation weights restored.

    Parameters
    ----------
    model : nn.Module
        forward (B, 1, T, F) float32 -> logits (B, 3). Trained in place; on return it holds the
        weights of the epoch with the best validation macro-F1, in eval mode, on ``device``.
    train, val : Windows
        Training and validation windows (labels in {0, 1, 2}).
    config : TrainConfig
    progress : callable, optional
        Called after each epoch with that epoch's history entry (epoch, train_loss,
        val_f1_macro, val_accuracy, best, seconds, windows).
    step_progress : callable, optional
        Called after each optimizer step with {epoch, windows (so far this epoch), total
        (the epoch's windows), loss (running mean)}: progress within an epoch.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"need training and validation windows, got {len(train)} and {len(val)}; "
            "use more data, a shorter horizon or a smaller window"
        )
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    use_amp = device.type == "cuda"
    seed_everything(config.seed)
    model.to(device)
    loss_fn, lw = _heads_loss(model, train, config)
    loss_fn.to(device)
    # frozen parameters (fine-tuning, models.finetune) never move: no optimizer state for them
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    val_idx = _strided(len(val), config.max_eval_windows)
    val_sub = val.subset(val_idx)
    y_train_t = torch.from_numpy(train.labels.astype(np.int64))
    chunks = plan_chunks(train, config.chunk_rows) if config.sequence and is_causal(model) else []
    if chunks:
        logger.info(
            "sequence training: %d chunks of up to %d rows, %.0f windows each on average",
            len(chunks), config.chunk_rows, len(train) / len(chunks),
        )  # fmt: skip

    per_epoch = min(config.max_train_windows or len(train), len(train))
    history: list[dict[str, Any]] = []
    best_f1, best_epoch, best_state, best_metrics = -1.0, -1, None, {}
    t_start = time.perf_counter()
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        model.train()
        _keep_frozen_in_eval(model)
        total, seen = 0.0, 0
        for idx, logits in _batches(model, train, config, device, chunks, rng):
            y = y_train_t[idx].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(logits(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if step_progress is not None:
                step_progress(
                    {"epoch": epoch + 1, "windows": seen, "total": per_epoch,
                     "loss": total / seen}
                )  # fmt: skip
        metrics = evaluate(
            model, val_sub, batch_size=config.eval_batch_size, device=device, loss_weights=lw
        )
        improved = metrics["f1_macro"] > best_f1
        if improved:
            best_f1, best_epoch, best_metrics = metrics["f1_macro"], epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        entry = {
            "epoch": epoch + 1,
            "train_loss": total / max(seen, 1),
            "val_f1_macro": metrics["f1_macro"],
            "val_accuracy": metrics["accuracy"],
            "best": improved,
            "seconds": time.perf_counter() - t0,
            "windows": seen,
        }
        history.append(entry)
        logger.info(
            "epoch %d: loss %.4f, val macro-F1 %.4f, acc %.4f%s",
            epoch + 1,
            entry["train_loss"],
            entry["val_f1_macro"],
            entry["val_accuracy"],
            " (best)" if improved else "",
        )
        if progress is not None:
            progress(entry)
        if epoch - best_epoch >= config.patience:
            logger.info("early stop: no better validation macro-F1 for %d epochs", config.patience)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if len(val_idx) < len(val):
        best_metrics = evaluate(
            model, val, batch_size=config.eval_batch_size, device=device, loss_weights=lw
        )
    return TrainResult(
        model, history, best_metrics, best_epoch + 1, time.perf_counter() - t_start, config
    )
