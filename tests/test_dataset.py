"""Datasets: chronological split with gaps, labels inside their part, train-only statistics,
per-instrument windows, rows from the daemon's feature kernel."""

from __future__ import annotations

import numpy as np
import pytest

from lobstream.kernels.labels import classify_change, label_change, smoothed_change, spread_alpha
from lobstream.models.manifest import LabelDef
from lobstream.replay.feed.synthetic import synthetic_events
from lobstream.replay.training.dataset import dataset_from_events

T, K, LEVELS = 20, 10, 5


@pytest.fixture(scope="module")
def events():
    return synthetic_events(24_000, n_instruments=2, seed=7, levels=10)


@pytest.fixture(scope="module")
def ds(events):
    # the literature's label, whose semantics these tests pin; the kinds are compared below
    return dataset_from_events(
        [("synthetic", events)], LabelDef(K, kind="smoothed"), window=T, levels=LEVELS
    )


def _part_of(ds, stream, end):
    for name, (a, b) in stream.parts.items():
        if a <= end < b:
            return name, a, b
    return None, None, None


def test_parts_are_ordered_with_gaps(ds):
    for s in ds.streams:
        (a0, b0), (a1, b1), (a2, b2) = (s.parts[p] for p in ("train", "val", "test"))
        assert s.start == a0 <= b0 <= a1 <= b1 <= a2 <= b2 == s.stop
        assert a1 - b0 >= T + K and a2 - b1 >= T + K
        ts = ds.meta["ts_event"]
        assert ts[b0 - 1] <= ts[a1] and ts[b1 - 1] <= ts[a2]


def test_no_window_or_label_straddles_parts(ds):
    for name, w in ds.parts.items():
        assert len(w) > 0
        for end in w.ends:
            s = next(s for s in ds.streams if s.start <= end < s.stop)
            part, a, b = _part_of(ds, s, end)
            assert part == name
            assert end - T + 1 >= a  # window inside the part
            assert end + K < b  # label's future inside the part
            assert len(set(ds.meta["instrument"][end - T + 1 : end + 1])) == 1


def test_labels_match_part_local_kernel(ds):
    for s in ds.streams:
        a, b = s.parts["val"]
        want = classify_change(smoothed_change(ds.meta["mid"][a:b], K), ds.alpha)
        w = ds.parts["val"]
        sel = (w.ends >= a) & (w.ends < b)
        np.testing.assert_array_equal(w.labels[sel], want[w.ends[sel] - a])


def test_alpha_and_statistics_from_train_only(events, ds):
    tr = np.concatenate([ds.raw[a:b] for s in ds.streams for a, b in [s.parts["train"]]])
    px = np.concatenate([tr[:, 0 : 4 * LEVELS : 4], tr[:, 2 : 4 * LEVELS : 4]], axis=1).astype(
        np.float64
    )
    np.testing.assert_allclose(ds.spec.params[:2], [px.mean(), px.std()], rtol=1e-9)
    # wreck everything after the training period: alpha and the spec must not change
    cut = max(ds.meta["ts_event"][b - 1] for s in ds.streams for _, b in [s.parts["train"]])
    ev2 = events.copy()
    late = ev2["ts_event"] > cut
    ev2["price"][late] *= 3
    ev2["size"][late] *= 10
    ds2 = dataset_from_events(
        [("wrecked", ev2)], LabelDef(K, kind="smoothed"), window=T, levels=LEVELS
    )
    assert ds2.alpha == ds.alpha
    np.testing.assert_array_equal(ds2.spec.params, ds.spec.params)
    assert ds.class_balance()["train"] == pytest.approx([1 / 3] * 3, abs=0.05)


