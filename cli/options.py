"""Click options and helpers that several ``lobstream`` commands share, defined once."""

from __future__ import annotations

from pathlib import Path

import click

from lobstream.kernels.registry import Registry, load_registry

FILES = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
# files or folders (a canonical Parquet dataset is a folder), as Paths
PATHS = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
REGISTRY = click.option(
    "--registry",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Instrument registry TOML (ids and tick sizes); readers add unknown symbols.",
)
FORMAT = click.option(
    "--format", "fmt", default="auto", show_default=True, help="Input format (auto: detect)."
)
SKIP_BAD = click.option(
    "--skip-bad", is_flag=True, help="Skip and count bad records instead of stopping."
)
MODEL = click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Model artifact (*.pt) with its manifest.",
)
# the demo's --model: the bundled artifact unless one is given
BUNDLED_MODEL = click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Artifact to serve (default: the bundled model).",
)
DEVICES = ("cpu", "cuda", "auto")


def device(default: str = "cpu", help: str | None = None):
    """``--device cpu|cuda|auto``."""
    return click.option(
        "--device", default=default, show_default=True, type=click.Choice(DEVICES), help=help
    )


def threads(help: str):
    """``--threads N`` (torch CPU threads, at least 1)."""
    return click.option(
        "--threads", type=click.IntRange(1), default=1, show_default=True, help=help
    )


def json_flag(help: str = "Print one JSON object instead of tables."):
    """``--json`` (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def ray(f):
    """``--ray [ADDRESS]`` (parameter ``ray_address``: None without it, ``"local"`` for a bare
    ``--ray``)."""
    from lobstream.replay.distributed.session import INSTALL_HINT

    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help=(
            "Run on Ray: a bare --ray starts a local Ray on this machine; --ray=ADDRESS joins "
            "a cluster (auto, HOST:6379, ray://HOST:10001). Put a bare --ray after the files "
            f"(or write --ray=ADDRESS). Needs {INSTALL_HINT}."
        ),
    )(f)


def check_ray_address(address: str | None) -> None:
    """Refuse an address that is an existing path: a bare ``--ray`` took the next FILE."""
    if address and address != "local" and Path(address).exists():
        raise click.UsageError(
            f"--ray took {address!r} (a file) as its address: put a bare --ray after the "
            "files, or write --ray=ADDRESS"
        )


def registry_from(path: Path | None) -> Registry:
    """The registry of ``--registry`` (an empty one without it); a bad file is a usage error."""
    if path is None:
        return Registry()
    try:
        return load_registry(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
