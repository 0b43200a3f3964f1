"""The daemon over a long run at high load: memory, backlog and latency minute by minute.

``python -m bench.soak [--minutes 30] [--rate 200000] [--instruments 100] [--json]``

Runs ``lobstream serve`` as its own process on the bundled model (ipc:// in a temp folder),
feeds it ``--rate`` events/s over ``--instruments`` instruments from this process (one message
per instrument every ``--slice-ms``, as ``bench.daemon``'s high load does), and receives the
signals in a third process that keeps only per-minute latency percentiles (so its own memory
stays flat). Each minute it records the daemon's resident memory (``VmRSS`` of its process),
the events the daemon has taken against those sent (the backlog: what waits in ZeroMQ's
queue), signals/s and end-to-end latency p50/p99/p99.9 (receipt in the subscriber minus the
newest event's ``ts_recv``, one host clock).

The feed is a pool of ``--pool-s`` seconds of synthetic events (each instrument's opening
snapshot first) sent again and again with every sequence number and ``ts_event`` moved on by
the pool's own span, so the stream never ends, has no gaps, and each pass starts by healing
every book with its snapshot. Judged: resident memory after the warm-up (``--warmup-min``)
within 5 % of its value at the end of the warm-up, every event taken by the end, and the
backlog not growing (its last minute no larger than its largest earlier one plus one slice).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import zmq

from bench._common import emit_json, machine, parser, print_table
from bench.daemon import _config, default_model

RSS_BAR = 0.05


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _scrape(port: int) -> dict:
    """The daemon's counters that tell whether it keeps up."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for key in ("events_total", "signals_total", "conflated_total", "drain_backlog"):
            if line.startswith(f"lobstream_{key} "):
                out[key] = float(line.rsplit(" ", 1)[1])
    return out


def _subscriber(endpoint: str, out_path: str, ready, stop, minute_s: float) -> None:
    """Separate process: per ``minute_s`` window, latency percentiles and signal count as one
    JSON line each; nothing else is kept."""
    from lobstream.engine.subscriber import Subscriber
    from lobstream.kernels.dtypes import SIGNAL_DTYPE

    with Subscriber(endpoint) as sub, open(out_path, "w") as out:
        sock, status_topic = sub.sock, sub.status_topic
        recv, clock = sock.recv_multipart, time.monotonic_ns
        lat: list[np.ndarray] = []
        n = 0
        end = None
        while not stop.is_set():
            if not sock.poll(50):
                continue
            while True:
                try:
                    topic, payload = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = clock()
                if topic == status_topic:
                    ready.set()
                    continue
                if end is None:
                    end = t + int(minute_s * 1e9)
                rec = np.frombuffer(payload, SIGNAL_DTYPE)
                n += len(rec)
                lat.append(t - rec["ts_recv"][rec["ts_recv"] > 0])
            if end is not None and clock() >= end:
                a = np.concatenate(lat) / 1e3 if lat else np.zeros(0)
                q = np.percentile(a, [50, 99, 99.9]) if len(a) else [float("nan")] * 3
                row = {"signals": n, "p50_us": q[0], "p99_us": q[1], "p999_us": q[2]}
                out.write(json.dumps({k: float(v) for k, v in row.items()}) + "\n")
                out.flush()
                lat, n, end = [], 0, end + int(minute_s * 1e9)