def test_rows_are_the_kernel_zscore_of_raw(ds):
    p = ds.spec.params
    want = ds.raw.astype(np.float64).copy()
    want[:, 0::2] = (want[:, 0::2] - p[0]) / p[1]
    want[:, 1::2] = (want[:, 1::2] - p[2]) / p[3]
    np.testing.assert_allclose(ds.rows, want, rtol=1e-5, atol=1e-5)
    w = ds.parts["train"]
    b = w.batch(np.array([0, 5]))
    assert b.shape == (2, 1, T, 4 * LEVELS) and b.dtype == np.float32
    np.testing.assert_array_equal(b[1, 0], ds.rows[w.ends[5] - T + 1 : w.ends[5] + 1])


def test_time_horizon_and_given_alpha(events):
    dt = float(np.mean(np.diff(events["ts_event"])))
    h = 20 * dt / 1e9  # about 20 events, in seconds
    ds = dataset_from_events(
        [("s", events)], LabelDef(h, "seconds", alpha=1e-4), window=T, levels=LEVELS
    )
    assert ds.alpha == 1e-4
    for s in ds.streams:
        (_, b0), (a1, _) = s.parts["train"], s.parts["val"]
        ts = ds.meta["ts_event"]
        assert ts[a1 - T] - ts[b0] >= h * 1e9  # gap: T rows beyond the horizon
    assert all(len(w) > 0 for w in ds.parts.values())


@pytest.mark.parametrize("kind", ["future", "spread"])
def test_label_kinds_and_their_alpha(events, ds, kind):
    dk = dataset_from_events(
        [("synthetic", events)], LabelDef(K, kind=kind), window=T, levels=LEVELS
    )
    # the split does not depend on the kind; the labels and alpha do
    assert [s.parts for s in dk.streams] == [s.parts for s in ds.streams]
    tr = np.concatenate([dk.meta[a:b] for s in dk.streams for a, b in [s.parts["train"]]])
    if kind == "spread":
        assert dk.alpha == spread_alpha(tr["best_bid"], tr["best_ask"])
    else:
        assert dk.class_balance()["train"] == pytest.approx([1 / 3] * 3, abs=0.05)
    for s in dk.streams:
        a, b = s.parts["test"]
        want = classify_change(label_change(dk.meta["mid"][a:b], K, kind=kind), dk.alpha)
        w = dk.parts["test"]
        sel = (w.ends >= a) & (w.ends < b)
        np.testing.assert_array_equal(w.labels[sel], want[w.ends[sel] - a])
    lab = dk.label_dict()
    assert lab["kind"] == kind and "current mid" in lab["smoothing"]
    assert lab["alpha_rule"] == (
        "mean relative spread of train" if kind == "spread" else "balanced on train"
    )
    assert ds.label_dict()["kind"] == "smoothed"
    assert LabelDef(K).kind == "future"  # the default is the leak-free label


def test_time_horizon_future_label(events):
    dt = float(np.mean(np.diff(events["ts_event"])))
    h = 20 * dt / 1e9
    dk = dataset_from_events(
        [("s", events)], LabelDef(h, "seconds", kind="future"), window=T, levels=LEVELS
    )
    assert all(len(w) > 0 for w in dk.parts.values())
    s = dk.streams[0]
    a, b = s.parts["val"]
    hn = int(round(h * 1e9))
    ch = label_change(dk.meta["mid"][a:b], hn, dk.meta["ts_event"][a:b], "ns", "future")
    w = dk.parts["val"]
    sel = (w.ends >= a) & (w.ends < b)
    np.testing.assert_array_equal(w.labels[sel], classify_change(ch, dk.alpha)[w.ends[sel] - a])


def test_bad_arguments():
    with pytest.raises(ValueError, match="label kind"):
        LabelDef(10, kind="mean")
    with pytest.raises(ValueError, match="unit"):
        LabelDef(10, "minutes")
    with pytest.raises(ValueError, match="whole number"):
        LabelDef(2.5)
    ev = synthetic_events(500, n_instruments=1, seed=1)
    with pytest.raises(ValueError, match="fractions"):
        dataset_from_events([("s", ev)], LabelDef(5), window=T, fractions=(0.9, 0.2))
