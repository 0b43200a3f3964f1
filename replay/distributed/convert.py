"""``lobstream convert --ray``: one Ray task per unit, each partition written by one task."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from lobstream.kernels.registry import Registry
from lobstream.replay.distributed.plan import expand, plan, scan_all


def convert_unit(
    paths: Sequence[str | Path],
    out: str | Path,
    registry: Registry,
    *,
    fmt: str = "auto",
    skip_bad: bool = False,
    rows_per_file: int | None = None,
) -> tuple[dict, dict, dict, dict]:
    """:func:`lobstream.replay.convert.convert` of one unit's files; (inputs, written,
    defect counts, where each defect kind was first seen) as plain dicts."""
    from lobstream.replay.convert import convert
    from lobstream.replay.readers.parquet import ROWS_PER_FILE

    s = convert(
        paths,
        out,
        Registry(list(registry)),
        fmt=fmt,
        skip_bad=skip_bad,
        rows_per_file=rows_per_file or ROWS_PER_FILE,
    )
    return dict(s.inputs), dict(s.written), dict(s.defects), dict(s.defects.first)


def convert_on_ray(
    paths: Sequence[str | Path],
    out: str | Path,
    registry: Registry | None = None,
    *,
    fmt: str = "auto",
    skip_bad: bool = False,
    rows_per_file: int | None = None,
    max_retries: int = 3,
):
    """:func:`lobstream.replay.convert.convert` with one Ray task per unit.

    Units hold every file of their instruments, so each partition folder
    (``instrument=SYMBOL/date=...``) is written by one task, from the same events in the same
    order as one process writes it: the same part files. Instrument ids are the one-process
    run's (:func:`plan`). A task that dies is rerun (``max_retries``); parts it wrote before
    dying are overwritten only if they have the same names, so retries assume an empty
    ``out``. Returns a :class:`~lobstream.replay.convert.ConvertSummary`."""
    import ray

    from lobstream.replay.convert import ConvertSummary

    t0 = time.perf_counter()
    given = [Path(p) for p in paths]
    paths = [Path(p) for p in expand(given, fmt)]
    base = Registry() if registry is None else registry
    reg, units = plan(scan_all(ray, [str(p) for p in paths], base, fmt, skip_bad), base)
    task = ray.remote(num_cpus=1, max_retries=max_retries)(convert_unit)
    reg_ref = ray.put(reg)
    parts = ray.get(
        [
            task.remote(
                [paths[k] for k in u],
                str(out),
                reg_ref,
                fmt=fmt,
                skip_bad=skip_bad,
                rows_per_file=rows_per_file,
            )
            for u in units
        ]
    )
    summary = ConvertSummary()
    inputs: dict = {}
    for inp, written, counts, first in parts:
        inputs.update(inp)
        summary.written.update(written)
        for kind, n in counts.items():
            summary.defects.add(kind, first.get(kind, ""), n)
    if paths == given:
        summary.inputs = {p: inputs[p] for p in paths}
    else:  # per input as given: a dataset folder sums its part files
        for p in paths:
            owner = next(g for g in given if p == g or g in p.parents)
            f, n = inputs[p]
            summary.inputs[owner] = (f, summary.inputs.get(owner, (f, 0))[1] + n)
    summary.written = dict(sorted(summary.written.items()))
    summary.seconds = time.perf_counter() - t0
    if registry is not None:
        for inst in list(reg)[len(registry) :]:
            registry.add(inst.symbol, inst.tick_size, inst.price_scale)
    return summary


def convert_here_or_on_ray(
    ray_address: str | None,
    paths: Sequence[str | Path],
    out: str | Path,
    registry: Registry,
    *,
    progress=None,
    **kw,
):
    """:func:`lobstream.replay.convert.convert` in this process (``ray_address`` None, with
    ``progress``), or :func:`convert_on_ray` on the Ray of ``ray_address`` (``"local"``: a
    local one; no progress). Raises :class:`~lobstream.replay.distributed.session.
    RayUnavailable` when Ray is missing or cannot be reached."""
    if ray_address is None:
        from lobstream.replay.convert import convert

        return convert(paths, out, registry, progress=progress, **kw)
    from lobstream.replay.distributed.session import RaySession

    with RaySession(ray_address):
        return convert_on_ray(paths, out, registry, **kw)
