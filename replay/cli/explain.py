"""``lobstream explain``: a PNG of what drove a model's prediction at one row of LOB files.

Orchestration and plotting only; the attribution arithmetic is :mod:`lobstream.models.explain`.
Rows are the feature rows the backtest computes (same readers, same kernels, the artifact's
feature spec), numbered from 0 over the files in arrival order; a row's window is the last T
rows of its instrument ending at it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from lobstream.replay.cli.options import FORMAT, MODEL, REGISTRY, SKIP_BAD, registry_from

logger = logging.getLogger(__name__)


@dataclass
class Rows:
    """Feature rows of the files kept in memory (the windows are cut from them)."""

    rows: np.ndarray  # (n, F) float32
    meta: np.ndarray  # (n,) ROW_META_DTYPE
    probs: np.ndarray | None  # (n, 3) scorer probabilities, only for --top


def parse_time(value: str, first_ts: int) -> int:
    """ns since the epoch (UTC) of ``--at``: integer ns, an ISO datetime (naive = UTC), or a
    time of day ``HH:MM:SS[.ffffff]`` in UTC on the date of the first row."""
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
        raise click.BadParameter(
            f"{value!r}: expected ns since the epoch, an ISO datetime (2012-06-21T14:30:00, "
            "naive = UTC) or a UTC time of day (14:30:00.5)",
            param_hint="--at",
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _utc(ts: int) -> str:
    t = dt.datetime.fromtimestamp(ts // 1_000_000_000, dt.UTC)
    return f"{t:%Y-%m-%d %H:%M:%S}.{ts % 1_000_000_000:09d}"[:-3] + " UTC"


def read_rows(
    files, manifest: dict, registry, *, fmt: str, skip_bad: bool, stop, scorer=None
) -> Rows:
    """Every feature row of ``files`` until ``stop(meta_so_far_last_chunk, n_rows)`` is true;
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
        raise click.ClickException(
            f"{where}: row {row} has {pos} earlier rows of its instrument but the model's "
            f"window needs T - 1 = {T - 1}; {hint}"
        )
    return data.rows[own[pos - T + 1 : pos + 1]]


def _files_label(files) -> str:
    return str(files[0]) if len(files) == 1 else f"{len(files)} files ({', '.join(files)})"


