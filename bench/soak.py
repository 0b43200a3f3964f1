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

import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from lobstream.bench import harness
from lobstream.bench._common import emit_json, machine, parser, print_table

RSS_BAR = 0.05


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
            self.arrays.append(arr)
            self.runs_of.append(harness.split_runs(arr))
            self.base.append((arr["seq"].copy(), arr["ts_event"].copy(), counts[arr["instrument"]]))
        self.events, self.per_slice = n, per_slice

    def runs(self, k: int) -> list[tuple[int, np.ndarray]]:
        """Slice ``k`` of the endless stream, as (instrument, run) messages."""
        p, s = divmod(k, self.n_slices)
        seq0, ts0, step = self.base[s]
        arr = self.arrays[s]
        arr["seq"] = seq0 + np.uint64(p) * step
        arr["ts_event"] = ts0 + p * self.ts_step
        return self.runs_of[s]


def _counts(metrics: str) -> dict:
    """The daemon's counters that tell whether it keeps up."""
    v = harness.metric_values(metrics)
    keys = ("events_total", "signals_total", "conflated_total", "drain_backlog")
    return {k: v[f"lobstream_{k}"] for k in keys if f"lobstream_{k}" in v}


def run(args) -> dict:
    from lobstream.bench.daemon import bench_config
    from lobstream.models.artifact import read_manifest

    model = args.model or harness.default_model()
    man = read_manifest(model)
    info = {"T": int(man["T"]), "L": int(man["L"]), "feature_kind": man["feature"]["kind"]}
    tmp = Path(tempfile.mkdtemp(prefix="lobsoak", dir="/tmp"))
    symbols = [f"S{i:03d}" for i in range(args.instruments)]
    cfg = bench_config(tmp, model, info, symbols, 1, args.instruments, None)
    metrics = tomllib.loads(cfg.read_text())["metrics"]["address"]
    print(f"building a {args.pool_s:g} s pool of events ...", file=sys.stderr)
    pool = Pool(args.instruments, args.rate, args.pool_s, args.slice_ms / 1e3)
    daemon = harness.spawn_daemon(cfg, tmp / "daemon.log")
    sub = harness.SubscriberProcess(f"ipc://{tmp}/sig", tmp, period_s=args.minute_s)
    ctx = pub = None
    try:
        if not sub.wait_ready(daemon, 180):
            raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()}")
        ctx, pub = harness.feeder(f"ipc://{tmp}/md")
        rows, sent, feed_s = _feed(args, pool, pub, symbols, daemon.pid, metrics)
        deadline = time.monotonic() + 30
        m = _counts(metrics)
        while m.get("events_total", 0) < sent and time.monotonic() < deadline:
            time.sleep(0.2)
            m = _counts(metrics)
        taken = int(m.get("events_total", 0))
    finally:
        if pub is not None:
            pub.close()
            ctx.term()
        time.sleep(1.0)
        try:
            sub.finish()
        finally:
            sub.close()
            harness.stop_process(daemon, "daemon", timeout_s=15)
    lat = sub.periods()
    shutil.rmtree(tmp, ignore_errors=True)
    for r, q in zip(rows, lat, strict=False):
        r.update({"p50_us": q["p50_us"], "p99_us": q["p99_us"], "p999_us": q["p999_us"]})
    return _judged(args, model, rows, sent, taken, feed_s)


def _feed(args, pool: Pool, pub, symbols, pid: int, metrics: str) -> tuple[list, int, float]:
    """Send ``args.minutes`` of the pool, one slice every ``args.slice_ms``, and record the
    daemon each period: (rows, events sent, seconds)."""
    topics = [f"md.{s}".encode() for s in symbols]
    slice_s = args.slice_ms / 1e3
    rows: list[dict] = []
    sent = 0
    t0 = time.monotonic()
    total = int(args.minutes * 60 / slice_s)
    # a period ends with the slice that completes it on the feed's schedule, not when the wall
    # clock passes it: the last slice of a run is sent one slice before the run's end, so a
    # clock test missed the last period whenever the feeder kept to time
    per_period = max(1, round(args.minute_s / slice_s))
    minute = 0
    prev = {"events_total": 0.0, "signals_total": 0.0}
    for k in range(total):
        delay = t0 + k * slice_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        harness.send_runs(pub, pool.runs(k), topics)
        sent += pool.per_slice
        if (k + 1) % per_period == 0:
            minute += 1
            m = _counts(metrics)
            rows.append(
                {
                    "minute": minute,
                    "rss_mb": _rss_kb(pid) / 1024,
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
    return rows, sent, time.monotonic() - t0


def _judged(args, model: Path, rows: list, sent: int, taken: int, feed_s: float) -> dict:
    w = min(args.warmup_min, len(rows)) - 1
    ref = rows[w]["rss_mb"] if rows else float("nan")
    after = rows[w:]
    rss_growth = max(r["rss_mb"] for r in after) / ref - 1 if after else float("nan")
    backlog = [r["backlog_events"] for r in rows]
    per_slice = args.rate * args.slice_ms / 1e3
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
