"""End-to-end latency of the live daemon at fixed event rates.

Three processes, as in production: the daemon (``lobstream serve`` in a subprocess), the
replayer (here, in this process), and a subscriber (a separate process) that stamps each
signal's receipt with ``time.monotonic_ns()``. The latency of a signal is receipt minus the
``ts_recv`` the replayer stamped on the newest event of its window (same host, same monotonic
clock), collected in an HDR histogram per rate. The daemon's own per-stage histograms are read
from its Prometheus endpoint before and after each rate, so the breakdown covers that rate only.

Every rate replays a synthetic stream (``lobstream.replay.feed.synthetic``) whose mean event gap is
``1 / rate`` at replay speed 1; rate 0 sends as fast as possible. All processes are stopped in
``finally`` blocks (``lobstream.bench.harness``): the daemon by SIGTERM (then SIGKILL after a
timeout), the subscriber by a line on its stdin (then terminate).

``lobstream bench latency`` passes its arguments to ``python -m bench.latency``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lobstream.bench import harness
from lobstream.bench._common import (
    add_device,
    add_model,
    add_threads,
    at_least,
    console,
    emit_json,
    machine,
    parser,
)

logger = logging.getLogger(__name__)

MAX_RATE_EVENTS_PER_S = 100_000  # sizes the as-fast-as-possible run: seconds x this
_HDR_MAX_US = 60_000_000  # 60 s: anything slower is a failure, not a latency
_STATUS_INTERVAL_S = 0.2


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (0.0 where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


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
    from lobstream.models.artifact import read_manifest

    say = progress or (lambda s: None)
    model_path = Path(model_path).resolve() if model_path else harness.default_model()
    manifest = read_manifest(model_path)
    b1 = harness.model_alone(model_path, threads, (), device=device, calls=300)["b1_p50_us"]
    say(f"model alone, batch 1: p50 {b1:.0f} us")
    symbols = [f"SYN{i:03d}" for i in range(n_instruments)]
    tmp = Path(tempfile.mkdtemp(prefix="lobl", dir="/tmp" if os.path.isdir("/tmp") else None))
    md, sig = f"ipc://{tmp}/md", f"ipc://{tmp}/sig"
    metrics = f"127.0.0.1:{harness.free_port()}"
    tables = harness.daemon_tables(
        model_path, symbols, md, sig, window=manifest["T"], levels=manifest["L"],
        feature_kind=manifest["feature"]["kind"], metrics_address=metrics,
        model={"device": device, "threads": threads}, ingest={"mode": "connect"},
        publish={"mode": "bind", "status_interval_s": _STATUS_INTERVAL_S},
    )  # fmt: skip
    cfg = harness.write_config(tmp, tables)
    daemon = harness.spawn_daemon(cfg, tmp / "daemon.log")
    sub = harness.SubscriberProcess(sig, tmp)
    code = None
    try:
        if not sub.wait_ready(daemon, 90):
            raise RuntimeError(
                f"the daemon sent no status heartbeat within 90 s (exit code {daemon.poll()}); "
                f"see its log {tmp / 'daemon.log'}"
            )
        phases = _replay_rates(
            daemon, manifest, symbols, md, metrics, rates, seconds, settle_s, say
        )
        got = sub.finish()
        results = [_rate_result(got, settle_s, *phase) for phase in phases]
    finally:
        code = harness.stop_process(daemon, "daemon")
        sub.close()
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


def _replay_rates(daemon, manifest, symbols, md, metrics, rates, seconds, settle_s, say) -> list:
    """Prime every ring, then replay each rate between two scrapes of the daemon."""
    from lobstream.kernels.registry import Registry

    feature = manifest.get("feature", {})
    start_price = 10_000
    if feature.get("kind") == "zscore" and feature.get("params"):
        # prices near the training data's mean keep the model's inputs in range
        start_price = max(start_price, int(feature["params"][0]))
    prime, *streams = _phase_streams(rates, seconds, len(symbols), start_price, int(manifest["T"]))
    registry = Registry()
    for sym in symbols:
        registry.add(sym, "0.01")
    _replay(prime, md, registry, 0.0, True)
    time.sleep(settle_s)
    phases = []
    for rate, ev in zip(rates, streams, strict=True):
        before = harness.scrape(metrics)
        cpu0 = _cpu_seconds(daemon.pid)
        t0 = time.monotonic_ns()
        stats = _replay(ev, md, registry, 1.0 if rate else 0.0, False)
        t1 = time.monotonic_ns()
        time.sleep(settle_s)  # let the daemon drain what is queued before the next scrape
        after = harness.scrape(metrics)
        cpu1 = _cpu_seconds(daemon.pid)
        phases.append((rate, stats, t0, t1, before, after, cpu1 - cpu0))
        say(f"rate {rate or 'max'}: sent {stats.events:,} events in {stats.seconds:.2f} s")
    return phases


def _rate_result(got, settle_s, rate, stats, t0, t1, before, after, cpu) -> dict:
    sent = stats.events
    mine = (got.ts_recv >= t0) & (got.ts_recv <= t1)
    c0, c1 = before["counters"], after["counters"]
    delta = {k: c1.get(k, 0.0) - c0.get(k, 0.0) for k in c1}
    rejected = sum(v for k, v in delta.items() if k.startswith("rejected"))
    span = stats.seconds
    hdr = hdr_summary(got.latency_ns[mine])
    return {
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
        "stages": harness.stage_breakdown(before, after),
    }


# -------------------------------------------------------------------------- command line ---
def _rates(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected comma-separated events/s (0 = max)"
        ) from None
    if not out or any(r < 0 for r in out):
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected rates >= 0 (0 = as fast as possible)"
        )
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``python -m bench.latency`` (``lobstream bench latency``): end-to-end signal latency of a
    live daemon at fixed replay rates."""
    ap = parser(__doc__.splitlines()[0], repeat=None, prog=prog or "python -m bench.latency")
    ap.add_argument(
        "--rates",
        type=_rates,
        default="1000,10000,100000,0",
        help="target events/s per run, comma-separated; 0 = as fast as possible "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--seconds",
        type=at_least(0.1, float),
        default=3.0,
        help="replay duration per rate; the max-rate run sends seconds x 100k events "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--instruments",
        type=at_least(1),
        default=10,
        help="synthetic instruments in the replayed stream (default: %(default)s)",
    )
    add_device(ap)
    add_threads(ap, "torch threads of the daemon")
    add_model(ap)
    ap.add_argument("--out", dest="out_dir", help="write latency.json and latency.png here")
    args = ap.parse_args(argv)
    result = run_latency(
        args.model_path,
        rates=args.rates,
        seconds=args.seconds,
        n_instruments=args.instruments,
        device=args.device,
        threads=args.threads,
        progress=None if args.json else print,
    )
    result["machine"] = machine()
    if args.out_dir:
        from lobstream.replay.backtest.plots import plot_latency

        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.json").write_text(json.dumps(result, indent=2))
        result["plot"] = str(
            plot_latency(out / "latency.png", result["rates"], result["model_b1_p50_us"])
        )
    if args.json:
        emit_json(result)
    else:
        _latency_table(result)
    return result


