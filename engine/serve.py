"""``lobstream serve --config FILE``: run the signal daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import sys

import click

logger = logging.getLogger(__name__)


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Daemon configuration (TOML; see examples/serve.toml).",
)
@click.option("--check", is_flag=True, help="Load and check the config and model, then exit.")
def serve(config_path: str, check: bool) -> None:
    """Run the signal daemon: market data in over ZeroMQ, signals out.

    SIGTERM or SIGINT stops it (exit 0 after publishing the batch in flight); SIGHUP reloads
    the model artifact.
    """
    from lobstream.engine.config import ConfigError, load_config, load_instruments
    from lobstream.engine.daemon import Daemon, load_checked_model
    from lobstream.models.artifact import ArtifactError

    try:
        cfg = load_config(config_path)
        registry = load_instruments(cfg)
        # the artifact is checked against the config before any socket opens (and a causal
        # one's incremental runner built and warmed, one slot per instrument)
        model = load_checked_model(cfg, len(registry))
    except (ConfigError, ArtifactError) as exc:
        raise click.ClickException(str(exc)) from None
    symbols = [inst.symbol for inst in registry]
    if check:
        click.echo(
            f"config {config_path}: ok; model {model.manifest.get('arch')} sha256 {model.sha256} "
            f"({model.inference}); {len(symbols)} instruments"
        )
        return
    daemon = Daemon(cfg, symbols, model)

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
        raise click.ClickException(f"cannot open sockets: {exc}") from None
    code = daemon.run()
    sys.exit(code)
