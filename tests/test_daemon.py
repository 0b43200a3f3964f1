"""The daemon over real sockets (ipc://): equals the in-process backtest, stops on SIGTERM with
exit 0, never blocks on a slow or absent subscriber, reloads its model, speaks CurveZMQ.

The daemon runs on a thread of the test process (its sockets are created and used on that
thread only), except for the SIGTERM test, which runs ``lobstream serve`` as a subprocess.
Helpers here are shared with ``tests/test_daemon_bad_input.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from lobstream.bench.harness import (
    daemon_tables,
    metric_values,
    spawn_daemon,
    stop_process,
    write_config,
)
from lobstream.engine.config import config_from_dict
from lobstream.engine.daemon import Daemon, LoadedModel, load_checked_model
from lobstream.engine.signals import decode
from lobstream.kernels.dtypes import SIGNAL_DTYPE
from lobstream.models.artifact import export_model, load_model, sha256_file
from lobstream.models.zoo import build_model
from lobstream.replay.feed.synthetic import synthetic_events
from lobstream.testkit.backtest import run_backtest

T, L = 10, 2
F = 4 * L
PROB_ATOL = 1e-5  # same module, same float32 windows: only batch-size re-association differs
MANIFEST = {
    "feature": {"kind": "zscore", "params": [20_000.0, 10_000.0, 50.0, 50.0]},
    "label": {"horizon": 5, "unit": "events", "alpha": 1e-5, "smoothing": "mean"},
    "trained_on": {"note": "untrained test model"},
    "metrics": {},
}


def export_test_model(path: Path, seed: int = 0, **cfg) -> str:
    """A small CNN artifact (T=10, L=2) with random weights; returns its SHA-256."""
    torch.manual_seed(seed)
    model = build_model("cnn", T=cfg.pop("T", T), levels=L, channels=(4,), hidden=8, **cfg)
    return export_model(model.eval(), path, MANIFEST)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "cnn.pt"
    export_test_model(path)
    return path


def make_cfg(ipc_dir: str, model_path: Path, symbols, **tables):
    base = {
        "model": {"max_batch": 8},
        "ingest": {"mode": "connect"},
        "publish": {"status_interval_s": 0.05},
    }
    for k, v in tables.items():
        base[k] = {**base.get(k, {}), **v}
    md, sig = f"ipc://{ipc_dir}/md", f"ipc://{ipc_dir}/sig"
    return config_from_dict(daemon_tables(model_path, symbols, md, sig, window=T, levels=L, **base))


class TorchRunner:
    """The runner interface (``input`` buffer, ``infer(n)`` -> probabilities) over a scripted
    module; used for the in-process side so it shares nothing with the daemon's runner."""

    def __init__(self, module, max_batch: int = 64, window: int = T) -> None:
        self.module = module
        self.input = np.zeros((max_batch, 1, window, F), np.float32)
        self._t = torch.from_numpy(self.input)

    def infer(self, n: int) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(self.module(self._t[:n]), dim=1).numpy()


