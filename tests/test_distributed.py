"""The merge behind ``--ray`` (lobstream.replay.distributed), without Ray: units planned from the
files, each unit backtested on its own, the evaluators merged == the one-process backtest.

Files: pieces of the bundled GOOG day under other symbols (GOOGA twice, GOOGB between them, so
one unit has two files with another file's rows between) and a Tardis file (another format,
another instrument, too short for a window). Ray itself is in tests/test_ray.py; without Ray
installed, ``--ray`` must say how to install it (here).
"""

from __future__ import annotations

import builtins
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lobstream.kernels.registry import Registry
from lobstream.replay.backtest.evaluator import evaluator_for
from lobstream.replay.backtest.run import backtest_files
from lobstream.replay.backtest.trading import trading_config_for
from lobstream.replay.distributed.backtest import backtest_unit, merge_units
from lobstream.replay.distributed.plan import file_instruments, plan
from lobstream.replay.distributed.session import INSTALL_HINT

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "replay" / "samples"
MODEL = REPO / "models" / "assets" / "binctabl_goog.pt"
GOOG = "GOOG_2012-06-21_34200000_57600000_{}_10.csv.gz"
THRESHOLDS = (0.4, 0.5, 0.6)
CFG = {"threshold": 0.5, "latency_ns": 1_000_000, "cost_bps": 0.1}


def write_pieces(out: Path, pieces) -> list[Path]:
    """LOBSTER pairs cut from the bundled GOOG day: (symbol, start_ms, first, last) each;
    returns the message files."""
    out.mkdir(parents=True, exist_ok=True)
    lines = {
        kind: gzip.open(SAMPLES / GOOG.format(kind), "rt").read().splitlines(True)
        for kind in ("message", "orderbook")
    }
    paths = []
    for sym, start, a, b in pieces:
        for kind, rows in lines.items():
            p = out / f"{sym}_2012-06-21_{start}_57600000_{kind}_10.csv.gz"
            with gzip.open(p, "wt") as f:
                f.writelines(rows[a:b])
        paths.append(out / f"{sym}_2012-06-21_{start}_57600000_message_10.csv.gz")
    return paths


def test_files(tmp: Path, data_dir: Path | None = None) -> list[Path]:
    paths = write_pieces(
        tmp,
        [("GOOGA", 34200000, 0, 4000), ("GOOGB", 34200000, 2000, 6000), ("GOOGA", 40000000, 4000, 8000)],
    )  # fmt: skip
    if data_dir is not None:
        paths.append(data_dir / "tardis" / "binance-futures_book_snapshot_25_BTCUSDT.csv")
    return paths


test_files.__test__ = False  # a helper, not a test


def write_two_symbol_tardis(path: Path, n: int = 2500) -> Path:
    """A Tardis book_snapshot_10 file of two instruments, row for row interleaved (x:AAA and
    x:BBB, each a stretch of the GOOG day's 10-level books)."""
    books = gzip.open(SAMPLES / GOOG.format("orderbook"), "rt").read().splitlines()
    head = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(10):
        head += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    lines = [",".join(head)]
    for j in range(n):
        ts = 1_340_280_000_000_000 + 1000 * j
        for sym, row in (("AAA", books[j]), ("BBB", books[n + j])):
            vals = [int(v) for v in row.split(",")]
            cells = [f"{v / 10000:.2f}" if c % 2 == 0 else str(v) for c, v in enumerate(vals)]
            lines.append(",".join(["x", sym, str(ts), str(ts + 5), *cells]))
    path.write_text("\n".join(lines) + "\n")
    return path


def config_for(manifest: dict):
    return trading_config_for(manifest, **CFG)


def one_process(paths):
    """The one-process backtest as ``lobstream backtest`` runs it: (summary, trades,
    evaluator, registry)."""
    evs = []

    def sink(manifest):
        evs.append(evaluator_for(manifest, config_for(manifest), THRESHOLDS))
        return evs[0].add

    result, _, reg = backtest_files(paths, MODEL, rows_sink=sink)
    evs[0].finish()
    summary, trades = evs[0].summary(result, tick_sizes={i.id: float(i.tick_size) for i in reg})
    return summary, trades, evs[0], reg


def comparable(summary: dict) -> dict:
    """The summary without its wall-clock fields, as JSON (the CLI prints it so)."""
    s = json.loads(json.dumps(summary))
    for k in ("seconds", "windows_per_s"):
        s.pop(k, None)
    return s


def assert_same(one, merged_summary, merged_trades, merged_ev):
    summary, trades, ev, _ = one
    assert comparable(merged_summary) == comparable(summary)
    for name, a, b in zip(trades._fields, trades, merged_trades, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(merged_ev.signal_counts, ev.signal_counts)
    np.testing.assert_array_equal(merged_ev.confusion, ev.confusion)
    for a, b in zip(ev.calibration, merged_ev.calibration, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12)  # float sums in another order


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir):
    return test_files(tmp_path_factory.mktemp("pieces"), data_dir)


@pytest.fixture(scope="module")
def reference(files):
    return one_process(files)


def test_plan_groups_files_by_instrument_and_keeps_registry_order(files):
    scans = [file_instruments(p, Registry()) for p in files]
    reg, units = plan(scans, Registry())
    assert [i.symbol for i in reg] == ["GOOGA", "GOOGB", "binance-futures:BTCUSDT"]
    assert units == [[0, 2], [1], [3]]


