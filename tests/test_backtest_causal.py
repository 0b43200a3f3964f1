"""The backtest of a causal artifact: incremental scoring equals the full-window path.

Both scorers over the same rows (several instruments, snapshots, chunks of every size, an
instrument id the runner had no slot for yet): same NaN rows, probabilities within ``ATOL``,
same report. ``ATOL`` = 1e-5: tests/test_incremental.py measures at most 6e-8 between the
kernels and the torch model, so this only leaves room for other CPUs' float32 sums.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lobstream.models.artifact import export_model, load_model
from lobstream.models.causal.runner import IncrementalRunner
from lobstream.models.scoring import (
    CausalScorer,
    WindowScorer,
    choose_scorer,
    make_scorer,
    scorer_for,
)
from lobstream.models.zoo import build_model
from lobstream.replay.backtest.evaluator import stream_backtest
from lobstream.replay.backtest.trading import trading_config_for
from lobstream.replay.feed.synthetic import synthetic_events
from lobstream.testkit.backtest import evaluate, run_backtest

ATOL = 1e-5
T, L = 30, 2
SMALL = {
    "cnn_causal": {"channels": (4, 8), "feature_dim": 8, "hidden": 16},
    "deeplob_causal": {"conv_channels": 8, "inception_channels": 8, "lstm_hidden": 8},
}


SCALE = {"cnn_causal": 3.0, "deeplob_causal": 1.5}


def _manifest() -> dict:
    return {
        # one scale for instruments at any price level
        "feature": {"kind": "ticks_from_mid", "params": [1.0, 0.0, 0.0, 0.0]},
        "label": {"horizon": 5, "unit": "events", "alpha": 1e-5, "kind": "future"},
        "trained_on": {"note": "untrained test model", "class_balance": {"train": [0.3, 0.4, 0.3]}},
        "metrics": {},
    }


def _export(path: Path, arch: str, levels: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(arch, T=T, levels=levels, **SMALL[arch]).eval()
    with torch.no_grad():
        # an initialised model answers nearly the same for every window: larger weights make
        # its argmax move, so the comparison means something. DeepLOB's newest-tap identity
        # init passes the input through its 15 layers, so x3 a layer would grow its features
        # to ~1e5, where float32 round-off alone exceeds ATOL: x1.5 keeps them ~1e2
        scale = SCALE[arch]
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.mul_(scale)
    export_model(model, path, _manifest())
    return path


@pytest.fixture(scope="module", params=sorted(SMALL))
def artifact(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("causal") / f"{request.param}.pt"
    return _export(path, request.param, L)


@pytest.fixture(scope="module")
def events() -> np.ndarray:
    # three instruments, snapshots mid-stream: the full-window path's windows run across them
    return synthetic_events(6000, n_instruments=3, seed=5, levels=4, snapshot_every=700)


def _chunks(events: np.ndarray, size: int) -> list[np.ndarray]:
    return [events[s : s + size] for s in range(0, len(events), size)]


def _both(path: Path, events: np.ndarray, chunk: int, n_instruments: int):
    module, manifest = load_model(path)
    out = {}
    for name in ("full-window", "incremental"):
        scorer = make_scorer(
            module, manifest, scorer=name, batch=64, threads=1, n_instruments=n_instruments
        )
        out[name] = run_backtest(
            _chunks(events, chunk), scorer, manifest, n_instruments=n_instruments
        )
    return out["full-window"], out["incremental"], manifest


@pytest.mark.parametrize(("chunk", "n_instruments"), [(97, 1), (2500, 3), (10**6, 2)])
def test_incremental_probabilities_equal_full_window(artifact, events, chunk, n_instruments):
    full, inc, manifest = _both(artifact, events, chunk, n_instruments)
    assert (full.scorer, inc.scorer) == ("full-window", "incremental")
    np.testing.assert_array_equal(full.meta, inc.meta)
    assert len(np.unique(full.meta["instrument"])) == 3
    nan_full, nan_inc = np.isnan(full.probs), np.isnan(inc.probs)
    np.testing.assert_array_equal(nan_full, nan_inc)
    # exactly the rows with fewer than T - 1 rows of their instrument before them
    for i in range(3):
        idx = np.flatnonzero(full.meta["instrument"] == i)
        assert nan_full[idx[: T - 1], 0].all() and not nan_full[idx[T - 1 :], 0].any()
    np.testing.assert_allclose(inc.probs, full.probs, rtol=0, atol=ATOL)
    # the model's answer moves between rows, so equal reports below are not a coincidence
    assert np.nanstd(full.probs[:, 1]) > 0.01
    assert inc.n_windows == full.n_windows == int((~nan_full[:, 0]).sum())
    cfg = trading_config_for(manifest, threshold=0.4)
    a, _ = evaluate(full, manifest, cfg, thresholds=(0.35, 0.4, 0.5))
    b, _ = evaluate(inc, manifest, cfg, thresholds=(0.35, 0.4, 0.5))
    assert (a.pop("scorer"), b.pop("scorer")) == ("full-window", "incremental")
    for key in ("n_rows", "n_windows", "n_scored", "metrics", "baselines", "trading"):
        assert a[key] == b[key], key


def test_streaming_backtest_with_an_incremental_runner(artifact, events):
    """stream_backtest (what the CLI runs) takes an IncrementalRunner as its runner."""
    module, manifest = load_model(artifact)
    cfg = trading_config_for(manifest, threshold=0.4)
    runner = IncrementalRunner(module, manifest, n_slots=3)
    res, ev = stream_backtest(_chunks(events, 512), runner, manifest, cfg, n_instruments=3)
    full = run_backtest(
        _chunks(events, 512), make_scorer(module, manifest, scorer="full-window"), manifest
    )
    assert res.scorer == "incremental" and res.n_windows == full.n_windows
    s, _ = ev.summary(res)
    f, _ = evaluate(full, manifest, cfg)
    assert s["scorer"] == "incremental"
    assert s["metrics"] == f["metrics"] and s["n_scored"] == f["n_scored"]


def test_scorer_choice(artifact, tmp_path):
    module, manifest = load_model(artifact)
    assert choose_scorer(manifest) == "incremental"
    assert choose_scorer(manifest, "full-window") == "full-window"
    assert isinstance(make_scorer(module, manifest), CausalScorer)
    plain = dict(manifest)
    del plain["causal"]
    assert choose_scorer(plain) == "full-window"
    with pytest.raises(ValueError, match="not causal"):
        choose_scorer(plain, "incremental")
    with pytest.raises(ValueError, match="expected one of"):
        choose_scorer(manifest, "fast")
    if torch.cuda.is_available():
        # on a GPU big full-window batches beat the CPU kernels
        assert choose_scorer(manifest, device="cuda") == "full-window"
    # a bare runner: slots as built, a clear error beyond them
    sc = scorer_for(IncrementalRunner(module, manifest, n_slots=1), T, 4 * L)
    assert isinstance(sc, CausalScorer)
    with pytest.raises(ValueError, match="n_slots > 1"):
        run_backtest([synthetic_events(200, n_instruments=2, seed=1, levels=4)], sc, manifest)
    with pytest.raises(ValueError, match="T=30, F=8"):
        scorer_for(IncrementalRunner(module, manifest, n_slots=1), 20, 4 * L)
    assert isinstance(make_scorer(module, manifest, scorer="full-window"), WindowScorer)


def test_cli_incremental_equals_full_window(tmp_path):
    """`lobstream backtest --json` on the GOOG sample with a causal model, both scorers."""
    from click.testing import CliRunner

    from lobstream.cli.backtest import backtest
    from lobstream.replay.samples import GOOG_MESSAGE_10

    path = _export(tmp_path / "cnn_causal.pt", "cnn_causal", 10, seed=3)
    base = [str(GOOG_MESSAGE_10), "--model", str(path), "--max-rows", "2000", "--json"]
    base += ["--threshold", "0.34", "--cost-per-share", "0.001"]
    outs = {}
    for flag in ([], ["--full-window"], ["--scorer", "incremental"]):
        res = CliRunner().invoke(backtest, base + flag)
        assert res.exit_code == 0, res.output
        out = json.loads(res.output.strip().splitlines()[-1])
        outs[out.pop("scorer"), bool(flag)] = out
    assert set(outs) == {("incremental", False), ("full-window", True), ("incremental", True)}
    a, b = outs["incremental", False], outs["full-window", True]
    assert a["n_windows"] == 2000 - T + 1 and a["n_scored"] > 1000
    assert a["trading"]["n_trades"] > 0
    for key in ("n_rows", "n_windows", "n_scored", "metrics", "baselines", "trading"):
        assert a[key] == b[key], key
    bad = CliRunner().invoke(backtest, base + ["--full-window", "--scorer", "incremental"])
    assert bad.exit_code != 0 and "contradicts" in bad.output