class Pool:
    """``seconds`` of events cut into slices, replayed pass after pass with seq and ts_event
    moved on by one pass's worth: each slice is one array sorted by instrument (its runs are
    views), so moving a slice on is two vector operations."""

    def __init__(self, n_inst: int, rate: float, seconds: float, slice_s: float) -> None:
        from lobstream.replay.feed.synthetic import synthetic_events

        per_slice = max(n_inst, int(rate * slice_s))
        self.n_slices = max(1, int(seconds / slice_s))
        n = per_slice * self.n_slices
        ev = synthetic_events(
            n, n_inst, seed=3, levels=12, last_every_event=True, snapshot_every=0
        )  # opening snapshots first: each pass heals every book
        counts = np.bincount(ev["instrument"], minlength=n_inst).astype(np.uint64)
        self.ts_step = int(ev["ts_event"][-1] - ev["ts_event"][0]) + 1_000
        self.arrays, self.runs_of, self.base = [], [], []
        for k in range(self.n_slices):
            part = ev[k * per_slice : (k + 1) * per_slice]
            arr = part[np.argsort(part["instrument"], kind="stable")]
            cuts = np.flatnonzero(np.diff(arr["instrument"])) + 1
            self.arrays.append(arr)
            self.runs_of.append([(int(r["instrument"][0]), r) for r in np.split(arr, cuts)])
            self.base.append((arr["seq"].copy(), arr["ts_event"].copy(), counts[arr["instrument"]]))
        self.events = n

    def runs(self, k: int) -> list[tuple[int, np.ndarray]]:
        """Slice ``k`` of the endless stream, as (instrument, run) messages."""
        p, s = divmod(k, self.n_slices)
        seq0, ts0, step = self.base[s]
        arr = self.arrays[s]
        arr["seq"] = seq0 + np.uint64(p) * step
        arr["ts_event"] = ts0 + p * self.ts_step
        return self.runs_of[s]


