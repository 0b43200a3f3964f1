"""`lobstream bench` and `lobstream backtest` end to end with tiny settings, and the bench
helpers (HDR summary, Prometheus histogram breakdown). Every run stops by itself; the latency
smoke test checks that no child process is left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lobstream.bench.harness import _bucket_quantile, stage_breakdown
from lobstream.bench.latency import hdr_summary
from lobstream.cli.bench import bench
from lobstream.models.artifact import export_model
from lobstream.models.zoo import build_model
from lobstream.replay.samples import GOOG_MESSAGE_10

T, L = 10, 10
# z-score parameters of the right order for GOOG (about 58,000 ticks of 0.01) and for the
# synthetic streams the latency bench starts at the stored price mean
MANIFEST = {
    "feature": {"kind": "zscore", "params": [58_000.0, 200.0, 100.0, 100.0]},
    "label": {"horizon": 5, "unit": "events", "alpha": 1e-5, "smoothing": "mean"},
    "trained_on": {"note": "untrained test model"},
    "metrics": {},
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("cnn", T=T, levels=L, channels=(4,), hidden=8)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    export_model(model.eval(), path, MANIFEST)
    return path


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc), zombies excluded."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def test_hdr_summary_percentiles():
    lat_ns = np.arange(1, 1001, dtype=np.int64) * 1000  # 1..1000 us
    s = hdr_summary(lat_ns)
    assert s["n_signals"] == 1000
    assert s["p50_us"] == pytest.approx(500, abs=1)
    assert s["p99_us"] == pytest.approx(990, abs=1)
    assert s["p999_us"] == pytest.approx(999, abs=1)
    assert s["max_us"] == pytest.approx(1000, abs=1)
    assert hdr_summary(np.empty(0, np.int64))["p50_us"] == 0.0


def test_stage_breakdown_uses_only_the_difference_between_scrapes():
    edges = [1e-6, 1e-5, 1e-4, float("inf")]
    before = {
        "stages": {
            "model": {
                "buckets": list(zip(edges, [5, 5, 5, 5], strict=True)),
                "sum": 5e-7,
                "count": 5,
            }
        }
    }
    # then 100 observations: 50 in (1e-6, 1e-5], 50 in (1e-5, 1e-4]
    after = {
        "stages": {
            "model": {
                "buckets": list(zip(edges, [5, 55, 105, 105], strict=True)),
                "sum": 5e-7 + 50 * 5e-6 + 50 * 5e-5,
                "count": 105,
            }
        }
    }
    s = stage_breakdown(before, after)["model"]
    assert s["count"] == 100
    assert s["mean_us"] == pytest.approx(27.5)
    assert s["p50_us"] == pytest.approx(10.0)
    # 99th of 100: 49/50 of the way through the (10, 100] us bucket
    assert s["p99_us"] == pytest.approx(10 + 90 * 49 / 50)
    assert _bucket_quantile(np.array(edges), np.zeros(4), 0.5) == 0.0


def test_throughput_smoke(artifact):
    res = CliRunner().invoke(
        bench,
        [
            "throughput",
            "--model",
            str(artifact),
            "--files",
            str(GOOG_MESSAGE_10),
            "--windows",
            "256",
            "--notebook-windows",
            "64",
            "--batches",
            "16,64",
            "--repeat",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output.strip().splitlines()[-1])
    for k in (
        "backtest_windows_per_s",
        "model_only_windows_per_s",
        "notebook_windows_per_s",
        "backtest_with_read_windows_per_s",
        "backtest_data_path_windows_per_s",
        "notebook_data_path_windows_per_s",
    ):
        assert r[k] > 0
    assert r["best_batch"] in (16, 64)
    assert r["backtest_windows"] == 256 and r["notebook_windows"] == 64


def test_latency_smoke_stops_everything(artifact, tmp_path):
    before = set(_children(os.getpid()))
    res = CliRunner().invoke(
        bench,
        [
            "latency",
            "--model",
            str(artifact),
            "--rates",
            "2000,0",
            "--seconds",
            "0.3",
            "--instruments",
            "2",
            "--json",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output.strip().splitlines()[-1])
    assert [x["target_events_per_s"] for x in r["rates"]] == [2000.0, 0.0]
    assert r["model_b1_p50_us"] > 0
    for x in r["rates"]:
        for k in (
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "signals_per_s",
            "conflated",
            "dropped",
            "stages",
        ):
            assert k in x
        assert x["n_signals"] > 0
        assert x["p50_us"] <= x["p99_us"] <= x["p999_us"] <= x["max_us"]
        assert {"model", "book", "publish"} <= set(x["stages"])
    assert r["daemon_exit_code"] == 0
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert json.loads((tmp_path / "latency.json").read_text())["rates"]
    assert set(_children(os.getpid())) <= before


@pytest.mark.gpu
def test_throughput_and_latency_on_cuda(artifact, tmp_path):
    args = ["--model", str(artifact), "--device", "cuda", "--json"]
    res = CliRunner().invoke(
        bench,
        [
            "throughput",
            *args,
            "--files",
            str(GOOG_MESSAGE_10),
            "--windows",
            "256",
            "--notebook-windows",
            "64",
            "--repeat",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["device"].startswith("cuda")
    res = CliRunner().invoke(
        bench, ["latency", *args, "--rates", "2000", "--seconds", "0.3", "--instruments", "2"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["rates"][0]["n_signals"] > 0


def test_transport_smoke(capsys):
    """bench.transport times every case both ways over a real ipc:// pair and stops."""
    from lobstream.bench import transport

    assert transport.main(["--json", "--calls", "5", "--rate", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["cases"]) == 10
    for case in out["cases"].values():
        assert 0 < case["warm_p50_us"] <= case["warm_p99_us"]
        assert 0 < case["paced_p50_us"] <= case["paced_p99_us"]
