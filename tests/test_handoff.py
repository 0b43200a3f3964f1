"""The loop / inference-thread hand-off: which side makes each model call, on which windows
(:class:`Handoff`), and the thread itself (:class:`InferenceWorker`): batches it takes itself,
results handed back over its inproc socket, errors passed on, its CPU pinning."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import zmq

from lobstream.engine.handoff import Handoff, InferenceWorker
from lobstream.engine.scheduler import Scheduler


class _Recorder:
    """A runner stand-in that records which CPUs the calling thread may use."""

    def __init__(self) -> None:
        self.cpus: set[int] | None = None

    def infer(self, n: int) -> np.ndarray:
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return np.full((n, 3), 1 / 3, np.float32)


def _run_one(cpus: tuple[int, ...]) -> tuple[_Recorder, np.ndarray]:
    ctx = zmq.Context()
    rec = _Recorder()
    jobs = [(rec, 4, "tag")]
    worker = InferenceWorker(ctx, lambda: jobs.pop() if jobs else None, cpus)
    try:
        worker.kick()
        assert worker.wait(10_000)
        ((tag, probs, err, _),) = worker.take()
        assert tag == "tag" and err is None
        return rec, probs
    finally:
        worker.close()
        ctx.term()


def test_worker_returns_result():
    rec, out = _run_one(())
    assert out.shape == (4, 3)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning is Linux-only")
def test_worker_pins_only_its_own_thread():
    mine = os.sched_getaffinity(0)
    target = min(mine)
    rec, _ = _run_one((target,))
    assert rec.cpus == {target}
    assert os.sched_getaffinity(0) == mine  # the calling (loop) thread is not moved


def test_worker_takes_batches_until_none_then_parks():
    ctx = zmq.Context()
    rec = _Recorder()
    jobs = [(rec, n, n) for n in (3, 2, 1)]
    parked = threading.Event()

    def next_job():
        if jobs:
            return jobs.pop()
        parked.set()
        return None

    worker = InferenceWorker(ctx, next_job)
    try:
        worker.kick()
        got = []
        for _ in range(100):
            if len(got) == 3:
                break
            worker.wait(100)
            got += worker.take()
        assert [g[0] for g in got] == [1, 2, 3]  # in the order taken
        assert [len(g[1]) for g in got] == [1, 2, 3]
        assert parked.wait(10)
        jobs.append((rec, 5, "again"))  # parked: only a kick starts it again
        # parking is announced (an empty wake-up, so the loop infers what is left inline),
        # unless the loop above already took that announcement with the last result
        worker.wait(2000)
        assert worker.take() == [] and not worker.wait(200) and worker.take() == []
        worker.kick()
        assert worker.wait(10_000)
        assert [g[0] for g in worker.take()] == ["again"]
    finally:
        worker.close()
        ctx.term()


def test_worker_hands_errors_to_the_loop():
    class Boom:
        def infer(self, n):
            raise ValueError("bad batch")

    def bad_job():
        raise KeyError("no batch")

    ctx = zmq.Context()
    jobs = [(Boom(), 2, "t")]
    for next_job, err in ((lambda: jobs.pop() if jobs else None, ValueError), (bad_job, KeyError)):
        worker = InferenceWorker(ctx, next_job)
        try:
            worker.kick()
            assert worker.wait(10_000)
            (res,) = worker.take()
            assert res[1] is None and isinstance(res[2], err)
        finally:
            worker.close()
    ctx.term()


class _Call:
    """A model call stand-in: the ids it was gathered for, probabilities filled with them."""

    def __init__(self, ids: np.ndarray, gate: threading.Event | None = None) -> None:
        self.ids = ids.copy()
        self.gate = gate

    def infer(self, n: int) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10)
        assert n == len(self.ids)
        return np.repeat(self.ids[:, None].astype(np.float32), 3, axis=1)


class _Counting(Scheduler):
    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.scans = 0

    def due(self, count, stale):
        self.scans += 1
        return super().due(count, stale)


def _setup(n=8, max_batch=4, overlap=3, window=1):
    count = np.zeros(n, np.int64)
    stale = np.zeros(n, np.uint8)
    return Handoff(_Counting(n, window, max_batch), count, stale, overlap), count, stale


def test_plan_without_a_thread_selects_inline_from_one_scan():
    h, count, stale = _setup(overlap=0)
    count[[1, 3]] = 1
    ids, conflated = h.plan()
    assert ids.tolist() == [1, 3] and conflated == 0 and not h.more_due
    assert h.scheduler.scans == 1
    count[:] += 2  # all 8 due, max_batch 4: half are left for the next round
    ids, conflated = h.plan()
    assert ids.tolist() == [0, 1, 2, 3] and h.more_due
    assert conflated == 4  # two rows each since its last call: one never inferred alone
    ids, _ = h.plan()
    assert ids.tolist() == [4, 5, 6, 7] and not h.more_due
    assert h.scheduler.scans == 3  # one scan per round
    assert len(h.plan()[0]) == 0


def _drain(worker, want: int) -> list[tuple]:
    got = []
    for _ in range(200):
        if len(got) >= want:
            break
        worker.wait(50)
        got += [r for r in worker.take()]
    return got


def _wait_parked(h: Handoff) -> None:
    for _ in range(1000):
        with h.lock:
            if not h.pulling:
                return
        h.worker.wait(10)
    raise AssertionError("the inference thread did not park within 10 s")


def test_a_large_due_batch_starts_the_thread_which_takes_batches_until_few_are_due():
    h, count, stale = _setup(n=8, max_batch=4, overlap=3)
    ctx = zmq.Context()
    gate = threading.Event()
    worker = h.start_worker(ctx, lambda ids, c: (_Call(ids, gate), (ids.copy(), c)))
    try:
        count[:] = 1  # 8 due >= overlap 3: the thread takes over
        assert len(h.plan()[0]) == 0 and h.pulling
        assert h.scheduler.scans == 1
        assert len(h.plan()[0]) == 0  # while it pulls the loop neither scans nor infers
        assert h.scheduler.scans == 1
        gate.set()
        got = [r for r in _drain(worker, 2) if r[0] is not None]
        assert [r[0][0].tolist() for r in got] == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert all(r[2] is None for r in got)
        _wait_parked(h)  # then nothing is due: it parks
        count[[2, 5]] += 1  # fewer than overlap_batch due: inline on the loop again
        ids, _ = h.plan()
        assert ids.tolist() == [2, 5] and not h.pulling
    finally:
        worker.close()
        ctx.term()


def test_park_holds_the_thread_and_release_lets_it_run_again():
    h, count, stale = _setup(n=8, max_batch=2, overlap=2)
    ctx = zmq.Context()
    gate, gathered = threading.Event(), threading.Event()

    def gather(ids, c):
        gathered.set()
        return _Call(ids, gate), (ids.copy(), c)

    worker = h.start_worker(ctx, gather)
    results = []
    try:
        count[:] = 1
        h.plan()
        assert h.pulling and gathered.wait(10)
        # a call is in the model (the gate holds it): not parked within a short wait
        assert not h.park(0.05, lambda: results.extend(worker.take()))
        gate.set()  # the call ends; held, the thread takes no further batch and parks
        assert h.park(10.0, lambda: results.extend(worker.take()))
        results += worker.take()
        taken = [r[0][0].tolist() for r in results if r[0] is not None]
        assert taken == [[0, 1]]
        # held: a large due batch is inferred inline, the thread is not started
        ids, _ = h.plan()
        assert ids.tolist() == [2, 3] and not h.pulling
        h.release()
        ids, _ = h.plan()
        assert len(ids) == 0 and h.pulling  # the rest (4..7) is the thread's again
        got = [r for r in _drain(worker, 2) if r[0] is not None]
        assert [r[0][0].tolist() for r in got] == [[4, 5], [6, 7]]
    finally:
        worker.close()
        ctx.term()


def test_stale_instruments_are_skipped_by_both_sides():
    h, count, stale = _setup(n=6, max_batch=6, overlap=3)
    ctx = zmq.Context()
    worker = h.start_worker(ctx, lambda ids, c: (_Call(ids), (ids.copy(), c)))
    try:
        stale[[0, 4]] = 1
        count[:] = 3
        h.forget_stale()  # the loop does this after an apply that left instruments stale
        h.plan()  # 4 due >= 3: the thread's batch
        (res,) = [r for r in _drain(worker, 1) if r[0] is not None]
        ids, conflated = res[0]
        assert ids.tolist() == [1, 2, 3, 5] and conflated == 4 * 2
        _wait_parked(h)
        stale[[0, 4]] = 0  # healed: only rows after the heal make them due
        assert len(h.plan()[0]) == 0 and not h.more_due
        count[4] += 1
        ids, conflated = h.plan()
        assert ids.tolist() == [4] and conflated == 0
    finally:
        worker.close()
        ctx.term()
