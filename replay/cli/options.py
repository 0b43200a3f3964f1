"""Click options and helpers that several ``lobstream`` commands share, defined once."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from lobstream.kernels.registry import Registry
from lobstream.replay.errors import Defects

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


def registry_from(path: Path | None) -> Registry:
    """The registry of ``--registry`` (an empty one without it); a bad file is a usage error."""
    if path is None:
        return Registry()
    from lobstream.replay.instruments import load_registry

    try:
        return load_registry(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def defects_table(defects: Defects) -> Table:
    """The ``--skip-bad`` report: each defect kind, its count and where it was first seen."""
    table = Table(title="skipped defects")
    for col in ("kind", "count", "first seen"):
        table.add_column(col)
    for kind, n in sorted(defects.items()):
        table.add_row(kind, f"{n:,}", defects.first.get(kind, ""))
    return table
