"""Shared output for benchmarks: a table for people, one JSON object with --json."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np


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


def median_time(
    fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> tuple[float, list[float]]:
    """Median wall seconds of ``fn`` over ``repeat`` runs (``setup`` runs untimed before each)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


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
