"""``lobstream serve --config FILE``: run the signal daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

import click


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
    from lobstream.engine.config import ConfigError
    from lobstream.engine.service import SocketsUnavailable, load_service, run_service
    from lobstream.models.artifact import ArtifactError

    try:
        service = load_service(config_path)
    except (ConfigError, ArtifactError) as exc:
        raise click.ClickException(str(exc)) from None
    if check:
        model = service.model
        click.echo(
            f"config {config_path}: ok; model {model.manifest.get('arch')} sha256 {model.sha256} "
            f"({model.inference}); {len(service.symbols)} instruments"
        )
        return
    try:
        code = run_service(service)
    except SocketsUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)