class Running:
    """A daemon on a thread, with a feeder XPUB and a signal SUB in the test thread."""

    def __init__(self, cfg, symbols, model: LoadedModel | None = None) -> None:
        self.ctx = zmq.Context()
        self.symbols = list(symbols)
        self.feed = self.ctx.socket(zmq.XPUB)
        self.feed.setsockopt(zmq.SNDHWM, 0)
        self.feed.setsockopt(zmq.LINGER, 0)
        self.feed.bind(cfg.ingest.endpoints[0])
        self.daemon = Daemon(cfg, self.symbols, model or load_checked_model(cfg))
        self.thread = threading.Thread(target=self.daemon.run, name="daemon", daemon=True)
        self.thread.start()
        # generous: the first process after a kernel change compiles them (Numba cache)
        assert self.daemon.started.wait(180), "daemon did not open its sockets"
        # the daemon's subscription reaching the XPUB means market data will not be lost
        self.feed.setsockopt(zmq.RCVTIMEO, 10_000)
        assert self.feed.recv()[:1] == b"\x01"
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(cfg.publish.endpoint)
        self.wait_status()

    def wait_status(self, timeout_s: float = 10.0) -> dict:
        import json

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.sub.poll(100):
                topic, payload = self.sub.recv_multipart()
                if topic == b"status":
                    return json.loads(payload)
        raise AssertionError("no status heartbeat from the daemon")

    def send(self, events: np.ndarray) -> int:
        """Send events as contract-4 messages, one per run of one instrument."""
        inst = events["instrument"]
        n = 0
        for chunk in np.split(events, np.flatnonzero(np.diff(inst)) + 1):
            if len(chunk):
                topic = b"md." + self.symbols[int(chunk["instrument"][0])].encode()
                self.feed.send_multipart([topic, chunk.tobytes()])
                n += 1
        return n

    def send_each(self, events: np.ndarray) -> int:
        """Send one message per event (so the daemon can infer after each)."""
        for k in range(len(events)):
            self.send(events[k : k + 1])
        return len(events)

    def send_raw(self, parts: list[bytes]) -> None:
        self.feed.send_multipart(parts)

    def wait_messages(self, n: int, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while self.daemon.metrics.totals["messages"] < n:
            assert self.thread.is_alive(), "daemon thread died"
            assert time.monotonic() < end, (
                f"daemon took {self.daemon.metrics.totals['messages']} of {n} messages"
            )
            time.sleep(0.01)

    def wait_for_model(self, sha256: str, timeout_s: float = 60.0) -> None:
        """Wait until the daemon runs the artifact with this digest (a reload swapped it in)."""
        end = time.monotonic() + timeout_s
        while self.daemon.model.sha256 != sha256:
            assert self.thread.is_alive(), "daemon thread died"
            assert time.monotonic() < end, "reload did not happen"
            time.sleep(0.02)

    def collect(self, idle_s: float = 0.3) -> tuple[np.ndarray, list[dict]]:
        """Signals and heartbeats received until ``idle_s`` passes without a signal."""
        import json

        recs, status = [], []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            if not self.sub.poll(20):
                continue
            topic, payload = self.sub.recv_multipart()
            if topic == b"status":
                status.append(json.loads(payload))
                continue
            assert topic.startswith(b"sig.")
            recs.append(decode(payload).copy())
            last = time.monotonic()
        out = np.concatenate(recs) if recs else np.zeros(0, SIGNAL_DTYPE)
        return out, status

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "daemon did not stop"
        self.sub.close(0)
        self.feed.close(0)
        self.ctx.term()


def backtest_probs(events: np.ndarray, module, manifest: dict, n_inst: int, runner=None) -> dict:
    """(instrument, seq) -> probabilities of the in-process backtest path."""
    chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
    runner = runner or TorchRunner(module, window=int(manifest["T"]))
    res = run_backtest(chunks, runner, manifest, n_instruments=n_inst)
    ok = ~np.isnan(res.probs[:, 0])
    keys = zip(res.meta["instrument"][ok].tolist(), res.meta["seq"][ok].tolist(), strict=True)
    return dict(zip(keys, res.probs[ok], strict=True))


_CPU0 = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


@pytest.mark.parametrize(
    "model_t, ingest_t",
    [
        ({"overlap_batch": 0}, {}),
        ({"overlap_batch": 1}, {}),
        # the low-latency settings: spinning ingest, inference thread pinned
        ({"overlap_batch": 1, "cpus": [_CPU0] if _CPU0 is not None else []},
         {"busy_poll_us": 2000}),
    ],
    ids=["inline", "inference-thread", "busy-poll-pinned"],
)  # fmt: skip
def test_signals_equal_in_process_backtest(artifact, ipc_dir, model_t, ingest_t):
    symbols = ["AAA", "BBB", "CCC"]
    events = synthetic_events(4000, n_instruments=3, seed=7, levels=4, snapshot_every=300)
    events["ts_recv"] = time.monotonic_ns()
    # one message per round: many model calls with little conflation
    cfg = make_cfg(ipc_dir, artifact, symbols, ingest={"max_drain": 1, **ingest_t}, model=model_t)
    run = Running(cfg, symbols)
    try:
        n_msg = run.send(events)
        run.wait_messages(n_msg)
        signals, _ = run.collect()
        daemon = run.daemon
        windows = [daemon.ring.rows[i, daemon.ring.count[i] % T :][:T].copy() for i in range(3)]
        counts = daemon.ring.count.copy()
    finally:
        run.stop()
    module, manifest = load_model(artifact)
    expected = backtest_probs(events, module, manifest, 3)
    # how many model calls happen depends on scheduling (conflation), not on correctness
    assert len(signals) > 10
    assert len({(int(s["instrument"]), int(s["seq"])) for s in signals}) == len(signals)
    for s in signals:
        key = (int(s["instrument"]), int(s["seq"]))
        assert key in expected, f"daemon signal {key} has no window in the backtest"
        np.testing.assert_allclose(s["prob"], expected[key], atol=PROB_ATOL)
        assert s["pred"] == np.argmax(s["prob"])
        assert s["model_id"] == int(sha256_file(artifact)[:8], 16)
    # the newest signal of each instrument is its newest window (nothing left unpublished)
    for i in range(3):
        mine = signals[signals["instrument"] == i]
        newest = max(k[1] for k in expected if k[0] == i)
        assert int(mine["seq"].max()) == newest
    # and the daemon's final windows are the backtest's last T rows
    from lobstream.kernels.book import new_report
    from lobstream.models.manifest import spec_from_manifest
    from lobstream.replay.backtest.run import rows_from_events

    rows_all, meta_all = [], []
    for rows, meta, _ in rows_from_events([events], spec_from_manifest(manifest), 3, new_report()):
        rows_all.append(rows.copy())
        meta_all.append(meta.copy())
    rows_all, meta_all = np.concatenate(rows_all), np.concatenate(meta_all)
    for i in range(3):
        mine = rows_all[meta_all["instrument"] == i]
        assert len(mine) == counts[i]
        np.testing.assert_array_equal(windows[i], mine[-T:])


class Float64Runner(TorchRunner):
    """The in-process side in float64: the daemon's compiled BiN-CTABL keeps BiN's statistics
    in float64, so it is judged against exact arithmetic, not against torch's float32 call."""

    def infer(self, n: int) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(self.module(self._t[:n].double()), dim=1).float().numpy()


@pytest.mark.parametrize("overlap_batch", [0, 1], ids=["inline", "inference-thread"])
def test_compiled_binctabl_signals_equal_in_process_backtest(ipc_dir, tmp_path, overlap_batch):
    torch.manual_seed(3)
    model = build_model("binctabl", T=T, levels=L, hidden1=(6, 3), hidden2=(5, 2)).eval()
    path = tmp_path / "binctabl.pt"
    export_model(model, path, MANIFEST)
    symbols = ["AAA", "BBB"]
    events = synthetic_events(2000, n_instruments=2, seed=11, levels=4, snapshot_every=300)
    events["ts_recv"] = time.monotonic_ns()
    cfg = make_cfg(ipc_dir, path, symbols, ingest={"max_drain": 1},
                   model={"overlap_batch": overlap_batch})  # fmt: skip
    run = Running(cfg, symbols)
    try:
        status = run.wait_status()
        n_msg = run.send(events)
        run.wait_messages(n_msg)
        signals, _ = run.collect()
    finally:
        run.stop()
    assert status["model"]["runner"] == "numba" and status["model"]["inference"] == "full-window"
    manifest = load_model(path)[1]
    expected = backtest_probs(events, None, manifest, 2, Float64Runner(model.double()))
    assert len(signals) > 10
    for s in signals:
        np.testing.assert_allclose(s["prob"], expected[(int(s["instrument"]), int(s["seq"]))],
                                   atol=PROB_ATOL)  # fmt: skip


def test_slow_and_absent_subscriber_never_block_ingest(artifact, ipc_dir):
    symbols = [f"S{i}" for i in range(4)]
    events = synthetic_events(20_000, n_instruments=4, seed=3, levels=4)
    cfg = make_cfg(ipc_dir, artifact, symbols, publish={"sndhwm": 10})
    run = Running(cfg, symbols)
    # a subscriber that connects and never reads, with tiny queues
    ctx = zmq.Context()
    lazy = ctx.socket(zmq.SUB)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.SUBSCRIBE, b"")
    lazy.connect(cfg.publish.endpoint)
    run.sub.setsockopt(zmq.UNSUBSCRIBE, b"")  # the test's own subscriber stops reading too
    try:
        n_msg = run.send(events)
        run.wait_messages(n_msg, timeout_s=60)
        assert run.daemon.metrics.totals["events"] == len(events)
        assert run.daemon.metrics.totals["signals"] > 0
    finally:
        lazy.close(0)
        ctx.term()
        run.stop()


