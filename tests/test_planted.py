"""The planted-signal market (replay.feed.synthetic.planted) and its Bayes oracle.

The generator draws each row's next mid move from probabilities it records; these tests check
that the book the consumer rebuilds is the generator's, that the recorded probabilities are
the label's (calibrated on the realised labels of the normal dataset path), that a window's
own rows give them back, and that the oracle is a ceiling worth having (far above majority;
on the nonlinear signal far above the logistic baseline too). The slow test runs a small
``bench.learn``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lobstream.bench import learn
from lobstream.kernels.book import apply_events, best_prices, levels, new_book, new_report
from lobstream.kernels.dtypes import CODE_NAMES, FLAG_LAST
from lobstream.models.baselines import baseline_reports
from lobstream.models.manifest import LabelDef
from lobstream.models.metrics import classification_report
from lobstream.replay.feed.synthetic import planted_events, probs_from_rows
from lobstream.replay.feed.synthetic.planted import LABEL_ALPHA, LABEL_HORIZON
from lobstream.replay.training.dataset import build_dataset

ROWS = 40_000


@pytest.fixture(scope="module", params=["linear", "nonlinear"])
def market(request, tmp_path_factory):
    m = planted_events(ROWS, request.param, seed=3)
    path = learn.write_market(m, tmp_path_factory.mktemp("planted") / f"{request.param}.parquet")
    ds = build_dataset([path], LabelDef(LABEL_HORIZON, alpha=LABEL_ALPHA), window=20,
                       levels=10, features="ticks_from_mid")  # fmt: skip
    return m, ds


def test_deterministic_and_checked() -> None:
    a, b = planted_events(2_000, "nonlinear", seed=1), planted_events(2_000, "nonlinear", seed=1)
    c = planted_events(2_000, "nonlinear", seed=2)
    # field by field: a record's padding byte is whatever the kernel's store left there
    assert len(a.events) == len(b.events) and (a.events == b.events).all()
    assert np.array_equal(a.probs, b.probs)
    assert len(a.events) != len(c.events) or not (a.events == c.events).all()
    with pytest.raises(ValueError, match="signal"):
        planted_events(10, "quadratic")
    with pytest.raises(ValueError, match="levels"):
        planted_events(10, levels=4)
    with pytest.raises(ValueError, match="start_mid"):
        planted_events(10, start_mid=20)


def test_the_consumers_book_is_the_generators() -> None:
    """Every row is one packet ending in LAST: a full book of 10 levels a side, spread 2 ticks,
    no condition reported, and the mid moves by at most one tick a row."""
    m = planted_events(5_000, "linear", seed=0)
    last = np.flatnonzero(m.events["flags"] & FLAG_LAST)
    assert np.array_equal(last, m.row_event)
    book, rep = new_book(1), new_report()
    mids = []
    for a, b in zip(np.r_[0, last[:-1] + 1], last + 1, strict=True):
        apply_events(book, m.events[a:b], rep)
        bb, ba = best_prices(book, 0)
        assert ba - bb == 2
        assert len(levels(book, 0, 0, 20)) == 10 and len(levels(book, 0, 1, 20)) == 10
        mids.append((ba + bb) // 2)
    assert rep[0].sum() == 0, dict(zip(CODE_NAMES, rep[0], strict=True))
    assert set(np.unique(np.diff(mids))) <= {-1, 0, 1}


def test_probabilities_are_the_labels_and_read_from_the_window(market) -> None:
    m, ds = market
    ends = np.concatenate([p.ends for p in ds.parts.values()])
    y = np.concatenate([p.labels for p in ds.parts.values()]).astype(np.int64)
    p = m.oracle(ds.meta["event_index"][ends])
    # a window's own rows give the recorded probabilities back
    np.testing.assert_allclose(probs_from_rows(ds.raw, ends, m.signal, m.beta, m.gamma, m.lag),
                               p, atol=1e-9, rtol=0)  # fmt: skip
    # calibration: in each decile of a class's predicted probability the realised share of
    # that class is the mean prediction, within 4 binomial standard errors (and 0.02)
    for k in range(3):
        edges = np.quantile(p[:, k], np.linspace(0, 1, 11))
        bins = np.clip(np.searchsorted(edges, p[:, k], side="right") - 1, 0, 9)
        for b in range(10):
            sel = bins == b
            if sel.sum() < 200:
                continue
            pred, seen = p[sel, k].mean(), (y[sel] == k).mean()
            se = np.sqrt(pred * (1 - pred) / sel.sum())
            assert abs(seen - pred) <= max(4 * se, 0.02), (m.signal, k, b, pred, seen)
    # the realised log-loss of the truth is below that of any constant forecast
    ll = -np.mean(np.log(p[np.arange(len(y)), y]))
    prior = np.bincount(y, minlength=3) / len(y)
    assert ll < -np.mean(np.log(prior[y])) - 0.05


def test_bayes_beats_majority_and_the_nonlinear_signal_beats_logistic(market) -> None:
    m, ds = market
    tr, te = ds.parts["train"], ds.parts["test"]
    oracle = classification_report(
        te.labels.astype(np.int64), m.oracle(ds.meta["event_index"][te.ends]).argmax(axis=1)
    )["f1_macro"]
    base = baseline_reports(ds.raw, 10, 20, (tr.ends, tr.labels), {"test": (te.ends, te.labels)})
    majority, logistic = base["majority"]["test"]["f1_macro"], base["logistic"]["test"]["f1_macro"]
    assert oracle > majority + 0.3
    assert oracle >= logistic - 0.01  # the ceiling (up to sampling noise of the test part)
    if m.signal == "nonlinear":
        # neither the shape nor the flow alone tells the direction: a model linear in
        # imbalances and flow is far from the ceiling
        assert oracle - logistic > 0.2
    else:
        assert oracle - logistic < 0.05


@pytest.mark.slow
def test_bench_learn_small_run(tmp_path: Path, capsys) -> None:
    """A small bench.learn: every part of the JSON, the oracle ceiling, and the streaming HRNN
    learning the linear signal well above majority."""
    rc = learn.main(["--json", "--quick", "--archs", "hrnn_causal", "--out", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    res = {r["signal"]: r for r in out["results"]}
    assert set(res) == {"linear", "nonlinear"}
    for r in res.values():
        orc, maj = r["oracle"]["test"]["f1_macro"], r["baselines"]["majority"]["test"]
        assert orc > maj + 0.3
        hr = r["models"]["hrnn_causal"]
        assert set(hr["bar"]) >= {"met", "share_of_oracle_margin", "vs_logistic"}
        assert (tmp_path / f"{r['signal']}_hrnn_causal.pt").exists()
    lin = res["linear"]
    assert lin["models"]["hrnn_causal"]["test"] > lin["baselines"]["majority"]["test"] + 0.2


@pytest.mark.slow
def test_bench_learn_train_seed_keeps_the_market(tmp_path: Path, capsys) -> None:
    """--train-seed changes the model's initialisation and window order only: the market, the
    oracle and the baselines stay those of --seed, the model's training does not."""
    base = ["--json", "--quick", "--archs", "binctabl", "--signals", "linear", "--epochs", "1"]
    outs = []
    for seed in ("0", "1"):
        assert learn.main([*base, "--train-seed", seed, "--out", str(tmp_path / seed)]) == 0
        outs.append(json.loads(capsys.readouterr().out)["results"][0])
    a, b = outs
    assert a["oracle"] == b["oracle"] and a["baselines"] == b["baselines"]
    loss_a, loss_b = (r["models"]["binctabl"]["history"][0]["train_loss"] for r in (a, b))
    assert loss_a != loss_b
