"""Training: windows gather, a tiny run learns a planted signal, reruns are identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobstream.models.train import TrainConfig, Windows, evaluate, predict, train_model
from lobstream.models.zoo import build_model

T, LEVELS = 8, 2
F = 4 * LEVELS


def _planted(n_rows: int, seed: int):
    """Rows whose window mean of column 0 decides the class (down / flat / up)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n_rows, F)).astype(np.float32)
    ends = np.arange(T - 1, n_rows)
    m = np.convolve(rows[:, 0], np.ones(T) / T, mode="valid")  # m[i] = mean rows[i:i+T, 0]
    labels = np.where(m > 0.2, 2, np.where(m < -0.2, 0, 1)).astype(np.int8)
    return Windows(rows, ends, labels, T)


def test_windows_gather_by_index():
    rows = np.arange(20 * F, dtype=np.float32).reshape(20, F)
    w = Windows(rows, np.array([T - 1, 12, 19]), np.array([0, 1, 2]), T)
    b = w.batch(np.array([2, 0]))
    assert b.shape == (2, 1, T, F) and b.flags.c_contiguous
    np.testing.assert_array_equal(b[0, 0], rows[12:20])
    np.testing.assert_array_equal(b[1, 0], rows[0:T])
    assert len(w.subset(np.array([1]))) == 1
    with pytest.raises(ValueError, match="window ends"):
        Windows(rows, np.array([2]), np.array([0]), T)


def _run(seed=0):
    torch.manual_seed(seed)
    model = build_model("cnn", T=T, levels=LEVELS, channels=(8,), hidden=16)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=seed, max_train_windows=1500)
    return train_model(model, _planted(3000, 1), _planted(800, 2), cfg)


def test_tiny_training_beats_chance_and_reproduces():
    seen = []
    torch.manual_seed(0)
    model = build_model("cnn", T=T, levels=LEVELS, channels=(8,), hidden=16)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=0, max_train_windows=1500)
    res = train_model(model, _planted(3000, 1), _planted(800, 2), cfg, progress=seen.append)
    assert [e["epoch"] for e in seen] == list(range(1, len(seen) + 1))
    assert all(e["windows"] == 1500 for e in seen)
    test = _planted(800, 3)
    rep = evaluate(res.model, test)
    assert rep["f1_macro"] > 0.6  # chance is about 1/3
    assert res.val_metrics["f1_macro"] == max(e["val_f1_macro"] for e in res.history)
    again = _run(0)
    assert [e["train_loss"] for e in again.history] == [e["train_loss"] for e in res.history]
    pred, prob = predict(res.model, test)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    assert pred.shape == (800 - T + 1,)


def test_early_stopping_and_empty_input():
    model = build_model("cnn", T=T, levels=LEVELS, channels=(8,), hidden=16)
    noise = _planted(600, 4)
    shuffled = Windows(
        noise.rows, noise.ends, np.random.default_rng(0).permutation(noise.labels), T
    )
    res = train_model(model, shuffled, _planted(300, 5), TrainConfig(epochs=30, patience=1))
    assert len(res.history) < 30
    assert res.history[-1]["epoch"] - res.best_epoch == 1
    empty = Windows(noise.rows, np.zeros(0, np.int64), np.zeros(0, np.int8), T)
    with pytest.raises(ValueError, match="need training and validation windows"):
        train_model(model, empty, noise, TrainConfig(epochs=1))


def test_train_cli_end_to_end_on_goog_slice(data_dir, tmp_path):
    """``lobstream train`` on the first events of the GOOG sample writes an artifact that
    ``load_model`` accepts, with the manifest of contract 3 and both baselines' scores."""
    import json
    import shlex

    from click.testing import CliRunner

    from lobstream.cli.train import train
    from lobstream.models.artifact import load_model

    goog = data_dir / "lobster" / "GOOG_2012-06-21_34200000_57600000_message_10.csv.gz"
    if not goog.is_file():
        pytest.skip(f"{goog} not found")
    out, rep = tmp_path / "m.pt", tmp_path / "m.json"
    args = [
        str(goog),
        "--arch",
        "binctabl",
        "--horizon",
        "10",
        "--max-events",
        "6000",
        "--window",
        "20",
        "--epochs",
        "1",
        "--max-train-windows",
        "500",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--report-json",
        str(rep),
    ]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    model, manifest = load_model(out, expect={"T": 20, "L": 10, "arch": "binctabl"})
    assert manifest["label"]["horizon"] == 10 and manifest["label"]["unit"] == "events"
    assert manifest["label"]["alpha"] > 0
    assert manifest["label"]["kind"] == "future"  # the leak-free label is the default
    assert "current mid" in manifest["label"]["smoothing"]
    assert manifest["feature"]["kind"] == "zscore"
    assert set(manifest["baselines"]) == {"majority", "logistic", "trend"}
    assert manifest["baselines"]["trend"]["rule"]["lookback_rows"] == 10
    assert "label future" in result.output and "trend (" in result.output
    assert set(manifest["metrics"]) == {"validation", "test"}
    sizes = manifest["trained_on"]["split_windows"]
    assert all(sizes[p] > 0 for p in ("train", "val", "test"))
    assert manifest["training"]["history"][0]["windows"] == 500
    assert "--max-events 6000" in manifest["reproduce"]
    assert "--label future" in manifest["reproduce"]
    # the reproduce line parses as the same command (flags spelt without a value)
    words = shlex.split(manifest["reproduce"])
    assert words[:2] == ["lobstream", "train"] and "False" not in words
    assert train.make_context("train", words[2:]).params["max_events"] == 6000
    assert json.loads(rep.read_text())["sha256"] in result.output
    x = torch.zeros(2, 1, 20, 40)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("kind", ["smoothed", "spread"])
