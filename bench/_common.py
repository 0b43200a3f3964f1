"""What the benchmarks share: their argparse options, a table for people, one JSON object
with --json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence

import numpy as np


def parser(
    description: str, *, repeat: int | None = 5, prog: str | None = None
) -> argparse.ArgumentParser:
    """The parser every ``python -m bench.NAME`` starts from: ``--json`` and (unless
    ``repeat`` is None) ``--repeat`` with that default."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    if repeat is not None:
        ap.add_argument(
            "--repeat", type=int, default=repeat, help="timed repetitions per case (median)"
        )
    return ap


# Options that several benchmarks share (one definition each).
def add_model(ap: argparse.ArgumentParser) -> None:
    """``--model MODEL.pt`` (dest ``model_path``; None: the bundled artifact)."""
    ap.add_argument(
        "--model",
        dest="model_path",
        metavar="MODEL.pt",
        type=existing_file,
        default=None,
        help="model artifact (default: the bundled one)",
    )


def add_device(ap: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda|auto`` (default cpu)."""
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="default: cpu")


def add_threads(ap: argparse.ArgumentParser, help_text: str = "torch CPU threads") -> None:
    """``--threads N`` (at least 1, default 1)."""
    ap.add_argument("--threads", type=at_least(1), default=1, help=f"{help_text} (default: 1)")


def existing_file(value: str) -> str:
    """argparse type: a path to an existing file."""
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an existing file")
    return value


def at_least(minimum: float, kind: type = int):
    """argparse type: a number of ``kind`` that is at least ``minimum``."""

    def parse(value: str):
        try:
            x = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a valid {kind.__name__}") from None
        if x < minimum:
            raise argparse.ArgumentTypeError(f"{value} is smaller than the minimum {minimum}")
        return x

    return parse


def machine() -> dict:
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
