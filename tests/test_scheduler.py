"""The inference thread: results handed back over its inproc socket, and its CPU pinning."""

from __future__ import annotations

import os

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
    worker = InferenceWorker(ctx, cpus)
    try:
        rec = _Recorder()
        worker.submit(rec, 4)
        assert worker.done(timeout_ms=10_000)
        return rec, worker.result
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
