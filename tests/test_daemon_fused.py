"""The fused quiet-market call (``model.fused``, :mod:`lobstream.models.quiet`) gives the signals
of the stage-by-stage path: two daemons over ipc://, one each way, fed the same messages, for
every model kind the call has (compiled BiN-CTABL, incremental cnn_causal and hrnn_causal),
multi-head artifacts (v2 records) and both signal encodings; and round by round on twin
states, with more due than ``max_batch`` (round-robin). The hand-over to the inference
thread (the fused call stops after the book) is tests/test_daemon.py's
``test_compiled_binctabl_signals_equal_in_process_backtest[inference-thread]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lobstream.engine.daemon import load_checked_model
from lobstream.engine.scheduler import Scheduler
from lobstream.engine.signals import signal_records
from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.ring import apply_events_rows, gather_windows, new_ring
from lobstream.models.artifact import export_model
from lobstream.models.manifest import spec_from_manifest
from lobstream.models.quiet import no_frames, quiet_path
from lobstream.models.zoo import build_model
from lobstream.replay.feed.synthetic import synthetic_events
from tests.test_daemon import MANIFEST, Running, make_cfg
from tests.test_daemon_causal import TC, export_causal
from tests.test_heads import export_heads

SYMBOLS = ["AAA", "BBB", "CCC"]
T_WIN = 10  # the compiled BiN-CTABL's window (tests.test_daemon's T)


def _grown(model: torch.nn.Module) -> torch.nn.Module:
    """Weights large enough that the probabilities move from window to window."""
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.mul_(2.0)
    return model.eval()


def _export(kind: str, path: Path) -> int:
    """An artifact of ``kind``; returns its window."""
    torch.manual_seed(5)
    if kind in ("binctabl", "binctabl-heads"):
        heads = kind.endswith("heads")
        model = build_model("binctabl", T=T_WIN, levels=2, hidden1=(6, 3), hidden2=(5, 2),
                            n_classes=9 if heads else 3).eval()  # fmt: skip
        manifest = MANIFEST
        if heads:
            manifest = {**MANIFEST, "heads": [{"label": {**MANIFEST["label"], "horizon": h}}
                                              for h in (3, 8, 20)]}  # fmt: skip
        export_model(model, path, manifest)
        return T_WIN
    if kind == "cnn_causal":
        export_causal(path)
    elif kind == "cnn_causal-heads":
        export_heads(path)
    elif kind == "hrnn_causal":
        model = build_model("hrnn_causal", T=TC, levels=2, level_hidden=4, summary_dim=8,
                            kernel_t=3, feature_dim=8, hidden=8)  # fmt: skip
        export_model(_grown(model), path, MANIFEST)
    return TC


def _signals(path: Path, window: int, ipc_dir: str, events: np.ndarray, fused: bool,
             symbols=SYMBOLS, **tables) -> tuple[np.ndarray, dict, dict]:  # fmt: skip
    """Every signal of one daemon fed ``events`` one message per event, sorted by (instrument,
    seq); its last heartbeat; the counts of its fused and book stages."""
    model_t = {"window": window, "fused": fused, **tables.pop("model", {})}
    ingest_t = {"max_drain": 1, **tables.pop("ingest", {})}
    cfg = make_cfg(ipc_dir, path, symbols, model=model_t, ingest=ingest_t, **tables)
    run = Running(cfg, symbols)
    try:
        run.wait_messages(run.send_each(events))
        signals, status = run.collect()
        reg = run.daemon.metrics.registry
        stages = {k: reg.get_sample_value("lobstream_stage_seconds_count", {"stage": k})
                  for k in ("fused", "book")}  # fmt: skip
        has_path = run.daemon.quiet is not None
    finally:
        run.stop()
    signals = signals[np.lexsort((signals["seq"], signals["instrument"]))]
    return signals, status[-1] if status else {}, {**stages, "quiet": has_path}


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and len(a) == len(b)
    for name in a.dtype.names:
        if name != "ts_publish":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _events(n: int = 900, seed: int = 3) -> np.ndarray:
    return synthetic_events(n, n_instruments=len(SYMBOLS), seed=seed, levels=4,
                            snapshot_every=250)  # fmt: skip


@pytest.mark.parametrize(
    "kind, encoding",
    [
        ("binctabl", "binary"),
        ("binctabl", "json"),
        ("binctabl-heads", "binary"),
        ("cnn_causal", "binary"),
        ("cnn_causal-heads", "json"),
        ("hrnn_causal", "binary"),
    ],
)
def test_fused_signals_equal_stage_by_stage(ipc_dir, tmp_path, kind, encoding):
    path = tmp_path / "m.pt"
    window = _export(kind, path)
    events = _events()
    publish = {"encoding": encoding}
    fused, status, st = _signals(path, window, ipc_dir, events, True, publish=publish)
    staged, _, st_off = _signals(path, window, ipc_dir, events, False, publish=publish)
    # the fused daemon ran every round as one call, the other never did
    assert st["quiet"] and st["fused"] > 0 and st["book"] == 0
    assert not st_off["quiet"] and st_off["fused"] == 0 and st_off["book"] > 0
    assert len(fused) > 200
    _same(fused, staged)
    probs = fused["prob"].reshape(len(fused), -1)
    assert probs.std(axis=0).max() > 1e-3  # the probabilities move: equality means something
    if kind.endswith("heads"):
        assert (fused["n_heads"] == 3).all()
        assert (fused["head_pred"][:, :3] == fused["head_prob"][:, :3].argmax(axis=2)).all()
    if "causal" in kind:
        assert status["model"]["inference"] == "incremental"
        assert status["model"]["rows_pushed"] >= len(fused)


@pytest.mark.parametrize("kind", ["binctabl", "cnn_causal", "hrnn_causal"])
def test_fused_rounds_select_as_the_scheduler(tmp_path, kind):
    """Rounds of random size (1-40 events over 3 instruments, gaps and snapshots) into a
    ``max_batch`` of 2: more due than a batch, so selection goes round-robin over rounds and
    windows are left due. The fused call and the staged path (ring kernel, ``Scheduler.select``,
    window copy or ``IncrementalFeed.take``, the model) on twin states agree on every round's
    instruments, conflation, probabilities and the state left behind."""
    path = tmp_path / "m.pt"
    window = _export(kind, path)
    cfg = make_cfg("/tmp/unused", path, SYMBOLS, model={"window": window, "max_batch": 2})
    twins = [load_checked_model(cfg, len(SYMBOLS)) for _ in range(2)]
    spec = spec_from_manifest(twins[0].manifest)
    states = [(new_book(3), new_ring(3, window, 2), new_report(), Scheduler(3, window, 2))
              for _ in range(2)]  # fmt: skip
    records = signal_records(2, twins[0].manifest.get("heads"))
    book, ring, report, sched = states[0]
    fused = quiet_path(twins[0], book, ring, spec, report, sched.last, sched.cursor, records)
    assert fused is not None
    model, (book2, ring2, report2, sched2) = twins[1], states[1]
    events = synthetic_events(3000, n_instruments=3, seed=9, levels=4, snapshot_every=400,
                              gap_prob=0.003)  # fmt: skip
    rng = np.random.default_rng(0)
    k = rounds = left_due = 0
    while k < len(events):
        ev = events[k : k + int(rng.integers(1, 41))]
        k += len(ev)
        n = fused.run(ev, 0, no_frames())
        before = book2.stale.copy()
        apply_events_rows(book2, ring2, spec, ev, report2)
        ids, conflated = sched2.select(ring2.count, book2.stale)
        assert n == len(ids)
        np.testing.assert_array_equal(fused.stale_before, before)
        if n:
            if model.feed is None:
                gather_windows(ring2, ids, model.runner.input)
                probs = model.runner.infer(n)
            else:
                probs = model.feed.take(ring2, ids).infer(n)
            np.testing.assert_array_equal(fused.ids[:n], ids)
            assert fused.sel[0] == conflated
            left_due += int(fused.sel[1])
            np.testing.assert_array_equal(records["prob"][:n], probs.reshape(n, -1)[:, :3])
            np.testing.assert_array_equal(records["instrument"][:n], ids)
            np.testing.assert_array_equal(records["seq"][:n], ring2.meta["seq"][ids])
            rounds += 1
        for x, y in zip((*book, *ring, report, sched.last, sched.cursor),
                        (*book2, *ring2, report2, sched2.last, sched2.cursor), strict=True):  # fmt: skip
            np.testing.assert_array_equal(x, y)
    assert rounds > 50 and left_due > 10
    if model.feed is not None:
        np.testing.assert_array_equal(twins[0].feed.pushed, model.feed.pushed)
        np.testing.assert_array_equal(twins[0].feed.stats, model.feed.stats)
        assert model.feed.restarts >= 3  # each slot's first fill, from the ring's window


def test_torch_models_keep_the_staged_path(ipc_dir, tmp_path):
    from tests.test_daemon import export_test_model

    path = tmp_path / "cnn.pt"
    export_test_model(path)
    signals, _, st = _signals(path, T_WIN, ipc_dir, _events(300), True)
    assert not st["quiet"] and st["fused"] == 0 and len(signals) > 50