@pytest.mark.parametrize("overlap_batch", [16, 1], ids=["inline", "inference-thread"])
def test_hot_reload_swaps_model_without_losing_events(artifact, ipc_dir, tmp_path, overlap_batch):
    model_path = tmp_path / "live.pt"
    shutil.copy(artifact, model_path)
    symbols = ["AAA", "BBB"]
    # overlap_batch 1: the inference thread takes every batch, so the swap must park it first
    cfg = make_cfg(ipc_dir, model_path, symbols, model={"overlap_batch": overlap_batch})
    events = synthetic_events(3000, n_instruments=2, seed=11, levels=4)
    run = Running(cfg, symbols)
    try:
        first = run.send(events[:1500])
        run.wait_messages(first)
        old_id = run.daemon.model.model_id
        # a refused reload (different window) keeps the running model
        export_test_model(model_path, seed=1, T=12)
        run.daemon.request_reload()
        time.sleep(0.5)
        assert run.daemon.model.model_id == old_id
        # an acceptable one (same spec, other weights) is swapped in while events flow
        new_sha = export_test_model(model_path, seed=2)
        run.daemon.request_reload()
        second = run.send(events[1500:])
        run.wait_messages(first + second)
        end = time.monotonic() + 20
        while run.daemon.model.sha256 != new_sha:
            assert time.monotonic() < end, "reload did not happen"
            time.sleep(0.02)
        assert run.daemon.metrics.totals["events"] == len(events)
        refused = run.daemon.metrics.reloads.labels("refused")._value.get()
        assert refused == 1
    finally:
        run.stop()


