"""Signal encodings on the wire (contract 4, "signals out"): binary records and JSON.

A signal message is ``[b"sig.<symbol>", payload]``. Binary payloads are the raw little-endian
bytes of a ``SIGNAL_DTYPE`` array (one record per message from the daemon, but decoders accept
any whole number of records). JSON payloads are one UTF-8 object per message with the same
field names; ``prob`` is a list ``[down, flat, up]`` and ``symbol`` is added for readability::

    {"symbol": "GOOG", "instrument": 0, "model_id": 3735928559, "seq": 1042,
     "ts_event": 1340285400004000000, "ts_recv": 81234567890, "ts_publish": 81234601234,
     "prob": [0.1, 0.7, 0.2], "pred": 1}

The status heartbeat, ``[b"<status_topic>", json]``, is always JSON.
"""

from __future__ import annotations

import json

import numpy as np

from lobstream.kernels.dtypes import SIGNAL_DTYPE

SIGNAL_TOPIC_PREFIX = b"sig."
ENCODINGS = ("binary", "json")
_INT_FIELDS = ("instrument", "model_id", "seq", "ts_event", "ts_recv", "ts_publish", "pred")


def signal_topic(symbol: str) -> bytes:
    """The topic of ``symbol``'s signals, ``b"sig.<symbol>"``."""
    return SIGNAL_TOPIC_PREFIX + symbol.encode()


def encode_binary(records: np.ndarray) -> bytes:
    """Binary payload of ``records``.

    Parameters
    ----------
    records : ndarray (n,) SIGNAL_DTYPE
        Not modified.
    """
    if records.dtype != SIGNAL_DTYPE:
        raise TypeError(f"expected SIGNAL_DTYPE records, got dtype {records.dtype}")
    return np.ascontiguousarray(records).tobytes()


def encode_json(record: np.void | np.ndarray, symbol: str) -> bytes:
    """JSON payload of one signal record (a ``SIGNAL_DTYPE`` scalar or a 1-element array)."""
    rec = record[0] if isinstance(record, np.ndarray) else record
    obj: dict = {"symbol": symbol}
    for name in _INT_FIELDS:
        obj[name] = int(rec[name])
    obj["prob"] = [float(p) for p in rec["prob"]]
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_binary(payload: bytes | memoryview) -> np.ndarray:
    """Records from a binary payload.

    Returns
    -------
    ndarray (n,) SIGNAL_DTYPE
        A read-only view on ``payload`` (copy it to keep it beyond the message).

    Raises
    ------
    ValueError
        When the payload length is not a whole number of records.
    """
    n = len(payload)
    if n == 0 or n % SIGNAL_DTYPE.itemsize:
        raise ValueError(
            f"signal payload of {n} bytes is not a whole number of {SIGNAL_DTYPE.itemsize}-byte "
            "SIGNAL_DTYPE records; is the daemon publishing JSON (encoding = 'json')?"
        )
    return np.frombuffer(payload, dtype=SIGNAL_DTYPE)


def decode_json(payload: bytes | memoryview) -> np.ndarray:
    """A 1-record ``SIGNAL_DTYPE`` array from a JSON payload (the ``symbol`` key is dropped)."""
    try:
        obj = json.loads(bytes(payload))
        out = np.zeros(1, dtype=SIGNAL_DTYPE)
        for name in _INT_FIELDS:
            out[name] = obj[name]
        out["prob"][0] = obj["prob"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"not a JSON signal: {exc}; expected keys {list(_INT_FIELDS)} + prob"
        ) from None
    return out


def decode(payload: bytes | memoryview) -> np.ndarray:
    """Records from either encoding.

    JSON payloads start with ``{`` and end with ``}``; a binary payload ends in a record's
    zero padding byte, so the two cannot be confused.
    """
    view = memoryview(payload)
    if len(view) and view[0] == ord("{") and view[-1] == ord("}"):
        return decode_json(view)
    return decode_binary(view)
