"""Kernel throughput on one synthetic stream with LAST on every event (as LOBSTER data).

    python -m bench.kernels [--json] [--events N] [--instruments N] [--repeat R]

Cases, all in one run on the same stream, medians of ``--repeat`` timed runs, compile and
warm-up excluded (``warmup()`` first, then one untimed run of each case):

(a) book: ``apply_events`` only;
(b) book + normalised (z-score) feature row + mirrored ring write: ``apply_events_rows``;
    also with ticks-from-mid (``log1p`` sizes) and on the real GOOG 10-level LOBSTER events
    when the reader and the shared data are present;
(c) window gather at B = 256, T = 100, F = 40: windows/s and GB/s copied;
(d) the pure-Python reference book (lobstream.testkit) on a slice, events/s;
floor: a minimal Numba kernel that only copies a precomputed 40-float row into each event's
    instrument ring slot, no book, no mirror copy: (b) with free book work, as (b) writes
    each row once in a long call. Quoted so numbers taken on a busy shared machine can be read
    relative to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from lobstream.bench._common import emit_json, machine, parser, print_table
from lobstream.kernels._jit import njit
from lobstream.kernels.book import apply_events, new_book, new_report
from lobstream.kernels.dtypes import CODE_NAMES
from lobstream.kernels.features import ticks_from_mid_spec, zscore_spec
from lobstream.kernels.ring import apply_events_rows, gather_windows, new_ring, warmup
from lobstream.replay.feed.synthetic import synthetic_events

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LOBSTREAM_DATA", REPO.parent / "shared" / "data"))
GOOG_10 = "lobster/GOOG_2012-06-21_34200000_57600000_message_10.csv.gz"


@njit
def _floor_kernel(events, rows, count, row):
    t = rows.shape[1] // 2
    f = rows.shape[2]
    for k in range(events.shape[0]):
        i = np.int64(events[k].instrument)
        s = count[i] % t
        for c in range(f):
            rows[i, s, c] = row[c]
        count[i] += 1


def _spec_for(events: np.ndarray):
    """z-score parameters from the stream itself (as training would store them)."""
    upd = events[events["size"] > 0]
    px, sz = upd["price"].astype(np.float64), upd["size"]
    return zscore_spec(px.mean(), max(px.std(), 1.0), sz.mean(), max(sz.std(), 1.0))


# Rates are quoted twice: per wall-clock second (the usual figure) and per second of CPU time
# of the benchmarking thread (``time.thread_time``), which on a shared, oversubscribed machine
# is the closer measure of what one core does: wall time there includes time the scheduler
# gave to other processes. Keys ending in ``_cpu`` are the latter.
_CPU: dict[str, float] = {}


def _rate(n: int, fn, setup, repeat: int, key: str | None = None) -> float:
    walls, cpus = [], []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpus.append(time.thread_time() - c0)
        walls.append(time.perf_counter() - t0)
    if key is not None:
        _CPU[key + "_cpu"] = n / float(np.median(cpus))
    return n / float(np.median(walls))


def _touch(state) -> None:
    """Write one element per page of every array of a fresh state, so first-touch page faults
    (zeroed pages handed out by the kernel) stay out of the timed region: they are a cost of
    allocating the state once, not of applying events."""
    for a in state:
        flat = a.reshape(-1)
        step = max(1, 4096 // a.itemsize)
        flat[::step] = flat[::step].copy()


def bench_stream(events: np.ndarray, n_inst: int, repeat: int, prefix: str = "") -> dict:
    """(a) and (b) on ``events``; returns rates and the report of the last (b) run."""
    spec = _spec_for(events)
    st: dict = {}

    def setup_book():
        st["book"], st["rep"] = new_book(n_inst), new_report()
        _touch(st["book"])

    def setup_rows():
        setup_book()
        st["ring"] = new_ring(n_inst)
        _touch(st["ring"])

    def run_book():
        apply_events(st["book"], events, st["rep"])

    def run_rows(s=spec):
        apply_events_rows(st["book"], st["ring"], s, events, st["rep"])

    out = {}
    for name, setup, fn in (
        ("book_events_per_s", setup_book, run_book),
        ("book_row_events_per_s", setup_rows, run_rows),
    ):
        setup()
        fn()  # untimed: first touch of fresh memory, any cache load
        out[prefix + name] = _rate(len(events), fn, setup, repeat, prefix + name)
    if not prefix:
        tfm = ticks_from_mid_spec(1.0)
        out["book_row_ticks_from_mid_events_per_s"] = _rate(
            len(events),
            lambda: run_rows(tfm),
            setup_rows,
            repeat,
            "book_row_ticks_from_mid_events_per_s",
        )
    setup_rows()
    run_rows()
    out[prefix + "rows_written"] = int(st["ring"].count.sum())
    out[prefix + "report"] = {
        CODE_NAMES[c]: int(st["rep"][0, c]) for c in range(len(CODE_NAMES)) if st["rep"][0, c]
    }
    return out


def bench_gather(n_inst: int, events: np.ndarray, repeat: int, b: int = 256) -> dict:
    book, ring = new_book(n_inst), new_ring(n_inst)
    apply_events_rows(book, ring, _spec_for(events), events, new_report())
    ids = np.random.default_rng(0).integers(0, n_inst, b).astype(np.int64)
    out = np.zeros((b, 1, ring.window, ring.n_features), np.float32)
    calls = 50

    def fn():
        for _ in range(calls):
            gather_windows(ring, ids, out)

    fn()
    per_s = _rate(calls * b, fn, None, repeat, "gather_windows_per_s")
    return {
        "gather_windows_per_s": per_s,
        "gather_gb_per_s": per_s * out[0].nbytes / 1e9,
        "gather_batch": b,
    }


def bench_floor(events: np.ndarray, n_inst: int, repeat: int) -> float:
    rows = np.zeros((n_inst, 200, 40), np.float32)
    count = np.zeros(n_inst, np.int64)
    row = np.arange(40, dtype=np.float32)
    _floor_kernel(events[:10], rows, count, row)
    return _rate(len(events), lambda: _floor_kernel(events, rows, count, row), None, repeat,
                 "floor_row_events_per_s")  # fmt: skip


def bench_reference(events: np.ndarray, n_inst: int, n: int) -> dict:
    from lobstream.testkit.book import RefBook
    from lobstream.testkit.features import rows as ref_rows

    part = events[:n]
    spec = _spec_for(events)
    w = new_book(1).width
    book_rate = _rate(n, lambda: RefBook(n_inst, w).apply(part), None, 1,
                      "reference_events_per_s")  # fmt: skip
    rows_rate = _rate(
        n, lambda: ref_rows(RefBook(n_inst, w), part, spec.kind, spec.levels, spec.params), None,
        1, "reference_row_events_per_s",
    )  # fmt: skip
    return {
        "reference_events_per_s": book_rate,
        "reference_row_events_per_s": rows_rate,
        "reference_events": n,
    }


def load_goog() -> np.ndarray | None:
    """The real GOOG 10-level events, or None (reader or data absent)."""
    path = DATA_DIR / GOOG_10
    try:
        from lobstream.kernels.registry import Registry
        from lobstream.replay.errors import Defects
        from lobstream.replay.readers import lobster
    except ImportError:
        return None
    if not path.is_file():
        return None
    batches = list(lobster.read(path, Registry(), batch_rows=1 << 20, skip_bad=False,
                                defects=Defects()))  # fmt: skip
    return np.concatenate(batches) if batches else None


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--reference-events", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    events = synthetic_events(args.events, args.instruments, args.seed, last_every_event=True)
    t_gen = time.perf_counter() - t0
    warmup()
    res: dict = {"events": len(events), "instruments": args.instruments, "repeat": args.repeat,
                 "generate_s": t_gen}  # fmt: skip
    res.update(bench_stream(events, args.instruments, args.repeat))
    res.update(bench_gather(args.instruments, events, args.repeat))
    res["floor_row_events_per_s"] = bench_floor(events, args.instruments, args.repeat)
    res.update(bench_reference(events, args.instruments, min(args.reference_events, len(events))))
    res["row_vs_reference"] = res["book_row_events_per_s"] / res["reference_events_per_s"]
    res["row_vs_floor"] = res["book_row_events_per_s"] / res["floor_row_events_per_s"]
    goog = load_goog()
    if goog is not None:
        n_goog = int(goog["instrument"].max()) + 1
        g = bench_stream(goog, n_goog, args.repeat, prefix="goog_")
        res.update(g)
        res["goog_events"] = len(goog)
    res.update(_CPU)
    res["row_vs_reference_cpu"] = (
        res["book_row_events_per_s_cpu"] / res["reference_events_per_s_cpu"]
    )
    res["machine"] = machine()
    res["load_avg_1m"] = os.getloadavg()[0]

    if args.json:
        emit_json(res)
    else:

        def line(label, unit, key):
            return (label, unit, res[key], res.get(key + "_cpu", ""))

        rows = [
            line("(a) book", "events/s", "book_events_per_s"),
            line("(b) book + zscore row + ring", "events/s", "book_row_events_per_s"),
            line("(b) ... ticks_from_mid (log1p)", "events/s",
                 "book_row_ticks_from_mid_events_per_s"),
            line("(c) gather B=256", "windows/s", "gather_windows_per_s"),
            ("(c) gather B=256", "GB/s", res["gather_gb_per_s"], ""),
            line("(d) Python reference book", "events/s", "reference_events_per_s"),
            line("(d) Python reference book + rows", "events/s", "reference_row_events_per_s"),
            line("floor: copy a row once, no book", "events/s", "floor_row_events_per_s"),
            ("(b) / (d)", "x", res["row_vs_reference"], res["row_vs_reference_cpu"]),
            ("(b) / floor", "x", res["row_vs_floor"], ""),
        ]  # fmt: skip
        if "goog_book_row_events_per_s" in res:
            rows.insert(3, line("(a) GOOG L10 book", "events/s", "goog_book_events_per_s"))
            rows.insert(4, line("(b) GOOG L10 book + row", "events/s",
                                "goog_book_row_events_per_s"))  # fmt: skip
        else:
            rows.append(("GOOG", "skipped", "reader or data absent", ""))
        print_table(
            f"kernels: {res['events']:,} events, {res['instruments']} instruments, LAST on every "
            f"event, median of {args.repeat} (load avg {res['load_avg_1m']:.1f})",
            ("case", "unit", "per wall s", "per CPU s"),
            rows,
        )
    return res


if __name__ == "__main__":
    main()
