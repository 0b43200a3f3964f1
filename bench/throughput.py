"""Offline throughput, one run: the backtest path vs the model alone vs the notebook way.

- ``model_only``: ``runner.infer(B)`` on a filled input buffer at each batch size; the best B.
- ``backtest``: the in-process path at that B on events already read into memory (book +
  rows -> strided windows -> runner buffer -> model), as :func:`run_backtest` runs it; and,
  separately, ``backtest_with_read``: the same timed from opening the files, which adds the
  reader's fixed start-up cost (decompressing and parsing the file) to a short run.
- ``notebook``: what the DeepLOB reference notebooks do: a Python loop slicing every window out
  of the normalised row matrix into one big array (their ``data_classification``), a torch
  ``Dataset``/``DataLoader`` at batch 64, the eager ``nn.Module`` in eval mode called without
  ``no_grad`` as in their evaluation loop, softmax after. It is given the normalised rows for
  free (its own feature code is not timed), so the ratio flatters it.

Data paths alone: the backtest's wall time outside the model calls, and the notebook's window
loop + DataLoader without the model. When the model dominates both ends (a small model on a
CPU), these say how much cheaper the data path is, which the end-to-end ratio cannot show.

Compile and warm-up never fall in a timed region: every path runs once untimed first. The
paths are timed in turns, ``repeat`` times, and medians reported (the machine may be shared).

``lobstream bench throughput`` passes its arguments to ``python -m bench.throughput`` (with
``--repeat 3`` by default there, 5 here as every ``python -m bench.NAME``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lobstream.bench._common import (
    add_device,
    add_model,
    add_threads,
    at_least,
    console,
    emit_json,
    existing_file,
    machine,
    parser,
)
from lobstream.bench.harness import default_model

logger = logging.getLogger(__name__)

DEFAULT_BATCHES = (16, 32, 64, 128, 256, 512)
NOTEBOOK_BATCH = 64


def default_files() -> list[Path]:
    """The bundled LOBSTER GOOG 10-level sample."""
    from lobstream.replay.samples import GOOG_MESSAGE_10

    return [GOOG_MESSAGE_10]


def _model_only(runner, batches: Sequence[int], n_windows: int, rng) -> dict[int, float]:
    buf = runner.input
    buf[...] = rng.standard_normal(buf.shape, dtype=np.float32)
    out = {}
    for b in batches:
        if b > buf.shape[0]:
            continue
        runner.infer(b)  # warm this batch size
        calls = max(3, -(-n_windows // b))
        t0 = time.perf_counter()
        for _ in range(calls):
            runner.infer(b)
        out[b] = calls * b / (time.perf_counter() - t0)
    return out


def _eager_model(module, manifest: dict):
    import torch

    from lobstream.models.zoo import build_model

    model = build_model(manifest["arch"], **manifest["config"])
    # scripted archives also carry non-persistent buffers (constants the eager module rebuilds)
    missing, _ = model.load_state_dict(module.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"eager {manifest['arch']} lacks weights {missing} in the artifact")
    model.eval()
    probe = torch.randn(2, 1, int(manifest["T"]), int(manifest["F"]))
    with torch.no_grad():
        diff = float((model(probe) - module(probe)).abs().max())
    if diff > 1e-3:
        raise RuntimeError(f"eager rebuild differs from the artifact by {diff:.3g} on a probe")
    return model


def notebook_way(
    rows: np.ndarray, T: int, model, batch: int = NOTEBOOK_BATCH, device: str = "cpu"
) -> np.ndarray:
    """The reference notebooks' inference: Python window loop, DataLoader, eager batches.

    Parameters
    ----------
    rows : (m, F) float32 normalised rows of one instrument. Not modified.
    T : window length.
    model : eager ``nn.Module`` in eval mode, or None to time the data path alone (NaN out).
    batch : DataLoader batch size (the notebooks use 64).
    device : where the batches go (the model must be there already).

    Returns
    -------
    (m - T + 1, 3) float32 probabilities.
    """
    import torch
    from torch.utils.data import DataLoader, Dataset

    n, f = rows.shape
    data_x = np.zeros((n - T + 1, T, f))  # float64, as their data_classification makes it
    for i in range(T, n + 1):
        data_x[i - T] = rows[i - T : i, :]

    class _Windows(Dataset):
        def __init__(self, x):
            self.x = torch.from_numpy(x).unsqueeze(1)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    loader = DataLoader(_Windows(data_x), batch_size=batch, shuffle=False)
    out = []
    for inputs in loader:
        x = inputs.to(device, dtype=torch.float)
        if model is None:  # data path alone: windows built and batched, no model call
            out.append(np.full((len(x), 3), np.nan, np.float32))
            continue
        logits = model(x)
        out.append(torch.softmax(logits, dim=1).detach().cpu().numpy())
    return np.concatenate(out)


def _first_events(batches, n: int) -> list[np.ndarray]:
    """Event batches until ``n`` events (LAST rows are at most one per event: 4x the rows
    wanted covers sparse rows)."""
    events, n_ev = [], 0
    for ev in batches:
        events.append(ev)
        n_ev += len(ev)
        if n_ev >= n:
            break
    return events


def _first_rows(events: list[np.ndarray], spec, n: int) -> np.ndarray:
    """The first ``n`` feature rows of ``events`` (the notebook way's input)."""
    from lobstream.replay.backtest.run import rows_from_events

    rows_list = []
    for rows, _, _ in rows_from_events(iter(events), spec, 1):
        rows_list.append(rows.copy())
        if sum(len(r) for r in rows_list) >= n:
            break
    return np.concatenate(rows_list)[:n]


def run_throughput(
    model_path: str | Path | None = None,
    files: Sequence[str | Path] | None = None,
    *,
    n_windows: int = 4096,
    notebook_windows: int = 1024,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: int = 1,
    device: str = "cpu",
    repeat: int = 3,
    seed: int = 0,
    runner_kind: str = "auto",
) -> dict:
    """Windows/s of the three paths in one run (see the module docstring).

    Returns
    -------
    dict with the medians over ``repeat`` turns of ``backtest_windows_per_s``,
    ``model_only_windows_per_s`` (at the best batch), ``notebook_windows_per_s``,
    ``backtest_with_read_windows_per_s``, and of the data paths alone
    (``backtest_data_path_windows_per_s``: backtest windows over its wall time outside the
    model; ``notebook_data_path_windows_per_s``: the notebook's window loop and DataLoader
    without the model), ``best_batch``, ``model_only_by_batch``, ratios and settings.
    """
    import torch

    from lobstream.kernels.registry import Registry
    from lobstream.models.artifact import load_model
    from lobstream.models.manifest import spec_from_manifest
    from lobstream.models.runner import window_runner
    from lobstream.replay.backtest.run import run_backtest
    from lobstream.replay.readers import read_events

    torch.set_num_threads(threads)
    model_path = Path(model_path) if model_path else default_model()
    files = [Path(f) for f in files] if files else default_files()
    module, manifest = load_model(model_path, device=device)
    T = int(manifest["T"])
    # the runner the backtest takes (runner_kind "auto": compiled BiN-CTABL on the CPU)
    runner = window_runner(module, manifest, runner=runner_kind, device=device,
                           max_batch=max(batches), threads=threads)  # fmt: skip
    rng = np.random.default_rng(seed)

    by_batch = _model_only(runner, batches, n_windows, rng)
    best_b = max(by_batch, key=by_batch.get)
    logger.info("model alone: %s windows/s by batch; best B=%d", by_batch, best_b)

    max_rows = n_windows + T - 1
    # small read batches so the timed run reads about what it scores, not the whole file
    read_rows = 8192

    def backtest_once(batches, r=runner):
        return run_backtest(batches, r, manifest, batch=best_b, max_rows=max_rows)

    def read():
        return read_events(files, Registry(), batch_rows=read_rows)

    events = _first_events(read(), 4 * max_rows)
    warm = backtest_once(iter(events))
    if warm.n_windows < n_windows:
        logger.warning(
            "the files give %d windows, fewer than the %d asked", warm.n_windows, n_windows
        )
    rows = _first_rows(events, spec_from_manifest(manifest), notebook_windows + T - 1)
    # the notebooks run on the GPU when there is one: so does their way here
    dev = str(runner.device)
    cpu_module, _ = load_model(model_path, device="cpu")
    eager = _eager_model(cpu_module, manifest).to(dev)
    notebook_way(rows[: T + NOTEBOOK_BATCH], T, eager, device=dev)  # warm

    # The machine is shared: the paths are measured in turns, ``repeat`` times, and the
    # medians compared, so a burst of load elsewhere hits all of them alike.
    timed = _TimedRunner(runner)
    m_wps, bt_wps, bt_read_wps, bt_data_wps, nb_wps, nb_data_wps = ([] for _ in range(6))
    for _ in range(repeat):
        m_wps.append(_model_only(runner, [best_b], warm.n_windows, rng)[best_b])
        timed.seconds = 0.0
        t0 = time.perf_counter()
        res = backtest_once(iter(events), timed)
        wall = time.perf_counter() - t0
        bt_wps.append(res.n_windows / wall)
        bt_data_wps.append(res.n_windows / max(wall - timed.seconds, 1e-9))
        t0 = time.perf_counter()
        res_read = backtest_once(read())
        bt_read_wps.append(res_read.n_windows / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        nb = notebook_way(rows, T, eager, device=dev)
        nb_wps.append(len(nb) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        notebook_way(rows, T, None, device=dev)
        nb_data_wps.append(len(nb) / (time.perf_counter() - t0))
    med = statistics.median
    model_wps, bt, nbw = med(m_wps), med(bt_wps), med(nb_wps)
    return {
        "backtest_windows_per_s": bt,
        "model_only_windows_per_s": model_wps,
        "notebook_windows_per_s": nbw,
        "backtest_with_read_windows_per_s": med(bt_read_wps),
        "backtest_vs_model": bt / model_wps,
        "backtest_vs_notebook": bt / nbw,
        "backtest_data_path_windows_per_s": med(bt_data_wps),
        "notebook_data_path_windows_per_s": med(nb_data_wps),
        "data_path_vs_notebook": med(bt_data_wps) / med(nb_data_wps),
        "best_batch": best_b,
        "model_only_by_batch": {str(b): v for b, v in by_batch.items()},
        "backtest_windows": res.n_windows,
        "notebook_windows": len(nb),
        "repeat": repeat,
        "arch": manifest.get("arch"),
        "model": str(model_path),
        "files": [str(f) for f in files],
        "threads": threads,
        "device": dev,
        "runner": runner.mode,
    }


class _TimedRunner:
    """A runner proxy that adds up the wall time spent in the model (``infer``)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.input = runner.input
        self.seconds = 0.0

    def infer(self, n: int) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.runner.infer(n)
        self.seconds += time.perf_counter() - t0
        return out


# -------------------------------------------------------------------------- command line ---
def _batches(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in value.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated integers") from None


def main(argv: list[str] | None = None, prog: str | None = None, repeat: int = 5) -> dict:
    """``python -m bench.throughput`` (``lobstream bench throughput``): offline windows/s of the
    backtest path vs the model alone vs the notebook way, one run; ``repeat`` is the default
    of ``--repeat``."""
    ap = parser(__doc__.splitlines()[0], repeat=None, prog=prog or "python -m bench.throughput")
    add_model(ap)
    ap.add_argument(
        "--files",
        action="append",
        type=existing_file,
        default=None,
        help="LOB file to score, once per file (default: the bundled LOBSTER GOOG sample)",
    )
    ap.add_argument(
        "--windows",
        type=at_least(1),
        default=4096,
        help="windows scored by the backtest path and by the model alone (default: %(default)s)",
    )
    ap.add_argument(
        "--notebook-windows",
        type=at_least(1),
        default=1024,
        help="windows scored the notebook way, which is slow (default: %(default)s)",
    )
    ap.add_argument(
        "--batches",
        type=_batches,
        default="16,32,64,128,256,512",
        help="batch sizes tried for the model alone (default: %(default)s)",
    )
    add_threads(ap)
    add_device(ap)
    ap.add_argument(
        "--repeat",
        type=at_least(1),
        default=repeat,
        help="timed turns of every path, medians reported (default: %(default)s)",
    )
    ap.add_argument(
        "--runner",
        dest="runner_kind",
        default="auto",
        choices=("auto", "torch", "numba"),
        help="whole-window runner of the model-alone and backtest paths (auto: compiled "
        "BiN-CTABL on the CPU)",
    )
    args = ap.parse_args(argv)
    result = run_throughput(
        args.model_path,
        args.files,
        n_windows=args.windows,
        notebook_windows=args.notebook_windows,
        batches=args.batches,
        threads=args.threads,
        device=args.device,
        repeat=args.repeat,
        runner_kind=args.runner_kind,
    )
    result["machine"] = machine()
    if args.json:
        emit_json(result)
    else:
        _throughput_table(result)
    return result


def _throughput_table(result: dict) -> None:
    from rich.table import Table

    t = Table(
        title=(
            f"offline windows/s, {result['arch']} ({result['runner']} runner) on "
            f"{result['device']}, {result['threads']} thread(s)"
        )
    )
    t.add_column("path")
    t.add_column("windows/s", justify="right")
    t.add_column("vs model alone", justify="right")
    m = result["model_only_windows_per_s"]
    for name, key in (
        (f"model alone (B={result['best_batch']})", "model_only_windows_per_s"),
        ("backtest (events in memory)", "backtest_windows_per_s"),
        ("backtest (from file open)", "backtest_with_read_windows_per_s"),
        ("notebook way", "notebook_windows_per_s"),
        ("backtest data path alone", "backtest_data_path_windows_per_s"),
        ("notebook data path alone", "notebook_data_path_windows_per_s"),
    ):
        t.add_row(name, f"{result[key]:,.0f}", f"{result[key] / m:.0%}")
    console().print(t)
    print(
        f"backtest / notebook: {result['backtest_vs_notebook']:.1f}x end to end, "
        f"{result['data_path_vs_notebook']:.1f}x for the data path alone "
        f"(medians of {result['repeat']} turns)"
    )


if __name__ == "__main__":
    main()
