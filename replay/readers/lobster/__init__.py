"""LOBSTER message + orderbook files -> canonical event batches.

The reader (``reader.py``: file pairs, names, validation, the rules for levels that leave the
top N) drives its Numba parse and diff kernels (``kernel.py``). This package exposes the
reader's public API; the format and the rules are documented in
:mod:`lobstream.replay.readers.lobster.reader`.
"""

from lobstream.replay.readers.lobster.reader import (
    CHUNK_ROWS,
    DEFAULT_SCALE,
    DEFAULT_TICK,
    DUMMY_ASK,
    DUMMY_BID,
    EXCHANGE_TZ,
    FORMAT,
    HIDDEN_CAPACITY,
    LobsterName,
    detect,
    format_problems,
    midnight_ns,
    orderbook_problems,
    pair_paths,
    parse_name,
    read,
    validate_messages,
    warm_up,
)

__all__ = [
    "CHUNK_ROWS",
    "DEFAULT_SCALE",
    "DEFAULT_TICK",
    "DUMMY_ASK",
    "DUMMY_BID",
    "EXCHANGE_TZ",
    "FORMAT",
    "HIDDEN_CAPACITY",
    "LobsterName",
    "detect",
    "format_problems",
    "midnight_ns",
    "orderbook_problems",
    "pair_paths",
    "parse_name",
    "read",
    "validate_messages",
    "warm_up",
]
