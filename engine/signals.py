"""Signal encodings on the wire (contract 4, "signals out"): binary records and JSON.

A signal message is ``[b"sig.<symbol>", payload]``. Binary payloads are the raw little-endian
bytes of a ``SIGNAL_DTYPE`` array (one record per message from the daemon, but decoders accept
any whole number of records). JSON payloads are one UTF-8 object per message with the same
field names; ``prob`` is a list ``[down, flat, up]`` and ``symbol`` is added for readability::

    {"symbol": "GOOG", "instrument": 0, "model_id": 3735928559, "seq": 1042,
     "ts_event": 1340285400004000000, "ts_recv": 81234567890, "ts_publish": 81234601234,
     "prob": [0.1, 0.7, 0.2], "pred": 1}

Version 2 (multi-horizon artifacts, :mod:`lobstream.models.heads`): the record is a
``SIGNAL_V2_DTYPE`` (128 bytes). Its first 53 bytes are a v1 record's, with ``prob``/``pred``
the primary head's, and byte 53, v1's zero padding, holds ``version`` = 2; then ``n_heads``,
``horizon_unit`` (0 events, 1 seconds), and per head (up to 4) ``horizon``, ``head_prob`` and
``head_pred``. Single-head artifacts keep sending v1 records, unchanged. A v2 JSON payload
adds ``"version": 2`` and ``"heads": [{"horizon": 10, "unit": "events", "prob": [...],
"pred": 1}, ...]`` to the v1 keys. :func:`decode` reads both versions of both encodings.

The status heartbeat, ``[b"<status_topic>", json]``, is always JSON.
"""

from __future__ import annotations

import json

import numpy as np

from lobstream.kernels.dtypes import (
    HORIZON_EVENTS,
    HORIZON_SECONDS,
    SIGNAL_DTYPE,
    SIGNAL_V2_DTYPE,
    SIGNAL_VERSION,
    VERSION_OFFSET,
)

SIGNAL_TOPIC_PREFIX = b"sig."
ENCODINGS = ("binary", "json")
_INT_FIELDS = ("instrument", "model_id", "seq", "ts_event", "ts_recv", "ts_publish", "pred")
SIGNAL_DTYPES = (SIGNAL_DTYPE, SIGNAL_V2_DTYPE)
_UNITS = {HORIZON_EVENTS: "events", HORIZON_SECONDS: "seconds"}


def signal_records(n: int, heads: list[dict] | None = None) -> np.ndarray:
    """A zeroed buffer of ``n`` records for an artifact's heads (``manifest["heads"]``):
    ``SIGNAL_DTYPE`` for a single head, ``SIGNAL_V2_DTYPE`` with version, head count and
    horizons filled in for several. Zeroed, so padding goes out as 0."""
    # here, not at the top: decoding (subscribers) must not pull in the kernels and Numba
    from lobstream.models.manifest import label_unit

    if not heads or len(heads) == 1:
        return np.zeros(n, SIGNAL_DTYPE)
    rec = np.zeros(n, SIGNAL_V2_DTYPE)
    rec["version"] = SIGNAL_VERSION
    rec["n_heads"] = len(heads)
    # every head shares the first one's unit (models.heads); read as every manifest reader does
    unit = label_unit(heads[0]["label"])
    rec["horizon_unit"] = HORIZON_SECONDS if unit == "seconds" else HORIZON_EVENTS
    rec["horizon"][:, : len(heads)] = [float(h["label"]["horizon"]) for h in heads]
    return rec


def fill_probs(records: np.ndarray, probs: np.ndarray) -> None:
    """Write probabilities (B, 3), or (B, H, 3) for a v2 buffer, and their argmax into
    ``records`` (B,)."""
    if probs.ndim == 2:
        records["prob"] = probs
        records["pred"] = probs.argmax(axis=1)
        return
    h = probs.shape[1]
    records["prob"] = probs[:, 0]
    records["pred"] = probs[:, 0].argmax(axis=1)
    records["head_prob"][:, :h] = probs
    records["head_pred"][:, :h] = probs.argmax(axis=2)


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
    if records.dtype not in SIGNAL_DTYPES:
        raise TypeError(f"expected SIGNAL_DTYPE or SIGNAL_V2_DTYPE records, got {records.dtype}")
    return np.ascontiguousarray(records).tobytes()


def encode_json(record: np.void | np.ndarray, symbol: str) -> bytes:
    """JSON payload of one signal record (a ``SIGNAL_DTYPE`` scalar or a 1-element array)."""
    rec = record[0] if isinstance(record, np.ndarray) else record
    obj: dict = {"symbol": symbol}
    for name in _INT_FIELDS:
        obj[name] = int(rec[name])
    obj["prob"] = [float(p) for p in rec["prob"]]
    if rec.dtype == SIGNAL_V2_DTYPE:
        unit = _UNITS[int(rec["horizon_unit"])]
        obj["version"] = int(rec["version"])
        obj["heads"] = [
            {
                "horizon": float(rec["horizon"][h]),
                "unit": unit,
                "prob": [float(p) for p in rec["head_prob"][h]],
                "pred": int(rec["head_pred"][h]),
            }
            for h in range(int(rec["n_heads"]))
        ]
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_binary(payload: bytes | memoryview) -> np.ndarray:
    """Records from a binary payload.

    Returns
    -------
    ndarray (n,) SIGNAL_DTYPE, or SIGNAL_V2_DTYPE when the first record says version 2
        A read-only view on ``payload`` (copy it to keep it beyond the message).

    Raises
    ------
    ValueError
        When the payload length is not a whole number of records.
    """
    n = len(payload)
    view = memoryview(payload)
    v2 = n > VERSION_OFFSET and view[VERSION_OFFSET] == SIGNAL_VERSION
    dt = SIGNAL_V2_DTYPE if v2 else SIGNAL_DTYPE
    name = "SIGNAL_V2_DTYPE" if v2 else "SIGNAL_DTYPE"
    if n == 0 or n % dt.itemsize:
        raise ValueError(
            f"signal payload of {n} bytes is not a whole number of {dt.itemsize}-byte "
            f"{name} records; is the daemon publishing JSON (encoding = 'json')?"
        )
    return np.frombuffer(payload, dtype=dt)


def decode_json(payload: bytes | memoryview) -> np.ndarray:
    """A 1-record ``SIGNAL_DTYPE`` array from a JSON payload (the ``symbol`` key is dropped);
    ``SIGNAL_V2_DTYPE`` when it has ``heads``."""
    try:
        obj = json.loads(bytes(payload))
        heads = obj.get("heads")
        if heads:
            out = signal_records(
                1, [{"label": {"horizon": h["horizon"], "unit": h["unit"]}} for h in heads]
            )
            out["head_prob"][0, : len(heads)] = [h["prob"] for h in heads]
            out["head_pred"][0, : len(heads)] = [h["pred"] for h in heads]
        else:
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
