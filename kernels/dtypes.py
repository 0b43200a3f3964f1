"""Every record layout of lobstream, defined once.

The canonical event (DESIGN.md contract 1) is what every source produces and every kernel
consumes; the signal record is what the daemon publishes (contract 4). Both are aligned numpy
structured dtypes so that the raw bytes of an array are the wire format and Numba can read the
fields without copies.
"""

from __future__ import annotations

import numpy as np

# --- the canonical event ------------------------------------------------------------------
EVENT_DTYPE = np.dtype(
    [
        ("ts_event", "<i8"),  # exchange time, ns since the Unix epoch (UTC)
        ("ts_recv", "<i8"),  # time.monotonic_ns() of the feed handler / replayer; 0 = unknown
        ("seq", "<u8"),  # per-instrument sequence, contiguous; 0 = not sequenced
        ("price", "<i8"),  # integer ticks of the instrument's tick size
        ("size", "<f8"),  # resting size at that price after the update; 0 removes the level
        ("instrument", "<u4"),  # id from the instrument registry
        ("side", "u1"),  # SIDE_BID / SIDE_ASK
        ("action", "u1"),  # ACTION_*
        ("flags", "u1"),  # FLAG_* bits
    ],
    align=True,
)

SIDE_BID = 0
SIDE_ASK = 1

ACTION_UPDATE = 0  # set the resting size at a price level
ACTION_CLEAR = 1  # empty the instrument's book; a snapshot follows
ACTION_TRADE = 2  # a trade print; not part of the book

FLAG_LAST = 1  # the book is consistent after this event: a feature row may be written
FLAG_SNAPSHOT = 2  # the event is part of a snapshot (heals a stale instrument on LAST)

# --- condition codes reported by kernels --------------------------------------------------
# Kernels never raise or log: they count conditions into an int64 array indexed by these
# codes, and the Python layer decides whether a condition is an error, a warning or routine.
CODE_CROSSED = 0  # best bid >= best ask after an event with LAST set
CODE_OUT_OF_RANGE = 1  # price outside the book's tick window: re-centred or the level dropped
CODE_SEQ_GAP = 2  # seq not previous + 1 (both non-zero)
CODE_STALE_SKIPPED = 3  # event for a stale instrument ignored until a snapshot heals it
CODE_BAD_INSTRUMENT = 4  # instrument id >= number of instruments in the state
CODE_BAD_EVENT = 5  # unknown side or action, price <= 0, size < 0 or not finite
CODE_EMPTY_BOOK = 6  # LAST on a book with an empty side: no feature row written
CODE_RECENTRED = 7  # the tick window moved to follow the market
CODE_DROPPED_LEVELS = 8  # resting levels lost off the edge of the window by a re-centre
CODE_TIME_BACKWARDS = 9  # ts_event earlier than the instrument's previous event: dropped
N_CODES = 10

CODE_NAMES = (
    "crossed",
    "out_of_range",
    "seq_gap",
    "stale_skipped",
    "bad_instrument",
    "bad_event",
    "empty_book",
    "recentred",
    "dropped_levels",
    "time_backwards",
)
assert len(CODE_NAMES) == N_CODES

# --- the signal record (contract 4, "signals out") ----------------------------------------
SIGNAL_DTYPE = np.dtype(
    [
        ("instrument", "<u4"),
        ("model_id", "<u4"),  # first 4 bytes of the artifact's SHA-256, as an integer
        ("seq", "<u8"),  # seq of the newest event in the window
        ("ts_event", "<i8"),  # ts_event of the newest event in the window
        ("ts_recv", "<i8"),  # ts_recv of the newest event in the window (monotonic ns)
        ("ts_publish", "<i8"),  # time.monotonic_ns() when the signal was sent
        ("prob", "<f4", (3,)),  # down, flat, up
        ("pred", "u1"),  # argmax of prob: 0 down, 1 flat, 2 up
    ],
    align=True,
)

# --- signal record, version 2: multi-horizon artifacts (models.heads) -----------------------
# The first 53 bytes are SIGNAL_DTYPE's, fields and offsets alike (``prob``/``pred`` are the
# primary head's), and ``version`` sits on v1's first padding byte, which v1 sends as 0: a
# decoder tells the two apart by that byte. v1 stays the record of single-head artifacts.
MAX_HEADS = 4
SIGNAL_VERSION = 2
HORIZON_EVENTS, HORIZON_SECONDS = 0, 1  # ``horizon_unit`` codes
SIGNAL_V2_DTYPE = np.dtype(
    [
        ("instrument", "<u4"),
        ("model_id", "<u4"),
        ("seq", "<u8"),
        ("ts_event", "<i8"),
        ("ts_recv", "<i8"),
        ("ts_publish", "<i8"),
        ("prob", "<f4", (3,)),  # the primary head's (head 0)
        ("pred", "u1"),
        ("version", "u1"),  # SIGNAL_VERSION; 0 in a v1 record
        ("n_heads", "u1"),  # heads in use, 2 .. MAX_HEADS
        ("horizon_unit", "u1"),  # HORIZON_EVENTS or HORIZON_SECONDS, every head's
        ("horizon", "<f4", (MAX_HEADS,)),  # label horizon of each head; 0 past n_heads
        ("head_prob", "<f4", (MAX_HEADS, 3)),  # down, flat, up per head; 0 past n_heads
        ("head_pred", "u1", (MAX_HEADS,)),
    ],
    align=True,
)
VERSION_OFFSET = SIGNAL_V2_DTYPE.fields["version"][1]

CLASS_NAMES = ("down", "flat", "up")

# --- row metadata: what is known about each written feature row ---------------------------
ROW_META_DTYPE = np.dtype(
    [
        ("ts_event", "<i8"),  # of the event (with LAST) that completed the row
        ("ts_recv", "<i8"),
        ("seq", "<u8"),
        ("event_index", "<i8"),  # index of that event in the batch it came in
        ("best_bid", "<i8"),  # ticks; the touch, for labels and trading simulation
        ("best_ask", "<i8"),
        ("mid", "<f8"),  # (best_bid + best_ask) / 2 in ticks
        ("instrument", "<u4"),
    ],
    align=True,
)

FEATURE_ZSCORE = 0  # params: price_mean, price_std (ticks), size_mean, size_std
FEATURE_TICKS_FROM_MID = 1  # params: price_scale (ticks per unit); sizes as log1p(size)
FEATURE_RAW = 2  # prices in ticks, sizes as they are (for statistics and baselines)
FEATURE_KIND_NAMES = ("zscore", "ticks_from_mid", "raw")

# --- feature rows (contract 2) ------------------------------------------------------------
DEFAULT_LEVELS = 10
DEFAULT_WINDOW = 100


def n_features(levels: int) -> int:
    """Width F of a feature row for ``levels`` levels per side (ask px, ask sz, bid px, bid sz)."""
    return 4 * levels
