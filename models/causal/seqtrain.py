"""Sequence training and prediction of causal models: features once per stretch of rows.

Per-window training runs a model's convolutions over all T rows of every window, so with
windows one row apart each row is convolved T times. A causal model (``causal = True``, see
:mod:`lobstream.models.causal.cnn` for the interface) computes per-row features with valid
convolutions along time, so the features of a row are the same in every window that holds it.
Here the windows are grouped into chunks of consecutive rows, ``row_features`` runs once per
chunk, and each window's ``head`` gets its slice of T - R + 1 feature rows: the logits, and so
the loss and its gradients, are those of per-window training on the same windows and weights,
up to float re-association (tests/test_causal.py).

Exceptions to "the same": BatchNorm in train mode normalises with the batch's statistics,
here over the chunk's rows (each row once) rather than over the batch's windows (each row as
often as windows hold it); in eval mode the two agree. Dropout draws the same masks only when
the random state and the head's input shape are the same.

A chunk is the rows ``[first_end - T + 1, last_end]`` of windows sorted by end. A new chunk
starts where a window shares no row with the previous one (ends T or more apart: a stream or
split-part boundary, since every stream's first window ends T - 1 rows into it, or a sparse
subset, whose rows in between would be computed for nothing) and where the chunk would pass
``chunk_rows`` rows. Validity never depends on that rule: causal features of a window's rows
read only the window's rows, so even a chunk over a boundary gives every window its own
logits; the rule only avoids computing rows no window uses.

One optimizer step per ``chunks_per_step`` chunks (``TrainConfig``), run as one sequence. A
chunk's windows overlap almost entirely and their labels mostly agree, so a chunk of 29
windows carries little more than one random window does: a step needs chunks from many places
of the day (32 by default), and shuffling the chunks decorrelates successive steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # train imports this module; the type alone is needed here
    from lobstream.models.train import Windows


def is_causal(model: nn.Module) -> bool:
    """Whether ``model`` offers the causal interface (``causal = True``)."""
    return bool(getattr(model, "causal", False))


@dataclass(frozen=True)
class Chunk:
    """Windows sharing one stretch of rows.

    ``start``/``stop``: input rows ``start .. stop - 1`` (first window's end - T + 1 to the
    last window's end). ``windows``: (N,) int64 indices into the ``Windows``. ``offsets``:
    (N,) int64 window end - first window end, the index of the window's first feature row in
    the chunk's features.
    """

    start: int
    stop: int
    windows: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def first(self, k: int) -> Chunk:
        """The chunk of its first ``k`` windows (by end), over only the rows they need."""
        window = self.stop - self.start - int(self.offsets[-1])  # T
        return Chunk(
            self.start, self.start + int(self.offsets[k - 1]) + window,
            self.windows[:k], self.offsets[:k],
        )  # fmt: skip


def plan_chunks(windows: Windows, chunk_rows: int) -> list[Chunk]:
    """Every window of ``windows`` in exactly one chunk of at most ``max(chunk_rows, T)`` rows.

    Chunks come in row order; windows inside a chunk in order of their end.
    """
    t = windows.window
    order = np.argsort(windows.ends, kind="stable")
    ends = windows.ends[order]
    n = len(ends)
    chunks: list[Chunk] = []
    a = 0
    for i in range(1, n + 1):
        if i == n or ends[i] - ends[i - 1] >= t or ends[i] - ends[a] + t > chunk_rows:
            e0 = int(ends[a])
            chunks.append(Chunk(e0 - t + 1, int(ends[i - 1]) + 1, order[a:i], ends[a:i] - e0))
            a = i
    return chunks


def epoch_chunks(
    chunks: list[Chunk], rng: np.random.Generator, max_windows: int | None = None
) -> list[Chunk]:
    """A shuffled order of ``chunks``, cut after ``max_windows`` windows (the last one cut
    short), so an epoch trains on exactly that many windows as per-window training does."""
    out: list[Chunk] = []
    total = 0
    for c in rng.permutation(len(chunks)):
        ch = chunks[c]
        if max_windows is not None and total + len(ch) >= max_windows:
            out.append(ch.first(max_windows - total))
            break
        out.append(ch)
        total += len(ch)
    return out


def window_features(feats: torch.Tensor, offsets: torch.Tensor, n: int) -> torch.Tensor:
    """Each window's ``n`` feature rows: feats (M', C), offsets (N,) -> (N, n, C), a gather."""
    idx = offsets[:, None] + torch.arange(n, device=feats.device)  # (N, n)
    return feats[idx]  # (N, n, C)


def chunk_logits(
    model: nn.Module,
    rows: np.ndarray,
    chunks: Chunk | list[Chunk],
    window: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits (N, 3 H) of the chunks' windows (in chunk order): ``row_features`` once, ``head``
    per window.

    Several chunks run as one sequence, their rows end to end: a window's features read only
    its own rows, so the features at a seam (which mix two chunks) are never used.
    """
    chunks = [chunks] if isinstance(chunks, Chunk) else chunks
    starts = np.cumsum([0] + [c.stop - c.start for c in chunks])  # chunk k's first row
    x = np.concatenate([rows[c.start : c.stop] for c in chunks])  # (M, F), a copy
    offsets = np.concatenate([c.offsets + s for c, s in zip(chunks, starts, strict=False)])
    feats = model.row_features(torch.from_numpy(x).to(device)[None, None])[0]  # (M - R + 1, C)
    idx = torch.from_numpy(offsets).to(device)
    return model.head(window_features(feats, idx, window - model.receptive_field + 1))


def chunk_windows(chunks: list[Chunk]) -> np.ndarray:
    """Window indices of ``chunk_logits(..., chunks, ...)``'s rows, in that order."""
    return np.concatenate([c.windows for c in chunks])


@torch.no_grad()
def predict_sequence(
    model: nn.Module,
    windows: Windows,
    *,
    chunk_rows: int = 4096,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Softmax probabilities (N, 3) float32 of every window, in ``windows`` order ((N, H, 3)
    for a model of H heads, see :mod:`lobstream.models.heads`).

    Equal to per-window prediction up to float re-association. The model is put in eval mode.
    """
    from lobstream.models.heads import model_heads, out_shape, softmax_heads

    device = torch.device(device)
    model.eval()
    heads = model_heads(model)
    probs = np.empty((len(windows), *out_shape(heads)), dtype=np.float32)
    for ch in plan_chunks(windows, chunk_rows):
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = chunk_logits(model, windows.rows, ch, windows.window, device)
        probs[ch.windows] = softmax_heads(logits.float(), heads).cpu().numpy()
    return probs
