"""The live Binance connector: messages/s through sync and publish, and the latency it adds.

``python -m bench.feed [--json] [--repeat 3] [--messages N] [--latency-messages 2000]
[--latency-speed 1] [--others-cpus 0]``

Input: a real recording (``--file``, default the USD-M BTCUSDT one of
../shared/data/binance_hftbacktest: the busiest of the recordings), its depth diffs and trades
(the streams the connector subscribes to; the BBO stream is left out as the connector does).

- ``peak_msgs_per_s``: the recording's own busiest second (depth diffs + trades, by the
  recorder's local timestamps): the real peak rate the goal is set against
  (``goal_msgs_per_s`` = ``--goal-x`` times it).
- ``sync_msgs_per_s``: :class:`lobstream.live.sync.BinanceSync` alone (JSON parse, the Binance
  reader's parser and update-id state machine, events out), chunks of ``--max-chunk`` messages.
- ``sync_publish_msgs_per_s`` (chunks of ``--max-chunk``, a busy market) and
  ``sync_publish_chunk1_msgs_per_s`` (one message at a time, a quiet market): sync, then
  :class:`lobstream.live.Publisher` sends every chunk's events on ipc:// to a SUB socket in
  another process; rate = messages / (last event received - start). Median of ``--repeat``.
- ``websocket_msgs_per_s``: the whole connector (:class:`lobstream.live.binance.BinanceFeed`,
  websocket receipt, queue, sync, publish, REST snapshot) fed by the loopback exchange in
  its own process sending the recording as fast as it can; rate = messages the feed received
  / (last event received by the subscriber - the feed's first websocket receipt). The
  exchange's own sending shares the machine, so this is a lower bound of the connector's rate.
  The median of ``--repeat`` runs (``websocket_run`` is that run).
- Each rate also as ``..._msgs_per_cpu_s``: messages per CPU-second of this process over the
  same run (the connector's own cost, whatever else shares its core; the websocket run's
  includes the feed's start: exchangeInfo, snapshot, connection).
- ``latency_p50_us`` / ``latency_p99_us``: from websocket receipt (the ``ts_recv`` the feed
  stamps on ``ws.recv()`` returning) to the message on a SUB socket like the daemon's, in
  another process (one host's ``time.monotonic_ns``), with the exchange at ``--latency-speed``
  times the recorded pace for ``--latency-messages`` messages. Snapshot messages (and the
  diffs released with the first one) are left out: they wait for the REST round trip.

Every process runs where this one may (``taskset`` it); ``--others-cpus`` pins the
loopback exchange and the subscriber elsewhere, so that the connector has CPUs of its own.
The goal is judged on the wall-clock ``websocket_msgs_per_s``.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lobstream.bench._common import at_least, emit_json, machine, parser, print_table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binance_hftbacktest"
DEFAULT_FILE = DATA / "usdm" / "btcusdt_20240808.gz"


# ---------------------------------------------------------------------------- subscriber ---
def _subscriber(endpoint: str, conn) -> None:
    """Child process: count what arrives on ``endpoint`` until told the total (or 10 s of
    silence after it); per message, receipt minus ``ts_recv`` (non-snapshot messages)."""
    import zmq

    from lobstream.kernels import wire
    from lobstream.kernels.dtypes import ACTION_CLEAR

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_PREFIX)
    sock.connect(endpoint)
    conn.send("ready")
    got = msgs = 0
    first_ts_recv = None
    last = 0
    lat: list[int] = []
    target = None
    quiet_since = time.monotonic()
    while True:
        if sock.poll(20):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                d = wire.decode(frames)
                ev = d.events
                got += len(ev)
                msgs += 1
                last = now
                ts = int(ev["ts_recv"][0])
                if first_ts_recv is None or ts < first_ts_recv:
                    first_ts_recv = ts
                if ev["action"][0] != ACTION_CLEAR:
                    lat.append(now - ts)
            quiet_since = time.monotonic()
        if target is None and conn.poll():
            target = conn.recv()
        if target is not None and (got >= target or time.monotonic() - quiet_since > 10):
            break
    conn.send(
        {
            "events": got,
            "messages": msgs,
            "first_ts_recv": first_ts_recv,
            "last_ns": last,
            "latency_ns": np.array(lat, np.int64),
        }
    )
    sock.close(0)
    ctx.term()


class Subscriber:
    """The counting SUB socket in a process of its own (on ``cpus`` when given)."""

    def __init__(self, endpoint: str, cpus=None) -> None:
        mpc = mp.get_context("spawn")
        self.conn, child = mpc.Pipe()
        self.proc = mpc.Process(target=_subscriber, args=(endpoint, child), daemon=True)
        self.proc.start()
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            raise RuntimeError("the subscriber process did not start")

    def result(self, expected_events: int, timeout_s: float = 120.0) -> dict:
        self.conn.send(expected_events)
        if not self.conn.poll(timeout_s):
            self.proc.kill()
            raise RuntimeError("the subscriber process did not report")
        out = self.conn.recv()
        self.proc.join(5)
        return out


# ------------------------------------------------------------------------------ the input ---
@functools.lru_cache(maxsize=2)
def _recording(path: Path) -> tuple[list, int]:
    from lobstream.live.loopback import load_recording

    lines = load_recording([path])
    snap = next(i for i, (_, _, d) in enumerate(lines) if d is not None and "lastUpdateId" in d)
    return lines, snap


def load(path: Path, limit: int | None = None):
    """The recording's messages the connector would receive, the snapshot's index among them;
    ``limit``: only that many after the snapshot."""
    lines, snap = _recording(Path(path))
    return (lines if limit is None else lines[: snap + 1 + limit]), snap


def peak_rate(lines) -> tuple[int, int]:
    """(messages in the busiest second, that second) by the recorder's local time."""
    per = Counter(ts // 1_000_000_000 for ts, _, d in lines if d is None or "lastUpdateId" not in d)
    sec, n = per.most_common(1)[0]
    return n, sec


def _market(path: Path) -> tuple[str, str, str]:
    """(market, symbol, tick) from the recording's folder and name."""
    market = {"spot": "spot", "usdm": "usdm", "cm": "coinm"}[path.parent.name]
    symbol = path.name.split("_2")[0].upper()
    tick = {"spot": "0.01", "usdm": "0.1", "coinm": "0.1"}[market]
    return market, symbol, tick


def _sync(market: str, symbol: str, tick: str):
    from lobstream.kernels.registry import Registry
    from lobstream.live.sync import BinanceSync

    reg = Registry()
    return BinanceSync(market, [symbol], reg, {symbol: tick}), reg


def _feed_all(sync, lines, snap: int, chunk: int, publish=None) -> int:
    """Run the recording through ``sync`` (the snapshot in its place), ``chunk`` messages a
    call; returns the events produced."""
    n_ev = 0
    mono = time.monotonic_ns
    i, n = 0, len(lines)
    while i < n:
        if i == snap:
            ts, raw, _ = lines[i]
            out = sync.snapshot(sync.symbols[0], ts, raw)
            i += 1
        else:
            end = min(i + chunk, snap if i < snap else n)
            out = sync.feed([(ts, raw) for ts, raw, _ in lines[i:end]])
            i = end
        if len(out.events):
            n_ev += len(out.events)
            if publish is not None:
                out.events["ts_recv"] = mono()
                publish(out.events)
    return n_ev


# ---------------------------------------------------------------------------- the phases ---
def sync_rate(path: Path, repeat: int, chunk: int, limit: int | None = None) -> dict:
    market, symbol, tick = _market(path)
    lines, snap = load(path, limit)
    n_msg = len(lines) - 1
    _feed_all(_sync(market, symbol, tick)[0], lines[: snap + 2000], snap, chunk)  # warm
    times, cpu = [], []
    for _ in range(repeat):
        sync, _ = _sync(market, symbol, tick)
        t0, c0 = time.perf_counter(), time.process_time()
        _feed_all(sync, lines, snap, chunk)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "msgs_per_s": n_msg / statistics.median(times),
        "msgs_per_cpu_s": n_msg / statistics.median(cpu),
    }


