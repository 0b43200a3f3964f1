"""Decimal strings -> exact integers (fixed-point and integer ticks), in bulk.

Exchanges send prices as decimal strings ("61837.63000000"). Going through float would round
(0.1 has no exact binary form), so strings are parsed digit by digit into int64 fixed-point
numbers with ``scale`` decimals, then divided by the tick size in the same units, refusing
any price that is off the tick grid. Sizes are converted from the same fixed-point integers
to float64 (one correctly rounded division).

Parsing runs in one Numba kernel (:func:`lobstream.kernels.decimal.parse_fields`, which also
defines the status codes) over the strings joined by newlines (one C-level join), so a batch of
a million levels costs one call, not a million ``Decimal`` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from lobstream.kernels.decimal import parse_fields

MAX_SCALE = 12


def _text_list(strings: Sequence[str] | np.ndarray) -> list[str]:
    if isinstance(strings, np.ndarray):
        if strings.dtype.kind == "S":
            return [s.decode("ascii", "replace") for s in strings.tolist()]
        strings = strings.tolist()
    return [s if isinstance(s, str) else "?" for s in strings]


def parse_fixed(
    strings: Sequence[str] | np.ndarray, scale: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse decimal strings into int64 fixed-point numbers with ``scale`` decimals.

    Parameters
    ----------
    strings : sequence of str, or ndarray (n,) of str/bytes/object
        Non-strings (e.g. JSON numbers or nulls) are reported ``NOT_NUMBER``.
    scale : int
        Decimals kept, 0..12; a string with non-zero digits beyond them gets ``TOO_PRECISE``.

    Returns
    -------
    values : ndarray (n,) int64
        ``x * 10**scale``, exact; 0 where ``status`` is not OK.
    status : ndarray (n,) uint8
        ``OK`` or the reason the string is not a number (``STATUS_NAMES``).
    max_decimals : int
        Largest number of significant decimals among the valid strings.
    """
    if not 0 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be within 0..{MAX_SCALE}, got {scale}")
    if not isinstance(strings, list) or (strings and not isinstance(strings[0], str)):
        strings = _text_list(strings)
    n = len(strings)
    out = np.empty(n, np.int64)
    status = np.empty(n, np.uint8)
    if n == 0:
        return out, status, 0
    # one C-level join, then one kernel pass; a field holding a newline breaks the split and
    # is caught by the field count
    try:
        buf = np.frombuffer("\n".join(strings).encode("ascii", "replace"), np.uint8)
    except TypeError:
        strings = _text_list(strings)
        buf = np.frombuffer("\n".join(strings).encode("ascii", "replace"), np.uint8)
    max_dec = parse_fields(buf, np.int64(n), np.int64(scale), out, status)
    if max_dec < 0:
        clean = [s.replace("\n", "?").replace("\r", "?") for s in strings]
        buf = np.frombuffer("\n".join(clean).encode("ascii", "replace"), np.uint8)
        max_dec = parse_fields(buf, np.int64(n), np.int64(scale), out, status)
    return out, status, int(max_dec)


def tick_units(tick: Decimal, scale: int) -> int:
    """The tick size as an integer number of ``10**-scale`` units; refuses a finer tick."""
    units = tick.scaleb(scale)
    if units != units.to_integral_value() or units <= 0:
        raise ValueError(
            f"tick size {tick} is finer than {scale} decimals; the reader cannot represent it"
        )
    return int(units)


def max_decimals(values: np.ndarray, scale: int, default: int = 2) -> int:
    """Largest number of significant decimals among fixed-point ``values`` at ``scale``
    (``default`` when there are none), for inferring a tick size."""
    if values.size == 0:
        return default
    for d in range(scale + 1):
        if np.all(values % (10 ** (scale - d)) == 0):
            return d
    return scale


def infer_tick(max_decimals: int) -> Decimal:
    """The coarsest tick consistent with prices of ``max_decimals`` significant decimals."""
    return Decimal(1).scaleb(-max_decimals)


def fixed_to_float(values: np.ndarray, scale: int) -> np.ndarray:
    """Fixed-point int64 -> float64 (one correctly rounded division per value)."""
    return values.astype(np.float64) / float(10**scale)
