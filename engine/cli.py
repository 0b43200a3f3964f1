"""The ``lobstream`` command line: one entry point, subcommands loaded on demand.

Each subcommand lives in the module that owns its work and is imported only when it is run,
so ``lobstream --help`` stays fast and a missing optional piece breaks only its own command.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import click

# name -> "module:attribute" of a click.Command
SUBCOMMANDS: dict[str, str] = {
    "demo": "lobstream.bench.demo:demo",
    "serve": "lobstream.engine.serve:serve",
    "replay": "lobstream.replay.cli.data:replay",
    "convert": "lobstream.replay.cli.data:convert",
    "train": "lobstream.replay.cli.train:train",
    "backtest": "lobstream.replay.cli.backtest:backtest",
    "explain": "lobstream.replay.cli.explain:explain",
    "bench": "lobstream.bench.cli:bench",
}


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, t in SUBCOMMANDS.items() if _module_exists(t.split(":")[0]))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(
                f"subcommand {name!r} is not available in this build ({target}: {exc})"
            ) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """lobstream: streaming limit-order-book signal engine."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
