"""``--ray`` on a local Ray of 2 workers: the distributed backtest equals the one-process one on
the same files, also when a worker dies mid-task (the task is retried); convert too.

One Ray for the module (start-up is the cost: a few seconds), a small object store, no
dashboard, shut down at the end. Files as tests/test_distributed.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from lobstream.replay.distributed.backtest import backtest_on_ray  # noqa: E402
from lobstream.replay.distributed.convert import convert_on_ray  # noqa: E402
from tests.test_distributed import (  # noqa: E402
    MODEL,
    THRESHOLDS,
    assert_same,
    comparable,
    config_for,
    one_process,
    test_files,
)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir):
    return test_files(tmp_path_factory.mktemp("pieces"), data_dir)


@pytest.fixture(scope="module")
def reference(files):
    return one_process(files)


def _summary(run):
    ticks = {i.id: float(i.tick_size) for i in run.registry}
    return run.evaluator.summary(run.result, tick_sizes=ticks)


def test_backtest_on_ray_equals_one_process(local_ray, files, reference):
    run = backtest_on_ray(files, MODEL, config_for=config_for, thresholds=THRESHOLDS)
    assert [u.files for u in sorted(run.units, key=lambda u: u.files[0])] == [[0, 2], [1], [3]]
    assert len({u.pid for u in run.units}) >= 1
    assert [i.symbol for i in run.registry] == [i.symbol for i in reference[3]]
    summary, trades = _summary(run)
    assert_same(reference, summary, trades, run.evaluator)
    assert summary["trading"]["n_trades"] > 0


class _DieOnce:
    """A hook that kills its worker process (os._exit) the first time a task of ``files``
    gets past its first chunk; a marker file says it happened (attempts are processes)."""

    def __init__(self, marker: Path, files: list[int]) -> None:
        self.marker = str(marker)
        self.files = files

    def __call__(self, files, position, rows) -> None:
        if files == self.files and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)


def test_killed_worker_is_retried_and_result_equal(local_ray, files, reference, tmp_path):
    marker = tmp_path / "died"
    run = backtest_on_ray(
        files,
        MODEL,
        config_for=config_for,
        thresholds=THRESHOLDS,
        hook=_DieOnce(marker, [0, 2]),
        max_retries=2,
    )
    assert marker.exists(), "the hook did not kill the first attempt"
    dead = int(marker.read_text())
    unit = next(u for u in run.units if u.files == [0, 2])
    assert unit.pid != dead  # the retry ran in another worker process
    summary, trades = _summary(run)
    assert_same(reference, summary, trades, run.evaluator)


def test_cli_backtest_ray_equals_cli_backtest(local_ray, files):
    from click.testing import CliRunner

    from lobstream.cli import main

    args = ["backtest", *map(str, files), "--model", str(MODEL), "--json", "--sweep", "0.4,0.6"]
    runner = CliRunner()
    one = runner.invoke(main, args)
    dist = runner.invoke(main, [*args, "--ray"])  # Ray already up: joined, not restarted
    assert one.exit_code == 0, one.output
    assert dist.exit_code == 0, dist.output
    a = comparable(json.loads(one.output.strip().splitlines()[-1]))
    b = comparable(json.loads(dist.output.strip().splitlines()[-1]))
    assert a == b
    assert set(a["trading"]["per_instrument"]) == {"GOOGA", "GOOGB", "binance-futures:BTCUSDT"}


def test_convert_on_ray_writes_the_same_parts(local_ray, files, tmp_path):
    import polars as pl

    from lobstream.kernels.registry import Registry
    from lobstream.replay.convert import convert

    one = convert(files, tmp_path / "one", Registry(), rows_per_file=3000)
    dist = convert_on_ray(files, tmp_path / "ray", Registry(), rows_per_file=3000)
    rel = {p.relative_to(tmp_path / "one"): n for p, n in one.written.items()}
    assert {p.relative_to(tmp_path / "ray"): n for p, n in dist.written.items()} == rel
    assert [(p, f, n) for p, (f, n) in dist.inputs.items()] == [
        (p, f, n) for p, (f, n) in one.inputs.items()
    ]
    for p in rel:
        a, b = pl.read_parquet(tmp_path / "one" / p), pl.read_parquet(tmp_path / "ray" / p)
        assert a.equals(b), p
    assert np.sum(list(rel.values())) == one.events


def test_train_sweep_on_ray_equals_in_process(local_ray, tmp_path):
    from click.testing import CliRunner

    from lobstream.cli import main
    from tests.test_sweep import sweep_args

    spec = "horizon=10,20 arch=binctabl"
    runner = CliRunner()
    one = runner.invoke(main, sweep_args(tmp_path / "one", spec))
    dist = runner.invoke(main, sweep_args(tmp_path / "ray", spec) + ["--ray"])
    assert one.exit_code == 0, one.output
    assert dist.exit_code == 0, dist.output
    a = json.loads((tmp_path / "one" / "sweep.json").read_text())
    b = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert a["best"] == b["best"]
    keys = ("params", "val_f1_macro", "test_f1_macro", "test_accuracy", "alpha")
    assert [{k: t[k] for k in keys} for t in a["trials"]] == [
        {k: t[k] for k in keys} for t in b["trials"]
    ]


def test_cli_convert_ray_equals_cli_convert(local_ray, files, tmp_path):
    from click.testing import CliRunner

    from lobstream.cli import main

    runner = CliRunner()
    out = {}
    for name, extra in (("one", []), ("ray", ["--ray"])):
        res = runner.invoke(
            main, ["convert", *map(str, files), "--out", str(tmp_path / name), "--json", *extra]
        )
        assert res.exit_code == 0, res.output
        out[name] = json.loads(res.output.strip().splitlines()[-1])
    assert out["ray"]["inputs"] == out["one"]["inputs"]
    assert out["ray"]["events"] == out["one"]["events"]
    rel = {k: {str(Path(p).relative_to(tmp_path / k)): n for p, n in out[k]["written"].items()}
           for k in out}  # fmt: skip
    assert rel["ray"] == rel["one"]


def test_parquet_dataset_folder_is_split_by_instrument(local_ray, files, tmp_path):
    from lobstream.kernels.registry import Registry
    from lobstream.replay.convert import convert

    convert(files, tmp_path / "ds", Registry(), rows_per_file=3000)
    one = one_process([tmp_path / "ds"])
    run = backtest_on_ray([tmp_path / "ds"], MODEL, config_for=config_for, thresholds=THRESHOLDS)
    assert len(run.units) == 3  # one per instrument, GOOGA's parts in one
    summary, trades = _summary(run)
    assert_same(one, summary, trades, run.evaluator)


def test_a_file_of_two_instruments_on_ray_is_two_tasks_and_equal(local_ray, files, tmp_path):
    from tests.test_distributed import write_two_symbol_tardis

    paths = [files[0], write_two_symbol_tardis(tmp_path / "x_two_book_snapshot_10.csv"), files[2]]
    one = one_process(paths)
    run = backtest_on_ray(paths, MODEL, config_for=config_for, thresholds=THRESHOLDS)
    assert sorted((u.files, u.instruments) for u in run.units) == [
        ([0, 2], None), ([1], [1]), ([1], [2])
    ]  # fmt: skip
    summary, trades = _summary(run)
    assert_same(one, summary, trades, run.evaluator)
