"""The ``lobstream`` command line: one entry point, subcommands loaded on demand.

Every command lives in this package, one module a concept, and only parses its options, calls
the library function that does the work and prints the result. A subcommand's module is
imported only when it is run (or listed by ``--help``), so ``lobstream --help`` stays fast and
a missing optional package breaks only its own command, with a one-line message saying what
to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re

import click

# name -> "module:attribute" of a click.Command
SUBCOMMANDS: dict[str, str] = {
    "demo": "lobstream.cli.demo:demo",
    "serve": "lobstream.cli.serve:serve",
    "replay": "lobstream.cli.data:replay",
    "convert": "lobstream.cli.data:convert",
    "train": "lobstream.cli.train:train",
    "backtest": "lobstream.cli.backtest:backtest",
    "explain": "lobstream.cli.explain:explain",
    "bench": "lobstream.cli.bench:bench",
    "feed": "lobstream.cli.feed:feed",
}
# subcommands that need an optional extra of the package: lobstream[EXTRA]
EXTRAS: dict[str, str] = {"feed": "live"}


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _extra_providing(package: str) -> str | None:
    """The optional extra of lobstream whose requirements name ``package``, if any."""
    try:
        requires = importlib.metadata.requires("lobstream") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    want = re.sub(r"[-_.]+", "-", package).lower()
    for req in requires:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        if extra and name and re.sub(r"[-_.]+", "-", name.group(0)).lower() == want:
            return extra.group(1)
    return None


def missing_dependency_message(name: str, module: str, exc: ImportError) -> str | None:
    """One line saying what to install for subcommand ``name`` whose ``module`` failed to
    import with ``exc``; None when the failure is not a missing package (a broken install or a
    bug: the caller reports it as it is)."""
    missing = getattr(exc, "name", None) or ""
    if not isinstance(exc, ModuleNotFoundError) or not missing:
        return None
    top = missing.split(".")[0]
    if module == missing or module.startswith(missing + "."):  # the command's own module
        extra = EXTRAS.get(name)
        return None if extra is None else (
            f"lobstream {name} needs the optional extra [{extra}]: pip install 'lobstream[{extra}]'"
        )  # fmt: skip
    if top == "lobstream":
        return None
    extra = EXTRAS.get(name) or _extra_providing(top)
    if extra is not None:
        return (
            f"lobstream {name} needs the optional extra [{extra}] ({top} is not installed): "
            f"pip install 'lobstream[{extra}]'"
        )
    # a core dependency: installing lobstream again brings it
    return (
        f"lobstream {name} needs the module {top}, which is not installed: install lobstream "
        "with its dependencies (pip install lobstream)"
    )


def _unavailable(name: str, message: str) -> click.Command:
    """A stand-in for a subcommand whose optional packages are missing: ``--help`` lists it
    with the message, and run (with any arguments) it prints the message and exits 1."""

    def fail(args: tuple[str, ...]) -> None:
        raise click.ClickException(message)

    return click.Command(
        name,
        callback=fail,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=message,
        short_help=message,
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
    )


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
        except ImportError as exc:
            message = missing_dependency_message(name, module, exc)
            if message is not None:
                return _unavailable(name, message)
            raise click.ClickException(
                f"subcommand {name!r} is not available in this build ({target}: {exc})"
            ) from None
        except AttributeError as exc:
            raise click.ClickException(
                f"subcommand {name!r} is not available in this build ({target}: {exc})"
            ) from None


def package_version() -> str:
    """The installed lobstream's version (its package metadata), or "unknown" in a source
    tree that was never installed."""
    try:
        return importlib.metadata.version("lobstream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # eager and read at call time: --version imports no subcommand and reads no metadata
    # unless asked
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"lobstream {package_version()}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """lobstream: streaming limit-order-book signal engine."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
