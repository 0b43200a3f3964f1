"""Multi-horizon heads: dataset labels, the joint loss, the artifact, both runners, the signal
record v2 (binary and JSON), the backtest's per-head scores and the daemon over ipc://."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lobstream.engine.signals import (
    decode,
    decode_binary,
    encode_binary,
    encode_json,
    fill_probs,
    signal_records,
)
from lobstream.kernels.dtypes import SIGNAL_DTYPE, SIGNAL_V2_DTYPE
from lobstream.models.artifact import ArtifactError, export_model, load_model
from lobstream.models.causal.runner import IncrementalRunner
from lobstream.models.heads import (
    HeadsLoss,
    head_manifest,
    n_heads,
    parse_horizons,
    parse_loss_weights,
)
from lobstream.models.manifest import LabelDef, label_def_from_manifest
from lobstream.models.metrics import confusion_matrix, report_from_confusion
from lobstream.models.runner import ModelRunner
from lobstream.models.zoo import build_model
from lobstream.replay.backtest.evaluator import StreamingEvaluator, evaluator_for
from lobstream.replay.backtest.run import labels_for_rows
from lobstream.replay.backtest.trading import TradingConfig
from lobstream.replay.feed.synthetic import synthetic_events
from lobstream.replay.training.dataset import dataset_from_events
from lobstream.testkit.backtest import run_backtest
from tests.test_daemon import MANIFEST, PROB_ATOL, Running, make_cfg

T, L, F = 30, 2, 8
HORIZONS = (3, 8, 20)
SYMBOLS = ["AAA", "BBB"]


def _heads_manifest() -> dict:
    heads = [
        {
            "label": {"kind": "future", "horizon": k, "unit": "events", "alpha": 1e-5 * (1 + i)},
            "loss_weight": w,
        }
        for i, (k, w) in enumerate(zip(HORIZONS, (0.2, 0.5, 0.3), strict=True))
    ]
    return {**MANIFEST, "label": heads[0]["label"], "heads": heads}


def export_heads(path, arch: str = "cnn_causal", seed: int = 0) -> dict:
    """A small 3-head artifact (T=30, L=2) with weights large enough to move; its manifest."""
    torch.manual_seed(seed)
    small = {
        "cnn_causal": {"channels": (4, 8), "feature_dim": 8, "hidden": 16},
        "cnn": {"channels": (4,), "hidden": 8},
    }[arch]
    model = build_model(arch, T=T, levels=L, n_classes=3 * len(HORIZONS), **small).eval()
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.mul_(3.0)
    export_model(model, path, _heads_manifest())
    return load_model(path)[1]


@pytest.fixture(scope="module")
def heads_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("heads") / "heads.pt"
    export_heads(path)
    return path


def _events(n: int, seed: int, n_inst: int = 2) -> np.ndarray:
    return synthetic_events(n, n_instruments=n_inst, seed=seed, levels=4, snapshot_every=500)


# --- parsing and the loss --------------------------------------------------------------------


def test_parse_horizons_and_weights():
    assert parse_horizons("10,50,100") == (10.0, 50.0, 100.0)
    assert parse_loss_weights("2,5,3", 3) == pytest.approx((0.2, 0.5, 0.3))
    assert parse_loss_weights(None, 4) == (0.25,) * 4
    for bad in ("", "10,10", "0,5", "a", "1,2,3,4,5"):
        with pytest.raises(ValueError):
            parse_horizons(bad)
    for bad in ("1,2", "-1,1,1", "0,0,0"):
        with pytest.raises(ValueError):
            parse_loss_weights(bad, 3)


def test_heads_loss_is_the_weighted_sum_of_per_head_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(17, 9, generator=g)
    y = torch.randint(0, 3, (17, 3), generator=g)
    cw = np.array([[1.0, 2.0, 0.5], [1.0, 1.0, 1.0], [0.3, 1.2, 3.0]])
    got = HeadsLoss(cw, (0.2, 0.5, 0.3))(logits, y)
    want = sum(
        w
        * nn.CrossEntropyLoss(weight=torch.tensor(cw[h], dtype=torch.float32))(
            logits[:, 3 * h : 3 * h + 3], y[:, h]
        )
        for h, w in enumerate((0.2, 0.5, 0.3))
    )
    torch.testing.assert_close(got, want)
    # one head: exactly the single-head loss
    one = HeadsLoss(cw[:1], (1.0,))(logits[:, :3], y[:, 0])
    assert torch.equal(
        one, nn.CrossEntropyLoss(weight=torch.tensor(cw[0]).float())(logits[:, :3], y[:, 0])
    )


# --- dataset ---------------------------------------------------------------------------------


def test_multi_head_dataset_labels_are_each_single_head_label():
    ev = _events(6000, seed=3)
    heads = [LabelDef(k) for k in HORIZONS]
    multi = dataset_from_events([("syn", ev)], heads, window=T, levels=L, n_instruments=2)
    assert multi.n_heads == 3 and len(multi.alphas) == 3
    for h, lb in enumerate(heads):
        one = dataset_from_events([("syn", ev)], lb, window=T, levels=L, n_instruments=2)
        assert multi.alphas[h] == pytest.approx(one.alpha)
        for part in ("train", "val", "test"):
            mw, sw = multi.parts[part], one.parts[part]
            assert mw.labels.shape == (len(mw), 3)
            # every multi-head window is a window of the single-head set, with its label
            # (the longest horizon's gap and every head's label: a subset)
            pos = {int(e): i for i, e in enumerate(sw.ends)}
            assert len(mw) > 0 and all(int(e) in pos for e in mw.ends)
            idx = np.array([pos[int(e)] for e in mw.ends], dtype=np.int64)
            np.testing.assert_array_equal(mw.labels[:, h], sw.labels[idx])
        assert multi.label_dict(h)["horizon"] == lb.horizon


# --- artifact and runners --------------------------------------------------------------------


def test_artifact_heads_must_match_the_output_width(tmp_path):
    model = build_model("cnn", T=T, levels=L, channels=(4,), hidden=8)  # 3 outputs
    with pytest.raises(ArtifactError, match="n_classes = 3 but 3 head"):
        export_model(model, tmp_path / "bad.pt", _heads_manifest())


def test_runners_return_per_head_probabilities(heads_pt):
    module, manifest = load_model(heads_pt)
    assert n_heads(manifest) == 3
    runner = ModelRunner(module, manifest, device="cpu", max_batch=16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 1, T, F)).astype(np.float32)
    p = runner.predict(x)
    assert p.shape == (12, 3, 3)
    np.testing.assert_allclose(p.sum(axis=2), 1.0, atol=1e-6)
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy().reshape(12, 3, 3)
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=2, keepdims=True), atol=1e-6)
    assert np.ptp(p[:, 1, 0]) > 1e-3  # the heads' answers move with the window
    # the incremental runner gives the same per-head probabilities as full windows
    inc = IncrementalRunner(module, manifest, n_slots=1)
    rows = rng.standard_normal((T + 40, F)).astype(np.float32)
    out = inc.push_many(0, rows)
    assert out.shape == (T + 40, 3, 3) and np.isnan(out[: T - 1]).all()
    full = runner.predict(np.lib.stride_tricks.sliding_window_view(rows, (T, F))[:, 0])
    np.testing.assert_allclose(out[T - 1 :], full, atol=1e-5)


# --- signal record v2 ------------------------------------------------------------------------


def test_signal_v2_roundtrip_binary_and_json():
    heads = _heads_manifest()["heads"]
    rec = signal_records(4, heads)
    assert rec.dtype == SIGNAL_V2_DTYPE and rec.dtype.itemsize == 128
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=(4, 3)).astype(np.float32)
    fill_probs(rec, probs)
    rec["instrument"], rec["seq"] = [0, 1, 0, 1], [5, 6, 7, 8]
    np.testing.assert_array_equal(rec["prob"], probs[:, 0])
    np.testing.assert_array_equal(rec["head_pred"][:, :3], probs.argmax(axis=2))
    back = decode(encode_binary(rec))
    assert back.dtype == SIGNAL_V2_DTYPE and np.array_equal(back.view(np.uint8), rec.view(np.uint8))
    one = decode(encode_json(rec[2], "AAA"))
    assert one.dtype == SIGNAL_V2_DTYPE
    for name in ("instrument", "seq", "n_heads", "version", "horizon", "head_pred", "pred"):
        np.testing.assert_array_equal(one[name][0], rec[name][2])
    np.testing.assert_allclose(one["head_prob"][0], rec["head_prob"][2], rtol=1e-6)
    # single-head artifacts keep the v1 record, and v1 payloads decode as v1
    v1 = signal_records(2, None)
    assert v1.dtype == SIGNAL_DTYPE
    fill_probs(v1, probs[:2, 0])
    assert decode_binary(encode_binary(v1)).dtype == SIGNAL_DTYPE
    assert b'"heads"' not in encode_json(v1[0], "AAA")


# --- backtest --------------------------------------------------------------------------------


def test_backtest_scores_each_head_like_a_single_head_artifact(heads_pt):
    module, manifest = load_model(heads_pt)
    ev = _events(5000, seed=9)
    runner = ModelRunner(module, manifest, device="cpu", max_batch=64)
    cfg = TradingConfig(threshold=0.5, horizon=HORIZONS[0])
    chunks = [ev[i : i + 700] for i in range(0, len(ev), 700)]
    multi = evaluator_for(manifest, cfg, (0.5, 0.6), n_instruments=2)
    res = run_backtest(chunks, runner, manifest, n_instruments=2, on_rows=multi.add)
    multi.finish()
    summary, _ = multi.summary(res)
    assert res.probs.shape[1:] == (3, 3) and len(summary["heads"]) == 3
    assert summary["metrics"] == summary["heads"][0]["metrics"]
    for h in range(3):
        hm = head_manifest(manifest, h)
        # independent of the evaluators: the per-row labels of that head and the argmax
        y = labels_for_rows(res.meta, label_def_from_manifest(hm))
        ok = ~np.isnan(res.probs[:, h, 0]) & (y >= 0)
        want = report_from_confusion(confusion_matrix(y[ok], res.probs[ok, h].argmax(axis=1)))
        got = summary["heads"][h]
        assert got["n_scored"] == int(ok.sum())
        assert got["metrics"]["confusion"] == want["confusion"]
        assert got["trading"]["config"]["horizon"] == HORIZONS[h]
        assert got["model"]["label"]["horizon"] == HORIZONS[h]
        # and the same as a single-head evaluator given that head's column
        single = StreamingEvaluator(
            hm, TradingConfig(threshold=0.5, horizon=HORIZONS[h]), (0.5, 0.6), n_instruments=2
        )
        single.add(res.meta, res.probs[:, h])
        single.finish()
        s1, _ = single.summary(res)
        assert s1["trading"]["sweep"] == got["trading"]["sweep"]


# --- daemon ----------------------------------------------------------------------------------


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "full-window"])
@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_daemon_publishes_every_head(heads_pt, ipc_dir, incremental, encoding):
    cfg = make_cfg(
        ipc_dir,
        heads_pt,
        SYMBOLS,
        model={"window": T, "incremental": incremental},
        ingest={"max_drain": 1},
        publish={"encoding": encoding},
    )
    events = _events(2500, seed=13)
    run = Running(cfg, SYMBOLS)
    try:
        assert run.daemon.model.inference == ("incremental" if incremental else "full-window")
        run.wait_messages(run.send(events))
        signals, _ = run.collect()
    finally:
        run.stop()
    assert len(signals) >= 20 and signals.dtype == SIGNAL_V2_DTYPE
    module, manifest = load_model(heads_pt)
    runner = ModelRunner(module, manifest, device="cpu", max_batch=64)
    res = run_backtest(
        [events[i : i + 500] for i in range(0, len(events), 500)], runner, manifest, n_instruments=2
    )
    ok = ~np.isnan(res.probs[:, 0, 0])
    keys = zip(res.meta["instrument"][ok].tolist(), res.meta["seq"][ok].tolist(), strict=True)
    expected = dict(zip(keys, res.probs[ok], strict=True))
    assert (signals["n_heads"] == 3).all() and (signals["version"] == 2).all()
    np.testing.assert_array_equal(signals["horizon"][:, :3], np.tile(HORIZONS, (len(signals), 1)))
    for s in signals:
        want = expected[(int(s["instrument"]), int(s["seq"]))]
        np.testing.assert_allclose(s["head_prob"][:3], want, atol=PROB_ATOL, rtol=0)
        np.testing.assert_allclose(s["prob"], want[0], atol=PROB_ATOL, rtol=0)
        np.testing.assert_array_equal(s["head_pred"][:3], want.argmax(axis=1))


# --- training --------------------------------------------------------------------------------


def test_train_cli_multi_horizon_manifest_and_reproduce_line(tmp_path):
    """``--horizons`` trains one network with a head per horizon: the manifest lists every
    head with its label, loss weight, metrics and baselines, the primary's are the top-level
    ones, the reproduce line rebuilds the same options, and a fine-tune must keep the heads."""
    import shlex

    from click.testing import CliRunner

    from lobstream.cli.train import train
    from lobstream.replay.samples import GOOG_MESSAGE_10

    out = tmp_path / "m.pt"
    args = [str(GOOG_MESSAGE_10), "--arch", "binctabl", "--horizons", "5,20"]
    args += ["--loss-weights", "1,3", "--max-events", "4000", "--window", "10", "--levels", "2"]
    args += ["--epochs", "2", "--max-train-windows", "300", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    assert "head 1 of 2 (loss weight 0.75)" in result.output
    _, manifest = load_model(out)
    heads = manifest["heads"]
    assert [h["label"]["horizon"] for h in heads] == [5, 20]
    assert [h["loss_weight"] for h in heads] == [0.25, 0.75]
    assert manifest["label"] == heads[0]["label"] and manifest["config"]["n_classes"] == 6
    assert manifest["metrics"] == heads[0]["metrics"]
    assert manifest["training"]["loss_weights"] == [0.25, 0.75]
    for h in heads:
        assert set(h["metrics"]) == {"validation", "test"} and "trend" in h["baselines"]
    sel = manifest["selection"]["validation"]
    want = sum(h["loss_weight"] * h["metrics"]["validation"]["f1_macro"] for h in heads)
    assert sel == pytest.approx(want)
    words = shlex.split(manifest["reproduce"])
    params = train.make_context("train", words[2:]).params
    assert params["horizons"] == "5,20" and params["loss_weights"] == "1,3"
    assert params["horizon"] is None
    # fine-tuning keeps the head count: a single-horizon run from this parent is refused
    bad = [str(GOOG_MESSAGE_10), "--init", str(out), "--horizon", "5", "--window", "10"]
    bad += ["--levels", "2", "--max-events", "4000", "--out", str(tmp_path / "f.pt")]
    r = CliRunner().invoke(train, bad)
    assert r.exit_code != 0 and "heads" in r.output
    r = CliRunner().invoke(
        train, [str(GOOG_MESSAGE_10), "--horizon", "5", "--horizons", "5,9", "--out", "x.pt"]
    )
    assert r.exit_code != 0 and "not both" in r.output


def test_backtest_cli_reports_every_head(heads_pt):
    import json

    from click.testing import CliRunner

    from lobstream.cli.backtest import backtest
    from lobstream.replay.samples import GOOG_MESSAGE_10

    args = [str(GOOG_MESSAGE_10), "--model", str(heads_pt), "--max-rows", "3000"]
    r = CliRunner().invoke(backtest, [*args, "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.splitlines()[-1])
    assert [h["model"]["label"]["horizon"] for h in s["heads"]] == list(HORIZONS)
    assert [h["trading"]["config"]["horizon"] for h in s["heads"]] == list(HORIZONS)
    assert s["heads"][0]["metrics"] == s["metrics"]
    table = CliRunner().invoke(backtest, args)
    assert table.exit_code == 0 and "every head" in table.output


def test_explain_a_head(heads_pt, tmp_path):
    """``lobstream explain --head H`` attributes that head's class; a head past the last is
    refused naming the count."""
    import json

    from click.testing import CliRunner

    from lobstream.cli.explain import explain as explain_cmd
    from lobstream.models.explain import HeadOf, eager_model, explain, select_head
    from lobstream.replay.samples import GOOG_MESSAGE_10

    module, manifest = load_model(heads_pt)
    x = np.random.default_rng(2).standard_normal((4, T, F)).astype(np.float32)
    full = ModelRunner(module, manifest, device="cpu", max_batch=4).predict(x)
    for h in range(3):
        m = select_head(eager_model(module, manifest), manifest, h)
        assert isinstance(m, HeadOf)
        e = explain(m, "cnn_causal", x)
        np.testing.assert_allclose(e.probs, full[:, h], atol=1e-5)
        assert e.maps.shape == (4, T, F) and np.isfinite(e.maps).all()
    args = [str(GOOG_MESSAGE_10), "--model", str(heads_pt), "--row", "400", "--json"]
    r = CliRunner().invoke(explain_cmd, [*args, "--head", "1", "--out", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output.splitlines()[-1])
    assert rec["head"] == 1 and rec["horizon"] == HORIZONS[1]
    r = CliRunner().invoke(explain_cmd, [*args, "--head", "3", "--out", str(tmp_path / "b.png")])
    assert r.exit_code != 0 and "3 head(s)" in r.output