@click.command("explain")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@MODEL
@click.option(
    "--at",
    "at",
    default=None,
    help=(
        "Explain the last row at or before this time: ns since the epoch, an ISO datetime "
        "(naive = UTC) or a UTC time of day on the first row's date."
    ),
)
@click.option(
    "--row",
    "row",
    type=click.IntRange(0),
    default=None,
    help="Explain this feature row (0-based over the files, arrival order).",
)
@click.option(
    "--top",
    "top",
    type=click.IntRange(1),
    default=None,
    help="Explain the N most confident signals (max of p_down, p_up) of the files.",
)
@click.option(
    "--min-gap",
    type=click.IntRange(0),
    default=None,
    help="With --top: rows closer than this to a better one are skipped (default T).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="PNG to write; with --top N > 1, OUT's stem gets -1 .. -N (rank) before .png.",
)
@REGISTRY
@FORMAT
@SKIP_BAD
@click.option(
    "--head",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Multi-horizon artifacts: which head to explain (0 = the first horizon).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per PNG.")
def explain(
    files, model_path, at, row, top, min_gap, out, registry, fmt, skip_bad, head, as_json
) -> None:
    """Write PNG(s) of the input window of MODEL at a row of FILES, with the attribution of the
    predicted class over it (Grad-CAM for CNN-type models, input x gradient for others)."""
    import torch

    from lobstream.models import explain as ex
    from lobstream.models.artifact import ArtifactError, load_model
    from lobstream.models.heads import head_manifest
    from lobstream.replay.backtest.run import make_scorer
    from lobstream.replay.errors import DataError

    if sum(v is not None for v in (at, row, top)) != 1:
        raise click.UsageError("give exactly one of --at TIME, --row N, --top N")
    files = list(files)
    where = _files_label(files)
    torch.set_num_threads(1)  # the machine is shared, as the backtest's default
    try:
        module, manifest = load_model(model_path)
        model = ex.select_head(ex.eager_model(module, manifest), manifest, head)
        horizon = head_manifest(manifest, head)["label"].get("horizon")
        reg = registry_from(registry)
        T, arch = int(manifest["T"]), str(manifest["arch"])
        scorer = None
        if row is not None:

            def stop(m, n):
                return n > row
        elif at is not None:
            at_ns: list[int] = []

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
    except (DataError, ArtifactError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    picks = _pick_rows(data, row, at_ns[0] if at is not None else None, at, top, head,
                       T if min_gap is None else min_gap, T, where)  # fmt: skip
    windows = np.stack([window_of(data, i, T, where) for i in picks])
    e = ex.explain(model, arch, windows)
    out = Path(out)
    paths = (
        [out]
        if len(picks) == 1
        else [out.with_name(f"{out.stem}-{k + 1}{out.suffix or '.png'}") for k in range(len(picks))]
    )
    for k, (i, path) in enumerate(zip(picks, paths, strict=True)):
        record = _write_png(path, data, i, k, e, windows, manifest, reg, head, horizon)
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(
                f"{path}: row {i} {record['time']} {record['instrument']}: {record['predicted']} "
                + " ".join(f"{c}={p:.3f}" for c, p in record["probs"].items())
                + f" ({e.method})"
            )


def _pick_rows(data, row, at_ns, at, top, head, min_gap, T, where) -> list[int]:
    """The rows to explain: ``--row``, the row at ``--at``, or the ``--top`` most confident."""
    from lobstream.models import explain as ex

    n = len(data.meta)
    if n == 0:
        raise click.ClickException(f"{where}: no feature rows (no event left both sides quoted)")
    if row is not None:
        if row >= n:
            raise click.ClickException(
                f"--row {row} is out of range: {where} has {n:,} feature rows (0 .. {n - 1})"
            )
        return [row]
    if at is not None:
        ts = data.meta["ts_event"]
        before = np.flatnonzero(ts <= at_ns)
        # the latest row not after TIME (the last of equal times: the book as it stood then)
        i = int(before[np.flatnonzero(ts[before] == ts[before].max())[-1]]) if len(before) else -1
        if i < 0:
            raise click.ClickException(
                f"--at {at}: no row at or before {_utc(at_ns)}; {where} has rows from "
                f"{_utc(int(ts[0]))} to {_utc(int(ts[-1]))}"
            )
        return [i]
    p = data.probs if data.probs.ndim == 2 else data.probs[:, head]  # (n, 3) of the head
    picks = ex.confident_rows(p, top, min_gap).tolist()
    if not picks:
        raise click.ClickException(
            f"{where}: no row has a full window of T = {T} rows ({n:,} feature rows)"
        )
    if len(picks) < top:
        logger.warning("only %d rows with a window apart by the gap; writing those", len(picks))
    return picks


def _write_png(path: Path, data, i: int, k: int, e, windows, manifest, reg, head, horizon) -> dict:
    """Plot explanation ``k`` (row ``i``) to ``path``; its JSON record."""
    from lobstream.kernels.dtypes import CLASS_NAMES
    from lobstream.models import explain as ex
    from lobstream.models.heads import n_heads

    T, arch = int(manifest["T"]), str(manifest["arch"])
    inst = int(data.meta["instrument"][i])
    symbol = reg.by_id(inst).symbol if inst < len(reg) else str(inst)
    own = np.flatnonzero(data.meta["instrument"] == inst)
    pos = int(np.searchsorted(own, i))
    mids = data.meta["mid"][own[pos - T + 1 : pos + 1]]
    probs = [float(p) for p in e.probs[k]]
    cls = CLASS_NAMES[int(e.target[k])]
    title = (
        f"{symbol} row {i:,} ({_utc(int(data.meta['ts_event'][i]))}): {arch} says {cls}"
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
        "time": _utc(int(data.meta["ts_event"][i])),
        "instrument": symbol,
        "predicted": cls,
        "probs": dict(zip(CLASS_NAMES, probs, strict=True)),
        "method": e.method,
        "head": head,
        "horizon": horizon,
    }


def plot_explanation(
    path: Path,
    image: np.ndarray,
    attribution: np.ndarray,
    mid_ticks: np.ndarray,
    *,
    title: str,
    signed: bool,
) -> Path:
    """The book picture (2L, T) in grey with the attribution (2L, T) over it, and the mid.

    Rows of ``image`` and ``attribution``: ask L at the top down to ask 1, then bid 1 down to
    bid L (:func:`lobstream.models.explain.book_grid`). The attribution's opacity follows its
    magnitude, so cells that did not matter leave the book visible. ``signed``: a diverging
    colour map (red: towards the predicted class, blue: against it), else one from zero up.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    two_l, T = image.shape
    L = two_l // 2
    fig, (ax, axm) = plt.subplots(
        2,
        1,
        figsize=(9, 6.2),
        sharex=True,
        gridspec_kw={"height_ratios": [3.2, 1]},
        layout="constrained",
    )
    extent = (-(T - 1) - 0.5, 0.5, two_l - 0.5, -0.5)
    ax.imshow(image, cmap="Greys", aspect="auto", interpolation="nearest", extent=extent)
    a = np.nan_to_num(np.asarray(attribution, np.float64))
    vmax = float(np.abs(a).max()) or 1.0
    if signed:
        cmap, norm = plt.get_cmap("RdBu_r"), colors.Normalize(-vmax, vmax)
    else:
        cmap, norm = plt.get_cmap("inferno"), colors.Normalize(0.0, vmax)
    rgba = cmap(norm(a))
    rgba[..., 3] = 0.85 * np.sqrt(np.abs(a) / vmax)  # sqrt: small but real cells stay visible
    ax.imshow(rgba, aspect="auto", interpolation="nearest", extent=extent)
    ax.axhline(L - 0.5, color="black", lw=0.8)
    ticks = list(range(two_l))
    labels = [f"ask {L - r}" for r in range(L)] + [f"bid {r + 1}" for r in range(L)]
    ax.set_yticks(ticks[:: max(1, L // 5)], labels[:: max(1, L // 5)], fontsize=7)
    ax.set_ylabel("level (grey: normalised size)")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    axm.plot(np.arange(-(T - 1), 1), mid_ticks, lw=1.0, color="black")
    axm.set_ylabel("mid - last (ticks)", fontsize=8)
    axm.set_xlabel("rows before the explained one")
    # one bar beside both panels, so their time axes keep the same width
    fig.colorbar(sm, ax=[ax, axm], pad=0.01, label="attribution (price + size of the cell)")
    ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
