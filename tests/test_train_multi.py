"""Training over several files and instruments: the bid/ask mirror augmentation (an exact
involution, label-consistent on real rows), per-instrument splits and per-instrument scores."""

from __future__ import annotations

import numpy as np
import pytest

from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import ROW_META_DTYPE
from lobstream.kernels.features import events_to_rows, ticks_from_mid_spec
from lobstream.kernels.labels import classify_change, label_change
from lobstream.kernels.registry import Registry
from lobstream.models.manifest import LabelDef
from lobstream.replay.readers import read_events
from lobstream.replay.samples import GOOG_MESSAGE_10
from lobstream.replay.training.augment import (
    mirror_events,
    mirror_labels,
    mirror_rows,
    with_mirror,
)

LEVELS = 10
# The book's ladder is W ticks, placed around the first price with the price in slot W // 2:
# not symmetric, so at the default width the opening's wide GOOG book re-centres in the
# mirrored market where the real one does not. A ladder wider than the day's range removes it.
WIDE = 1 << 15


def _events(path, n):
    out, got = [], 0
    for b in read_events([path], Registry(), batch_rows=max(n, 1024)):
        out.append(b)
        got += len(b)
        if got >= n:
            break
    return np.concatenate(out)[:n]


def _rows(events, width=WIDE):
    spec = ticks_from_mid_spec(1.0, LEVELS)
    rows = np.empty((len(events), 4 * LEVELS), np.float32)
    meta = np.empty(len(events), ROW_META_DTYPE)
    report = new_report()
    m = events_to_rows(new_book(1, width, LEVELS), spec, events, rows, meta, report)
    assert not report[0].any()  # no dropped, re-centred or bad event in either market
    return rows[:m], meta[:m]


@pytest.fixture(scope="module")
def goog():
    ev = _events(GOOG_MESSAGE_10, 6000)
    return ev, *_rows(ev)


def test_mirror_is_an_exact_involution_on_real_rows(goog):
    _, rows, _ = goog
    m = mirror_rows(rows)
    assert m.dtype == rows.dtype and m.shape == rows.shape
    assert not np.array_equal(m, rows)
    np.testing.assert_array_equal(mirror_rows(m), rows)  # bit for bit
    # level 1: the mirrored ask is the real bid, reflected
    np.testing.assert_array_equal(m[:, 0], -rows[:, 2])
    np.testing.assert_array_equal(m[:, 1], rows[:, 3])
    y = np.array([0, 1, 2, 2, 0], np.int8)
    np.testing.assert_array_equal(mirror_labels(y), [2, 1, 0, 0, 2])
    np.testing.assert_array_equal(mirror_labels(mirror_labels(y)), y)
    with pytest.raises(ValueError):
        mirror_rows(rows[:, :3])


def test_mirror_equals_the_mirrored_market_and_flips_its_labels(goog):
    """The mirror of the real rows is what the row kernel writes for the mirrored market
    (prices reflected, sides swapped), and that market's labels are the real ones flipped."""
    ev, rows, meta = goog
    pivot = int(ev["price"].max()) + 1000
    mev = mirror_events(ev, pivot)
    mrows, mmeta = _rows(mev)
    np.testing.assert_array_equal(mmeta["event_index"], meta["event_index"])
    np.testing.assert_array_equal(mrows, mirror_rows(rows))
    np.testing.assert_array_equal(mmeta["mid"], pivot - meta["mid"])
    # the future label, alpha 0 (exact: the sign of the change): flipped row by row
    y = classify_change(label_change(meta["mid"], 50), 0.0)
    my = classify_change(label_change(mmeta["mid"], 50), 0.0)
    has = y >= 0
    assert has.sum() > 5000 and (y[has] != 1).mean() > 0.3  # real moves, not all flat
    np.testing.assert_array_equal(my[has], mirror_labels(y[has]))
    with pytest.raises(ValueError, match="pivot"):
        mirror_events(ev, int(ev["price"].max()))


def test_with_mirror_doubles_windows_and_keeps_each_half_apart(goog):
    from lobstream.models.causal.seqtrain import plan_chunks
    from lobstream.models.train import Windows

    _, rows, _ = goog
    T = 20
    ends = np.arange(T - 1, len(rows))
    labels = np.random.default_rng(0).integers(0, 3, len(ends)).astype(np.int8)
    w = Windows(rows, ends, labels, T)
    mw = with_mirror(w)
    assert len(mw) == 2 * len(w) and mw.rows.shape[0] == 2 * len(rows)
    k = len(w) + 7  # a mirrored window: the mirror of real window 7, label flipped
    np.testing.assert_array_equal(
        mw.batch(np.array([k]))[0, 0], mirror_rows(w.batch(np.array([7]))[0, 0])
    )
    assert mw.labels[k] == mirror_labels(labels[7:8])[0]
    for c in plan_chunks(mw, 128):  # no sequence-training chunk crosses the two halves
        assert c.stop <= len(rows) or c.start >= len(rows)


