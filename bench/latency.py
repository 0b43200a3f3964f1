"""End-to-end latency of the live daemon at fixed event rates.

Three processes, as in production: the daemon (``lobstream serve`` in a subprocess), the
replayer (here, in this process), and a subscriber (a separate process) that stamps each
signal's receipt with ``time.monotonic_ns()``. The latency of a signal is receipt minus the
``ts_recv`` the replayer stamped on the newest event of its window (same host, same monotonic
clock), collected in an HDR histogram per rate. The daemon's own per-stage histograms are read
from its Prometheus endpoint before and after each rate, so the breakdown covers that rate only.

Every rate replays a synthetic stream (``lobstream.replay.feed.synthetic``) whose mean event gap is
``1 / rate`` at replay speed 1; rate 0 sends as fast as possible. All processes are stopped in
``finally`` blocks: the daemon by SIGTERM (then SIGKILL after a timeout), the subscriber by
an event (then terminate).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MAX_RATE_EVENTS_PER_S = 100_000  # sizes the as-fast-as-possible run: seconds x this
_HDR_MAX_US = 60_000_000  # 60 s: anything slower is a failure, not a latency
_STATUS_INTERVAL_S = 0.2


# ----------------------------------------------------------------------- subscriber side ---
def subscriber_main(endpoint: str, out_path: str) -> None:
    """Subscriber process: print ``ready`` at the first status heartbeat, receive signals
    until a line arrives on stdin (or stdin closes), save (ts_recv, latency) to ``out_path``
    (.npz), print ``done``.

    A plain subprocess, not multiprocessing: nothing (resource tracker, forked state) outlives
    the benchmark.
    """
    import zmq

    from lobstream.engine.subscriber import Subscriber

    chunks_ts, chunks_lat = [], []
    ready = False
    with Subscriber(endpoint, status_topic="status") as sub:
        poller = zmq.Poller()
        poller.register(sub.sock, zmq.POLLIN)
        poller.register(sys.stdin.fileno(), zmq.POLLIN)
        while True:
            events = dict(poller.poll(1000))
            if sys.stdin.fileno() in events:
                break
            if sub.sock not in events:
                continue
            msg = sub.recv(timeout_s=0)
            if msg is None:
                continue
            if msg.kind == "status":
                if not ready:
                    ready = True
                    sys.stdout.write("ready\n")
                    sys.stdout.flush()
                continue
            rec = msg.records
            chunks_ts.append(rec["ts_recv"].copy())
            chunks_lat.append(msg.t_recv_ns - rec["ts_recv"])
    ts = np.concatenate(chunks_ts) if chunks_ts else np.empty(0, np.int64)
    lat = np.concatenate(chunks_lat) if chunks_lat else np.empty(0, np.int64)
    np.savez(out_path, ts_recv=ts, latency_ns=lat)
    sys.stdout.write("done\n")
    sys.stdout.flush()


def _wait_ready(sub: subprocess.Popen, daemon: subprocess.Popen, timeout_s: float) -> str:
    """The subscriber's first line, giving up early if the daemon exits."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and daemon.poll() is None:
        line = _readline(sub, 0.5)
        if line:
            return line
    return ""


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    """A line of a child's stdout, or "" if none comes within ``timeout_s``."""
    import select

    r, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().decode().strip() if r else ""


