"""PNG figures of a backtest, of an explained prediction and of the latency benchmark
(matplotlib, Agg: no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lobstream.kernels.dtypes import CLASS_NAMES  # noqa: E402

logger = logging.getLogger(__name__)

_NS_PER_HOUR = 3_600_000_000_000


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def _hours_of_day(ts_ns: np.ndarray) -> np.ndarray:
    """UTC hour of day (float) of ns timestamps."""
    return (np.asarray(ts_ns, dtype=np.int64) % (24 * _NS_PER_HOUR)) / _NS_PER_HOUR


def plot_equity(path: Path, exit_ts: np.ndarray, cum_pnl: np.ndarray, title: str = "") -> Path:
    """Cumulative net P&L against exit time (UTC hour of day).

    Parameters
    ----------
    exit_ts : (n,) int64 ns, in exit order.
    cum_pnl : (n,) float64 cumulative net P&L in quote currency.
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    if len(cum_pnl):
        ax.step(_hours_of_day(exit_ts), cum_pnl, where="post", lw=1.2)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("exit time (UTC hour)")
    ax.set_ylabel("cumulative net P&L")
    ax.set_title(title or f"equity curve ({len(cum_pnl)} trades)")
    return _save(fig, Path(path))


def plot_confusion(path: Path, confusion: Sequence[Sequence[int]]) -> Path:
    """Confusion matrix (rows true class, columns predicted), counts and row shares."""
    cm = np.asarray(confusion, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = CLASS_NAMES[: cm.shape[0]]
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_title("confusion matrix")
    return _save(fig, Path(path))


def calibration_counts(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability counts per class and probability bin; sums of chunks are the whole's.

    Parameters
    ----------
    probs : (n, 3) float, rows with a label. Not modified.
    labels : (n,) int in 0..2.
    n_bins : equal-width bins of [0, 1].

    Returns
    -------
    (count (3, n_bins) int64, sum_p (3, n_bins) float64, hits (3, n_bins) int64): rows in each
    bin of class c's probability, their summed probability, and how many were of class c.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.zeros((len(CLASS_NAMES), n_bins), np.int64)
    sum_p = np.zeros((len(CLASS_NAMES), n_bins), np.float64)
    hits = np.zeros((len(CLASS_NAMES), n_bins), np.int64)
    labels = np.asarray(labels)
    for c in range(len(CLASS_NAMES)):
        p = probs[:, c]
        b = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
        count[c] = np.bincount(b, minlength=n_bins)
        sum_p[c] = np.bincount(b, weights=p, minlength=n_bins)
        hits[c] = np.bincount(b[labels == c], minlength=n_bins)
    return count, sum_p, hits


def calibration_table_from_counts(
    count: np.ndarray, sum_p: np.ndarray, hits: np.ndarray
) -> list[dict]:
    """One dict per class from :func:`calibration_counts` (or their sum over chunks):
    ``name``, ``mean_prob`` (n_bins,), ``freq`` (n_bins,), ``count`` (n_bins,); empty bins
    hold NaN."""
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for c, name in enumerate(CLASS_NAMES):
            out.append(
                {
                    "name": name,
                    "mean_prob": sum_p[c] / count[c],
                    "freq": hits[c] / count[c],
                    "count": count[c],
                }
            )
    return out


def calibration_table(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Reliability per class: mean predicted probability vs observed frequency, by bin.

    Parameters
    ----------
    probs : (n, 3) float, rows with a label.
    labels : (n,) int in 0..2.

    Returns
    -------
    One dict per class: ``name``, ``mean_prob`` (n_bins,), ``freq`` (n_bins,), ``count``
    (n_bins,); empty bins hold NaN.
    """
    return calibration_table_from_counts(*calibration_counts(probs, labels, n_bins))


def plot_calibration(path: Path, table: list[dict]) -> Path:
    """Reliability diagram of each class probability against the realised labels.

    Parameters
    ----------
    table : :func:`calibration_table` or :func:`calibration_table_from_counts`.
    """
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect")
    for row in table:
        ok = row["count"] > 0
        ax.plot(row["mean_prob"][ok], row["freq"][ok], marker="o", ms=3, label=row["name"])
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("probability calibration")
    return _save(fig, Path(path))


def signal_counts_by_bin(ts: np.ndarray, signal: np.ndarray, bin_minutes: int = 15) -> np.ndarray:
    """Rows, long and short signals per time-of-day bin (UTC); sums of chunks are the whole's.

    Parameters
    ----------
    ts : (n,) int64 ns, ts_event of rows with a window. Not modified.
    signal : (n,) int8 +1/-1/0 of those rows.
    bin_minutes : bin width; must divide the day.

    Returns
    -------
    (3, 1440 // bin_minutes) int64: rows, long signals, short signals per bin (new array).
    """
    if bin_minutes <= 0 or 1440 % bin_minutes:
        raise ValueError(f"bin_minutes must divide the day (1440 minutes), got {bin_minutes}")
    n_bins = 1440 // bin_minutes
    # integer arithmetic: a bin boundary is exact, whatever the date
    b = (np.asarray(ts, np.int64) % (24 * _NS_PER_HOUR)) // (bin_minutes * 60 * 1_000_000_000)
    signal = np.asarray(signal)
    return np.stack(
        [
            np.bincount(b, minlength=n_bins),
            np.bincount(b[signal > 0], minlength=n_bins),
            np.bincount(b[signal < 0], minlength=n_bins),
        ]
    ).astype(np.int64)


def plot_signal_counts(path: Path, counts: np.ndarray, bin_minutes: int = 15) -> Path:
    """Long and short signals per time bin over the day (UTC), from the first to the last bin
    with rows.

    Parameters
    ----------
    counts : (3, 1440 // bin_minutes) int, from :func:`signal_counts_by_bin` (or a sum of them).
    """
    counts = np.asarray(counts)
    width = bin_minutes / 60.0
    seen = np.flatnonzero(counts[0] > 0)
    lo, hi = (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, 1)
    left = np.arange(lo, hi) * width
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for row, name, color, shift in ((1, "long", "tab:green", 0.0), (2, "short", "tab:red", 0.5)):
        ax.bar(
            left + shift * width,
            counts[row, lo:hi],
            width=width / 2,
            align="edge",
            label=name,
            color=color,
        )
    ax.set_xlabel(f"UTC hour ({bin_minutes}-minute bins)")
    ax.set_ylabel("signals")
    ax.legend(fontsize=8)
    ax.set_title("signals over the day")
    return _save(fig, Path(path))


def plot_latency(path: Path, rates: Sequence[dict], model_b1_us: float | None = None) -> Path:
    """End-to-end latency percentiles per target rate (log scale), from the latency bench,
    with the model's own batch-1 p50 as a reference line when given."""
    keys = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")
    labels = [_rate_label(r["target_events_per_s"]) for r in rates]
    x = np.arange(len(rates))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        ax.plot(x, [max(r.get(k) or 0.0, 1e-3) for r in rates], marker="o", label=k[:-3])
    if model_b1_us:
        ax.axhline(model_b1_us, color="grey", ls="--", lw=0.8, label="model B=1 p50")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_xlabel("target events/s")
    ax.set_ylabel("end-to-end latency (us)")
    ax.legend(fontsize=8)
    ax.set_title("signal latency: newest event ts_recv -> signal receipt")
    return _save(fig, Path(path))


def _rate_label(rate: float) -> str:
    if not rate:
        return "max"
    return f"{rate / 1000:g}k" if rate >= 1000 else f"{rate:g}"


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