def test_units_merged_equal_one_process(files, reference):
    scans = [file_instruments(p, Registry()) for p in files]
    reg, units = plan(scans, Registry())
    assert [i.symbol for i in reg] == [i.symbol for i in reference[3]]
    from lobstream.models.artifact import load_model

    _, manifest = load_model(MODEL)
    cfg = config_for(manifest)
    parts = [
        backtest_unit([files[k] for k in u], MODEL, reg, cfg, THRESHOLDS, files=u) for u in units
    ]
    ticks = {i.id: float(i.tick_size) for i in reg}
    # any order of the units gives the same merged result
    for order in (parts, parts[::-1]):
        result, ev = merge_units(order, len(files), 1.0)
        summary, trades = ev.summary(result, tick_sizes=ticks)
        assert_same(reference, summary, trades, ev)
    assert reference[0]["trading"]["n_trades"] > 0  # the comparison covers trades
    # GOOGA's trades hold rows after GOOGB's file: renumbered into the one stream
    n_a1 = parts[0].rows[0]
    assert (reference[1].exit_row[reference[1].instrument == 0] > n_a1).any()


def test_merge_refuses_an_instrument_split_across_evaluators(files):
    from lobstream.models.artifact import load_model

    _, manifest = load_model(MODEL)
    cfg = config_for(manifest)
    reg, _ = plan([file_instruments(p, Registry()) for p in files[:3]], Registry())
    a = backtest_unit([files[0]], MODEL, reg, cfg, THRESHOLDS, files=[0])
    b = backtest_unit([files[2]], MODEL, reg, cfg, THRESHOLDS, files=[2])
    with pytest.raises(ValueError, match="in one piece"):
        a.evaluator.merge(b.evaluator)
    unfinished = evaluator_for(manifest, cfg, THRESHOLDS)
    with pytest.raises(RuntimeError, match="finished"):
        a.evaluator.merge(unfinished)


def test_ray_option_without_ray_says_how_to_install(monkeypatch, files):
    from click.testing import CliRunner

    from lobstream.cli import main

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'", name="ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(__import__("sys").modules, "ray", raising=False)
    runner = CliRunner()
    for args in (
        ["backtest", str(files[1]), "--model", str(MODEL), "--ray"],
        ["convert", str(files[1]), "--out", "/nonexistent-out", "--ray"],
    ):
        res = runner.invoke(main, args)
        assert res.exit_code == 2, res.output
        assert INSTALL_HINT in res.output
    # without --ray the command runs as before
    res = runner.invoke(main, ["backtest", str(files[1]), "--model", str(MODEL), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["n_rows"] > 0


def test_bare_ray_before_a_file_is_refused(files):
    from click.testing import CliRunner

    from lobstream.cli import main

    res = CliRunner().invoke(
        main, ["backtest", "--model", str(MODEL), "--ray", str(files[0]), str(files[1])]
    )
    assert res.exit_code == 2
    assert "--ray=ADDRESS" in res.output


def test_units_merged_equal_one_process_for_a_multi_horizon_artifact(files, tmp_path):
    """evaluator_for gives a multi-head evaluator for such an artifact: same interface, same
    exact merge."""
    from lobstream.models.artifact import load_model
    from lobstream.models.train import TrainConfig
    from lobstream.replay.training.pipeline import run_training

    model = tmp_path / "heads.pt"
    tc = TrainConfig(epochs=1, max_train_windows=200, device="cpu", threads=1)
    run_training(
        [str(SAMPLES / GOOG.format("message"))], arch="binctabl", horizon=10,
        horizons=(10, 20), window=20, max_events=3000, train_config=tc, out=model,
    )  # fmt: skip
    _, manifest = load_model(model)
    assert len(manifest["heads"]) == 2
    evs = []

    def sink(m):
        evs.append(evaluator_for(m, config_for(m), THRESHOLDS))
        return evs[0].add

    result, _, reg = backtest_files(files, model, rows_sink=sink)
    evs[0].finish()
    ticks = {i.id: float(i.tick_size) for i in reg}
    one, one_trades = evs[0].summary(result, tick_sizes=ticks)
    reg2, units = plan([file_instruments(p, Registry()) for p in files], Registry())
    parts = [
        backtest_unit([files[k] for k in u], model, reg2, config_for(manifest), THRESHOLDS, files=u)
        for u in units
    ]
    res2, ev2 = merge_units(parts[::-1], len(files), 1.0)
    summary, trades = ev2.summary(res2, tick_sizes=ticks)
    assert comparable(summary) == comparable(one)
    assert len(summary["heads"]) == 2
    for a, b in zip(one_trades, trades, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_of_two_instruments_split_into_tasks_equals_one_process(files, tmp_path):
    from lobstream.models.artifact import load_model
    from lobstream.replay.distributed.plan import split_units

    both = write_two_symbol_tardis(tmp_path / "x_two_book_snapshot_10.csv")
    paths = [files[0], both, files[2]]
    one = one_process(paths)
    scans = [file_instruments(p, Registry()) for p in paths]
    reg, units = plan(scans, Registry())
    assert units == [[0, 2], [1]]
    tasks = split_units(units, scans, reg)
    assert [(u, only, first) for u, only, first in tasks] == [
        ([0, 2], None, True), ([1], [1], True), ([1], [2], False)
    ]  # fmt: skip
    _, manifest = load_model(MODEL)
    parts = [
        backtest_unit([paths[k] for k in u], MODEL, reg, config_for(manifest), THRESHOLDS,
                      files=u, instruments=only, count_all=first)
        for u, only, first in tasks
    ]  # fmt: skip
    result, ev = merge_units(parts[::-1], len(paths), 1.0)
    summary, trades = ev.summary(result, tick_sizes={i.id: float(i.tick_size) for i in reg})
    assert_same(one, summary, trades, ev)
    per = one[0]["trading"]["per_instrument"]
    assert per["1"]["n_trades"] > 0 and per["2"]["n_trades"] > 0