# --------------------------------------------------------------------------- helpers ---
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (0.0 where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def scrape(address: str) -> dict:
    """Counters and stage histograms of a daemon's Prometheus endpoint.

    Returns
    -------
    {"counters": {name: value}, "stages": {stage: {"buckets": [(le, cum)], "sum": s,
    "count": n}}} with counter names without the ``lobstream_`` prefix and ``_total`` suffix.
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    counters: dict[str, float] = {}
    stages: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_total"):
                key = s.name.removeprefix("lobstream_").removesuffix("_total")
                counters[key] = counters.get(key, 0.0) + s.value
            elif s.name.startswith("lobstream_stage_seconds"):
                st = stages.setdefault(s.labels["stage"], {"buckets": [], "sum": 0.0, "count": 0.0})
                if s.name.endswith("_bucket"):
                    st["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_sum"):
                    st["sum"] = s.value
                elif s.name.endswith("_count"):
                    st["count"] = s.value
    return {"counters": counters, "stages": stages}


def stage_breakdown(before: dict, after: dict) -> dict:
    """Per stage, from two scrapes: ``count``, ``mean_us``, ``p50_us``, ``p99_us``.

    Quantiles interpolate linearly inside the histogram bucket that holds them (the bucket
    edges are the resolution: 1-2-5 steps per decade).
    """
    out = {}
    for stage, a in after["stages"].items():
        b = before["stages"].get(stage, {"buckets": [], "sum": 0.0, "count": 0.0})
        prev = dict(b["buckets"])
        edges = np.array([le for le, _ in a["buckets"]])
        cum = np.array([c - prev.get(le, 0.0) for le, c in a["buckets"]])
        n = a["count"] - b["count"]
        mean = (a["sum"] - b["sum"]) / n * 1e6 if n > 0 else 0.0
        out[stage] = {
            "count": int(n),
            "mean_us": mean,
            "p50_us": _bucket_quantile(edges, cum, 0.5) * 1e6,
            "p99_us": _bucket_quantile(edges, cum, 0.99) * 1e6,
        }
    return out


def _bucket_quantile(edges: np.ndarray, cum: np.ndarray, q: float) -> float:
    if len(cum) == 0 or cum[-1] <= 0:
        return 0.0
    target = q * cum[-1]
    k = int(np.searchsorted(cum, target, side="left"))
    lo_e = edges[k - 1] if k > 0 else 0.0
    lo_c = cum[k - 1] if k > 0 else 0.0
    hi_e = edges[k] if np.isfinite(edges[k]) else lo_e
    span = cum[k] - lo_c
    return float(lo_e + (hi_e - lo_e) * ((target - lo_c) / span if span > 0 else 1.0))


def hdr_summary(latency_ns: np.ndarray) -> dict:
    """p50/p90/p99/p99.9/max in microseconds from an HDR histogram (3 significant digits)."""
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram(1, _HDR_MAX_US, 3)
    us = np.clip(np.asarray(latency_ns) // 1000, 1, _HDR_MAX_US)
    for v in us.tolist():
        h.record_value(v)
    keys = (("p50_us", 50), ("p90_us", 90), ("p99_us", 99), ("p999_us", 99.9))
    out = {k: float(h.get_value_at_percentile(p)) if len(us) else 0.0 for k, p in keys}
    out["max_us"] = float(h.get_max_value()) if len(us) else 0.0
    out["n_signals"] = int(len(us))
    return out


def model_b1_p50_us(model_path: Path, device: str, threads: int, calls: int = 300) -> float:
    """Median latency of one batch-1 call of the runner, in microseconds."""
    from lobstream.models.artifact import load_model
    from lobstream.models.runner import ModelRunner

    module, manifest = load_model(model_path, device=device)
    runner = ModelRunner(module, manifest, device=device, max_batch=1, threads=threads)
    runner.input[...] = np.random.default_rng(0).standard_normal(runner.input.shape)
    for _ in range(20):
        runner.infer(1)
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        runner.infer(1)
        times[i] = time.perf_counter_ns() - t0
    return float(np.median(times) / 1000)


def _config_text(
    model: Path,
    manifest: dict,
    symbols: Sequence[str],
    md: str,
    sig: str,
    metrics: str,
    device: str,
    threads: int,
    tick_size: float,
) -> str:
    inst = "".join(
        f'\n[[instruments.instrument]]\nsymbol = "{s}"\ntick_size = {tick_size}\n' for s in symbols
    )
    return (
        f'[model]\npath = "{model}"\ndevice = "{device}"\nthreads = {threads}\n'
        f"window = {int(manifest['T'])}\nlevels = {int(manifest['L'])}\n"
        f'feature_kind = "{manifest["feature"]["kind"]}"\n'
        f"reload_poll_s = 0.0\n{inst}\n"
        f'[ingest]\nendpoints = ["{md}"]\nmode = "connect"\n\n'
        f'[publish]\nendpoint = "{sig}"\nmode = "bind"\nstatus_interval_s = {_STATUS_INTERVAL_S}\n\n'
        f'[metrics]\naddress = "{metrics}"\n'
    )


def _phase_streams(
    rates: Sequence[float], seconds: float, n_instruments: int, start_price: int, window: int
) -> list[np.ndarray]:
    """One synthetic stream cut into consecutive pieces: first a priming piece (about 4 T rows
    per instrument, sent as fast as possible and not measured, so every ring holds a full
    window when timing starts), then one piece per rate, its timestamps rescaled to span
    ``n / rate`` seconds (rate 0: left as generated, 1 us mean gap). One stream keeps sequence
    numbers contiguous and time increasing across pieces, so the daemon's books stay healthy.
    """
    from lobstream.replay.feed.synthetic import synthetic_events

    sizes = [8 * window * n_instruments]
    sizes += [int((r or MAX_RATE_EVENTS_PER_S) * seconds) for r in rates]
    ev = synthetic_events(sum(sizes), n_instruments, seed=0, dt_ns=1_000, start_price=start_price)
    out, a, base = [], 0, int(ev["ts_event"][0]) if len(ev) else 0
    for r, n in zip((0.0, *rates), sizes, strict=True):
        piece = ev[a : a + n].copy()
        a += n
        if len(piece):
            rel = (piece["ts_event"] - piece["ts_event"][0]).astype(np.float64)
            if r and rel[-1] > 0:
                # the piece spans exactly n / rate seconds: the mean rate is the target even
                # though events come in packets and snapshots that share a timestamp
                rel *= (n / r * 1e9) / rel[-1]
            piece["ts_event"] = base + rel.astype(np.int64)
            base = int(piece["ts_event"][-1]) + 1
        out.append(piece)
    return out


def _replay(events: np.ndarray, endpoint: str, registry, speed: float, first: bool):
    """Send one piece with the project's replayer (binds; the daemon connects). Pieces after
    the first continue books the daemon already holds, so they need no opening snapshot."""
    from lobstream.replay.feed.replayer import Replayer

    with Replayer(
        endpoint,
        bind=True,
        speed=speed,
        wait=30.0,
        subscribers=1,
        require_snapshot=first,
        linger_ms=1000,
    ) as rep:
        return rep.run([events], registry)


def _stop_daemon(proc: subprocess.Popen, timeout_s: float = 5.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("daemon %d ignored SIGTERM for %.0f s: killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


# ----------------------------------------------------------------------------- driver ---
def run_latency(
    model_path: str | Path | None = None,
    *,
    rates: Sequence[float] = (1_000, 10_000, 100_000, 0),
    seconds: float = 3.0,
    n_instruments: int = 10,
    device: str = "cpu",
    threads: int = 1,
    settle_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the daemon, replay each rate, and measure (see the module docstring).

    Returns
    -------
    dict: ``rates`` (one dict per rate: ``target_events_per_s``, ``events``,
    ``events_per_s``, ``p50_us`` .. ``max_us``, ``n_signals``, ``signals_per_s``,
    ``conflated``, ``dropped``, ``rejected``, ``daemon_cpu`` (cores busy), ``stages``),
    ``model_b1_p50_us``, ``arch``, ``device``, ``n_instruments``.
    """
    from lobstream.engine.throughput_bench import default_model_path
    from lobstream.kernels.registry import Registry
    from lobstream.models.artifact import read_manifest

    say = progress or (lambda s: None)
    model_path = Path(model_path).resolve() if model_path else default_model_path()
    manifest = read_manifest(model_path)
    b1 = model_b1_p50_us(model_path, device, threads)
    say(f"model alone, batch 1: p50 {b1:.0f} us")
    feature = manifest.get("feature", {})
    start_price = 10_000
    if feature.get("kind") == "zscore" and feature.get("params"):
        # prices near the training data's mean keep the model's inputs in range
        start_price = max(start_price, int(feature["params"][0]))
    symbols = [f"SYN{i:03d}" for i in range(n_instruments)]
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="lobl", dir="/tmp" if os.path.isdir("/tmp") else None))
    md, sig = f"ipc://{tmp}/md", f"ipc://{tmp}/sig"
    metrics_addr = f"127.0.0.1:{_free_port()}"
    cfg = tmp / "serve.toml"
    cfg.write_text(
        _config_text(model_path, manifest, symbols, md, sig, metrics_addr, device, threads, 0.01)
    )
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 (closed in finally)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lobstream.engine.cli import main; main()",
            "serve",
            "--config",
            str(cfg),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    out_npz = tmp / "signals.npz"
    sub = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from lobstream.engine.latency_bench import "
            "subscriber_main as m; m(sys.argv[1], sys.argv[2])",
            sig,
            str(out_npz),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    code = None
    try:
        if _wait_ready(sub, daemon, 90) != "ready":
            raise RuntimeError(
                f"the daemon sent no status heartbeat within 90 s (exit code {daemon.poll()}); "
                f"see its log {tmp / 'daemon.log'}"
            )
        phases = []
        prime, *streams = _phase_streams(
            rates, seconds, n_instruments, start_price, int(manifest["T"])
        )
        registry = Registry()
        for sym in symbols:
            registry.add(sym, "0.01")
        _replay(prime, md, registry, 0.0, True)
        time.sleep(settle_s)
        for rate, ev in zip(rates, streams, strict=True):
            before = scrape(metrics_addr)
            cpu0 = _cpu_seconds(daemon.pid)
            t0 = time.monotonic_ns()
            stats = _replay(ev, md, registry, 1.0 if rate else 0.0, False)
            t1 = time.monotonic_ns()
            sent = stats.events
            time.sleep(settle_s)  # let the daemon drain what is queued before the next scrape
            after = scrape(metrics_addr)
            cpu1 = _cpu_seconds(daemon.pid)
            phases.append((rate, stats, t0, t1, before, after, cpu1 - cpu0))
            say(f"rate {rate or 'max'}: sent {sent:,} events in {stats.seconds:.2f} s")
        sub.stdin.write(b"stop\n")
        sub.stdin.flush()
        if _readline(sub, 30) != "done":
            raise RuntimeError("the subscriber process did not save its signals within 30 s")
        with np.load(out_npz) as z:
            ts, lat = z["ts_recv"], z["latency_ns"]
        for rate, stats, t0, t1, before, after, cpu in phases:
            sent = stats.events
            mine = (ts >= t0) & (ts <= t1)
            c0, c1 = before["counters"], after["counters"]
            delta = {k: c1.get(k, 0.0) - c0.get(k, 0.0) for k in c1}
            rejected = sum(v for k, v in delta.items() if k.startswith("rejected"))
            span = stats.seconds
            hdr = hdr_summary(lat[mine])
            results.append(
                {
                    "target_events_per_s": float(rate),
                    "events": int(sent),
                    "events_per_s": sent / span if span > 0 else 0.0,
                    **hdr,
                    "signals_per_s": hdr["n_signals"] / span if span > 0 else 0.0,
                    "conflated": int(delta.get("conflated", 0)),
                    "dropped": int(max(0, sent - delta.get("events", 0)) + rejected),
                    "rejected": int(rejected),
                    "daemon_cpu": cpu / ((t1 - t0) / 1e9 + settle_s),
                    "pacing_p99_us": stats.pacing_p99_us,
                    "stages": stage_breakdown(before, after),
                }
            )
    finally:
        code = _stop_daemon(daemon)
        if sub.poll() is None:
            sub.stdin.close()
            try:
                sub.wait(5)
            except subprocess.TimeoutExpired:
                sub.kill()
                sub.wait(5)
        sub.stdout.close()
        log.close()
        logger.info("daemon exited with %s; its log is %s", code, tmp / "daemon.log")
        if code == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rates": results,
        "model_b1_p50_us": b1,
        "arch": manifest.get("arch"),
        "device": device,
        "threads": threads,
        "n_instruments": n_instruments,
        "seconds_per_rate": seconds,
        "daemon_exit_code": code,
    }
