"""The backtest as ``lobstream backtest`` runs it: files and an artifact in, the report out
(classification, baselines, trading at every threshold, optional PNG figures), in this
process or, given a Ray address, one Ray task per unit of files with the results merged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lobstream.kernels.registry import Registry
from lobstream.replay.backtest.trading import DEFAULT_SWEEP


def backtest_report(
    files: Sequence[str | Path],
    model_path: str | Path,
    *,
    trading: dict[str, Any] | None = None,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    registry: Registry | None = None,
    fmt: str = "auto",
    device: str = "cpu",
    threads: int | None = 1,
    batch: int = 256,
    skip_bad: bool = False,
    scorer: str = "auto",
    max_rows: int | None = None,
    ray_address: str | None = None,
    plots_dir: str | Path | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_unit: Callable[[int, int], None] | None = None,
) -> dict:
    """The backtest summary of ``files`` scored by the artifact at ``model_path``.

    ``trading``: overrides of the trading config (``threshold``, ``latency_ns``,
    ``cost_per_share``, ``cost_bps``, ``quantity``; the holding horizon is the artifact's).
    In this process ``on_progress(events, rows, windows)`` reports progress and ``max_rows``
    stops early; on Ray (``ray_address``: an address or ``"local"``) ``on_unit(done, total)``
    does, and ``max_rows`` is refused (each unit is its own stream). ``plots_dir``: write the
    figures there (their paths go to ``summary["plots"]``).

    The summary is :meth:`~lobstream.replay.backtest.evaluator.StreamingEvaluator.summary`'s
    plus ``files``, ``instruments`` (symbol -> id) and ``trading.per_instrument`` keyed by
    symbol. Raises ``DataError``/``ValueError`` on bad input, and ``RayUnavailable`` when Ray is
    missing or cannot be reached.
    """
    from lobstream.replay.backtest.trading import trading_config_for

    reg = Registry() if registry is None else registry

    def config_for(manifest: dict):
        return trading_config_for(manifest, **(trading or {}))

    common = dict(
        config_for=config_for,
        thresholds=tuple(thresholds),
        registry=reg,
        fmt=fmt,
        device=device,
        threads=threads,
        batch=batch,
        skip_bad=skip_bad,
        scorer=scorer,
    )
    if ray_address is not None:
        if max_rows is not None:
            raise ValueError("max_rows cuts one stream; on Ray each unit is its own stream")
        result, reg, ev = _on_ray(ray_address, files, model_path, **common, on_unit=on_unit)
    else:
        result, ev = _here(files, model_path, **common, max_rows=max_rows, on_progress=on_progress)
    ticks = {inst.id: float(inst.tick_size) for inst in reg}
    summary, trades = ev.summary(result, tick_sizes=ticks)
    summary["files"] = [str(f) for f in files]
    summary["instruments"] = {inst.symbol: inst.id for inst in reg}
    # per-instrument trading stats keyed by symbol for people (ids are this run's registry)
    summary["trading"]["per_instrument"] = {
        reg.by_id(int(i)).symbol: v for i, v in summary["trading"]["per_instrument"].items()
    }
    if plots_dir:
        summary["plots"] = [str(p) for p in write_plots(Path(plots_dir), ev, summary, trades)]
    return summary


def _here(files, model_path, *, config_for, thresholds, max_rows, on_progress, **kw):
    """(result, finished evaluator) of the backtest in this process."""
    from lobstream.replay.backtest.evaluator import stream_backtest
    from lobstream.replay.backtest.run import open_backtest

    src = open_backtest(files, model_path, **kw)
    # the rows stream into the evaluator: memory does not grow with the files' length
    return stream_backtest(
        src.batches,
        src.scorer,
        src.manifest,
        config_for(src.manifest),
        thresholds=thresholds,
        n_instruments=src.n_instruments,
        batch=kw.get("batch"),
        max_rows=max_rows,
        on_progress=on_progress,
    )


def _on_ray(address: str, files, model_path, **kw):
    """(result, registry, merged evaluator) of the backtest on Ray."""
    from lobstream.replay.distributed.backtest import backtest_on_ray
    from lobstream.replay.distributed.session import RaySession

    with RaySession(address):
        run = backtest_on_ray(files, model_path, **kw)
    return run.result, run.registry, run.evaluator


def write_plots(out: Path, ev, summary: dict, trades) -> list[Path]:
    """The backtest's figures in ``out``: equity, confusion, calibration, signal counts."""
    from lobstream.replay.backtest import plots
    from lobstream.replay.backtest.trading import equity_curve

    ts, cum = equity_curve(trades)
    return [
        plots.plot_equity(out / "equity.png", ts, cum),
        plots.plot_confusion(out / "confusion.png", summary["metrics"]["confusion"]),
        plots.plot_calibration(out / "calibration.png", ev.calibration_table()),
        plots.plot_signal_counts(out / "signals.png", ev.signal_counts, ev.signal_bin_minutes),
    ]
