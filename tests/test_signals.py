"""Signal encodings: binary and JSON round trips, and decoding errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.engine.signals import (
    decode,
    decode_binary,
    decode_json,
    encode_binary,
    encode_json,
    signal_topic,
)
from lobstream.kernels.dtypes import SIGNAL_DTYPE

u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u64 = st.integers(0, 2**64 - 1)
prob = st.floats(0, 1, width=32)


@st.composite
def records(draw, n=None):
    n = draw(st.integers(1, 5)) if n is None else n
    out = np.zeros(n, SIGNAL_DTYPE)
    for i in range(n):
        out[i]["instrument"] = draw(u32)
        out[i]["model_id"] = draw(u32)
        out[i]["seq"] = draw(u64)
        out[i]["ts_event"] = draw(i64)
        out[i]["ts_recv"] = draw(i64)
        out[i]["ts_publish"] = draw(i64)
        out[i]["prob"] = [draw(prob) for _ in range(3)]
        out[i]["pred"] = draw(st.integers(0, 2))
    return out


@given(records())
def test_binary_round_trip(rec):
    payload = encode_binary(rec)
    assert len(payload) == len(rec) * SIGNAL_DTYPE.itemsize
    back = decode_binary(payload)
    assert back.tobytes() == rec.tobytes()
    assert decode(payload).tobytes() == rec.tobytes()


@given(records(n=1))
def test_json_round_trip(rec):
    payload = encode_json(rec[0], "GOOG")
    assert payload.startswith(b"{") and b'"symbol":"GOOG"' in payload
    back = decode_json(payload)
    for name in SIGNAL_DTYPE.names:
        np.testing.assert_array_equal(back[name], rec[name])
    np.testing.assert_array_equal(decode(payload), back)


@pytest.mark.parametrize("n", [0, 1, SIGNAL_DTYPE.itemsize - 1, SIGNAL_DTYPE.itemsize + 3])
def test_binary_wrong_length(n):
    with pytest.raises(ValueError, match="whole number"):
        decode_binary(b"\x00" * n)


def test_json_missing_key():
    with pytest.raises(ValueError, match="not a JSON signal"):
        decode_json(b'{"instrument": 1}')


def test_encode_binary_refuses_other_dtype():
    with pytest.raises(TypeError, match="SIGNAL_DTYPE"):
        encode_binary(np.zeros(2, np.float64))


def test_topic():
    assert signal_topic("GOOG") == b"sig.GOOG"