def sync_publish_rate(path: Path, repeat: int, chunk: int, limit: int | None = None) -> dict:
    from lobstream.live.publisher import Publisher

    market, symbol, tick = _market(path)
    lines, snap = load(path, limit)
    n_msg = len(lines) - 1
    _feed_all(_sync(market, symbol, tick)[0], lines[: snap + 2000], snap, chunk)  # warm
    rates, cpu_rates = [], []
    with tempfile.TemporaryDirectory(prefix="lobfeed", dir="/tmp") as tmp:
        for k in range(repeat):
            endpoint = f"ipc://{tmp}/md{k}"
            sync, reg = _sync(market, symbol, tick)
            with Publisher(endpoint, registry=reg, lossless=True, hwm=0) as pub:
                sub = Subscriber(endpoint)
                if not pub.wait_for_subscribers(1, 30):
                    raise RuntimeError("the subscriber did not subscribe")
                t0, c0 = time.monotonic_ns(), time.process_time()
                n_ev = _feed_all(sync, lines, snap, chunk, pub.send)
                cpu = time.process_time() - c0
                res = sub.result(n_ev)
            if res["events"] != n_ev:
                raise RuntimeError(f"published {n_ev} events, {res['events']} arrived")
            rates.append(n_msg / ((res["last_ns"] - t0) / 1e9))
            cpu_rates.append(n_msg / cpu)
    return {
        "msgs_per_s": statistics.median(rates),
        "msgs_per_cpu_s": statistics.median(cpu_rates),
        "runs": rates,
        "messages": n_msg,
    }


