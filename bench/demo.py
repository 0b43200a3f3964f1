"""The demo: the main job on embedded defaults (what ``lobstream demo`` runs and shows).

:func:`run_demo` starts the daemon as its own process (``lobstream serve`` with the embedded
demo config, both endpoints on ipc:// in a private temporary folder), replays the bundled
LOBSTER GOOG sample into it with ``lobstream replay`` at an accelerated speed, subscribes to the
signals and hands their figures to a callback as they come: signals/s, end-to-end latency
p50/p99 (``ts_recv`` of the newest event in the window to receipt here), rolling accuracy
against the realised labels (computed from the sample's mid-prices with the artifact's own
label definition), and stale instruments; then a summary. The daemon, the replayer and the
labels share the bundled sample's instrument registry. Every process it starts is stopped at
the end, on Ctrl-C too.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np

from lobstream.bench import harness

DEMO_CONFIG = "demo.toml"
ROLLING = 500  # signals in the rolling accuracy and latency figures
DRAW_EVERY_S = 0.25  # how often the figures go to ``on_update`` while the sample plays


class DemoError(RuntimeError):
    """The demo cannot run (sample or model missing, the daemon died); the message says why."""


def demo_config_path() -> Path:
    """The embedded demo config (a valid ``lobstream serve`` config)."""
    return Path(str(files("lobstream.engine") / "assets" / DEMO_CONFIG))


def sample_files() -> list[Path]:
    """The bundled LOBSTER GOOG 10-level sample, as its message file (the reader finds the
    orderbook partner by name)."""
    folder = Path(str(files("lobstream.replay") / "samples"))
    msg = sorted(folder.glob("GOOG_*_message_10.csv*"))
    book = sorted(folder.glob("GOOG_*_orderbook_10.csv*"))
    if not msg or not book:
        raise DemoError(
            f"bundled LOBSTER sample not found in {folder}; reinstall lobstream (pip install -e .)"
        )
    return [msg[0]]


def config_to_toml(cfg) -> str:
    """TOML text of a :class:`~lobstream.engine.config.ServeConfig` (loads back equal)."""
    tables = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "source"}
    return harness.toml_text(tables)


def write_demo_config(tmp: Path, model: str | None, device: str) -> tuple[Path, object]:
    """The embedded config with its endpoints moved into ``tmp`` (and model/device overrides)."""
    from lobstream.engine.config import load_config

    cfg = load_config(demo_config_path())
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, path=str(Path(model).resolve()) if model else cfg.model.path, device=device
        ),
        ingest=dataclasses.replace(cfg.ingest, endpoints=(f"ipc://{tmp}/md",)),
        publish=dataclasses.replace(cfg.publish, endpoint=f"ipc://{tmp}/sig"),
    )
    path = tmp / "demo.toml"
    path.write_text(config_to_toml(cfg))
    return path, cfg


def realised_labels(paths: list[Path], manifest: dict, registry_path: Path) -> dict[int, int]:
    """seq -> realised label of each feature row of the sample (the artifact's definition),
    its events numbered by the registry at ``registry_path``."""
    from lobstream.kernels.book import new_report
    from lobstream.kernels.registry import load_registry
    from lobstream.models.manifest import label_def_from_manifest, spec_from_manifest
    from lobstream.replay.backtest.run import (
        labels_for_rows,
        rows_from_events,
    )
    from lobstream.replay.readers import read_events

    registry = load_registry(registry_path)
    metas = []
    batches = read_events(paths, registry)
    for _, meta, _ in rows_from_events(batches, spec_from_manifest(manifest), 1, new_report()):
        metas.append(meta.copy())
    meta = np.concatenate(metas)
    labels = labels_for_rows(meta, label_def_from_manifest(manifest))
    ok = labels >= 0
    return dict(zip(meta["seq"][ok].tolist(), labels[ok].tolist(), strict=True))


class Stats:
    """Rolling and total figures of the signals received."""

    def __init__(self, labels: dict[int, int]) -> None:
        self.labels = labels
        self.n = 0
        self.lat_us: collections.deque = collections.deque(maxlen=20_000)
        self.recent_hits: collections.deque = collections.deque(maxlen=ROLLING)
        self.y_true: list[int] = []
        self.y_pred: list[int] = []
        self.times: collections.deque = collections.deque()
        self.status: dict = {}

    def add(self, records: np.ndarray, t_recv_ns: int) -> None:
        self.n += len(records)
        now = time.monotonic()
        for r in records:
            self.times.append(now)
            if r["ts_recv"] > 0:
                self.lat_us.append((t_recv_ns - int(r["ts_recv"])) / 1e3)
            label = self.labels.get(int(r["seq"]))
            if label is not None:
                self.y_true.append(label)
                self.y_pred.append(int(r["pred"]))
                self.recent_hits.append(label == int(r["pred"]))

    def rate(self) -> float:
        now = time.monotonic()
        while self.times and now - self.times[0] > 1.0:
            self.times.popleft()
        return float(len(self.times))

    def pct(self, q: float) -> float:
        return float(np.percentile(np.fromiter(self.lat_us, float), q)) if self.lat_us else 0.0


def run_demo(
    *,
    duration: float = 90.0,
    speed: float = 200.0,
    model: str | None = None,
    device: str = "auto",
    on_phase: Callable[[str], None] | None = None,
    on_update: Callable[[Stats, float], None] | None = None,
) -> dict:
    """Replay the bundled sample through a live daemon for ``duration`` seconds (or until the
    whole sample was sent) at ``speed``; the summary of the signals received.

    ``on_phase(text)`` says what is being done before the replay starts (and on Ctrl-C);
    ``on_update(stats, elapsed_s)`` gets the figures every :data:`DRAW_EVERY_S` while it
    plays. Every process started is stopped before this returns. Raises :class:`DemoError`.
    """
    from lobstream.engine.subscriber import Subscriber
    from lobstream.models.artifact import ArtifactError, load_model

    phase = on_phase or (lambda text: None)
    update = on_update or (lambda stats, elapsed: None)
    paths = sample_files()
    tmp = Path(tempfile.mkdtemp(prefix="lobdemo", dir="/tmp" if os.path.isdir("/tmp") else None))
    daemon = replayer = None
    sub = None
    t_start = time.monotonic()
    stats = Stats({})
    try:
        cfg_path, cfg = write_demo_config(tmp, model, device)
        try:
            _, manifest = load_model(cfg.model.path, device="cpu")
        except ArtifactError as exc:
            raise DemoError(str(exc)) from None
        registry = Path(cfg.instruments.registry)
        phase("computing realised labels of the sample")
        stats = Stats(realised_labels(paths, manifest, registry))
        daemon = harness.spawn_daemon(cfg_path, tmp / "daemon.log", verbose=True, new_session=True)
        sub = Subscriber(cfg.publish.endpoint)
        phase("starting the daemon (model warm-up)")
        while True:
            msg = sub.recv(0.2)
            if msg is not None and msg.kind == "status":
                stats.status = msg.status
                break
            if daemon.poll() is not None:
                raise DemoError(
                    f"the daemon exited with {daemon.returncode}: "
                    f"{(tmp / 'daemon.log').read_text()[-2000:]}"
                )
        # the replayer binds and waits for the daemon's subscription: nothing lost at start
        replayer = harness.spawn(
            [*harness.lobstream_cmd(), "replay", *map(str, paths), "--to",
             cfg.ingest.endpoints[0], "--speed", str(speed), "--bind", "--subscribers", "1",
             "--wait", "30", "--registry", str(registry)],
            tmp / "replay.log", new_session=True,
        )  # fmt: skip
        t_start = time.monotonic()
        update(stats, 0.0)
        next_draw = 0.0
        while (elapsed := time.monotonic() - t_start) < duration:
            msg = sub.recv(0.05)
            if msg is not None:
                if msg.kind == "status":
                    stats.status = msg.status
                else:
                    stats.add(msg.records, msg.t_recv_ns)
            if elapsed >= next_draw:
                update(stats, elapsed)
                next_draw = elapsed + DRAW_EVERY_S
            if replayer.poll() is not None and msg is None and elapsed > 1.0:
                break  # the whole sample was sent and the daemon has gone quiet
    except KeyboardInterrupt:
        phase("interrupted: stopping the replayer and the daemon")
    finally:
        harness.stop_process(replayer, "replayer")
        if sub is not None:
            for msg in sub.iter(0.3):  # signals of the batch in flight
                if msg.kind == "signal":
                    stats.add(msg.records, msg.t_recv_ns)
                else:
                    stats.status = msg.status
        harness.stop_process(daemon, "daemon")
        if sub is not None:
            sub.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return summary(stats, time.monotonic() - t_start)


def summary(stats: Stats, seconds: float) -> dict:
    """The demo's end figures (JSON-ready; None where no signal had a realised label)."""
    from lobstream.models.metrics import classification_report

    report = (
        classification_report(np.array(stats.y_true), np.array(stats.y_pred))
        if stats.y_true
        else {}
    )
    counts = stats.status.get("counts", {})
    return {
        "seconds": round(seconds, 2),
        "events": counts.get("events", 0),
        "signals": stats.n,
        "signals_per_s": stats.n / seconds if seconds > 0 else 0.0,
        "latency_p50_us": stats.pct(50),
        "latency_p99_us": stats.pct(99),
        "labelled_signals": len(stats.y_true),
        "accuracy": report.get("accuracy"),
        "f1_macro": report.get("f1_macro"),
        "conflated": counts.get("conflated", 0),
        "stale_instruments": stats.status.get("stale", 0),
    }
