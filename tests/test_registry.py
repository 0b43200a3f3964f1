"""The instrument registry: ids, tick sizes, TOML loading and its error messages."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels.registry import Instrument, Registry, load_registry


def test_ids_are_dense_and_lookups_agree():
    reg = Registry()
    goog = reg.add("GOOG", "0.01", {"lobster": 10_000})
    btc = reg.add("BTCUSDT", 0.1)
    assert (goog.id, btc.id) == (0, 1) and len(reg) == 2
    assert reg.by_symbol("BTCUSDT") is btc and reg.by_id(0) is goog
    assert "GOOG" in reg and "AAPL" not in reg
    assert [i.symbol for i in reg] == ["GOOG", "BTCUSDT"]
    # adding again with the same tick returns the same instrument
    assert reg.add("GOOG", Decimal("0.01")) is goog and len(reg) == 2


def test_conflicts_and_unknowns_name_the_problem():
    reg = Registry()
    reg.add("GOOG", "0.01")
    with pytest.raises(ValueError, match="registered with tick_size 0.01"):
        reg.add("GOOG", "0.05")
    with pytest.raises(ValueError, match="must be positive"):
        reg.add("X", 0)
    with pytest.raises(KeyError, match="registered: GOOG"):
        reg.by_symbol("AAPL")
    with pytest.raises(KeyError, match="unknown instrument id 3"):
        reg.by_id(3)


def test_to_ticks_refuses_off_grid_prices():
    inst = Instrument(0, "GOOG", Decimal("0.01"))
    assert inst.to_ticks("580.12") == 58_012
    assert inst.to_ticks(580.1) == 58_010
    with pytest.raises(ValueError, match="not a multiple of its tick size"):
        inst.to_ticks("580.125")


@given(st.integers(1, 10**9), st.sampled_from(["0.01", "0.5", "1", "0.0001", "25"]))
def test_to_ticks_round_trips(ticks, tick):
    inst = Instrument(0, "X", Decimal(tick))
    assert inst.to_ticks(Decimal(tick) * ticks) == ticks


def test_dict_round_trip_and_unknown_keys():
    reg = Registry()
    reg.add("GOOG", "0.01", {"lobster": 10_000})
    reg.add("ETH", "0.01")
    back = Registry.from_dict(reg.to_dict())
    assert [(i.symbol, i.tick_size, dict(i.price_scale)) for i in back] == [
        ("GOOG", Decimal("0.01"), {"lobster": 10_000}),
        ("ETH", Decimal("0.01"), {}),
    ]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tick'\]"):
        Registry.from_dict({"instrument": [{"symbol": "A", "tick": 1}]})
    with pytest.raises(ValueError, match="needs both"):
        Registry.from_dict({"instrument": [{"symbol": "A"}]})


def test_load_registry_from_toml(tmp_path):
    path = tmp_path / "instruments.toml"
    path.write_text(
        '[[instrument]]\nsymbol = "GOOG"\ntick_size = "0.01"\nprice_scale = { lobster = 10000 }\n'
        '[[instrument]]\nsymbol = "AAPL"\ntick_size = 0.01\n'
    )
    reg = load_registry(path)
    assert [i.symbol for i in reg] == ["GOOG", "AAPL"]
    assert reg.by_symbol("GOOG").price_scale == {"lobster": 10_000}
    assert reg.by_symbol("AAPL").tick_size == Decimal("0.01")


def test_load_registry_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[instrument]\nsymbol = 1")
    with pytest.raises(ValueError, match="bad.toml: not valid TOML"):
        load_registry(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[instrument]]\nsymbol = "A"\ntick_size = 1\nlots = 3\n')
    with pytest.raises(ValueError, match=r"wrong.toml: instrument #0: unknown key"):
        load_registry(wrong)
