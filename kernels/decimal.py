"""Decimal ASCII fields -> exact int64 fixed-point numbers, one pass over a byte buffer.

Going through float would round (0.1 has no exact binary form), so fields are read digit by
digit into integers with ``scale`` decimals; a field that is not such a number gets a status
code instead of a value (kernels count conditions, never raise). The string handling around
it (joining, re-trying a field that holds a newline) is
:func:`lobstream.replay.readers._decimal.parse_fixed`.
"""

from __future__ import annotations

from lobstream.kernels._jit import njit

# Status codes written per field.
OK = 0
EMPTY = 1  # empty or blank field
NOT_NUMBER = 2  # a character that is not a digit, sign or one decimal point
TOO_PRECISE = 3  # non-zero digits beyond ``scale`` decimals
OVERFLOW = 4  # does not fit int64 at this scale
STATUS_NAMES = ("ok", "empty", "non_numeric", "too_precise", "overflow")


_INT64_LIMIT = 922337203685477580  # (2**63 - 1) // 10, the last safe value before a * 10


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
