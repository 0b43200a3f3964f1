"""A market with a planted, known predictive structure: the benchmark that deep models learn.

One instrument, a book of exactly ``levels`` levels per side at every tick from the touch out,
the spread always two ticks (so the mid is a whole tick). Every packet of events leaves one
consistent book (LAST on its final event), so every packet is one feature row. A row's packet:

1. the move decided at the previous row: up or down one tick (both sides shift; the queue
   that was the touch of the retreating side is deleted, a new touch queue appears on the
   other, one level is added and one dropped at the far ends), or none;
2. size updates that keep every price: each touch queue is resampled with chance ``p_touch``
   (the order flow at the touch), each deeper level with chance ``p_deep`` (the book's
   shape). Sizes are log-uniform on [1, 200].

After the packet the generator reads its own book, which is exactly what the consumer's book
holds, and draws the next move: down / flat / up with probabilities ``softmax(-z, gamma, z)``,
``z = beta * score``. The score reads only this row and the row ``lag`` rows back, so every
window of ``T > lag`` rows ending at this row holds all it depends on:

- ``"linear"``: ``0.7 I1 + 0.3 I2``, ``Ik`` the size imbalance ``(bid - ask) / (bid + ask)`` of
  level k, the features of the logistic baseline (:mod:`lobstream.models.baselines`), in which
  the decision's log-odds are linear;
- ``"nonlinear"``: ``tanh(S / 0.3) * tanh(D / 0.5)``, ``S`` the imbalance of levels 2..5
  together (the shape of the queues behind the touch), ``D = I1(t) - I1(t - lag)`` (the recent
  flow at the touch). Either alone says nothing of the direction; their product does.

The label this planted structure drives is the leak-free ``future`` label at horizon one event
(:mod:`lobstream.kernels.labels`): the next row's mid against this row's, which is exactly the
move decided here, with any alpha in ``(0, 1 / mid)`` (:data:`LABEL_ALPHA`). So ``probs`` are
the true class probabilities of each row's label given everything observable at the row, and
the Bayes classifier (their argmax) is the ceiling of any model's score on the same windows.
Horizons ``k > 1`` would average moves decided at later rows, whose books the window does not
hold yet, and the planted probabilities would no longer be the label's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.replay.feed.synthetic.planted_kernel import (
    SIGNAL_LINEAR,
    SIGNAL_NONLINEAR,
    generate_planted,
)

START_TS = 1_750_000_000_000_000_000  # 2025-06-15, ns since the epoch
SIGNALS = {"linear": SIGNAL_LINEAR, "nonlinear": SIGNAL_NONLINEAR}
LABEL_HORIZON = 1  # events: the label the planted probabilities are those of
LABEL_ALPHA = 1e-7  # any threshold below one tick relative to the mid
# the default strength of each signal (Bayes macro-F1 well above majority, well below 1)
DEFAULT_BETA = {"linear": 3.0, "nonlinear": 4.0}
DEFAULT_GAMMA = 0.8  # flat then holds about a third of the linear market's labels
SCALE_SHAPE, SCALE_FLOW = 0.3, 0.5


@dataclass(frozen=True)
class PlantedMarket:
    """Events and, per feature row, what the generator knows about the row's label.

    ``events``: (n,) EVENT_DTYPE, one instrument (id 0). ``probs``: (rows, 3) float64, the
    true probabilities of down / flat / up for the row's next mid move. ``row_event``:
    (rows,) int64, the index in ``events`` of the event that completes each row: what
    ``ROW_META_DTYPE['event_index']`` holds when the events are read as one batch.
    """

    events: np.ndarray
    probs: np.ndarray
    row_event: np.ndarray
    signal: str
    beta: float
    gamma: float
    lag: int

    def oracle(self, event_index: np.ndarray) -> np.ndarray:
        """The planted probabilities (N, 3) of the rows completed by ``event_index``."""
        pos = np.searchsorted(self.row_event, event_index)
        if np.any(pos >= len(self.row_event)) or np.any(self.row_event[pos] != event_index):
            raise ValueError("event_index holds events that complete no row of this market")
        return self.probs[pos]


def planted_events(
    n_rows: int,
    signal: str = "nonlinear",
    seed: int = 0,
    *,
    levels: int = 10,
    beta: float | None = None,
    gamma: float = DEFAULT_GAMMA,
    lag: int = 5,
    p_touch: float = 0.5,
    p_deep: float = 0.1,
    start_mid: int = 100_000,
    dt_ns: int = 1_000,
) -> PlantedMarket:
    """A planted-signal market of ``n_rows`` feature rows (see the module docstring).

    Parameters
    ----------
    n_rows : int
        Rows (packets); the first is the opening snapshot.
    signal : {"linear", "nonlinear"}
    seed : int
        Same arguments and seed, same arrays, on every run.
    levels : int
        Levels per side (>= 5: the nonlinear shape reads levels 2..5).
    beta : float, optional
        Strength of the signal (``DEFAULT_BETA`` of the signal when None).
    gamma : float
        Log-odds of flat against a move when the score is 0.
    lag : int
        Rows back of the flow ``I1(t) - I1(t - lag)``; windows need ``T > lag``.
    p_touch, p_deep : float
        Chance per row that a touch queue / a deeper level is resampled.
    start_mid : int
        First mid in ticks (the mid walks one tick per move; keep it far from 0).
    dt_ns : int
        Mean nanoseconds between events.
    """
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")
    if n_rows < 1:
        raise ValueError(f"need n_rows >= 1, got {n_rows}")
    if levels < 5:
        raise ValueError(f"need levels >= 5 (the shape reads levels 2..5), got {levels}")
    if lag < 1:
        raise ValueError(f"need lag >= 1, got {lag}")
    for name, p in (("p_touch", p_touch), ("p_deep", p_deep)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if start_mid <= levels + 1 + 20 * int(np.sqrt(n_rows)) or start_mid >= 1 / LABEL_ALPHA:
        # 20 standard deviations of the walk: the mid stays positive, and one tick stays
        # above LABEL_ALPHA relative to it
        raise ValueError(
            f"start_mid {start_mid} must lie in ({levels + 1 + 20 * int(np.sqrt(n_rows))}, "
            f"{int(1 / LABEL_ALPHA)}) for {n_rows} rows"
        )
    b = DEFAULT_BETA[signal] if beta is None else float(beta)
    per_row = 4 + 2 * levels + 1  # a move, every level resampled, or the one forced update
    events = np.zeros(1 + 2 * levels + n_rows * per_row, EVENT_DTYPE)
    probs = np.zeros((n_rows, 3), np.float64)
    row_event = np.zeros(n_rows, np.int64)
    m = generate_planted(
        events, probs, row_event, int(n_rows), int(seed), int(levels), SIGNALS[signal], b,
        float(gamma), int(lag), float(p_touch), float(p_deep), int(start_mid), float(dt_ns),
        START_TS, SCALE_SHAPE, SCALE_FLOW,
    )  # fmt: skip
    return PlantedMarket(events[:m].copy(), probs, row_event, signal, b, float(gamma), int(lag))


def _imbalance(raw: np.ndarray, lo: int, hi: int) -> np.ndarray:
    ask = raw[:, 4 * lo + 1 : 4 * hi : 4].astype(np.float64).sum(axis=1)
    bid = raw[:, 4 * lo + 3 : 4 * hi : 4].astype(np.float64).sum(axis=1)
    return (bid - ask) / (bid + ask)


def probs_from_rows(
    raw: np.ndarray, ends: np.ndarray, signal: str, beta: float, gamma: float, lag: int
) -> np.ndarray:
    """The planted probabilities (N, 3) recomputed from RAW feature rows (``FEATURE_RAW``) of
    the window ending at each of ``ends``: rows ``end`` and ``end - lag`` only.

    What a consumer can compute from a window: equal to :attr:`PlantedMarket.probs` of those
    rows (tests check it), which shows the planted probabilities use nothing the window lacks.
    """
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size and ends.min() < lag:
        raise ValueError(f"every window end must be >= lag={lag}")
    now, back = raw[ends], raw[ends - lag]
    if signal == "linear":
        score = 0.7 * _imbalance(now, 0, 1) + 0.3 * _imbalance(now, 1, 2)
    elif signal == "nonlinear":
        flow = _imbalance(now, 0, 1) - _imbalance(back, 0, 1)
        score = np.tanh(_imbalance(now, 1, 5) / SCALE_SHAPE) * np.tanh(flow / SCALE_FLOW)
    else:
        raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")
    z = beta * score
    logits = np.stack([-z, np.full_like(z, gamma), z], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
