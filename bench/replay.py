"""Replay throughput: file -> event batches per format, and the ZeroMQ replayer's top rate.

``python -m bench.replay [--json]``

- ``read_events_per_s``: for every reader that imports, all real samples it detects under
  ../shared/data (LOBSTER counted once per pair), plus canonical Parquet made from LOBSTER GOOG
  10 levels; events / sum over files of the median seconds to read each file alone, with a
  fresh registry (Numba compiled in an untimed pass).
- ``replay_{ipc,tcp}_events_per_s``: LOBSTER GOOG 10 levels held in memory, sent ``--copies``
  times at speed 0 by the replayer in this process to a SUB socket in another process that
  counts what it decodes; rate = events received / (last receive - first send), one monotonic
  clock. ``replay_lost_events``: sent minus received, both transports together.
- ``--memory``: ``lobster_memory``, peak RSS of reading GOOG L10 and of a pair 20 times as
  long (time-shifted copies written to a temp dir), each in a fresh process.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from lobstream.bench._common import emit_json, machine, parser, print_table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GOOG10 = "lobster/GOOG_2012-06-21_34200000_57600000_message_10.csv.gz"


def _subscriber(endpoint: str, expected: int, conn) -> None:
    """Child process: count decoded events until ``expected`` or 5 s of silence."""
    import zmq

    from lobstream.kernels import wire

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"md.")
    sock.connect(endpoint)
    conn.send("ready")
    got = bad = 0
    t_last = 0
    while got < expected and sock.poll(5000):
        msg = wire.decode(sock.recv_multipart(copy=False))
        t_last = time.monotonic_ns()
        if msg.events is None:
            bad += 1
        else:
            got += len(msg.events)
    conn.send((got, bad, t_last))
    sock.close(linger=0)
    ctx.term()


def sample_files(data: Path) -> dict[str, list[Path]]:
    """Real sample files by the format that detects them (LOBSTER pairs once)."""
    from lobstream.replay.readers import reader_for
    from lobstream.replay.readers.lobster import pair_paths

    by_fmt: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for p in sorted(data.rglob("*")):
        if not p.is_file() or p.suffix in (".md", ".txt"):
            continue
        try:
            mod = reader_for(p)
        except ValueError:
            continue
        if mod.FORMAT == "lobster":
            p = pair_paths(p)[0]
            if p in seen:
                continue
            seen.add(p)
        by_fmt.setdefault(mod.FORMAT, []).append(p)
    return by_fmt


def read_rates(data: Path, repeat: int) -> tuple[dict[str, float], dict[str, int], dict]:
    """events/s, events and skipped files (with the reason) per format."""
    from lobstream.kernels.registry import Registry
    from lobstream.replay.convert import convert
    from lobstream.replay.errors import DataError
    from lobstream.replay.readers import reader_for

    files = sample_files(data)
    skipped = {}
    tmp = tempfile.TemporaryDirectory()
    convert([data / GOOG10], Path(tmp.name) / "pq", Registry())
    files["parquet"] = [Path(tmp.name) / "pq"]
    rates, counts = {}, {}
    for fmt, paths in sorted(files.items()):
        n_fmt, t_fmt = 0, 0.0
        for p in paths:
            # Each file alone with a fresh registry, as `lobstream convert` of one file would;
            # an untimed first pass compiles Numba kernels and warms the page cache.
            mod = reader_for(p, fmt)
            try:
                for _ in mod.read(p, Registry()):
                    pass
            except (DataError, ValueError) as exc:
                skipped[str(p)] = str(exc)[:200]
                continue
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                n = sum(len(b) for b in mod.read(p, Registry()))
                times.append(time.perf_counter() - t0)
            n_fmt += n
            t_fmt += float(np.median(times))
        counts[fmt] = n_fmt
        rates[fmt] = n_fmt / t_fmt if t_fmt > 0 else 0.0
    tmp.cleanup()
    return rates, counts, skipped


def replay_rate(endpoint: str, batches: list[np.ndarray], registry, copies: int) -> dict:
    """Send ``copies`` x ``batches`` at speed 0 to a subscriber process; rates and loss."""
    from lobstream.replay.feed.replayer import Replayer

    sends = [b.copy() for _ in range(copies) for b in batches]  # zmq keeps each buffer
    expected = sum(len(b) for b in sends)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with Replayer(endpoint, speed=0, wait=30, subscribers=1, hwm=0) as rep:
        proc = ctx.Process(target=_subscriber, args=(rep.endpoint, expected, child), daemon=True)
        proc.start()
        parent.recv()
        rep.wait_for_subscribers()
        t0 = time.monotonic_ns()
        stats = rep.run(sends, registry)
        got, bad, t_last = parent.recv() if parent.poll(60) else (0, 0, 0)
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    secs = (t_last - t0) / 1e9 if t_last > t0 else float("nan")
    return {
        "sent": stats.events,
        "received": got,
        "bad_frames": bad,
        "messages": stats.messages,
        "send_events_per_s": stats.events_per_s,
        "events_per_s": got / secs if secs == secs and secs > 0 else 0.0,
    }


_RSS_CHILD = """
import json, resource, sys, time
from lobstream.kernels.registry import Registry
from lobstream.replay.readers import lobster


def peak_mib():
    # VmHWM: this process's own peak (ru_maxrss keeps the parent's across fork + exec).
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