def _exchange(path: Path, speed: float, max_messages: int | None, cpus) -> tuple:
    market, symbol, tick = _market(path)
    cmd = [sys.executable, "-m", "lobstream.live.loopback", str(path), "--market", market,
           "--symbol", symbol, "--tick-size", tick, "--speed", str(speed), "--linger-s", "30"]  # fmt: skip
    if max_messages:
        cmd += ["--max-messages", str(max_messages)]
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, preexec_fn=pre)
    line = proc.stdout.readline().decode().split()
    if len(line) != 3:
        proc.kill()
        raise RuntimeError("the loopback exchange did not start")
    return proc, line[0], line[1], int(line[2])


def websocket_run(path: Path, speed: float, max_messages: int | None, chunk: int, cpus) -> dict:
    """The whole connector against the loopback exchange process."""
    from lobstream.live.binance import BinanceFeed, FeedConfig

    market, symbol, tick = _market(path)
    lines, snap = load(path)
    # the kernels compiled (or loaded from Numba's cache) before the clock starts
    _feed_all(_sync(market, symbol, tick)[0], lines[: snap + 500], snap, 64)
    proc, ws_url, rest_url, n_msg = _exchange(path, speed, max_messages, cpus)
    try:
        with tempfile.TemporaryDirectory(prefix="lobfeed", dir="/tmp") as tmp:
            endpoint = f"ipc://{tmp}/md"
            cfg = FeedConfig(
                market=market, symbols=(symbol,), endpoint=endpoint, ws_url=ws_url,
                rest_url=rest_url, snapshot_interval_s=0.05, snapshot_limit=1000,
                heartbeat_s=1.0, subscribers=1, wait_s=30.0, max_failures=5, max_chunk=chunk,
                lossless=True, hwm=0, stall_s=30.0,
            )  # fmt: skip
            feed = BinanceFeed(cfg)
            err: list[BaseException] = []

            def run() -> None:
                try:
                    feed.run()
                except BaseException as exc:  # reported below
                    err.append(exc)

            th = threading.Thread(target=run, daemon=True)
            th.start()
            if not feed.started.wait(30):
                raise RuntimeError("the feed did not open its socket")
            cpu0 = time.process_time()
            sub = Subscriber(endpoint, cpus)
            end = time.monotonic() + 600
            while feed.received < n_msg and time.monotonic() < end and th.is_alive():
                time.sleep(0.05)
            while (feed._inbox or feed._want or feed._inflight) and time.monotonic() < end:
                time.sleep(0.05)
            cpu = time.process_time() - cpu0  # this process: the feed's thread, all but idle
            time.sleep(0.5)
            published = feed.metrics.totals["events"]
            res = sub.result(published)
            feed.request_stop()
            th.join(30)
            if err:
                raise err[0]
            counts = feed._beat()["counts"]
    finally:
        proc.kill()
        proc.wait(10)
    lat = res["latency_ns"]
    # from the first websocket receipt (diffs held for the first snapshot were received before
    # any event carries a ts_recv)
    span = (res["last_ns"] - feed.first_recv_ns) / 1e9
    return {
        "messages": feed.received,
        "expected_messages": n_msg,
        "events_published": published,
        "events_received": res["events"],
        "msgs_per_s": feed.received / span if span > 0 else 0.0,
        "msgs_per_cpu_s": feed.received / cpu if cpu > 0 else 0.0,
        "cpu_s": cpu,
        "wall_s": span,
        "latency_p50_us": float(np.percentile(lat, 50)) / 1e3 if len(lat) else None,
        "latency_p99_us": float(np.percentile(lat, 99)) / 1e3 if len(lat) else None,
        "latency_samples": len(lat),
        "gaps": counts["gaps"],
        "resyncs": counts["resyncs"],
        "reconnects": sum(counts["reconnects"].values()),
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    ap = parser(__doc__.splitlines()[0], repeat=3, prog=prog)
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE, help="a Binance recording")
    ap.add_argument("--max-chunk", type=at_least(1), default=256, help="the feed's max_chunk")
    ap.add_argument("--goal-x", type=float, default=20.0, help="goal: this times the peak rate")
    ap.add_argument(
        "--latency-messages", type=at_least(10), default=2000,
        help="messages the latency run streams",
    )  # fmt: skip
    ap.add_argument(
        "--latency-speed", type=float, default=1.0, help="latency run: times the recorded pace"
    )
    ap.add_argument(
        "--messages", type=at_least(10), default=None,
        help="only this many of the recording's messages after its snapshot (default: all)",
    )  # fmt: skip
    ap.add_argument(
        "--others-cpus", type=lambda s: {int(c) for c in s.split(",")}, default=None,
        help="pin the loopback exchange and the subscriber to these CPUs (e.g. 0), so the "
        "connector (this process) has the rest",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if not args.file.is_file():
        ap.error(f"{args.file} not found (give --file)")
    try:
        import aiohttp  # noqa: F401
        import websockets  # noqa: F401
    except ImportError:
        ap.error("bench.feed needs the live extra: pip install 'lobstream[live]'")

    lines, _ = load(args.file)
    peak, peak_sec = peak_rate(lines)
    goal = args.goal_x * peak
    n = args.messages
    sync_only = sync_rate(args.file, args.repeat, args.max_chunk, n)
    busy = sync_publish_rate(args.file, args.repeat, args.max_chunk, n)
    quiet = sync_publish_rate(args.file, args.repeat, 1, n)
    runs = [
        websocket_run(args.file, 0.0, args.messages, args.max_chunk, args.others_cpus)
        for _ in range(args.repeat)
    ]
    ws = sorted(runs, key=lambda r: r["msgs_per_s"])[len(runs) // 2]  # the median run
    lat = websocket_run(
        args.file, args.latency_speed, args.latency_messages, args.max_chunk, args.others_cpus
    )
    out = {
        "file": str(args.file),
        "messages": len(lines) - 1 if n is None else min(n, len(lines) - 1),
        "peak_msgs_per_s": peak,
        "peak_second_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(peak_sec)),
        "goal_x": args.goal_x,
        "goal_msgs_per_s": goal,
        "sync_msgs_per_s": sync_only["msgs_per_s"],
        "sync_msgs_per_cpu_s": sync_only["msgs_per_cpu_s"],
        "sync_publish_msgs_per_s": busy["msgs_per_s"],
        "sync_publish_msgs_per_cpu_s": busy["msgs_per_cpu_s"],
        "sync_publish_chunk1_msgs_per_s": quiet["msgs_per_s"],
        "sync_publish_chunk1_msgs_per_cpu_s": quiet["msgs_per_cpu_s"],
        "websocket_msgs_per_s": ws["msgs_per_s"],
        "websocket_msgs_per_cpu_s": ws["msgs_per_cpu_s"],
        "websocket_x_peak": ws["msgs_per_s"] / peak,
        "goal_met": ws["msgs_per_s"] >= goal,
        "latency_speed": args.latency_speed,
        "latency_p50_us": lat["latency_p50_us"],
        "latency_p99_us": lat["latency_p99_us"],
        "websocket_run": ws,
        "websocket_runs_msgs_per_s": [r["msgs_per_s"] for r in runs],
        "latency_run": lat,
        "max_chunk": args.max_chunk,
        "repeat": args.repeat,
        "machine": machine(),
    }
    if args.json:
        emit_json(out)
        return
    rows = [
        ("recording's busiest second (real peak)", peak, "", "", ""),
        (f"goal: {args.goal_x:g} x peak", goal, "", "", ""),
        ("sync alone", sync_only["msgs_per_s"], sync_only["msgs_per_cpu_s"],
         sync_only["msgs_per_s"] / peak, ""),
        (f"sync + publish, chunks of {args.max_chunk}", busy["msgs_per_s"],
         busy["msgs_per_cpu_s"], busy["msgs_per_s"] / peak, ""),
        ("sync + publish, one message a call", quiet["msgs_per_s"], quiet["msgs_per_cpu_s"],
         quiet["msgs_per_s"] / peak, ""),
        ("whole connector over the websocket", ws["msgs_per_s"], ws["msgs_per_cpu_s"],
         ws["msgs_per_s"] / peak, "met" if out["goal_met"] else "NOT met"),
    ]  # fmt: skip
    print_table(f"bench.feed: {args.file.name}, messages/s",
                ("path", "msgs/s", "msgs/CPU-s", "x peak", "goal"), rows)  # fmt: skip
    print()
    print_table(
        f"receipt -> subscriber socket, {lat['latency_samples']} messages at "
        f"{args.latency_speed:g}x recorded pace",
        ("p50 us", "p99 us"),
        [(lat["latency_p50_us"], lat["latency_p99_us"])],
    )


if __name__ == "__main__":
    main()
