"""Peak memory of the backtest: one day vs the same day N times (``python -m bench.backtest_memory``).

Each case runs in a fresh process (peak RSS is a process-wide high-water mark): the bundled
model over the bundled LOBSTER GOOG day, once, and the same day replayed ``--days`` times back
to back, for the per-row path (the oracle ``lobstream.testkit.backtest``: ``run_backtest``
keeping every row, then ``evaluate``; what the backtest did before it streamed) and the
streaming path (``stream_backtest`` then ``StreamingEvaluator.summary``: what ``lobstream
backtest`` does, the package's only path). Bounded memory means the streaming path's peak is
the same for N days as for one.

Replaying a day again needs shifted copies: passing the same file twice to ``lobstream
backtest`` replays nothing the second time (every event is older than the book's last one and
is rejected as ``time_backwards``). Here each copy's ``ts_event`` moves on by one day (so times
of day, hence signal-count bins, stay the same) and its ``seq`` continues the previous copy's;
each copy starts with the file's own opening snapshot, which resets the book.

``growth`` is the peak minus the high-water mark just before the run (after imports, model
load and a warm-up run that compiles every kernel): the memory the run itself added.

The children run with ``MALLOC_MMAP_THRESHOLD_=262144`` (``--glibc-default`` leaves glibc as
it is). By default glibc raises its mmap threshold each time a large block is freed, after
which chunk-sized numpy buffers come from the heap and stay mapped when freed: RSS then wanders
by tens of MB with no live data behind it (seen here: +-50 MB on the scoring path alone,
without any evaluator), which would hide what the backtest keeps. A fixed threshold returns
large freed buffers to the system, so the peak follows the live data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from lobstream.bench._common import emit_json, machine, parser, print_table

DAY_NS = 86_400 * 10**9


def _days(
    path: Path, days: int, registry, events_per_day: int | None, batch_rows: int | None = None
) -> Iterator:
    """Event batches of ``path`` replayed ``days`` times, each copy a day later."""
    from lobstream.replay.readers import DEFAULT_BATCH_ROWS, read_events

    seq_shift = 0
    for d in range(days):
        n = 0
        top = 0
        for ev in read_events([path], registry, batch_rows=batch_rows or DEFAULT_BATCH_ROWS):
            if events_per_day is not None:
                ev = ev[: max(0, events_per_day - n)]
                if len(ev) == 0:
                    break
            ev = ev.copy()
            ev["ts_event"] += d * DAY_NS
            seq = ev["seq"]
            top = max(top, int(seq.max()))
            seq[seq > 0] += seq_shift
            n += len(ev)
            yield ev
            del ev  # one batch alive at a time, as a reader's own generator does
        seq_shift += top


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def child(
    mode: str,
    days: int,
    model: str | None,
    events_per_day: int | None,
    batch_rows: int | None = None,
) -> dict:
    """One measured run in this process; returns its figures."""
    import time

    import torch

    from lobstream.bench.harness import default_model
    from lobstream.bench.throughput import default_files
    from lobstream.kernels.registry import Registry
    from lobstream.models.artifact import load_model
    from lobstream.models.runner import ModelRunner
    from lobstream.replay.backtest.evaluator import stream_backtest
    from lobstream.replay.backtest.trading import trading_config_for
    from lobstream.testkit.backtest import evaluate, run_backtest

    torch.set_num_threads(1)
    path = default_files()[0]
    module, manifest = load_model(model or default_model())
    runner = ModelRunner(module, manifest, device="cpu", max_batch=256, threads=1)
    cfg = trading_config_for(manifest)  # the CLI's defaults

    def run(batches, registry):
        ticks = None
        if mode == "keep_rows":
            res = run_backtest(batches, runner, manifest)
            ticks = {i.id: float(i.tick_size) for i in registry}
            summary, _ = evaluate(res, manifest, cfg, tick_sizes=ticks)
        else:
            res, ev = stream_backtest(batches, runner, manifest, cfg)
            ticks = {i.id: float(i.tick_size) for i in registry}
            summary, _ = ev.summary(res, tick_sizes=ticks)
        return res, summary

    warm_reg = Registry()
    run(_days(path, 1, warm_reg, 5000), warm_reg)  # compile and warm outside the measurement
    before = _maxrss_mb()
    reg = Registry()
    t0 = time.perf_counter()
    res, summary = run(_days(path, days, reg, events_per_day, batch_rows), reg)
    seconds = time.perf_counter() - t0
    peak = _maxrss_mb()
    return {
        "mode": mode,
        "days": days,
        "events": res.n_events,
        "rows": res.n_rows,
        "trades": summary["trading"]["n_trades"],
        "before_mb": before,
        "peak_mb": peak,
        "growth_mb": peak - before,
        "seconds": seconds,
        "batch_rows": batch_rows,
    }


def _run_child(mode: str, days: int, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "lobstream.bench.backtest_memory",
        "--child",
        mode,
        "--days",
        str(days),
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.events_per_day:
        cmd += ["--events-per-day", str(args.events_per_day)]
    if args.batch_rows:
        cmd += ["--batch-rows", str(args.batch_rows)]
    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "262144"
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.set_defaults(repeat=2)
    ap.add_argument("--days", type=int, default=5, help="copies of the day in the long run")
    ap.add_argument("--model", help="model artifact (default: the bundled one)")
    ap.add_argument(
        "--events-per-day", type=int, default=None, help="cut each copy of the day (quick runs)"
    )
    ap.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="events per read batch (default: the readers' DEFAULT_BATCH_ROWS, as the CLI)",
    )
    ap.add_argument(
        "--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold"
    )
    ap.add_argument("--child", choices=["keep_rows", "streaming"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(
            json.dumps(
                child(args.child, args.days, args.model, args.events_per_day, args.batch_rows)
            )
        )
        return
    cases = {}
    for mode in ("keep_rows", "streaming"):
        for days in (1, args.days):
            runs = [_run_child(mode, days, args) for _ in range(args.repeat)]
            med = {
                k: statistics.median(r[k] for r in runs)
                for k in ("peak_mb", "growth_mb", "before_mb", "seconds")
            }
            cases[f"{mode}_{days}d"] = {**runs[0], **med, "runs": runs}
    ratios = {
        mode: {
            "peak_ratio": cases[f"{mode}_{args.days}d"]["peak_mb"] / cases[f"{mode}_1d"]["peak_mb"],
            "growth_ratio": cases[f"{mode}_{args.days}d"]["growth_mb"]
            / max(cases[f"{mode}_1d"]["growth_mb"], 1e-9),
        }
        for mode in ("keep_rows", "streaming")
    }
    if args.json:
        emit_json(
            {
                "cases": cases,
                "ratios": ratios,
                "days": args.days,
                "repeat": args.repeat,
                "malloc_mmap_threshold": None if args.glibc_default else 262144,
                "batch_rows": args.batch_rows,
                "machine": machine(),
            }
        )
        return
    rows = [
        (
            c["mode"],
            c["days"],
            c["rows"],
            c["trades"],
            c["peak_mb"],
            c["growth_mb"],
            c["seconds"],
        )
        for c in cases.values()
    ]
    print_table(
        f"backtest peak RSS, GOOG day x1 vs x{args.days} (median of {args.repeat} processes, "
        f"read batches of {args.batch_rows or 'the default'} events)",
        ("path", "days", "rows", "trades", "peak MB", "growth MB", "seconds"),
        rows,
    )
    for mode, r in ratios.items():
        print(
            f"{mode}: peak x{args.days}/x1 = {r['peak_ratio']:.3f}, "
            f"growth x{args.days}/x1 = {r['growth_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