lobster.warm_up()
base = peak_mib()
t, c = time.perf_counter(), time.process_time()
n = sum(len(b) for b in lobster.read(sys.argv[1], Registry()))
print(json.dumps({"events": n, "seconds": time.perf_counter() - t,
                  "cpu_seconds": time.process_time() - c, "import_rss_mib": base,
                  "peak_rss_mib": peak_mib()}))
"""


def write_long_lobster(src_msg: Path, folder: Path, copies: int) -> Path:
    """A LOBSTER pair ``copies`` times as long as ``src_msg``'s: copy k shifted by k x 23400 s."""
    import gzip
    import io

    import polars as pl

    from lobstream.replay.readers.lobster import pair_paths

    msg_path, ob_path = pair_paths(src_msg)
    msg = pl.read_csv(msg_path, has_header=False, infer_schema=False)
    book = gzip.open(ob_path).read() if ob_path.suffix == ".gz" else ob_path.read_bytes()
    book = book if book.endswith(b"\n") else book + b"\n"
    parts = msg[:, 0].str.split_exact(".", 1).struct
    whole = parts.field("field_0").cast(pl.Int64)
    frac = parts.field("field_1").fill_null("0")
    name = msg_path.name.removesuffix(".gz")
    out = folder / (name + ".gz")
    with (
        gzip.open(out, "wb", compresslevel=1) as fm,
        gzip.open(
            folder / (name.replace("_message_", "_orderbook_") + ".gz"), "wb", compresslevel=1
        ) as fo,
    ):
        for k in range(copies):
            shifted = (whole + 23_400 * k).cast(pl.String) + "." + frac
            buf = io.BytesIO()
            msg.with_columns(shifted.alias(msg.columns[0])).write_csv(buf, include_header=False)
            fm.write(buf.getvalue())
            fo.write(book)
    return out


def lobster_memory(data: Path, copies: int = 20) -> dict:
    """Peak RSS (and time) reading GOOG L10 and a ``copies`` times longer pair, each in a
    fresh process."""
    import json
    import subprocess
    import sys

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        long = write_long_lobster(data / GOOG10, Path(tmp), copies)
        for key, path in (("short", data / GOOG10), ("long", long)):
            run = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            res[key] = json.loads(run.stdout.strip().splitlines()[-1])
    res["peak_rss_ratio"] = res["long"]["peak_rss_mib"] / res["short"]["peak_rss_mib"]
    res["copies"] = copies
    return res


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.set_defaults(repeat=3)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared real-data folder")
    ap.add_argument("--copies", type=int, default=10, help="times GOOG L10 is replayed")
    ap.add_argument(
        "--memory",
        action="store_true",
        help="also read GOOG L10 and a 20x longer copy (made in a temp dir) in fresh "
        "processes and report peak RSS",
    )
    args = ap.parse_args(argv)
    from lobstream.kernels.registry import Registry
    from lobstream.replay.readers import read_events

    rates, counts, skipped = read_rates(args.data, args.repeat)
    reg = Registry()
    batches = list(read_events([args.data / GOOG10], reg))
    with tempfile.TemporaryDirectory() as tmp:
        ipc = replay_rate(f"ipc://{tmp}/md.sock", batches, reg, args.copies)
    tcp = replay_rate("tcp://127.0.0.1:*", batches, reg, args.copies)
    lost = ipc["sent"] - ipc["received"] + tcp["sent"] - tcp["received"]
    out = {
        "read_events_per_s": rates,
        "read_events": counts,
        "read_skipped_files": skipped,
        "replay_ipc_events_per_s": ipc["events_per_s"],
        "replay_tcp_events_per_s": tcp["events_per_s"],
        "replay_lost_events": lost,
        "replay_ipc": ipc,
        "replay_tcp": tcp,
        "machine": machine(),
    }
    if args.memory:
        out["lobster_memory"] = lobster_memory(args.data)
    if args.json:
        emit_json(out)
        return
    print_table(
        f"file -> event batches (median of {args.repeat})",
        ("format", "events", "events/s"),
        [(f, counts[f], rates[f]) for f in sorted(rates)],
    )
    print()
    print_table(
        f"replayer at speed 0, GOOG L10 x {args.copies}, subscriber in another process",
        ("transport", "sent", "received", "messages", "send events/s", "end-to-end events/s"),
        [
            (name, r["sent"], r["received"], r["messages"], r["send_events_per_s"],
             r["events_per_s"])
            for name, r in (("ipc", ipc), ("tcp 127.0.0.1", tcp))
        ],
    )  # fmt: skip
    print(f"lost events: {lost}")
    if args.memory:
        m = out["lobster_memory"]
        print()
        print_table(
            "LOBSTER GOOG L10 read in a fresh process",
            ("file", "events", "seconds", "cpu seconds", "peak RSS MiB"),
            [(k, m[k]["events"], m[k]["seconds"], m[k]["cpu_seconds"], m[k]["peak_rss_mib"])
             for k in ("short", "long")],
        )  # fmt: skip
        print(f"peak RSS long / short: {m['peak_rss_ratio']:.2f} ({m['copies']}x the events)")
    for p, why in skipped.items():
        print(f"skipped {p}: {why}")


if __name__ == "__main__":
    main()
