"""``lobstream demo``: embedded config, realised labels, and a short end-to-end run that leaves
no process behind."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from lobstream.bench.demo import demo_config_path, sample_files, write_demo_config
from lobstream.bench.harness import lobstream_cmd
from lobstream.engine.config import load_config
from lobstream.models.artifact import export_model
from lobstream.models.zoo import build_model


def test_embedded_config_moves_endpoints_and_round_trips():
    tmp = Path(tempfile.mkdtemp(prefix="lobt", dir="/tmp"))
    try:
        path, cfg = write_demo_config(tmp, None, "cpu")
        assert cfg.ingest.endpoints == (f"ipc://{tmp}/md",)
        assert cfg.publish.endpoint == f"ipc://{tmp}/sig"
        back = load_config(path)
        assert dataclasses.replace(back, source="") == dataclasses.replace(cfg, source="")
        # the embedded file itself is a valid serve config naming the bundled model
        assert load_config(demo_config_path()).model.path.endswith(".pt")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_sample_is_bundled():
    (msg,) = sample_files()
    assert msg.is_file() and "message_10" in msg.name


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    """A small untrained CNN with the demo's window and levels (T=100, L=10)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo") / "cnn.pt"
    model = build_model("cnn", T=100, levels=10, channels=(4, 4), hidden=8)
    export_model(
        model.eval(),
        path,
        {
            "feature": {"kind": "zscore", "params": [58_000.0, 100.0, 100.0, 100.0]},
            "label": {"horizon": 20, "unit": "events", "alpha": 2e-5, "smoothing": "mean"},
            "trained_on": {"note": "untrained test model"},
            "metrics": {},
        },
    )
    return path


def _leftovers(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if tag in line and "ps -eo" not in line]


@pytest.mark.slow  # three Python processes importing torch: ~50 s on the shared 2-core machine
def test_demo_runs_and_stops_everything(demo_model):
    cmd = lobstream_cmd()
    proc = subprocess.run(
        [*cmd, "demo", "--duration", "8", "--speed", "400", "--device", "cpu",
         "--model", str(demo_model), "--json"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["signals"] > 0, proc.stderr[-3000:]
    assert summary["events"] > 0
    assert summary["labelled_signals"] > 0  # realised labels matched signals by seq
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["latency_p50_us"] > 0
    assert not _leftovers("lobdemo"), "a demo process was left running"
