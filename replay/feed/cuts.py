"""Where to cut a batch of events into wire messages (the replayer's packing rule).

:func:`message_cuts` allocates the output and calls the kernel :func:`cut_messages`, whose
docstring states the rule (:mod:`lobstream.replay.feed.replayer`'s docstring says why).
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import FLAG_LAST


def message_cuts(events: np.ndarray, max_events: int, max_span_ns: int) -> np.ndarray:
    """Message end indices for ``events`` (n,) EVENT_DTYPE (the rule: :func:`cut_messages`)."""
    cuts = np.empty(2 * len(events) + 1, np.int64)
    m = cut_messages(
        events["ts_event"], events["flags"], events["instrument"], max_events, max_span_ns, cuts
    )
    return cuts[:m]


@njit
def cut_messages(ts, flags, instrument, max_events, max_span, cuts):
    """End indices of the messages of one batch, written to ``cuts``; returns how many.

    A message: consecutive events of one instrument, cut only after a LAST event (or at an
    instrument change, or at the end), holding whole LAST groups up to ``max_events`` events
    (a longer group alone) whose ``ts_event`` lies within ``max_span`` ns of the first one.
    """
    n = ts.shape[0]
    m = 0
    start = 0
    pending = 0  # end of the last whole group in the current message (== start: none yet)
    for i in range(n):
        if i > start and instrument[i] != instrument[i - 1]:
            if pending > start and pending < i:
                cuts[m] = pending
                m += 1
            cuts[m] = i
            m += 1
            start = i
            pending = i
        if (flags[i] & FLAG_LAST) or i == n - 1:
            if pending > start and (
                i + 1 - start > max_events or ts[pending] - ts[start] > max_span
            ):
                cuts[m] = pending
                m += 1
                start = pending
            pending = i + 1
    if n > 0:
        cuts[m] = n
        m += 1
    return m
