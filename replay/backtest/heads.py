"""Backtest scoring of a multi-horizon artifact: one streaming evaluator per head.

Head ``h`` is scored exactly as a single-head artifact with that head's label would be
(:func:`lobstream.models.heads.head_manifest`): its own labels, majority and trend baselines,
and a trading simulation that holds a position for that head's horizon. The rows stream past
once; each head's evaluator takes its column of the probabilities (m, H, 3).

The summary is the primary head's (head 0), so every reader of a single-head report reads it
unchanged, plus ``heads``: one entry per head with its label, metrics, baselines and trading.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from lobstream.models.heads import head_manifest, n_heads
from lobstream.replay.backtest.evaluator import StreamingEvaluator
from lobstream.replay.backtest.run import BacktestResult
from lobstream.replay.backtest.trading import DEFAULT_SWEEP, Trades, TradingConfig, label_horizon

# per-head entries of the summary (the rest: rows, time, kernel conditions are shared)
_HEAD_KEYS = ("model", "n_scored", "metrics", "baselines", "trading")


def head_config(manifest: dict, config: TradingConfig) -> TradingConfig:
    """``config`` with the holding horizon of ``manifest``'s label (a head manifest)."""
    return dataclasses.replace(config, **label_horizon(manifest))


class MultiHeadEvaluator:
    """:class:`~lobstream.replay.backtest.evaluator.StreamingEvaluator`'s interface for H heads.

    Parameters
    ----------
    manifest : a multi-horizon artifact's manifest (``heads``).
    config : trading rules; each head holds for its own horizon (``head_config``).
    thresholds, n_instruments : as for the single-head evaluator.
    """

    def __init__(
        self,
        manifest: dict,
        config: TradingConfig,
        thresholds: Sequence[float] = DEFAULT_SWEEP,
        *,
        n_instruments: int = 1,
    ) -> None:
        self.manifest = manifest
        self.config = config
        self.heads = []
        for h in range(n_heads(manifest)):
            hm = head_manifest(manifest, h)
            self.heads.append(
                StreamingEvaluator(
                    hm, head_config(hm, config), thresholds, n_instruments=n_instruments
                )
            )

    @property
    def primary(self) -> StreamingEvaluator:
        return self.heads[0]

    @property
    def n_rows(self) -> int:
        return self.primary.n_rows

    @property
    def signal_counts(self) -> np.ndarray:
        return self.primary.signal_counts

    @property
    def signal_bin_minutes(self) -> int:
        return self.primary.signal_bin_minutes

    def add(self, meta: np.ndarray, probs: np.ndarray) -> None:
        """Scored rows: meta (m,), probs (m, H, 3) (NaN rows: no window)."""
        if probs.ndim != 3 or probs.shape[1] != len(self.heads):
            raise ValueError(
                f"probabilities of shape {probs.shape}; this {len(self.heads)}-head artifact "
                f"gives (m, {len(self.heads)}, 3)"
            )
        for h, ev in enumerate(self.heads):
            ev.add(meta, probs[:, h])

    def finish(self) -> None:
        for ev in self.heads:
            ev.finish()

    def merge(self, other: MultiHeadEvaluator) -> MultiHeadEvaluator:
        """Head by head :meth:`StreamingEvaluator.merge` (same conditions)."""
        if len(other.heads) != len(self.heads):
            raise ValueError(f"merge() of {len(self.heads)} and {len(other.heads)} heads")
        for mine, theirs in zip(self.heads, other.heads, strict=True):
            mine.merge(theirs)
        return self

    def remap_rows(self, local_starts: Sequence[int], global_starts: Sequence[int]) -> None:
        for ev in self.heads:
            ev.remap_rows(local_starts, global_starts)

    def calibration_table(self) -> list[dict]:
        """The primary head's reliability table (plots)."""
        return self.primary.calibration_table()

    def trades(
        self, threshold: float | None = None, tick_sizes: Mapping[int, float] | None = None
    ) -> Trades:
        """The primary head's trades (see :meth:`StreamingEvaluator.trades`)."""
        return self.primary.trades(threshold, tick_sizes)

    def summary(
        self,
        result: BacktestResult,
        tick_sizes: Mapping[int, float] | Sequence[float] | None = None,
    ) -> tuple[dict, Trades]:
        """The primary head's summary and trades, with ``heads``: every head's ``model``
        (label), ``n_scored``, ``metrics``, ``baselines`` and ``trading``."""
        parts = [ev.summary(result, tick_sizes) for ev in self.heads]
        summary, trades = parts[0]
        summary = dict(summary)
        summary["heads"] = [
            {"head": h, **{k: s[k] for k in _HEAD_KEYS}} for h, (s, _) in enumerate(parts)
        ]
        for entry in summary["heads"]:  # trading["config"] is the head's, with its horizon
            entry["loss_weight"] = self.manifest["heads"][entry["head"]].get("loss_weight")
        return summary, trades
