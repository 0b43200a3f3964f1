"""Paths of the bundled sample data (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
GOOG_MESSAGE_10 = SAMPLES_DIR / "GOOG_2012-06-21_34200000_57600000_message_10.csv.gz"
GOOG_ORDERBOOK_10 = SAMPLES_DIR / "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv.gz"
# the registry of the sample (GOOG: tick 0.01, LOBSTER prices x 10000)
GOOG_REGISTRY = SAMPLES_DIR / "instruments.toml"
