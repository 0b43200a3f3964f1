"""Bid/ask mirror augmentation: the book seen upside down.

Reflect every price through a constant (``p -> P - p``) and swap the two sides: the best bid
becomes the best ask, a rising mid a falling one. Nothing in a limit-order book prefers one
side, so the mirrored day is as plausible as the real one and its label is the real label with
down and up swapped. Training on both doubles the rows and removes any up/down bias the one
day's drift would teach.

On ``ticks_from_mid`` rows the reflection is exact: a level's feature is its price in ticks
from the mid, so the mirrored row's ask level ``i`` is the real bid level ``i`` with its sign
flipped (and its size), and the other way round; the constant ``P`` drops out. Negation is
exact in float32, so :func:`mirror_rows` is an exact involution. Z-scored rows depend on the
absolute price level and have no such mirror (``P`` would have to be chosen and the statistics
refitted), so they are refused.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels.dtypes import ACTION_CLEAR, SIDE_ASK, SIDE_BID

# classes are (down, flat, up): the mirror swaps the outer two
_FLIP = np.array([2, 1, 0], dtype=np.int8)


def mirror_rows(rows: np.ndarray) -> np.ndarray:
    """The mirrored feature rows (a new array) of ``ticks_from_mid`` rows (M, 4 L).

    Per level the row holds (ask px, ask sz, bid px, bid sz); the mirror is
    (-bid px, bid sz, -ask px, ask sz).
    """
    if rows.ndim != 2 or rows.shape[1] % 4:
        raise ValueError(f"rows must be (M, 4 L), got shape {rows.shape}")
    lv = rows.reshape(rows.shape[0], -1, 4)
    out = np.empty_like(lv)
    out[:, :, 0] = -lv[:, :, 2]
    out[:, :, 1] = lv[:, :, 3]
    out[:, :, 2] = -lv[:, :, 0]
    out[:, :, 3] = lv[:, :, 1]
    return out.reshape(rows.shape)


def mirror_labels(labels: np.ndarray) -> np.ndarray:
    """Labels (any shape, classes 0 down, 1 flat, 2 up) with down and up swapped."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 2):
        raise ValueError("labels must be classes 0, 1, 2")
    return _FLIP[labels.astype(np.int64)].astype(labels.dtype)


def mirror_events(events: np.ndarray, pivot: int) -> np.ndarray:
    """The events of the mirrored market (a copy): prices ``pivot - price`` and bid and ask
    swapped on every event but a clear. ``pivot`` must exceed every price so that mirrored
    prices stay positive ticks."""
    out = events.copy()
    if len(out) and int(out["price"].max()) >= pivot:
        raise ValueError(f"pivot {pivot} must exceed the largest price {int(out['price'].max())}")
    priced = out["action"] != ACTION_CLEAR  # a clear carries no price
    out["price"] = np.where(priced, pivot - out["price"], out["price"])
    sides = out["side"]
    out["side"] = np.where(
        sides == SIDE_BID, SIDE_ASK, np.where(sides == SIDE_ASK, SIDE_BID, sides)
    ).astype(sides.dtype)
    return out


def with_mirror(train):
    """Training windows plus their mirror: the rows (M, F) become (2 M, F), the mirrored
    window of ``end`` ends at ``M + end`` with the flipped label. Windows never straddle the
    two halves (a window's rows lie in one stream, and the streams of the mirrored half start
    ``M`` rows later), and sequence-training chunks break there (ends jump by at least T)."""
    from lobstream.models.train import Windows

    m = train.rows.shape[0]
    rows = np.concatenate([train.rows, mirror_rows(train.rows)])
    ends = np.concatenate([train.ends, train.ends + m])
    labels = np.concatenate([train.labels, mirror_labels(train.labels)])
    return Windows(rows, ends, labels, train.window)