def test_train_cli_label_kinds_on_bundled_slice(tmp_path, kind):
    """``--label`` picks the kind; the manifest and the JSON report name it, and the backtest's
    reading of the manifest gives the same label definition back."""
    import json

    from click.testing import CliRunner

    from lobstream.cli.train import train
    from lobstream.kernels.labels import spread_alpha
    from lobstream.models.artifact import load_model
    from lobstream.models.manifest import LabelDef, label_def_from_manifest
    from lobstream.replay.samples import GOOG_MESSAGE_10
    from lobstream.replay.training.dataset import build_dataset

    out, rep = tmp_path / "m.pt", tmp_path / "m.json"
    args = [str(GOOG_MESSAGE_10), "--arch", "binctabl", "--horizon", "5", "--label", kind]
    args += ["--max-events", "4000", "--window", "10", "--levels", "2", "--epochs", "1"]
    args += ["--max-train-windows", "200", "--device", "cpu", "--out", str(out)]
    args += ["--report-json", str(rep)]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    _, manifest = load_model(out)
    assert manifest["label"]["kind"] == kind
    assert json.loads(rep.read_text())["label"]["kind"] == kind
    assert label_def_from_manifest(manifest).kind == kind
    assert f"label {kind}" in result.output
    if kind == "spread":
        ds = build_dataset(
            [GOOG_MESSAGE_10], LabelDef(5, kind=kind), window=10, levels=2, max_events=4000
        )
        tr = np.concatenate([ds.meta[a:b] for s in ds.streams for a, b in [s.parts["train"]]])
        assert manifest["label"]["alpha"] == spread_alpha(tr["best_bid"], tr["best_ask"])
        assert manifest["label"]["alpha_rule"] == "mean relative spread of train"


def test_train_cli_refuses_bad_alpha(tmp_path):
    from click.testing import CliRunner

    from lobstream.cli.train import train

    f = tmp_path / "x.csv"
    f.write_text("")
    r = CliRunner().invoke(train, [str(f), "--horizon", "10", "--alpha", "big", "--out", "m.pt"])
    assert r.exit_code != 0 and "'auto'" in r.output


def test_bundled_model_loads_and_beats_both_baselines():
    """The committed artifact matches its metrics file, and its test macro-F1 beats both
    baselines (on the same split)."""
    import json
    from pathlib import Path

    from lobstream.models.artifact import load_model, sha256_file

    assets = Path(__file__).resolve().parents[1] / "models" / "assets"
    card = json.loads((assets / "binctabl_goog.metrics.json").read_text())
    pt = assets / card["artifact"]
    assert sha256_file(pt) == card["sha256"]
    model, manifest = load_model(pt, sha256=card["sha256"], expect={"T": 100, "L": 10})
    assert manifest["metrics"]["test"] == card["metrics"]["test"]
    f1 = manifest["metrics"]["test"]["f1_macro"]
    for name in ("majority", "logistic"):
        assert f1 > manifest["baselines"][name]["test"]["f1_macro"]
    assert manifest["label"]["unit"] == "events" and manifest["feature"]["kind"] == "zscore"
    assert model(torch.zeros(1, 1, 100, 40)).shape == (1, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_training_learns():
    torch.manual_seed(0)
    model = build_model("cnn", T=T, levels=LEVELS, channels=(8,), hidden=16)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, device="cuda", max_train_windows=1500)
    res = train_model(model, _planted(3000, 1), _planted(800, 2), cfg)
    assert next(res.model.parameters()).is_cuda
    assert evaluate(res.model, _planted(800, 3), device="cuda")["f1_macro"] > 0.6
