"""The daemon as a service: a config file loaded and checked into a ready daemon, then run
until SIGTERM or SIGINT (SIGHUP reloads the model). What ``lobstream serve`` calls."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from lobstream.engine.config import ServeConfig
from lobstream.engine.daemon import LoadedModel

logger = logging.getLogger(__name__)


class SocketsUnavailable(RuntimeError):
    """The daemon could not bind or connect its sockets; the message says which and why."""


@dataclass(frozen=True)
class Service:
    """A checked config, its instruments and its loaded model: ready to run."""

    cfg: ServeConfig
    symbols: list[str]
    model: LoadedModel


def load_service(config_path: str | Path) -> Service:
    """Load the config, its registry and the model, checked against each other before any
    socket opens (a causal artifact's incremental runner built and warmed, one slot per
    instrument). Raises ``ConfigError`` or ``ArtifactError`` naming what does not fit."""
    from lobstream.engine.config import load_config, load_instruments
    from lobstream.engine.daemon import load_checked_model

    cfg = load_config(config_path)
    registry = load_instruments(cfg)
    model = load_checked_model(cfg, len(registry))
    return Service(cfg, [inst.symbol for inst in registry], model)


def run_service(service: Service) -> int:
    """Open the sockets and run the daemon until a stop request; its exit code.

    SIGTERM and SIGINT request a stop (the batch in flight is published first), SIGHUP a
    model reload. Raises :class:`SocketsUnavailable` when the sockets cannot be opened."""
    from lobstream.engine.daemon import Daemon

    daemon = Daemon(service.cfg, service.symbols, service.model)

    def _stop(signum, _frame):
        logger.info("received %s: stopping", signal.Signals(signum).name)
        daemon.request_stop()

    def _reload(signum, _frame):
        logger.info("received SIGHUP: reloading the model")
        daemon.request_reload()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _reload)
    try:
        daemon.open()
    except Exception as exc:  # noqa: BLE001 - a bind failure is a user error, say which
        daemon.shutdown()
        raise SocketsUnavailable(f"cannot open sockets: {exc}") from None
    return daemon.run()