def test_curve_on_both_sockets(artifact, ipc_dir, tmp_path):
    import zmq.auth

    keys = tmp_path / "keys"
    keys.mkdir()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("feed", "daemon", "client"):
        zmq.auth.create_certificates(keys, name)
    shutil.copy(keys / "client.key", allowed / "client.key")
    symbols = ["AAA"]
    cfg = make_cfg(
        ipc_dir,
        artifact,
        symbols,
        ingest={
            "curve": {
                "secret_key": str(keys / "daemon.key_secret"),
                "server_public_key": str(keys / "feed.key"),
            }
        },
        publish={
            "curve": {
                "secret_key": str(keys / "daemon.key_secret"),
                "authorized_keys": str(allowed),
            }
        },
    )
    # the feed is the Curve server of the ingest link
    ctx = zmq.Context()
    feed = ctx.socket(zmq.XPUB)
    pub, sec = zmq.auth.load_certificate(keys / "feed.key_secret")
    feed.curve_secretkey, feed.curve_publickey, feed.curve_server = sec, pub, True
    feed.setsockopt(zmq.LINGER, 0)
    feed.bind(cfg.ingest.endpoints[0])
    daemon = Daemon(cfg, symbols, load_checked_model(cfg))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    sub = ctx.socket(zmq.SUB)
    try:
        assert daemon.started.wait(180)
        feed.setsockopt(zmq.RCVTIMEO, 10_000)
        assert feed.recv()[:1] == b"\x01"  # the daemon subscribed through Curve
        cpub, csec = zmq.auth.load_certificate(keys / "client.key_secret")
        sub.curve_publickey, sub.curve_secretkey = cpub, csec
        sub.curve_serverkey = zmq.auth.load_certificate(keys / "daemon.key")[0]
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        sub.setsockopt(zmq.RCVTIMEO, 10_000)
        sub.connect(cfg.publish.endpoint)
        assert sub.recv_multipart()[0] == b"status"
        events = synthetic_events(500, n_instruments=1, seed=5, levels=4)
        feed.send_multipart([b"md.AAA", events.tobytes()])
        end = time.monotonic() + 20
        while daemon.metrics.totals["events"] < len(events):
            assert time.monotonic() < end
            time.sleep(0.01)
    finally:
        daemon.request_stop()
        thread.join(10)
        sub.close(0)
        feed.close(0)
        ctx.term()
    assert not thread.is_alive()


