"""Shared output for benchmarks: a table for people, one JSON object with --json."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence

import click
import numpy as np

# Options that ``lobstream bench`` commands share (one definition each).
MODEL_OPTION = click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Model artifact (default: the bundled one).",
)
DEVICE_OPTION = click.option(
    "--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "auto"])
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def threads_option(help_text: str | None = None):
    return click.option(
        "--threads", default=1, show_default=True, type=click.IntRange(1), help=help_text
    )


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions per case (median)")
    return ap


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }


def console():
    """A rich console; wide tables stay readable when piped to a file (rich assumes 80
    columns there)."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=160)


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[object]], file=sys.stdout
) -> None:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    print(title, file=file)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print(
            "  ".join(
                c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths, strict=True)
            ),
            file=file,
        )


def emit_json(obj: dict) -> None:
    print(json.dumps(obj, indent=None, default=_default))


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


def _fmt(c) -> str:
    if isinstance(c, float):
        if c == 0 or 1e-2 <= abs(c) < 1e7:
            return f"{c:,.2f}" if abs(c) < 1e3 else f"{c:,.0f}"
        return f"{c:.3g}"
    return str(c)


def _numeric(s: str) -> bool:
    return (
        s.replace(",", "")
        .replace(".", "")
        .replace("-", "")
        .replace("e", "")
        .replace("+", "")
        .isdigit()
    )
