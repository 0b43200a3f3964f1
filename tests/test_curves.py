"""``lobstream train`` as the README writes it (no --horizon): a default horizon, progress
within an epoch, and the training-curves PNG beside the artifact with its data in the report."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from lobstream.cli.train import train
from lobstream.replay.samples import GOOG_MESSAGE_10

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_readme_train_line_without_horizon_writes_curves(tmp_path):
    out, rep = tmp_path / "m.pt", tmp_path / "m.json"
    # the README's `lobstream train FILES --arch binctabl --out MODEL.pt`, made small
    args = [str(GOOG_MESSAGE_10), "--arch", "binctabl", "--out", str(out)]
    args += ["--max-events", "5000", "--window", "10", "--levels", "2", "--epochs", "3"]
    args += ["--patience", "3", "--max-train-windows", "300", "--device", "cpu"]
    args += ["--report-json", str(rep)]
    r = CliRunner().invoke(train, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(rep.read_text())
    assert summary["label"]["horizon"] == 50.0  # the documented default
    words = shlex.split(summary["reproduce"])
    assert train.make_context("train", words[2:]).params["horizon"] == 50.0

    png = tmp_path / "m.curves.png"  # beside the artifact
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    c = summary["curves"]
    assert c["png"] == str(png)
    hist = summary["training"]["history"]
    assert c["epoch"] == [e["epoch"] for e in hist] == [1, 2, 3]
    assert c["train_loss"] == [e["train_loss"] for e in hist]
    assert c["val_f1_macro"] == [e["val_f1_macro"] for e in hist]
    assert c["best_epoch"] == summary["training"]["best_epoch"]
    assert set(c["baselines_val_f1_macro"]) == {"majority", "logistic", "trend"}
    for name, f1 in c["baselines_val_f1_macro"].items():
        assert f1 == summary["baselines"][name]["validation"]["f1_macro"]
    help_text = CliRunner().invoke(train, ["--help"]).output
    assert "50 when neither" in " ".join(help_text.split())


def test_curves_option_moves_the_png(tmp_path):
    png = tmp_path / "sub" / "c.png"
    args = [str(GOOG_MESSAGE_10), "--horizon", "5", "--out", str(tmp_path / "m.pt")]
    args += ["--max-events", "3000", "--window", "10", "--levels", "2", "--epochs", "1"]
    args += ["--max-train-windows", "100", "--device", "cpu", "--curves", str(png)]
    r = CliRunner().invoke(train, args)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "m.curves.png").exists()


def test_step_progress_counts_windows_within_each_epoch():
    from lobstream.models.train import TrainConfig
    from lobstream.replay.training.pipeline import run_training

    steps, epochs = [], []
    tc = TrainConfig(epochs=2, patience=5, max_train_windows=256, batch_size=64)
    run_training(
        [str(GOOG_MESSAGE_10)], arch="binctabl", horizon=5, window=10, levels=2,
        max_events=3000, train_config=tc, step_progress=steps.append, progress=epochs.append,
    )  # fmt: skip
    for e in (1, 2):
        mine = [s for s in steps if s["epoch"] == e]
        seen = [s["windows"] for s in mine]
        assert seen == sorted(seen) and seen[0] == 64 and len(mine) == 4
        assert {s["total"] for s in mine} == {256}
        assert seen[-1] == epochs[e - 1]["windows"]
        assert mine[-1]["loss"] == pytest.approx(epochs[e - 1]["train_loss"])
        assert all(np.isfinite(s["loss"]) for s in mine)


def test_resolve_heads_default_and_conflict():
    from lobstream.replay.training.pipeline import DEFAULT_HORIZON, resolve_heads

    assert resolve_heads(None, None, None) == ((DEFAULT_HORIZON,), None)
    with pytest.raises(ValueError, match="not both"):
        resolve_heads(10, "10,50", None)


def test_epoch_bar_shows_windows_per_second_and_loss():
    import io

    from rich.console import Console

    from lobstream.cli.train import _EpochBar

    buf = io.StringIO()
    bar = _EpochBar(Console(file=buf, force_terminal=True, width=120), epochs=2)
    for w in (64, 128):
        bar.step({"epoch": 1, "windows": w, "total": 128, "loss": 1.0986})
    bar.step({"epoch": 2, "windows": 64, "total": 128, "loss": 0.75})  # a new bar an epoch
    bar.done()
    text = buf.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert "windows/s" in text and "loss 1.0986" in text and "loss 0.7500" in text
    assert "128/128" in text
    quiet = io.StringIO()  # not a terminal (a log file): no bar, the epoch lines only
    bar = _EpochBar(Console(file=quiet, force_terminal=False), epochs=1)
    bar.step({"epoch": 1, "windows": 64, "total": 128, "loss": 1.0})
    bar.done()
    assert quiet.getvalue() == ""


def test_learning_curve_share_keeps_the_latest_training_rows(tmp_path):
    from lobstream.models.manifest import LabelDef
    from lobstream.replay.training.curves import plot_learning_curve
    from lobstream.replay.training.dataset import build_dataset
    from lobstream.replay.training.learning_curve import latest_share
    from lobstream.replay.training.pipeline import _n_rows

    ds = build_dataset([GOOG_MESSAGE_10], LabelDef(5), window=10, levels=2, max_events=4000)
    tr = ds.parts["train"]
    (a, b), = (s.parts["train"] for s in ds.streams)  # fmt: skip
    half = latest_share(0.5)(ds, tr)
    assert half.ends.min() >= b - (b - a) // 2 - 1 and half.ends.max() == tr.ends.max()
    assert abs(len(half) - len(tr) / 2) <= 10
    assert _n_rows(tr) == tr.ends.max() - tr.ends.min() + 10  # contiguous windows
    assert len(latest_share(1.0)(ds, tr)) == len(tr)
    with pytest.raises(ValueError):
        latest_share(0.0)
    pts = [
        {"name": "m", "training_rows": r, "val_f1_macro": v, "test_f1_macro": v - 0.01}
        for r, v in ((1000, 0.3), (2000, 0.35), (4000, 0.4))
    ]
    png = plot_learning_curve(tmp_path / "lc.png", pts)
    assert png.read_bytes()[:8] == PNG_MAGIC