def test_sigterm_exits_zero(artifact, ipc_dir, tmp_path):
    tables = daemon_tables(
        artifact, ["AAA"], f"ipc://{ipc_dir}/md", f"ipc://{ipc_dir}/sig", window=T, levels=L,
        ingest={"mode": "bind"}, publish={"status_interval_s": 0.1},
    )  # fmt: skip
    proc = spawn_daemon(write_config(tmp_path, tables), tmp_path / "daemon.log", verbose=True)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"ipc://{ipc_dir}/sig")
        assert sub.poll(120_000), "the daemon sent no heartbeat"
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.connect(f"ipc://{ipc_dir}/md")
        time.sleep(0.2)
        pub.send_multipart([b"md.AAA", synthetic_events(200, 1, seed=1, levels=4).tobytes()])
        pub.close(0)
    finally:
        code = stop_process(proc, "daemon", timeout_s=30)  # SIGTERM; SIGKILL only after 30 s
        sub.close(0)
        ctx.term()
    log = (tmp_path / "daemon.log").read_text(errors="replace")
    assert code == 0, log
    assert "shutdown complete" in log, log
    i_stop, i_close = log.index("stop intake"), log.index("closing the context")
    assert i_stop < i_close


def test_prometheus_metrics(artifact, ipc_dir):
    symbols = ["AAA", "BBB"]
    cfg = make_cfg(ipc_dir, artifact, symbols, metrics={"address": "127.0.0.1:0"})
    run = Running(cfg, symbols)
    try:
        run.send_raw([b"md.AAA", b"\x01" * 5])
        n = run.send(synthetic_events(1000, 2, seed=4, levels=4))
        run.wait_messages(n + 1)
        run.collect(idle_s=0.2)
        values = metric_values(f"127.0.0.1:{run.daemon.metrics_port}")
    finally:
        run.stop()
    assert values["lobstream_events_total"] == 1000
    assert values["lobstream_messages_total"] == n + 1
    assert values['lobstream_rejected_total{reason="misaligned"}'] == 1
    assert values['lobstream_rejected_total{reason="unknown_instrument"}'] == 0  # made at start
    assert values["lobstream_signals_total"] > 0
    assert 'lobstream_book_conditions_total{condition="seq_gap"}' in values
    for stage in ("receive", "drain", "book", "gather", "model", "fused", "publish", "end_to_end"):
        assert f'lobstream_stage_seconds_count{{stage="{stage}"}}' in values
    assert values['lobstream_stage_seconds_count{stage="model"}'] > 0
    assert 'lobstream_stage_seconds_bucket{le="1e-06",stage="model"}' in values
    assert values["lobstream_stale_instruments"] == 0


