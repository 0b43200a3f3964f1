"""bench.training runs both paths on the same windows and their losses agree."""

from __future__ import annotations

import json

from lobstream.bench import training


def test_training_bench_json(capsys) -> None:
    argv = ["--json", "--repeat", "1", "--T", "30", "--levels", "2", "--per-window", "64",
            "--sequence", "256", "--rows", "2000", "--chunk-rows", "96"]  # fmt: skip
    assert training.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["arch"] for r in out["results"]} == set(training.CAUSAL)
    for r in out["results"]:
        assert r["per_window_windows_per_s"] > 0 and r["sequence_windows_per_s"] > 0
        assert r["loss_abs_diff"] < 1e-5 * max(1.0, r["loss_per_window"])