def _latency_table(result: dict) -> None:
    from rich.table import Table

    t = Table(
        title=(
            f"end-to-end latency (us), {result['n_instruments']} instruments, model "
            f"{result['arch']} on {result['device']}; model alone B=1 p50 "
            f"{result['model_b1_p50_us']:.0f} us"
        )
    )
    cols = (
        "target",
        "sent/s",
        "signals/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "conflated",
        "dropped",
        "daemon cpu",
    )
    for c in cols:
        t.add_column(c, justify="right")
    for r in result["rates"]:
        t.add_row(
            f"{r['target_events_per_s']:,.0f}" if r["target_events_per_s"] else "max",
            f"{r['events_per_s']:,.0f}",
            f"{r['signals_per_s']:,.0f}",
            *(f"{r[k]:,.0f}" for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")),
            f"{r['conflated']:,}",
            f"{r['dropped']:,}",
            f"{r['daemon_cpu']:.0%}",
        )
    console().print(t)
    s = Table(title="daemon stages, mean / p99 (us, from its Prometheus histograms)")
    s.add_column("target", justify="right")
    stages = list(result["rates"][0]["stages"]) if result["rates"] else []
    for st in stages:
        s.add_column(st, justify="right")
    for r in result["rates"]:
        s.add_row(
            f"{r['target_events_per_s']:,.0f}" if r["target_events_per_s"] else "max",
            *(
                f"{r['stages'][st]['mean_us']:,.0f} / {r['stages'][st]['p99_us']:,.0f}"
                for st in stages
            ),
        )
    console().print(s)


if __name__ == "__main__":
    main()
