"""``lobstream train --sweep``: the grid parsed, every trial trained on the chronological split,
the table printed and the best trial by validation macro-F1 written (tiny trials: the first
4,000 events of the GOOG day, T = 20, one epoch). On Ray: tests/test_ray.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lobstream.cli import main
from lobstream.replay.training.sweep import best_trial, parse_sweep, trials

REPO = Path(__file__).resolve().parents[1]
GOOG = REPO / "replay" / "samples" / "GOOG_2012-06-21_34200000_57600000_message_10.csv.gz"
TINY = ["--window", "20", "--max-events", "4000", "--epochs", "1", "--max-train-windows",
        "300", "--device", "cpu", "--threads", "1"]  # fmt: skip


def sweep_args(out: Path, spec: str) -> list[str]:
    return ["train", str(GOOG), "--arch", "binctabl", "--horizon", "10", *TINY, "--out",
            str(out / "best.pt"), "--report-json", str(out / "sweep.json"), "--sweep", spec]  # fmt: skip


def test_parse_sweep_and_grid():
    grid = parse_sweep("horizon=10,50; alpha=auto,0.0002 features=zscore arch=binctabl,cnn")
    assert grid == {
        "horizon": [10.0, 50.0],
        "alpha": [None, 0.0002],
        "features": ["zscore"],
        "arch": ["binctabl", "cnn"],
    }
    assert len(trials(grid)) == 8
    assert trials(grid)[1] == {"horizon": 10.0, "alpha": None, "features": "zscore", "arch": "cnn"}
    for bad in ("horizon", "depth=3", "horizon=", "horizon=1 horizon=2", "window=x"):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweep(bad)


def test_best_trial_is_by_validation_not_test():
    rows = [
        {"val_f1_macro": 0.3, "test_f1_macro": 0.9},
        {"val_f1_macro": 0.4, "test_f1_macro": 0.1},
    ]
    assert best_trial(rows) == 1


def test_train_sweep_writes_table_and_best_artifact(tmp_path):
    res = CliRunner().invoke(
        main, sweep_args(tmp_path, "horizon=10,20 features=zscore,ticks_from_mid")
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert len(report["trials"]) == 4
    best = report["trials"][report["best"]]
    assert best["val_f1_macro"] == max(t["val_f1_macro"] for t in report["trials"])
    digest = hashlib.sha256((tmp_path / "best.pt").read_bytes()).hexdigest()
    assert digest == best["summary"]["sha256"]
    assert "sweep: 4 trial(s)" in res.output and digest in res.output
    from lobstream.models.artifact import load_model

    _, manifest = load_model(tmp_path / "best.pt")
    assert manifest["label"]["horizon"] == best["params"]["horizon"]
    assert manifest["feature"]["kind"] == best["params"]["features"]


def test_sweep_of_horizon_needs_no_horizon_option_and_multi_head_trials(tmp_path):
    args = sweep_args(tmp_path, "horizon=10,20")
    k = args.index("--horizon")
    res = CliRunner().invoke(main, args[:k] + args[k + 2 :])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert [t["params"]["horizon"] for t in report["trials"]] == [10.0, 20.0]
    heads = args[:k] + ["--horizons", "10,20"] + args[k + 2 : -2] + ["--sweep", "arch=binctabl"]
    res = CliRunner().invoke(main, heads)
    assert res.exit_code == 0, res.output
    from lobstream.models.artifact import load_model

    _, manifest = load_model(tmp_path / "best.pt")
    assert len(manifest["heads"]) == 2


def test_ray_without_sweep_is_refused(tmp_path):
    args = sweep_args(tmp_path, "horizon=10")[:-2] + ["--ray"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "--sweep" in res.output


def test_sweep_base_horizon_default_and_grid():
    from lobstream.replay.training.pipeline import DEFAULT_HORIZON
    from lobstream.replay.training.sweep import parse_sweep, sweep_base

    assert sweep_base(parse_sweep("arch=binctabl,cnn"), horizon=None)["horizon"] == DEFAULT_HORIZON
    assert sweep_base(parse_sweep("horizon=10,50"), horizon=None)["horizon"] == 10.0
    assert sweep_base(parse_sweep("arch=cnn"), horizon=20.0)["horizon"] == 20.0
    with pytest.raises(ValueError, match="leave --horizons out"):
        sweep_base(parse_sweep("horizon=10,50"), horizon=None, horizons="10,50")