def run(args) -> dict:
    model = args.model or default_model()
    from lobstream.models.artifact import read_manifest

    man = read_manifest(model)
    info = {"T": int(man["T"]), "L": int(man["L"]), "feature_kind": man["feature"]["kind"]}
    tmp = Path(tempfile.mkdtemp(prefix="lobsoak", dir="/tmp"))
    symbols = [f"S{i:03d}" for i in range(args.instruments)]
    topics = [f"md.{s}".encode() for s in symbols]
    cfg = _config(tmp, model, info, symbols, 1, args.instruments, None)
    port = int(cfg.read_text().split('address = "127.0.0.1:')[1].split('"')[0])
    slice_s = args.slice_ms / 1e3
    print(f"building a {args.pool_s:g} s pool of events ...", file=sys.stderr)
    pool = Pool(args.instruments, args.rate, args.pool_s, slice_s)
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-c", "from lobstream.engine.cli import main; main()"]
    daemon = subprocess.Popen([*cmd, "serve", "--config", str(cfg)], stdout=log, stderr=log)
    ctx_mp = mp.get_context("spawn")
    ready, stop = ctx_mp.Event(), ctx_mp.Event()
    minutes_file = tmp / "minutes.jsonl"
    sub = ctx_mp.Process(
        target=_subscriber,
        args=(f"ipc://{tmp}/sig", str(minutes_file), ready, stop, args.minute_s),
        daemon=True,
    )
    sub.start()
    rows: list[dict] = []
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 1000)
    sent = 0
    try:
        if not ready.wait(180):
            raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()}")
        pub.connect(f"ipc://{tmp}/md")
        time.sleep(0.5)
        send, more, clock = pub.send, zmq.SNDMORE, time.monotonic_ns
        t0 = time.monotonic()
        total = int(args.minutes * 60 / slice_s)
        next_minute, minute = t0 + args.minute_s, 0
        prev = {"events_total": 0.0, "signals_total": 0.0}
        for k in range(total):
            delay = t0 + k * slice_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for inst, r in pool.runs(k):
                r["ts_recv"] = clock()
                send(topics[inst], more)
                send(r.view(np.uint8))
                sent += len(r)
            if time.monotonic() >= next_minute:
                minute += 1
                m = _scrape(port)
                rows.append(
                    {
                        "minute": minute,
                        "rss_mb": _rss_kb(daemon.pid) / 1024,
                        "events_sent": sent,
                        "events_taken": int(m.get("events_total", 0)),
                        "backlog_events": sent - int(m.get("events_total", 0)),
                        "events_per_s": (m.get("events_total", 0) - prev["events_total"])
                        / args.minute_s,
                        "signals_per_s": (m.get("signals_total", 0) - prev["signals_total"])
                        / args.minute_s,
                    }
                )
                prev = m
                print(
                    f"minute {minute}: rss {rows[-1]['rss_mb']:.1f} MB, backlog "
                    f"{rows[-1]['backlog_events']:,} events, {rows[-1]['signals_per_s']:,.0f} "
                    "signals/s",
                    file=sys.stderr,
                )
                next_minute += args.minute_s
        feed_s = time.monotonic() - t0
        deadline = time.monotonic() + 30
        m = _scrape(port)
        while m.get("events_total", 0) < sent and time.monotonic() < deadline:
            time.sleep(0.2)
            m = _scrape(port)
        taken = int(m.get("events_total", 0))
    finally:
        pub.close()
        ctx.term()
        time.sleep(1.0)
        stop.set()
        sub.join(30)
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        log.close()
    lat = (
        [json.loads(x) for x in minutes_file.read_text().splitlines()]
        if minutes_file.exists()
        else []
    )
    shutil.rmtree(tmp, ignore_errors=True)
    for r, q in zip(rows, lat, strict=False):
        r.update({"p50_us": q["p50_us"], "p99_us": q["p99_us"], "p999_us": q["p999_us"]})
    w = min(args.warmup_min, len(rows)) - 1
    ref = rows[w]["rss_mb"] if rows else float("nan")
    after = rows[w:]
    rss_growth = max(r["rss_mb"] for r in after) / ref - 1 if after else float("nan")
    backlog = [r["backlog_events"] for r in rows]
    per_slice = args.rate * slice_s
    result = {
        "bench": "soak",
        "machine": machine(),
        "model": str(model),
        "minutes": args.minutes,
        "target_events_per_s": args.rate,
        "achieved_events_per_s": sent / feed_s,
        "instruments": args.instruments,
        "events_sent": sent,
        "events_taken": taken,
        "per_minute": rows,
        "rss_after_warmup_mb": ref,
        "rss_growth_after_warmup": rss_growth,
        "bars": {
            "rss_flat": bool(rss_growth <= RSS_BAR),
            "every_event_taken": taken == sent,
            "no_queue_growth": bool(
                len(backlog) < 2 or backlog[-1] <= max(backlog[:-1]) + per_slice
            ),
        },
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="artifact (default: bundled)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--minute-s", type=float, default=60.0, help="length of a reported period")
    ap.add_argument("--warmup-min", type=int, default=2, help="periods before RSS is judged")
    ap.add_argument("--rate", type=float, default=200_000.0, help="events/s")
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--slice-ms", type=float, default=5.0)
    ap.add_argument("--pool-s", type=float, default=10.0, help="seconds of distinct events")
    args = ap.parse_args(argv)
    result = run(args)
    if args.json:
        emit_json(result)
        return 0
    print_table(
        f"soak: {args.rate:,.0f} events/s over {args.instruments} instruments, "
        f"{args.minutes:g} min",
        ["minute", "rss MB", "backlog events", "events/s", "signals/s", "p50 us", "p99 us",
         "p99.9 us"],
        [
            [r["minute"], r["rss_mb"], r["backlog_events"], r["events_per_s"],
             r["signals_per_s"], r.get("p50_us", float("nan")), r.get("p99_us", float("nan")),
             r.get("p999_us", float("nan"))]
            for r in result["per_minute"]
        ],
    )  # fmt: skip
    b = result["bars"]
    print(
        f"rss after warm-up {result['rss_after_warmup_mb']:.1f} MB, growth "
        f"{100 * result['rss_growth_after_warmup']:+.1f} % (bar {100 * RSS_BAR:.0f} %): "
        f"{b['rss_flat']}; events taken {result['events_taken']:,} of "
        f"{result['events_sent']:,}: {b['every_event_taken']}; no queue growth: "
        f"{b['no_queue_growth']}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
