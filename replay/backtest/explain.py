"""What drove a model's prediction at rows of LOB files: the rows picked, their windows, the
attribution of the predicted class over each, written as PNGs (what ``lobstream explain``
runs).

The attribution arithmetic is :mod:`lobstream.models.explain`. Rows are the feature rows the
backtest computes (same readers, same kernels, the artifact's feature spec), numbered from 0
over the files in arrival order; a row's window is the last T rows of its instrument ending at
it. Every refusal (a row out of range, a row without a full window, no row at a time) is a
``ValueError`` whose message names the files and what they do hold.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lobstream.kernels.registry import Registry

logger = logging.getLogger(__name__)


@dataclass
class Rows:
    """Feature rows of the files kept in memory (the windows are cut from them)."""

    rows: np.ndarray  # (n, F) float32
    meta: np.ndarray  # (n,) ROW_META_DTYPE
    probs: np.ndarray | None  # (n, 3) scorer probabilities, only when scored (top N)


def parse_time(value: str, first_ts: int) -> int:
    """ns since the epoch (UTC) of a time given as integer ns, an ISO datetime (naive = UTC),
    or a time of day ``HH:MM:SS[.ffffff]`` in UTC on the date of ``first_ts``."""
    v = value.strip()
    if v.lstrip("-").isdigit():
        return int(v)
    try:
        if "T" in v or "-" in v[:10] or " " in v:
            t = dt.datetime.fromisoformat(v)
        else:
            day = dt.datetime.fromtimestamp(first_ts / 1e9, dt.UTC).date()
            t = dt.datetime.combine(day, dt.time.fromisoformat(v))
    except ValueError:
        raise ValueError(
            f"{value!r}: expected ns since the epoch, an ISO datetime (2012-06-21T14:30:00, "
            "naive = UTC) or a UTC time of day (14:30:00.5)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def utc(ts: int) -> str:
    """``ts`` (ns since the epoch) as ``YYYY-MM-DD HH:MM:SS.ffffff UTC``."""
    t = dt.datetime.fromtimestamp(ts // 1_000_000_000, dt.UTC)
    return f"{t:%Y-%m-%d %H:%M:%S}.{ts % 1_000_000_000:09d}"[:-3] + " UTC"


def read_rows(
    files, manifest: dict, registry, *, fmt: str, skip_bad: bool, stop, scorer=None
) -> Rows:
    """Every feature row of ``files`` until ``stop(meta_of_last_chunk, n_rows)`` is true;
    scored by ``scorer`` (a backtest Scorer) when given."""
    from lobstream.kernels.dtypes import ROW_META_DTYPE
    from lobstream.models.manifest import spec_from_manifest
    from lobstream.replay.backtest.run import rows_from_events
    from lobstream.replay.readers import read_events

    spec = spec_from_manifest(manifest)
    batches = read_events(files, registry, fmt=fmt, skip_bad=skip_bad)
    rows, metas, probs = [], [], []
    n = 0
    for r, m, _ in rows_from_events(batches, spec, max(1, len(registry))):
        rows.append(r.copy())
        metas.append(m.copy())
        if scorer is not None:
            probs.append(scorer.score(r, m))
        n += len(m)
        if stop(m, n):
            break
    return Rows(
        np.concatenate(rows) if rows else np.empty((0, spec.n_features), np.float32),
        np.concatenate(metas) if metas else np.empty(0, ROW_META_DTYPE),
        (np.concatenate(probs) if probs else np.empty((0, 3), np.float32)) if scorer else None,
    )


def window_of(data: Rows, row: int, T: int, where: str) -> np.ndarray:
    """(T, F) window of ``row``: the last T rows of its instrument, ending at it."""
    inst = data.meta["instrument"]
    own = np.flatnonzero(inst == inst[row])
    pos = int(np.searchsorted(own, row))
    if pos < T - 1:
        first = int(own[T - 1]) if len(own) >= T else None
        hint = f"the first row with a full window is {first}" if first is not None else (
            f"its instrument has only {len(own)} rows"
        )  # fmt: skip
        raise ValueError(
            f"{where}: row {row} has {pos} earlier rows of its instrument but the model's "
            f"window needs T - 1 = {T - 1}; {hint}"
        )
    return data.rows[own[pos - T + 1 : pos + 1]]


def files_label(files: Sequence[str]) -> str:
    """How messages name the files: the one file, or their count and names."""
    return str(files[0]) if len(files) == 1 else f"{len(files)} files ({', '.join(files)})"


def explain_files(
    files: Sequence[str],
    model_path: str | Path,
    out: str | Path,
    *,
    at: str | None = None,
    row: int | None = None,
    top: int | None = None,
    min_gap: int | None = None,
    registry: Registry | None = None,
    fmt: str = "auto",
    skip_bad: bool = False,
    head: int = 0,
    threads: int = 1,
) -> list[dict]:
    """Explain the model at one row of ``files`` (``row``: its number; ``at``: the last row at
    or before that time, see :func:`parse_time`) or at its ``top`` most confident rows (at
    least ``min_gap`` rows apart, default T); write one PNG each (``out``, or with ``top`` >
    1 ``out``'s stem suffixed -1 .. -N by rank). Exactly one of ``at``, ``row``, ``top``.

    Returns one JSON-ready record per PNG: ``png``, ``row``, ``ts_event``, ``time``,
    ``instrument``, ``predicted``, ``probs`` (class -> p), ``method``, ``head``, ``horizon``.
    Raises ``ValueError`` (also ``DataError``, ``ArtifactError``) saying what is wrong.
    """
    import torch

    from lobstream.models import explain as ex
    from lobstream.models.artifact import load_model
    from lobstream.models.heads import head_manifest
    from lobstream.models.scoring import make_scorer

    if sum(v is not None for v in (at, row, top)) != 1:
        raise ValueError("give exactly one of at, row, top")
    files = list(files)
    where = files_label(files)
    torch.set_num_threads(threads)
    module, manifest = load_model(model_path)
    model = ex.select_head(ex.eager_model(module, manifest), manifest, head)
    horizon = head_manifest(manifest, head)["label"].get("horizon")
    reg = Registry() if registry is None else registry
    T, arch = int(manifest["T"]), str(manifest["arch"])
    scorer = None
    at_ns: list[int] = []
    stop: Callable[[np.ndarray, int], bool]
    if row is not None:

        def stop(m, n):
            return n > row
    elif at is not None:

        def stop(m, n):
            # the first chunk fixes the date of a bare time of day
            if not at_ns and len(m):
                at_ns.append(parse_time(at, int(m["ts_event"][0])))
            # files are read one after the other, not merged: only one file can stop early
            past = len(m) > 0 and bool(at_ns) and int(m["ts_event"][-1]) > at_ns[0]
            return len(files) == 1 and past
    else:
        scorer = make_scorer(module, manifest, scorer="full-window")

        def stop(m, n):
            return False

    data = read_rows(files, manifest, reg, fmt=fmt, skip_bad=skip_bad, stop=stop, scorer=scorer)
    picks = pick_rows(
        data, row, at_ns[0] if at_ns else None, at, top, head,
        T if min_gap is None else min_gap, T, where,
    )  # fmt: skip
    windows = np.stack([window_of(data, i, T, where) for i in picks])
    e = ex.explain(model, arch, windows)
    out = Path(out)
    paths = (
        [out]
        if len(picks) == 1
        else [out.with_name(f"{out.stem}-{k + 1}{out.suffix or '.png'}") for k in range(len(picks))]
    )
    return [
        write_explanation(path, data, i, k, e, windows, manifest, reg, head, horizon)
        for k, (i, path) in enumerate(zip(picks, paths, strict=True))
    ]


def pick_rows(data, row, at_ns, at, top, head, min_gap, T, where) -> list[int]:
    """The rows to explain: ``row``, the row at ``at``, or the ``top`` most confident."""
    from lobstream.models import explain as ex

    n = len(data.meta)
    if n == 0:
        raise ValueError(f"{where}: no feature rows (no event left both sides quoted)")
    if row is not None:
        if row >= n:
            raise ValueError(
                f"--row {row} is out of range: {where} has {n:,} feature rows (0 .. {n - 1})"
            )
        return [row]
    if at is not None:
        ts = data.meta["ts_event"]
        if at_ns is None:
            at_ns = parse_time(at, int(ts[0]))
        before = np.flatnonzero(ts <= at_ns)
        # the latest row not after TIME (the last of equal times: the book as it stood then)
        i = int(before[np.flatnonzero(ts[before] == ts[before].max())[-1]]) if len(before) else -1
        if i < 0:
            raise ValueError(
                f"--at {at}: no row at or before {utc(at_ns)}; {where} has rows from "
                f"{utc(int(ts[0]))} to {utc(int(ts[-1]))}"
            )
        return [i]
    p = data.probs if data.probs.ndim == 2 else data.probs[:, head]  # (n, 3) of the head
    picks = ex.confident_rows(p, top, min_gap).tolist()
    if not picks:
        raise ValueError(f"{where}: no row has a full window of T = {T} rows ({n:,} feature rows)")
    if len(picks) < top:
        logger.warning("only %d rows with a window apart by the gap; writing those", len(picks))
    return picks


def write_explanation(
    path: Path, data, i: int, k: int, e, windows, manifest, reg, head, horizon
) -> dict:
    """Plot explanation ``k`` (row ``i``) to ``path``; its JSON record."""
    from lobstream.kernels.dtypes import CLASS_NAMES
    from lobstream.models import explain as ex
    from lobstream.models.heads import n_heads
    from lobstream.replay.backtest.plots import plot_explanation

    T, arch = int(manifest["T"]), str(manifest["arch"])
    inst = int(data.meta["instrument"][i])
    symbol = reg.by_id(inst).symbol if inst < len(reg) else str(inst)
    own = np.flatnonzero(data.meta["instrument"] == inst)
    pos = int(np.searchsorted(own, i))
    mids = data.meta["mid"][own[pos - T + 1 : pos + 1]]
    probs = [float(p) for p in e.probs[k]]
    cls = CLASS_NAMES[int(e.target[k])]
    title = (
        f"{symbol} row {i:,} ({utc(int(data.meta['ts_event'][i]))}): {arch} says {cls}"
        + (f" (head {head}, k = {horizon:g})" if n_heads(manifest) > 1 else "")
        + "\n"
        + ", ".join(f"p_{c} {p:.3f}" for c, p in zip(CLASS_NAMES, probs, strict=True))
        + f"; {e.method.replace('_', ' ')}"
    )
    plot_explanation(
        path,
        ex.book_grid(windows[k], int(manifest["L"]), "size"),
        ex.book_grid(e.maps[k], int(manifest["L"]), "both"),
        mids - mids[-1],
        title=title,
        signed=e.method == ex.INPUT_X_GRADIENT,
    )
    return {
        "png": str(path),
        "row": int(i),
        "ts_event": int(data.meta["ts_event"][i]),
        "time": utc(int(data.meta["ts_event"][i])),
        "instrument": symbol,
        "predicted": cls,
        "probs": dict(zip(CLASS_NAMES, probs, strict=True)),
        "method": e.method,
        "head": head,
        "horizon": horizon,
    }