def _multi(data_dir):
    files = [
        data_dir / "lobster" / "GOOG_2012-06-21_34200000_57600000_message_10.csv.gz",
        data_dir / "binance_hftbacktest" / "usdm" / "btcusdt_20240808.gz",
    ]
    for f in files:
        if not f.is_file():
            pytest.skip(f"{f} not found")
    return [str(f) for f in files]


def test_instrument_split_gives_each_instrument_its_own_parts(data_dir):
    from lobstream.replay.training.dataset import build_dataset

    files = _multi(data_dir)
    kw = dict(window=10, levels=LEVELS, features="ticks_from_mid", max_events=40000)
    common = build_dataset(files, LabelDef(5), **kw)
    # one clock for 2012 and 2024: some instrument misses a part (GOOG ends in train)
    assert any(b == a for s in common.streams for a, b in s.parts.values())
    ds = build_dataset(files, LabelDef(5), split_scope="instrument", **kw)
    assert set(ds.symbols.values()) == {"GOOG", "binance-futures:BTCUSDT"}
    for s in ds.streams:
        n = {p: b - a for p, (a, b) in s.parts.items()}
        assert all(v > 0 for v in n.values()), (s.file, n)
        ts = ds.meta["ts_event"]
        assert ts[s.parts["train"][1] - 1] < ts[s.parts["val"][0]] <= ts[s.parts["test"][0]]
    assert "own ts_event quantiles" in ds.trained_on()["split"]


def test_multi_instrument_run_with_mirror_scores_each_instrument(data_dir):
    from lobstream.models.train import TrainConfig
    from lobstream.replay.training.pipeline import run_training

    files = _multi(data_dir)
    kw = dict(arch="binctabl", horizon=5, window=10, levels=LEVELS, max_events=40000)
    tc = TrainConfig(epochs=1, max_train_windows=400)
    with pytest.raises(ValueError, match="ticks_from_mid"):
        run_training(files, mirror=True, features="zscore", train_config=tc, **kw)
    said = []
    s = run_training(
        files, mirror=True, features="ticks_from_mid", split_scope="instrument",
        train_config=tc, status=said.append, **kw,
    )  # fmt: skip
    assert s["training"]["mirror"] is True
    n_real = s["trained_on"]["split_windows"]["train"]
    assert s["training"]["training_windows"] == n_real
    assert any(f"{2 * n_real} training windows" in m for m in said)
    per = s["per_instrument"]
    assert set(per) == {"GOOG", "binance-futures:BTCUSDT"}
    total_test = 0
    for e in per.values():
        assert e["windows"]["test"] > 0
        total_test += e["windows"]["test"]
        assert 0 <= e["model"]["test"]["f1_macro"] <= 1
        assert set(e["baselines"]) == {"majority", "logistic", "trend"}
    assert total_test == s["trained_on"]["split_windows"]["test"]


def test_tick_scale_auto_divides_prices_and_keeps_the_mirror_exact():
    from lobstream.replay.training.dataset import build_dataset

    kw = dict(window=10, levels=LEVELS, features="ticks_from_mid", max_events=4000)
    one = build_dataset([GOOG_MESSAGE_10], LabelDef(5), **kw)
    auto = build_dataset([GOOG_MESSAGE_10], LabelDef(5), tick_scale=None, **kw)
    scale = auto.spec.params[0]
    a, b = one.streams[0].parts["train"]
    assert scale == pytest.approx(np.abs(one.rows[a:b, 0::2]).mean(), rel=1e-4)
    np.testing.assert_allclose(auto.rows[:, 0::2], one.rows[:, 0::2] / scale, rtol=1e-6)
    np.testing.assert_array_equal(auto.rows[:, 1::2], one.rows[:, 1::2])  # sizes unchanged
    np.testing.assert_array_equal(mirror_rows(mirror_rows(auto.rows)), auto.rows)
    assert 0.5 < np.abs(auto.rows[a:b, 0::2]).mean() < 2
