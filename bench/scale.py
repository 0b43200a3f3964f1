"""Backtest of N copies of the GOOG day: one process vs a local Ray of 2 workers (``python -m bench.scale``).

The copies are the bundled LOBSTER GOOG day (``replay/samples``) written to a temporary folder
as GOOG0 .. GOOG{N-1} (distinct symbols: independent instruments, one Ray task each). Both
paths run the bundled model with one torch thread per process, in the same run:

- one process: ``backtest_files`` over all N files into one evaluator (``lobstream
  backtest``);
- Ray: ``backtest_on_ray`` on a fresh local Ray (``num_cpus`` = workers), timed from the
  call to the merged result, twice: "cold", the first job on fresh worker processes (their
  imports of torch and lobstream, Numba's cached kernels, the model load and runner warm-up
  included), then "warm", the same job again on those workers (a cluster that has run a job
  before, or the next file of a long job). ``ray.init`` itself is reported apart.

Outputs are checked equal (the summaries without their wall-clock fields, and every trade).
Memory: each task reports ``ru_maxrss`` of its worker process at its end; the peak per worker
(its largest) is reported for each N, and must not grow with N (each worker holds one day's
state at a time). The one-process run's own peak RSS is given for comparison.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from lobstream.bench._common import emit_json, machine, parser, print_table

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "replay" / "samples" / "GOOG_2012-06-21_34200000_57600000_{}_10.csv.gz"
MODEL = REPO / "models" / "assets" / "binctabl_goog.pt"


def write_copies(out: Path, n: int, events: int | None = None) -> list[Path]:
    """N copies of the GOOG day as GOOG0.. (the first ``events`` rows only, if given)."""
    paths = []
    for k in range(n):
        for kind in ("message", "orderbook"):
            dst = out / SAMPLE.name.format(kind).replace("GOOG_", f"GOOG{k}_", 1)
            if events is None:
                shutil.copyfile(str(SAMPLE).format(kind), dst)
            else:
                with gzip.open(str(SAMPLE).format(kind), "rt") as f:
                    lines = [next(f) for _ in range(events)]
                with gzip.open(dst, "wt") as f:
                    f.writelines(lines)
        paths.append(out / SAMPLE.name.format("message").replace("GOOG_", f"GOOG{k}_", 1))
    return paths


def _pid() -> int:
    return os.getpid()


def _config_for(manifest: dict):
    from lobstream.replay.backtest.trading import trading_config_for

    return trading_config_for(manifest)


def _comparable(summary: dict) -> dict:
    s = json.loads(json.dumps(summary))
    for k in ("seconds", "windows_per_s"):
        s.pop(k, None)
    return s


def one_process(paths: list[Path], model: Path, threads: int):
    from lobstream.replay.backtest.evaluator import evaluator_for
    from lobstream.replay.backtest.run import backtest_files

    evs = []

    def sink(manifest):
        evs.append(evaluator_for(manifest, _config_for(manifest)))
        return evs[0].add

    t0 = time.perf_counter()
    result, _, reg = backtest_files(paths, model, threads=threads, rows_sink=sink)
    evs[0].finish()
    summary, trades = evs[0].summary(result, tick_sizes={i.id: float(i.tick_size) for i in reg})
    return time.perf_counter() - t0, summary, trades, result


def on_ray(paths: list[Path], model: Path, workers: int, threads: int, warm: bool = True):
    """Backtests on a fresh local Ray: the first with cold workers (Python up, nothing of
    lobstream imported), then, if ``warm``, the same again on the same (now warm) workers.
    Returns a list of runs: (seconds, summary, trades, worker peaks MiB, tasks), and the
    ``ray.init`` seconds."""
    from lobstream.replay.distributed.backtest import backtest_on_ray
    from lobstream.replay.distributed.session import RaySession

    t0 = time.perf_counter()
    runs = []
    with RaySession("local", num_cpus=workers) as ray:
        t_init = time.perf_counter() - t0
        # Ray starts its worker processes in the background: let them come up first, as on a
        # cluster that is already running (they have imported nothing of lobstream yet)
        ray.get([ray.remote(num_cpus=1)(_pid).remote() for _ in range(workers)])
        for _ in range(2 if warm else 1):
            t1 = time.perf_counter()
            run = backtest_on_ray(paths, model, config_for=_config_for, threads=threads)
            seconds = time.perf_counter() - t1
            ticks = {i.id: float(i.tick_size) for i in run.registry}
            summary, trades = run.evaluator.summary(run.result, tick_sizes=ticks)
            peak: dict[int, int] = {}
            for u in run.units:
                peak[u.pid] = max(peak.get(u.pid, 0), u.peak_rss_kib)
            tasks = [
                {"file": u.files, "pid": u.pid, "seconds": u.seconds,
                 "peak_rss_mib": u.peak_rss_kib / 1024}
                for u in sorted(run.units, key=lambda u: u.files[0])
            ]  # fmt: skip
            runs.append((seconds, summary, trades, sorted(v / 1024 for v in peak.values()), tasks))
    return runs, t_init


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8, help="N, copies of the day timed")
    ap.add_argument(
        "--memory-ns", default="2,4", help="further N run on Ray only, for peak RSS per worker"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--events", type=int, default=None, help="first N events of the day only")
    ap.add_argument("--model", default=str(MODEL))
    ap.set_defaults(repeat=1)  # --repeat: (one process, Ray) pairs; the median pair is reported
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    import torch

    torch.set_num_threads(args.threads)
    model = Path(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="lobstream-scale-"))
    try:
        n = args.copies
        paths = write_copies(tmp, max([n, *map(int, filter(None, args.memory_ns.split(",")))]),
                             args.events)  # fmt: skip
        pairs = []
        for _ in range(max(1, args.repeat)):
            # one process, then Ray, back to back: a pair sees about the same load
            load0 = os.getloadavg()[0]
            t_one, s_one, tr_one, res = one_process(paths[:n], model, args.threads)
            rss_one = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            runs, t_init = on_ray(paths[:n], model, args.workers, args.threads)
            same = [
                _comparable(s_one) == _comparable(r[1])
                and all((a == b).all() for a, b in zip(tr_one, r[2], strict=True))
                for r in runs
            ]
            pairs.append({"one_process_s": t_one, "ray_cold_s": runs[0][0],
                          "ray_warm_s": runs[1][0], "ray_init_s": t_init,
                          "speedup_cold": t_one / runs[0][0], "speedup_warm": t_one / runs[1][0],
                          "outputs_equal": all(same), "load_before": load0,
                          "load_after": os.getloadavg()[0]})  # fmt: skip
            peaks, tasks = runs[0][3], runs[0][4]
        equal = all(p["outputs_equal"] for p in pairs)
        # the median pair by cold speed-up (the lower one of the middle two for an even count)
        mid = sorted(pairs, key=lambda p: p["speedup_cold"])[(len(pairs) - 1) // 2]
        t_one, t_cold, t_warm, t_init = (
            mid["one_process_s"], mid["ray_cold_s"], mid["ray_warm_s"], mid["ray_init_s"]
        )  # fmt: skip
        memory = [{"n": n, "worker_peak_rss_mib": peaks, "tasks": tasks}]
        for m in sorted({int(x) for x in args.memory_ns.split(",") if x} - {n}):
            runs, _ = on_ray(paths[:m], model, args.workers, args.threads, warm=False)
            memory.append({"n": m, "worker_peak_rss_mib": runs[0][3], "tasks": runs[0][4]})
        memory.sort(key=lambda r: r["n"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "copies": n,
        "workers": args.workers,
        "threads": args.threads,
        "events_per_copy": res.n_events // n,
        "rows": res.n_rows,
        "one_process_s": t_one,
        "ray_cold_s": t_cold,
        "ray_warm_s": t_warm,
        "ray_init_s": t_init,
        "speedup_cold": t_one / t_cold,
        "speedup_warm": t_one / t_warm,
        "outputs_equal": bool(equal),
        "pairs": pairs,
        "one_process_peak_rss_mib": rss_one,
        "memory": memory,
        "load_average": os.getloadavg(),
        "machine": machine(),
    }
    if args.json:
        emit_json(out)
        return
    print_table(
        f"backtest of {n} copies of the GOOG day ({res.n_rows:,} rows), bundled model, "
        f"{args.threads} torch thread(s) per process",
        ("path", "seconds", "speed-up", "outputs"),
        [
            ("one process", t_one, 1.0, ""),
            (f"local Ray, {args.workers} workers, cold", t_cold, t_one / t_cold,
             "equal" if equal else "DIFFERENT"),
            (f"local Ray, {args.workers} workers, warm", t_warm, t_one / t_warm,
             "equal" if equal else "DIFFERENT"),
        ],
    )  # fmt: skip
    print(f"(ray.init {t_init:.1f} s, not counted; load average {out['load_average']})")
    if len(pairs) > 1:
        print_table(
            "every pair (one process, then Ray; above: the median pair by cold speed-up)",
            ("one process s", "Ray cold s", "Ray warm s", "cold x", "warm x", "load before",
             "load after"),
            [(p["one_process_s"], p["ray_cold_s"], p["ray_warm_s"], p["speedup_cold"],
              p["speedup_warm"], p["load_before"], p["load_after"]) for p in pairs],
        )  # fmt: skip
    print_table(
        "peak RSS per Ray worker (MiB; ru_maxrss at the end of its tasks)",
        ("N", "workers' peaks", "largest"),
        [
            (r["n"], ", ".join(f"{v:.0f}" for v in r["worker_peak_rss_mib"]),
             max(r["worker_peak_rss_mib"]))
            for r in memory
        ],
    )  # fmt: skip
    print(f"one process over {n} copies: peak RSS {rss_one:.0f} MiB")
    if not equal:
        raise SystemExit("outputs differ between one process and Ray")


if __name__ == "__main__":
    main()