def test_reload_on_file_change_and_json_encoding(artifact, ipc_dir, tmp_path):
    model_path = tmp_path / "live.pt"
    shutil.copy(artifact, model_path)
    symbols = ["AAA"]
    cfg = make_cfg(
        ipc_dir,
        model_path,
        symbols,
        model={"reload_poll_s": 0.05},
        publish={"encoding": "json"},
    )
    run = Running(cfg, symbols)
    try:
        new_sha = export_test_model(model_path, seed=3)
        end = time.monotonic() + 20
        while run.daemon.model.sha256 != new_sha:
            assert time.monotonic() < end, "file change not picked up"
            time.sleep(0.02)
        n = run.send(synthetic_events(300, 1, seed=8, levels=4))
        run.wait_messages(n)
        # JSON payloads arrive: collect() decodes either encoding
        topic_payloads = []
        end = time.monotonic() + 10
        while not topic_payloads and time.monotonic() < end:
            if run.sub.poll(50):
                topic, payload = run.sub.recv_multipart()
                if topic.startswith(b"sig."):
                    topic_payloads.append(payload)
    finally:
        run.stop()
    assert topic_payloads and topic_payloads[0].startswith(b'{"symbol":"AAA"')
    rec = decode(topic_payloads[0])
    assert rec["model_id"][0] == int(new_sha[:8], 16)


def test_example_subscriber_prints_signals(artifact, ipc_dir):
    symbols = ["AAA"]
    run = Running(make_cfg(ipc_dir, artifact, symbols), symbols)
    example = Path(__file__).resolve().parents[1] / "examples" / "subscribe.py"
    proc = subprocess.Popen(
        [sys.executable, str(example), f"ipc://{ipc_dir}/sig", "--seconds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # its first heartbeat line says it is subscribed; then feed events
        first = proc.stdout.readline()
        assert first.startswith("status:"), first
        run.wait_messages(run.send(synthetic_events(400, 1, seed=6, levels=4)))
        line = proc.stdout.readline()
        while line.startswith("status:"):
            line = proc.stdout.readline()
        assert line.startswith("AAA seq=") and "latency=" in line, line
    finally:
        proc.kill()
        proc.wait(10)
        run.stop()


def test_serve_refuses_a_mismatched_artifact_before_opening_sockets(artifact, ipc_dir, tmp_path):
    from click.testing import CliRunner

    from lobstream.cli.serve import serve

    cfg_file = tmp_path / "serve.toml"
    text = f"""
[model]
path = "{artifact}"
window = 50
levels = {L}
[[instruments.instrument]]
symbol = "AAA"
tick_size = 0.01
[ingest]
endpoints = ["ipc://{ipc_dir}/md"]
mode = "bind"
[publish]
endpoint = "ipc://{ipc_dir}/sig"
[metrics]
address = ""
"""
    cfg_file.write_text(text)
    res = CliRunner().invoke(serve, ["--config", str(cfg_file)])
    assert res.exit_code != 0
    assert "T=10" in res.output and "T=50" in res.output, res.output
    assert not os.path.exists(f"{ipc_dir}/md") and not os.path.exists(f"{ipc_dir}/sig")
    # a pinned digest that differs is refused too; the right one passes the check
    cfg_file.write_text(text.replace("window = 50", f'window = {T}\nsha256 = "{"0" * 64}"'))
    res = CliRunner().invoke(serve, ["--config", str(cfg_file)])
    assert res.exit_code != 0 and "SHA-256" in res.output, res.output
    good = text.replace("window = 50", f'window = {T}\nsha256 = "{sha256_file(artifact)}"')
    cfg_file.write_text(good)
    res = CliRunner().invoke(serve, ["--config", str(cfg_file), "--check"])
    assert res.exit_code == 0 and "ok" in res.output, res.output
