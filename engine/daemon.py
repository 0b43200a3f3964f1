"""The signal daemon: ingest -> book and rows -> continuous batching -> model -> publish.

One loop thread owns the ingest and publish sockets (sockets never cross threads) and runs
rounds: wait for market data (bounded), drain what has arrived (at most ``max_drain``
messages), apply it with one kernel call, then infer every instrument whose window changed
since its last inference (up to ``max_batch``, newest window only) and publish. At low load
a signal costs one inline model call. Once ``model.overlap_batch`` windows or more are due,
the inference thread (:class:`~lobstream.engine.handoff.InferenceWorker`) takes over: it
chooses and gathers each next batch itself the moment a call ends, on the newest windows
(under a lock shared with the loop's book updates; the protocol is
:class:`~lobstream.engine.handoff.Handoff`), while the loop keeps draining, applying
and publishing what it finished; it goes back to sleep when fewer are due. So under load the
model never waits for the loop, the batch grows instead of the queue, and what waits does so
in ZeroMQ's bounded queue (``ingest.rcvhwm``) or as conflated windows (counted).

Signal handlers only request: :meth:`Daemon.request_stop` and :meth:`Daemon.request_reload`.
Shutdown runs in a fixed, logged order: stop intake, finish the batch in flight (published),
final heartbeat, close sockets (publisher with linger), terminate the context.

A reload (SIGHUP, or the artifact file changing) loads and warms the new model on a helper
thread while the loop keeps running on the old one; the loop swaps at the start of a round,
so no event is lost. The new artifact is checked as at start and must keep the feature spec
and window of the running one (the rings hold rows normalised with it).

A causal artifact (``manifest["causal"]``) on the CPU is run incrementally unless
``model.incremental = false`` (:func:`lobstream.models.scoring.choose_scorer`, as the
backtest): an :class:`~lobstream.models.causal.runner.IncrementalRunner` keeps one slot per
instrument and each model call pushes the rows its instruments gained since their last call
(:class:`~lobstream.models.scoring.IncrementalFeed`), the head only for the newest, so a
signal costs the new rows' columns of convolutions plus one head instead
of a whole window, with the same probabilities. Slots follow the rings: like the ring (and the
backtest), they are not reset by a sequence gap or the snapshot that heals it, so a window
after a heal still holds pre-fault rows in both paths. A reloaded runner starts empty and
fills each slot from the ring's window at that instrument's first call, so signals flow on
from the first event after the swap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import zmq

from lobstream.engine.config import ServeConfig
from lobstream.engine.handoff import Handoff, InferenceWorker
from lobstream.engine.ingest import Ingest
from lobstream.engine.malloc import hold_freed_memory
from lobstream.engine.metrics import Metrics, RateLimitedLog
from lobstream.engine.publisher import Publisher
from lobstream.engine.scheduler import Scheduler
from lobstream.engine.signals import fill_probs, signal_records
from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import CODE_CROSSED, CODE_SEQ_GAP
from lobstream.kernels.ring import apply_events_rows, gather_windows, new_ring
from lobstream.kernels.ring import warmup as warmup_kernels
from lobstream.models.quiet import QuietPath, quiet_path
from lobstream.models.scoring import IncrementalFeed, choose_scorer, incremental_feed

if TYPE_CHECKING:
    from lobstream.models.runner import Inferable, WindowRunner

logger = logging.getLogger(__name__)

_IDLE_WAIT_MS = 50  # longest blocking wait: bounds how late a stop or heartbeat can be


@dataclass
class LoadedModel:
    """A checked artifact with its warm runner."""

    path: str
    sha256: str
    manifest: dict
    runner: WindowRunner  # .input (Bmax, 1, T, F), .infer(n): torch or compiled
    model_id: int
    mtime_ns: int
    size: int
    module: object = None  # the loaded torch module: an incremental runner is built from it
    # set where the artifact is causal and runs on the CPU (see with_incremental)
    feed: IncrementalFeed | None = None

    @property
    def inference(self) -> str:
        """ "incremental" or "full-window": how the daemon runs this model."""
        return "full-window" if self.feed is None else "incremental"


def expectations(cfg: ServeConfig) -> dict:
    """Manifest values the config requires of the artifact (contract 3)."""
    m = cfg.model
    return {"T": m.window, "L": m.levels, "feature": {"kind": m.feature_kind}}


def load_checked_model(cfg: ServeConfig, n_instruments: int | None = None) -> LoadedModel:
    """Load the configured artifact, check it against the config, build and warm its runner.

    With ``n_instruments``, a causal artifact also gets its incremental runner (see
    :func:`with_incremental`); without, the daemon adds it when it starts.

    Raises ``lobstream.models.artifact.ArtifactError`` (naming both values) on a mismatch or a
    SHA-256 that differs from the pinned one. Called before any socket opens.
    """
    from lobstream.models.artifact import load_model, sha256_file
    from lobstream.models.runner import window_runner

    m = cfg.model
    st = os.stat(m.path) if os.path.exists(m.path) else None
    module, manifest = load_model(
        m.path, expect=expectations(cfg), sha256=m.sha256 or None, device=m.device
    )
    runner = window_runner(module, manifest, runner=m.runner, device=m.device,
                           max_batch=m.max_batch, threads=m.threads)  # fmt: skip
    digest = sha256_file(m.path)
    loaded = LoadedModel(
        path=m.path,
        sha256=digest,
        manifest=manifest,
        runner=runner,
        model_id=int(digest[:8], 16),
        mtime_ns=st.st_mtime_ns if st else 0,
        size=st.st_size if st else 0,
        module=module,
    )
    if n_instruments is not None:
        with_incremental(loaded, cfg, n_instruments)
    return loaded


def with_incremental(model: LoadedModel, cfg: ServeConfig, n_instruments: int) -> LoadedModel:
    """Give ``model`` an incremental runner of ``n_instruments`` slots where it should have one:
    a causal artifact, on the CPU (on a GPU whole-window batches are what the device wants),
    ``model.incremental`` not false. Returns ``model`` (changed in place); a no-op otherwise
    or where it has one with enough slots."""
    if model.feed is not None and model.feed.n_slots >= n_instruments:
        return model
    wanted = "auto" if cfg.model.incremental else "full-window"
    if choose_scorer(model.manifest, wanted, cfg.model.device) != "incremental":
        model.feed = None
        return model
    module = model.module
    if module is None:  # built elsewhere: the artifact file is the model
        from lobstream.models.artifact import load_model

        module, _ = load_model(model.path, device="cpu")
    model.feed = incremental_feed(module, model.manifest, n_instruments)
    return model


class Daemon:
    """The daemon's state and loop.

    Parameters
    ----------
    cfg : ServeConfig
    symbols : sequence of str
        Symbol of each instrument id (from the registry).
    model : LoadedModel
        Already checked (see :func:`load_checked_model`).
    context : zmq.Context, optional
        Terminated at shutdown only if the daemon created it.
    """

    def __init__(self, cfg: ServeConfig, symbols, model: LoadedModel, context=None) -> None:
        from lobstream.models.manifest import spec_from_manifest

        self.cfg = cfg
        self.symbols = list(symbols)
        n = len(self.symbols)
        self.model = with_incremental(model, cfg, n)
        self.spec = spec_from_manifest(model.manifest)
        self.T = int(model.manifest["T"])
        self.book = new_book(n)
        self.ring = new_ring(n, self.T, self.spec.levels)
        self.report = new_report()
        self.max_batch = min(cfg.model.max_batch, model.runner.input.shape[0])
        self.scheduler = Scheduler(n, self.T, self.max_batch)
        # which thread makes each model call and on what; its lock guards the book, rings and
        # scheduler between the loop and the inference thread
        self.handoff = Handoff(
            self.scheduler, self.ring.count, self.book.stale, cfg.model.overlap_batch
        )
        # v1 records, or v2 for a multi-horizon artifact (engine.signals); zeroed padding
        self.records = signal_records(self.max_batch, model.manifest.get("heads"))
        self.records["model_id"] = model.model_id
        self._ts_publish = self.records["ts_publish"]  # a view: the fused round stamps it
        self.quiet = self._quiet_path(warm=True)
        self.signals_by_inst = np.zeros(n, np.int64)
        self.metrics = Metrics()
        self.rlog = RateLimitedLog(logger, cfg.logging.max_per_s)
        self._own_ctx = context is None
        self.ctx = context
        self.ingest: Ingest | None = None
        self.publisher: Publisher | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._pending: LoadedModel | None = None
        self._loader: threading.Thread | None = None
        self.metrics_port: int | None = None
        self.worker: InferenceWorker | None = None
        self._last_call = 0.0  # perf_counter() of the last model call (model.keep_warm_ms)
        self.poller = zmq.Poller()
        self.started = threading.Event()  # set once sockets are open (tests wait on it)
        self.t_start = time.monotonic()

    # -- requests (safe from signal handlers and other threads) ---------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # -- life cycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Warm the kernels, open the sockets and the metrics endpoint."""
        # kernels compile or load from cache here; the runner warmed itself when built
        warmup_kernels()
        # the inference thread would otherwise fault its activations in on every call
        if self.cfg.model.overlap_batch and hold_freed_memory():
            logger.info("glibc keeps freed memory: no page faults per model call")
        if self.cfg.ingest.cpus:
            # before the context exists, so ZeroMQ's I/O thread (and every thread started
            # from here on) inherits the loop's CPUs; the inference thread then moves itself
            os.sched_setaffinity(0, self.cfg.ingest.cpus)
            logger.info("loop thread pinned to CPUs %s", list(self.cfg.ingest.cpus))
        if self.ctx is None:
            self.ctx = zmq.Context()
        if self.cfg.metrics.address:
            self.metrics_port = self.metrics.serve_http(self.cfg.metrics.address)
        self.publisher = Publisher(self.ctx, self.cfg.publish, self.symbols)
        self.ingest = Ingest(
            self.ctx, self.cfg.ingest, self.symbols, self.metrics, self.rlog, self.book.last_ts
        )
        self.poller.register(self.ingest.sock, zmq.POLLIN)
        if self.cfg.model.overlap_batch:
            self.worker = self.handoff.start_worker(self.ctx, self._gather, self.cfg.model.cpus)
            self.poller.register(self.worker.sock, zmq.POLLIN)
        self.started.set()

    def run(self) -> int:
        """Open, loop until a stop is requested, shut down. Returns the exit status (0)."""
        if self.ingest is None:
            self.open()
        logger.info(
            "serving %s instruments with %s (sha256 %s, %s, %s runner), max batch %s",
            len(self.symbols),
            self.model.manifest.get("arch"),
            self.model.sha256[:12],
            self.model.inference,
            getattr(self.model.runner, "mode", "?"),
            self.max_batch,
        )
        spin_s = self.cfg.ingest.busy_poll_us * 1e-6
        warm_s = self.cfg.model.keep_warm_ms * 1e-3
        next_status = time.monotonic() + self.cfg.publish.status_interval_s
        next_poll = time.monotonic() + (self.cfg.model.reload_poll_s or 1e18)
        try:
            while not self._stop.is_set():
                if self._pending is not None and self._parked():
                    self._swap_model()
                woke = True
                if not (self.ingest.backlog or self.handoff.more_due) and not (
                    spin_s and self._spin(spin_s)
                ):
                    wait = self._idle_wait_ms(warm_s) if warm_s else _IDLE_WAIT_MS
                    woke = bool(self.poller.poll(wait))
                if woke:
                    self.round()
                else:
                    # a wait that timed out (a keep-warm call, a stop check) leaves a round
                    # nothing to do but notice the quiet: neither socket has anything and
                    # nothing was left due
                    self.ingest.account()
                now = time.monotonic()
                if now >= next_status:
                    self.send_status()
                    self.rlog.flush(now)
                    next_status = now + self.cfg.publish.status_interval_s
                if now >= next_poll:
                    self._check_file()
                    next_poll = now + self.cfg.model.reload_poll_s
                if self._reload.is_set() and self._reload_idle():
                    # a request waits while a load runs or its model waits to be swapped in:
                    # one started then would be ignored, or its model dropped by the swap
                    self._reload.clear()
                    self._start_reload("request")
        finally:
            self.shutdown()
        return 0

    def _idle_wait_ms(self, warm_s: float) -> float:
        """How long to block with ``model.keep_warm_ms`` on: until the model is next due a
        throwaway call, made here when it is (only while the loop owns the runner), and only
        while market data flows: before the first message and during an idle period
        (``ingest.idle_after_s``) a closed market costs no CPU."""
        if not self.ingest.live:
            return _IDLE_WAIT_MS
        left = self._last_call + warm_s - time.perf_counter()
        if left <= 0 and not self.handoff.pulling:
            feed = self.model.feed
            (feed if feed is not None else self.model.runner).keep_warm()
            self._last_call = time.perf_counter()
            self.metrics.totals["keep_warm_calls"] += 1  # the heartbeat's count
            left = warm_s
        return min(_IDLE_WAIT_MS, 1e3 * left)

    def _spin(self, seconds: float) -> bool:
        """Poll without blocking for up to ``seconds``; whether something arrived.

        Blocking in the poller lets this CPU go idle, and waking it again (and refilling its
        caches) costs the first message after a quiet spell; spinning trades a CPU for that.
        """
        poll, end, clock = self.poller.poll, time.perf_counter() + seconds, time.perf_counter
        while clock() < end:
            if poll(0):
                return True
            if self._stop.is_set():
                break
        return False

    def round(self) -> int:
        """One round: drain and apply, publish what the inference thread finished, then start
        it on a large batch or infer a small one inline. Returns signals sent.

        Accounting of the drain (message and event counts, receive latency) and of the applied
        batch (kernel conditions, stale changes, gauges) runs after the signals are out, so it
        never sits between an event and its signal.
        """
        sent = self._publish_finished()
        fused = self.quiet is not None and not self.handoff.pulling
        # the fused call checks the frames itself
        events, _ = self.ingest.drain(check=not fused)
        if events is not None and fused:
            done = self._quiet_round(events)
            if done is not None:
                return sent + done
            # a message failed the fused call's check: dropped here, the rest as below
            events, _ = self.ingest.check_now(events)
        applied = self._apply_kernel(events) if events is not None else None
        # a call that finished during the drain and apply is published now, not a round later
        sent += self._publish_finished()
        sent += self._dispatch()
        self.ingest.account()
        if applied is not None:
            self._account(*applied)
        return sent

    def _quiet_path(self, model: LoadedModel | None = None, records: np.ndarray | None = None,
                    warm: bool = False) -> QuietPath | None:  # fmt: skip
        """The fused call (``model.fused``) of ``model`` (default: the running one) on the
        daemon's state and ``records`` (default: its buffer, at most max_batch records: a
        reloaded runner may take fewer windows than the buffer holds), or None."""
        if not self.cfg.model.fused:
            return None
        path = quiet_path(model or self.model, self.book, self.ring, self.spec, self.report,
                          self.scheduler.last, self.scheduler.cursor,
                          self.records[: self.max_batch] if records is None else records)  # fmt: skip
        if path is not None and warm:
            path.warm()
        return path

    def _quiet_round(self, events: np.ndarray) -> int | None:
        """The round of :meth:`round` in one compiled call (:mod:`lobstream.models.quiet`):
        the frames checked, the events applied, the due windows selected and inferred, their
        records filled; here only the send and the accounting. When the due windows are the
        inference thread's batch, the call stops after the book and the round dispatches as
        the other path. None, with nothing applied, when a message fails the check."""
        h = self.handoff
        big = h.overlap_batch if self.worker is not None and not h.hold else 0
        q = self.quiet
        with h.lock:
            t0 = time.perf_counter_ns()
            n = q.run(events, big, self.ingest.checks())
            t1 = time.perf_counter_ns()
        if n == -2:
            return None
        if n > 0:
            now = time.monotonic_ns()
            self._ts_publish[:n] = now
            self.publisher.send_signals(self.records, n)
            t2 = time.perf_counter_ns()
            h.more_due = bool(q.sel[1])
            self._last_call = t2 * 1e-9
            self.metrics.observe("publish", (t2 - t1) * 1e-9)
            self._count_sent(q.ids[:n], self.records["ts_recv"][:n], int(q.sel[0]), now)
            sent = n
        else:
            h.more_due = False
            sent = self._dispatch() if n < 0 else 0
        self.ingest.taken(len(events), int(q.sel[2]))
        self.ingest.account()
        self._account(q.stale_before, t1 - t0, "fused")
        return sent

    def _dispatch(self) -> int:
        """Start the inference thread when a large batch is due, else infer inline (one scan
        of the due windows, :meth:`Handoff.plan`). The thread's last results go out first, so
        an instrument's signals stay in order."""
        ids, conflated = self.handoff.plan()
        if len(ids) == 0:
            return 0
        return self._publish_finished() + self._infer_inline(ids, conflated)

    def _gather(self, ids: np.ndarray, conflated: int = 0) -> tuple[Inferable, tuple]:
        """Copy the windows of ``ids`` into the runner's input, or their new rows into an
        incremental call: ``(call, tag)``; ``call.infer(len(ids))`` runs it and ``tag`` is
        what :meth:`_publish` needs besides its result."""
        feed = self.model.feed
        t0 = time.perf_counter_ns()
        if feed is None:
            call = self.model.runner
            gather_windows(self.ring, ids, call.input)
        else:
            call = feed.take(self.ring, ids)
        meta = self.ring.meta[ids]  # a copy: rows applied meanwhile do not change it
        return call, (ids, meta, conflated, t0, time.perf_counter_ns())

    def _publish_finished(self) -> int:
        """Publish the calls the inference thread finished; returns signals sent."""
        if self.worker is None:
            return 0
        sent = 0
        for tag, probs, err, t2 in self.worker.take():
            if err is not None:
                raise RuntimeError("model call on the inference thread failed") from err
            ids, meta, conflated, t0, t1 = tag
            sent += self._publish(ids, meta, probs, conflated, t0, t1, t2)
        return sent

    def _parked(self, timeout_s: float = 0.0) -> bool:
        """Hold the inference thread (publishing what it finishes meanwhile); whether it is
        parked, so that the runner is the loop's. A swap releases the hold."""
        return self.worker is None or self.handoff.park(timeout_s, self._publish_finished)

    def _apply_kernel(self, events: np.ndarray) -> tuple[np.ndarray, int]:
        with self.handoff.lock:
            stale_before = self.book.stale.copy()
            t0 = time.perf_counter_ns()
            apply_events_rows(self.book, self.ring, self.spec, events, self.report)
            return stale_before, time.perf_counter_ns() - t0

    def _account(self, stale_before: np.ndarray, book_ns: int, stage: str = "book") -> None:
        rep = self.report
        self.metrics.observe(stage, book_ns * 1e-9)
        if rep[0].any():
            self.metrics.add_conditions(rep[0])
            if rep[0, CODE_SEQ_GAP] or rep[0, CODE_CROSSED] or stale_before.any():
                self._log_stale_changes(stale_before, rep)
            rep[0] = 0
            rep[1] = -1
        n_stale = int(np.count_nonzero(self.book.stale))
        if n_stale:  # else nothing to forget: no lock taken on a quiet, healthy round
            self.handoff.forget_stale()
        self.metrics.stale.set(n_stale)

    def _log_stale_changes(self, before: np.ndarray, rep: np.ndarray) -> None:
        now = self.book.stale
        for i in np.flatnonzero(now & ~before):
            why = "sequence gap" if rep[0, CODE_SEQ_GAP] else "crossed book"
            self.rlog.warning(
                "stale", "%s is stale (%s): no signals until a snapshot heals it",
                self.symbols[i], why,
            )  # fmt: skip
        for i in np.flatnonzero(before & ~now):
            self.rlog.warning("healed", "%s healed by a snapshot", self.symbols[i])

    def _infer_inline(self, ids: np.ndarray, conflated: int) -> int:
        """Infer ``ids`` on the loop (the inference thread is parked) and publish them."""
        call, (ids, meta, conflated, t0, t1) = self._gather(ids, conflated)
        probs = call.infer(len(ids))
        return self._publish(ids, meta, probs, conflated, t0, t1, time.perf_counter_ns())

    def _publish(self, ids, meta, probs, conflated: int, t0: int, t1: int, t2: int) -> int:
        tp = time.perf_counter_ns()
        self._last_call = tp * 1e-9
        b = len(ids)
        m = self.metrics
        rec = self.records[:b]  # model_id is set once, at start and on a swap
        rec["instrument"] = ids
        rec["seq"] = meta["seq"]
        rec["ts_event"] = meta["ts_event"]
        ts_recv = meta["ts_recv"]
        rec["ts_recv"] = ts_recv
        fill_probs(rec, probs)
        now = time.monotonic_ns()
        rec["ts_publish"] = now
        self.publisher.send_signals(rec)
        t3 = time.perf_counter_ns()
        m.observe("gather", (t1 - t0) * 1e-9)
        m.observe("model", (t2 - t1) * 1e-9)
        m.observe("publish", (t3 - tp) * 1e-9)
        self._count_sent(ids, ts_recv, conflated, now)
        return b

    def _count_sent(self, ids: np.ndarray, ts_recv: np.ndarray, conflated: int, now: int) -> None:
        """Count signals just sent for ``ids``, whose newest events arrived at ``ts_recv``."""
        b = len(ids)
        m = self.metrics
        self.signals_by_inst[ids] += 1
        m.batch_size.observe(b)
        m.count("signals", b)
        m.count("model_calls")
        if conflated:
            m.count("conflated", conflated)
        if b == 1:
            if ts_recv[0] > 0:
                m.observe("end_to_end", (now - int(ts_recv[0])) * 1e-9)
        else:
            known = ts_recv[ts_recv > 0]
            if len(known):
                m.observe_many("end_to_end", (now - known) * 1e-9)

    # -- status heartbeat --------------------------------------------------------------------
    def status(self) -> dict:
        """The heartbeat: per-instrument state and the daemon's counts (JSON-ready)."""
        count, stale = self.ring.count, self.book.stale
        inst = {}
        for i, s in enumerate(self.symbols):
            state = "stale" if stale[i] else ("warming" if count[i] < self.T else "healthy")
            inst[s] = {
                "state": state,
                "rows": int(count[i]),
                "signals": int(self.signals_by_inst[i]),
            }
        return {
            "ts": time.monotonic_ns(),
            "uptime_s": round(time.monotonic() - self.t_start, 3),
            "model": self._model_status(),
            "stale": int(np.count_nonzero(stale)),
            "counts": {k: int(v) for k, v in sorted(self.metrics.totals.items())},
            "instruments": inst,
        }

    def _model_status(self) -> dict:
        m = self.model
        out = {
            "arch": m.manifest.get("arch"),
            "sha256": m.sha256,
            "model_id": m.model_id,
            "inference": m.inference,
            # whole windows: "numba" (a compiled runner) or the torch mode ("frozen", ...)
            "runner": getattr(m.runner, "mode", None),
        }
        if m.feed is not None:
            # rows pushed per signal: 1 at low load, more as windows are conflated
            out["rows_pushed"] = m.feed.rows_pushed
            out["rows_skipped"] = m.feed.rows_skipped
            out["slot_restarts"] = m.feed.restarts
        return out

    def send_status(self) -> None:
        self.publisher.poll_peers(self.metrics)  # subscribers come and gone: once a heartbeat
        self.publisher.send_status(self.status())

    # -- hot reload ------------------------------------------------------------------------
    def _check_file(self) -> None:
        try:
            st = os.stat(self.cfg.model.path)
        except OSError:
            return  # a file being replaced; the next poll sees the new one
        if (st.st_mtime_ns, st.st_size) != (self.model.mtime_ns, self.model.size):
            if self._reload_idle():
                self._start_reload("file change")

    def _reload_idle(self) -> bool:
        """No load running and no loaded model waiting for the swap."""
        return self._pending is None and (self._loader is None or not self._loader.is_alive())

    def _start_reload(self, why: str) -> None:
        if self._loader is not None and self._loader.is_alive():
            logger.info("reload (%s) ignored: one is in progress", why)
            return
        logger.info("reloading %s (%s)", self.cfg.model.path, why)
        self._loader = threading.Thread(target=self._load_new, name="lobstream-reload", daemon=True)
        self._loader.start()

    def _load_new(self) -> None:
        from lobstream.models.manifest import spec_from_manifest

        try:
            new = load_checked_model(self.cfg, len(self.symbols))
            spec = spec_from_manifest(new.manifest)
            if int(new.manifest["T"]) != self.T or spec.to_dict() != self.spec.to_dict():
                raise ValueError(
                    f"feature spec or window changed ({spec.to_dict()}, T={new.manifest['T']} "
                    f"vs {self.spec.to_dict()}, T={self.T}); the rings hold rows of the old "
                    "spec: restart the daemon to change them"
                )
            # compile (or load) the new model's fused call here, not on the loop at the swap
            self._quiet_path(new, signal_records(1, new.manifest.get("heads")), warm=True)
        except Exception as exc:  # a bad file must never stop a running daemon
            logger.error("reload refused, keeping %s: %s", self.model.sha256[:12], exc)
            self.metrics.reloads.labels("refused").inc()
            self.metrics.totals["reloads.refused"] += 1  # the heartbeat's count
            self._remember_file()
            return
        self._pending = new

    def _remember_file(self) -> None:
        try:
            st = os.stat(self.cfg.model.path)
            self.model.mtime_ns, self.model.size = st.st_mtime_ns, st.st_size
        except OSError:
            pass

    def _swap_model(self) -> None:
        # the parked thread's last results are the old model's: out before model_id changes
        self._publish_finished()
        new, self._pending = self._pending, None
        if new.runner.input.shape[0] < self.max_batch:
            self.max_batch = new.runner.input.shape[0]
            self.scheduler.max_batch = self.max_batch  # the handoff's selections follow
        old = self.model
        self.model = new
        if new.manifest.get("heads") != old.manifest.get("heads"):
            # another head layout: another record (v1 <-> v2, or other horizons)
            self.records = signal_records(len(self.records), new.manifest.get("heads"))
            self._ts_publish = self.records["ts_publish"]
            logger.warning(
                "reloaded model has %d head(s), the old one %d: signal records now %d bytes",
                len(new.manifest.get("heads") or [0]), len(old.manifest.get("heads") or [0]),
                self.records.dtype.itemsize,
            )  # fmt: skip
        self.records["model_id"] = new.model_id
        self.quiet = self._quiet_path()  # compiled for this model by the loader (_load_new)
        self._loader = None
        self.handoff.release()  # the inference thread may take batches again
        self.metrics.reloads.labels("ok").inc()
        self.metrics.totals["reloads.ok"] += 1
        logger.info(
            "model reloaded: %s -> %s (%s)", old.sha256[:12], new.sha256[:12], new.inference
        )

    # -- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop intake, publish the batch in flight, close sockets, terminate the context."""
        logger.info("shutdown: stop intake")
        if self.ingest is not None:
            self.ingest.close()
            self.ingest = None
        parked = True
        if self.worker is not None:
            # the batch in flight finishes and is published; no new one starts
            parked = self._parked(timeout_s=1.0)
            if not parked:
                logger.warning("shutdown: the model call in flight did not end within 1 s")
            self._publish_finished()
            self.worker.close()
            self.worker = None
        if self.publisher is not None:
            # windows already applied but not yet inferred (the runner is free only if parked)
            sent = self._dispatch() if parked else 0
            logger.info("shutdown: published %s signals in flight; final heartbeat", sent)
            self.send_status()
            self.publisher.close()
            self.publisher = None
        if self._loader is not None:
            self._loader.join(timeout=0.5)
        self.metrics.close_http()
        logger.info("shutdown: closing the context")
        if self.ctx is not None and self._own_ctx:
            self.ctx.term()
            self.ctx = None
        logger.info("shutdown complete")
