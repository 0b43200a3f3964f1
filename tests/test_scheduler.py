"""The inference thread: batches it takes itself, results handed back over its inproc socket,
errors passed on, and its CPU pinning."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import zmq

from lobstream.engine.scheduler import InferenceWorker


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


def test_select_from_a_scan_equals_select_that_scans():
    """The daemon scans the due windows once a round and selects from that scan."""
    from lobstream.engine.scheduler import Scheduler

    rng = np.random.default_rng(0)
    a, b = Scheduler(40, 5, 8), Scheduler(40, 5, 8)
    count = np.zeros(40, np.int64)
    for _ in range(50):
        count += rng.integers(0, 3, 40)
        stale = (rng.random(40) < 0.1).astype(np.uint8)
        due = b.due(count, stale)
        ia, ca = a.select(count, stale)
        ib, cb = b.select(count, stale, due=due)
        assert np.array_equal(ia, ib) and ca == cb
        assert np.array_equal(a.last, b.last)
