"""One harness for everything that runs the daemon as its own process: the daemon benchmarks,
the soak, the latency bench, the demo and the daemon tests that need a real ``lobstream
serve``.

- ``daemon_tables`` / ``toml_text`` / ``write_config``: a serve config as a dict of tables,
  written as TOML (one writer; the demo writes a whole ``ServeConfig`` with it too);
- ``spawn_daemon`` / ``stop_process``: ``lobstream serve`` from this interpreter, stopped by
  SIGTERM, then SIGKILL after a timeout;
- ``SubscriberProcess``: a separate process that receives the signals (receipt time and
  payload only, decoded after the run, so it costs the machine little per message);
- ``scrape`` / ``metric_values`` / ``stage_breakdown`` / ``stage_means``: the daemon's
  Prometheus endpoint;
- ``model_alone``: the runner's batch-1 latency and batched throughput in this process.

Children are plain subprocesses, not multiprocessing: nothing (a resource tracker, forked
state) outlives a run.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

QUANTILES = (("p50", 50), ("p99", 99), ("p999", 99.9))


def default_model() -> Path:
    """The bundled model artifact (models/assets/*.pt), the first in name order."""
    from lobstream.models import __file__ as models_init

    found = sorted((Path(models_init).parent / "assets").glob("*.pt"))
    if not found:
        raise FileNotFoundError(
            "no bundled model in lobstream/models/assets; pass --model MODEL.pt "
            "(make one with lobstream train)"
        )
    return found[0]


def lobstream_cmd(python: str = sys.executable) -> list[str]:
    """The ``lobstream`` command run by ``python`` (this interpreter by default, so children
    see the same environment without a PATH lookup; another venv's runs another version, and
    a tree from before ``lobstream.cli`` existed has its entry point in ``lobstream.engine``)."""
    return [python, "-c", _MAIN]


_MAIN = """
try:
    from lobstream.cli import main
except ModuleNotFoundError as exc:
    if exc.name != "lobstream.cli":
        raise
    from lobstream.engine.cli import main
main()
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ config ---
def daemon_tables(
    model_path: str | Path,
    symbols: Iterable[str],
    md: str,
    sig: str,
    /,
    *,
    window: int,
    levels: int,
    feature_kind: str = "zscore",
    tick_size: float | str = 0.01,
    metrics_address: str = "",
    **tables: dict,
) -> dict:
    """A serve config as tables: the model on CPU without reload polling, ``symbols``, market
    data on ``md`` and signals on ``sig``; each of ``tables`` (``model={...}``, ...) adds to
    or overrides the keys of its table."""
    d = {
        "model": {
            "path": str(model_path),
            "window": int(window),
            "levels": int(levels),
            "feature_kind": feature_kind,
            "device": "cpu",
            "reload_poll_s": 0.0,
        },
        "instruments": {"instrument": [{"symbol": s, "tick_size": tick_size} for s in symbols]},
        "ingest": {"endpoints": [md]},
        "publish": {"endpoint": sig},
        "metrics": {"address": metrics_address},
    }
    for k, v in tables.items():
        d[k] = {**d.get(k, {}), **v}
    return d


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_array_of_tables(v) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, dict) for x in v)


def toml_text(tables: dict) -> str:
    """TOML of nested dicts: plain keys, then sub-tables, then arrays of tables (lists of
    dicts, whose own dict values are written inline). Loads back equal."""
    lines: list[str] = []

    def table(name: str, d: dict) -> None:
        plain = {
            k: v for k, v in d.items() if not isinstance(v, dict) and not _is_array_of_tables(v)
        }
        if name and (plain or not d):
            lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in plain.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)
        for k, v in d.items():
            if _is_array_of_tables(v):
                for entry in v:
                    lines.append(f"[[{name}.{k}]]" if name else f"[[{k}]]")
                    lines.extend(f"{x} = {_toml_value(y)}" for x, y in entry.items())

    table("", tables)
    return "\n".join(lines) + "\n"


def write_config(folder: Path, tables: dict, name: str = "serve.toml") -> Path:
    path = Path(folder) / name
    path.write_text(toml_text(tables))
    return path


# ----------------------------------------------------------------------------- processes ---
def _affinity(cpus: Iterable[int] | None):
    cpus = set(cpus or ())
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def spawn(
    cmd: Sequence[str],
    log: Path,
    *,
    cpus: Iterable[int] | None = None,
    new_session: bool = False,
    **popen,
) -> subprocess.Popen:
    """``cmd`` with stdout and stderr to the file ``log`` (the child keeps the file open, this
    process does not), on ``cpus`` when given; ``new_session``: Ctrl-C reaches only us, which
    stop the children in order."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            list(cmd),
            stdout=f,
            stderr=subprocess.STDOUT,
            preexec_fn=_affinity(cpus),
            start_new_session=new_session,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            **popen,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux; NaN
    elsewhere or once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # fields after the command name start at the state (field 3): utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn_daemon(
    config: Path,
    log: Path,
    *,
    python: str = sys.executable,
    verbose: bool = False,
    cpus: Iterable[int] | None = None,
    new_session: bool = False,
) -> subprocess.Popen:
    """``lobstream [-v] serve --config CONFIG`` (the daemon pins its own threads from its
    config; ``cpus`` only bounds where it starts)."""
    cmd = [*lobstream_cmd(python), *(["-v"] if verbose else []), "serve", "--config", str(config)]
    return spawn(cmd, log, cpus=cpus, new_session=new_session)


def stop_process(
    proc: subprocess.Popen | None, name: str = "process", timeout_s: float = 5.0
) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s %d ignored SIGTERM for %.0f s: killing it", name, proc.pid, timeout_s
            )
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


def readline(proc: subprocess.Popen, timeout_s: float) -> str:
    """A line of a child's stdout, or "" if none comes within ``timeout_s``."""
    r, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().decode().strip() if r else ""


# -------------------------------------------------------------------------------- feeder ---
def feeder(endpoint: str):
    """(context, PUB socket) connected to the daemon's market-data ``endpoint``: no
    high-water mark (nothing dropped), 1 s linger at close; returns after the subscription
    had time to propagate (ZeroMQ's slow joiner)."""
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(endpoint)
    time.sleep(0.5)
    return ctx, pub


def split_runs(events: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(instrument, run) views of ``events`` sorted by instrument, one run per instrument."""
    cuts = np.flatnonzero(np.diff(events["instrument"])) + 1
    return [(int(c["instrument"][0]), c) for c in np.split(events, cuts) if len(c)]


def plan_runs(events: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One message per instrument, in id order, on a copy (split before a clock starts, the
    feeder's work per slice is a few sends, not a sort)."""
    return split_runs(events[np.argsort(events["instrument"], kind="stable")])


def send_runs(pub, runs: list[tuple[int, np.ndarray]], topics: list[bytes]) -> int:
    """Send prepared runs as contract-4 messages, each stamped with ``ts_recv`` just before
    its send; the number of messages."""
    import zmq

    send, more, clock = pub.send, zmq.SNDMORE, time.monotonic_ns
    for inst, run in runs:
        run["ts_recv"] = clock()
        send(topics[inst], more)
        send(run.view(np.uint8))
    return len(runs)


# ---------------------------------------------------------------------------- subscriber ---
@dataclass
class Received:
    """What a subscriber process got: per signal with a known ``ts_recv``, receipt time and
    latency (receipt minus ``ts_recv``, one host monotonic clock), ns; every signal counted."""

    t_recv_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ts_recv: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    latency_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    signals: int = 0
    status: dict | None = None  # the last heartbeat


def subscriber_main(endpoint: str, out_path: str, period_s: str = "0") -> None:
    """Subscriber process: print ``ready`` at the first status heartbeat, receive until a line
    comes on stdin (or stdin closes) and then until 0.3 s pass with no signal, save, print
    ``done``.

    With ``period_s`` > 0 nothing is kept: every ``period_s`` from the first signal, one JSON
    line (signals, p50/p99/p99.9 latency in us) goes to ``out_path``.jsonl. Otherwise every
    signal's receipt time and payload are kept, decoded after the run into ``out_path``.npz
    and ``out_path``.json (count, last heartbeat).
    """
    import zmq

    from lobstream.engine.signals import decode
    from lobstream.engine.subscriber import Subscriber

    period_ns = int(float(period_s) * 1e9)
    got: list[tuple[int, bytes]] = []
    window: list[np.ndarray] = []
    counts = {"n": 0}
    status = None
    periods = open(out_path + ".jsonl", "w") if period_ns else None  # noqa: SIM115
    end = None

    def flush_period() -> None:
        a = np.concatenate(window) / 1e3 if window else np.zeros(0)
        q = np.percentile(a, [50, 99, 99.9]) if len(a) else [float("nan")] * 3
        row = {"signals": counts["n"], "p50_us": q[0], "p99_us": q[1], "p999_us": q[2]}
        periods.write(json.dumps({k: float(v) for k, v in row.items()}) + "\n")
        periods.flush()
        window.clear()
        counts["n"] = 0

    stdin = sys.stdin.fileno()
    with Subscriber(endpoint) as sub:
        sock, status_topic = sub.sock, sub.status_topic
        recv, clock, again, noblock = sock.recv_multipart, time.monotonic_ns, zmq.Again, zmq.NOBLOCK
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(stdin, zmq.POLLIN)
        quiet_since = None  # set once stop is asked: then drain until 0.3 s without a signal
        while True:
            ready = dict(poller.poll(50))
            if stdin in ready and quiet_since is None:
                poller.unregister(stdin)
                quiet_since = time.monotonic()
            if quiet_since is not None and time.monotonic() - quiet_since > 0.3:
                break
            if sock not in ready:
                continue
            while True:
                try:
                    topic, payload = recv(noblock)
                except again:
                    break
                t = clock()
                if topic == status_topic:  # every status_interval_s: not a signal
                    if status is None:
                        sys.stdout.write("ready\n")
                        sys.stdout.flush()
                    status = json.loads(payload)
                    continue
                if quiet_since is not None:
                    quiet_since = time.monotonic()
                if not period_ns:
                    got.append((t, payload))
                    continue
                end = end or t + period_ns
                rec = decode(payload)
                counts["n"] += len(rec)
                window.append(t - rec["ts_recv"][rec["ts_recv"] > 0])
            if end is not None and clock() >= end:
                flush_period()
                end += period_ns
    if periods is not None:
        periods.close()
    _save_received(got, status, out_path, decode)
    sys.stdout.write("done\n")
    sys.stdout.flush()


def _save_received(got: list[tuple[int, bytes]], status, out_path: str, decode) -> None:
    n = 0
    t_recv, ts, lat = [], [], []
    for t, payload in got:
        rec = decode(payload)
        n += len(rec)
        known = rec["ts_recv"][rec["ts_recv"] > 0].astype(np.int64)
        ts.append(known)
        lat.append(t - known)
        t_recv.append(np.full(len(known), t, np.int64))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    np.savez(out_path + ".npz", t_recv_ns=cat(t_recv), ts_recv=cat(ts), latency_ns=cat(lat))
    Path(out_path + ".json").write_text(json.dumps({"signals": n, "status": status}))


class SubscriberProcess:
    """:func:`subscriber_main` in a child process on ``cpus``, files under ``folder``."""

    def __init__(
        self, endpoint: str, folder: Path, *, period_s: float = 0.0, cpus: Iterable[int] = ()
    ) -> None:
        self.out = str(Path(folder) / "signals")
        code = (
            "import sys; from lobstream.bench.harness import subscriber_main as m; m(*sys.argv[1:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, endpoint, self.out, str(period_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=_affinity(cpus),
        )

    def wait_ready(self, daemon: subprocess.Popen | None, timeout_s: float) -> bool:
        """True at the first heartbeat; False after ``timeout_s`` or once ``daemon`` exits."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and (daemon is None or daemon.poll() is None):
            line = readline(self.proc, 0.5)
            if line:
                return line == "ready"
        return False

    def periods(self) -> list[dict]:
        """The per-period rows written so far (``period_s`` > 0)."""
        path = Path(self.out + ".jsonl")
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def finish(self, timeout_s: float = 30.0) -> Received:
        """Ask it to stop, wait for its files, and read them."""
        if self.proc.poll() is None:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()
            if readline(self.proc, timeout_s) != "done":
                raise RuntimeError(
                    f"the subscriber process did not save its signals in {timeout_s} s"
                )
        self.close()
        with np.load(self.out + ".npz") as z:
            arrays = {k: z[k] for k in ("t_recv_ns", "ts_recv", "latency_ns")}
        info = json.loads(Path(self.out + ".json").read_text())
        return Received(**arrays, signals=info["signals"], status=info["status"])

    def close(self) -> None:
        """Make sure it has exited (closing stdin asks it to stop; then terminate)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.stdout.close()


# ------------------------------------------------------------------------------- metrics ---
def metrics_text(address: str) -> str:
    """The Prometheus text of the daemon whose ``metrics.address`` is ``address``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_values(address: str) -> dict[str, float]:
    """Every sample line as ``name{labels}`` (as written) -> value."""
    values = {}
    for line in metrics_text(address).splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            values[name] = float(v)
    return values


def scrape(address: str) -> dict:
    """Counters and stage histograms of a daemon's Prometheus endpoint.

    Returns
    -------
    {"counters": {name: value}, "stages": {stage: {"buckets": [(le, cum)], "sum": s,
    "count": n}}} with counter names without the ``lobstream_`` prefix and ``_total`` suffix.
    """
    from prometheus_client.parser import text_string_to_metric_families

    counters: dict[str, float] = {}
    stages: dict[str, dict] = {}
    for fam in text_string_to_metric_families(metrics_text(address)):
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


def stage_means(scraped: dict) -> dict:
    """Mean microseconds per observation of each stage since the daemon started, and the
    number of observations (None where there were none)."""
    out = {}
    for stage, st in scraped["stages"].items():
        n = st["count"]
        out[stage] = {"mean_us": 1e6 * st["sum"] / n if n else None, "n": n or None}
    return out


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


# --------------------------------------------------------------------------- model alone ---
def model_alone(
    model_path: Path,
    threads: int,
    batches: Sequence[int] = (1, 16, 64, 100, 256),
    *,
    device: str = "cpu",
    calls: int = 2000,
    cpus: tuple[int, ...] = (),
    paced_rate: float | None = None,
    runner: str = "auto",
) -> dict:
    """The runner in this process (``runner``: the daemon's ``model.runner``, so the same one
    the daemon builds; on ``cpus`` when given, as the daemon's inference thread would be): ``calls`` batch-1 calls back to back (p50/p99/p99.9), with ``paced_rate`` also
    300 calls that far apart (sleeping between, as a quiet market spaces them), and 1 s of
    calls at each of ``batches`` (windows/s; best = the model's best batched throughput)."""
    before = os.sched_getaffinity(0) if cpus else None
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        return _model_alone(model_path, threads, batches, device, calls, paced_rate, runner)
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


def _model_alone(model_path, threads, batches, device, calls, paced_rate, kind) -> dict:
    from lobstream.models.artifact import load_model
    from lobstream.models.runner import window_runner

    module, manifest = load_model(model_path, device=device)
    runner = window_runner(module, manifest, runner=kind, device=device,
                           max_batch=max((1, *batches)), threads=threads)  # fmt: skip
    runner.input[...] = np.random.default_rng(0).standard_normal(runner.input.shape)
    for _ in range(20):
        runner.infer(1)
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        runner.infer(1)
        lat.append(time.perf_counter_ns() - t0)
    paced = []
    for _ in range(300 if paced_rate else 0):
        # what a call costs once the process has not called the model for 1/rate s: its code
        # and weights leave the caches meanwhile (here even while spinning instead of sleeping)
        time.sleep(1.0 / paced_rate)
        t0 = time.perf_counter_ns()
        runner.infer(1)
        paced.append(time.perf_counter_ns() - t0)
    thr = {}
    for b in batches:
        runner.infer(b)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            runner.infer(b)
            n += b
        thr[b] = n / (time.perf_counter() - t0)
    return {
        **{f"b1_{k}_us": float(np.percentile(lat, q)) / 1e3 for k, q in QUANTILES},
        **{f"paced_{k}_us": float(np.percentile(paced, q)) / 1e3 for k, q in QUANTILES if paced},
        "paced_rate": paced_rate,
        "throughput": thr,
        "best_throughput": max(thr.values()) if thr else None,
        "T": int(manifest["T"]),
        "L": int(manifest["L"]),
        "feature_kind": manifest["feature"]["kind"],
        "arch": manifest.get("arch"),
        "runner": runner.mode,
    }
