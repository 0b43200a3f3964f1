"""The instrument registry: symbol <-> id, tick size and per-source price scale.

A contract shared by the readers, the replayer and the daemon, so it lives beside the event
layout; :func:`load_registry` reads it from a TOML file (the one file read in ``kernels/``; the
kernels themselves do no I/O). TOML layout::

    [[instrument]]
    symbol = "GOOG"
    tick_size = 0.01          # in quote currency
    price_scale = { lobster = 10000 }   # source integer units per quote unit (optional)
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path


@dataclass(frozen=True)
class Instrument:
    """One instrument: its id is its position in the registry."""

    id: int
    symbol: str
    tick_size: Decimal
    price_scale: Mapping[str, int] = field(default_factory=dict)

    def to_ticks(self, price: float | str | Decimal) -> int:
        """Convert a decimal price (quote currency) to integer ticks, refusing off-grid prices."""
        q = Decimal(str(price)) / self.tick_size
        ticks = int(q)
        if q != ticks:
            raise ValueError(
                f"price {price} of {self.symbol} is not a multiple of its tick size "
                f"{self.tick_size}; fix tick_size in the instrument registry"
            )
        return ticks


class Registry:
    """Instruments by id and by symbol. Ids are dense: 0..len-1."""

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self._by_id: list[Instrument] = []
        self._by_symbol: dict[str, Instrument] = {}
        for inst in instruments:
            self.add(inst.symbol, inst.tick_size, inst.price_scale)

    def add(
        self,
        symbol: str,
        tick_size: float | str | Decimal,
        price_scale: Mapping[str, int] | None = None,
    ) -> Instrument:
        """Register ``symbol`` (or return it unchanged if already present with the same tick)."""
        tick = Decimal(str(tick_size))
        if tick <= 0:
            raise ValueError(f"tick_size of {symbol} must be positive, got {tick_size}")
        if symbol in self._by_symbol:
            inst = self._by_symbol[symbol]
            if inst.tick_size != tick:
                raise ValueError(
                    f"{symbol} is registered with tick_size {inst.tick_size}, not {tick}"
                )
            return inst
        inst = Instrument(len(self._by_id), symbol, tick, dict(price_scale or {}))
        self._by_id.append(inst)
        self._by_symbol[symbol] = inst
        return inst

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
        return iter(self._by_id)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._by_symbol

    def by_id(self, instrument_id: int) -> Instrument:
        if not 0 <= instrument_id < len(self._by_id):
            raise KeyError(f"unknown instrument id {instrument_id}; registry has {len(self)}")
        return self._by_id[instrument_id]

    def by_symbol(self, symbol: str) -> Instrument:
        try:
            return self._by_symbol[symbol]
        except KeyError:
            known = ", ".join(sorted(self._by_symbol)) or "none"
            raise KeyError(f"unknown instrument {symbol!r}; registered: {known}") from None

    @classmethod
    def from_dict(cls, data: Mapping) -> Registry:
        """Build from the parsed TOML mapping ``{"instrument": [{symbol, tick_size, ...}]}``."""
        allowed = {"symbol", "tick_size", "price_scale"}
        reg = cls()
        for i, entry in enumerate(data.get("instrument", [])):
            unknown = set(entry) - allowed
            if unknown:
                raise ValueError(
                    f"instrument #{i}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
                )
            if "symbol" not in entry or "tick_size" not in entry:
                raise ValueError(f"instrument #{i}: needs both 'symbol' and 'tick_size'")
            reg.add(entry["symbol"], entry["tick_size"], entry.get("price_scale"))
        return reg

    def to_dict(self) -> dict:
        return {
            "instrument": [
                {
                    "symbol": i.symbol,
                    "tick_size": str(i.tick_size),
                    "price_scale": dict(i.price_scale),
                }
                for i in self._by_id
            ]
        }


def load_registry(path: str | Path) -> Registry:
    """Read a registry TOML file (layout in the module docstring)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Registry.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
