"""Decimal strings -> exact integers (fixed-point and integer ticks), in bulk.

Exchanges send prices as decimal strings ("61837.63000000"). Going through float would round
(0.1 has no exact binary form), so strings are parsed digit by digit into int64 fixed-point
numbers with ``scale`` decimals, then divided by the tick size in the same units, refusing
any price that is off the tick grid. Sizes are converted from the same fixed-point integers
to float64 (one correctly rounded division).

Parsing runs in one Numba kernel (:func:`parse_fields`) over the strings joined by newlines (one
C-level join), so a batch of a million levels costs one call, not a million ``Decimal`` objects.
A field that is not a number gets a status code instead of a value (the kernel counts
conditions, never raises); :func:`parse_fixed` does the string handling around it (joining,
re-trying a field that holds a newline).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from lobstream.kernels._jit import njit

MAX_SCALE = 12

# Status codes written per field.
OK = 0
EMPTY = 1  # empty or blank field
NOT_NUMBER = 2  # a character that is not a digit, sign or one decimal point
TOO_PRECISE = 3  # non-zero digits beyond ``scale`` decimals
OVERFLOW = 4  # does not fit int64 at this scale
STATUS_NAMES = ("ok", "empty", "non_numeric", "too_precise", "overflow")

_INT64_LIMIT = 922337203685477580  # (2**63 - 1) // 10, the last safe value before a * 10


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


@njit
def parse_fields(buf, n, scale, out, status):
    """Parse ``n`` newline-separated ASCII fields of ``buf`` (uint8) into int64 with ``scale``
    decimals.

    Writes ``out`` (n,) int64 and ``status`` (n,) uint8 in place; returns the largest number
    of significant decimals seen (trailing zeros ignored), for tick inference, or -1 if ``buf``
    does not hold exactly ``n`` fields.
    """
    w = buf.shape[0]
    max_dec = 0
    j = 0
    for i in range(n):
        if j > w:
            return -1
        val = 0
        neg = False
        seen_digit = False
        seen_point = False
        dec = 0  # decimals consumed into val
        sig_dec = 0  # position of the last non-zero decimal
        st = 0
        while j < w and (buf[j] == 32 or buf[j] == 9):
            j += 1
        if j < w and (buf[j] == 45 or buf[j] == 43):
            neg = buf[j] == 45
            j += 1
        while j < w and buf[j] != 10:
            c = buf[j]
            if st != OK:
                pass  # skip to the end of a bad field
            elif c == 46:
                if seen_point:
                    st = NOT_NUMBER
                seen_point = True
            elif 48 <= c <= 57:
                seen_digit = True
                d = c - 48
                if seen_point:
                    if dec < scale:
                        dec += 1
                        if val > _INT64_LIMIT:
                            st = OVERFLOW
                        val = val * 10 + d
                        if d != 0:
                            sig_dec = dec
                    elif d != 0:
                        st = TOO_PRECISE
                else:
                    if val > _INT64_LIMIT:
                        st = OVERFLOW
                    val = val * 10 + d
            elif c == 32 or c == 9 or c == 13:
                # trailing blanks only
                k = j
                while k < w and buf[k] != 10:
                    if buf[k] != 32 and buf[k] != 9 and buf[k] != 13:
                        st = NOT_NUMBER
                    k += 1
                j = k - 1
            else:
                st = NOT_NUMBER
            j += 1
        j += 1  # the separator
        if st == OK and not seen_digit:
            st = EMPTY if not (neg or seen_point) else NOT_NUMBER
        if st == OK:
            while dec < scale:
                if val > _INT64_LIMIT:
                    st = OVERFLOW
                    break
                val *= 10
                dec += 1
        if st != OK:
            out[i] = 0
            status[i] = st
            continue
        out[i] = -val if neg else val
        status[i] = OK
        if sig_dec > max_dec:
            max_dec = sig_dec
    if j < w:
        return -1
    return max_dec
