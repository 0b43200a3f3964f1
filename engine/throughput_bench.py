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

Compile and warm-up never fall in a timed region: every path runs once untimed first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BATCHES = (16, 32, 64, 128, 256, 512)
NOTEBOOK_BATCH = 64


def default_model_path() -> Path:
    """The bundled model artifact (models/assets/*.pt), the first in name order."""
    from lobstream.models import __file__ as models_init

    found = sorted((Path(models_init).parent / "assets").glob("*.pt"))
    if not found:
        raise FileNotFoundError(
            "no bundled model in lobstream/models/assets; pass --model MODEL.pt "
            "(make one with lobstream train)"
        )
    return found[0]


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
    from lobstream.models.zoo import build_model

    model = build_model(manifest["arch"], **manifest["config"])
    model.load_state_dict(module.state_dict())
    return model.eval()


def notebook_way(rows: np.ndarray, T: int, model, batch: int = NOTEBOOK_BATCH) -> np.ndarray:
    """The reference notebooks' inference: Python window loop, DataLoader, eager batches.

    Parameters
    ----------
    rows : (m, F) float32 normalised rows of one instrument. Not modified.
    T : window length.
    model : eager ``nn.Module`` in eval mode.

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
        logits = model(inputs.to(dtype=torch.float))
        out.append(torch.softmax(logits, dim=1).detach().numpy())
    return np.concatenate(out)


def run_throughput(
    model_path: str | Path | None = None,
    files: Sequence[str | Path] | None = None,
    *,
    n_windows: int = 4096,
    notebook_windows: int = 1024,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Windows/s of the three paths in one run (see the module docstring).

    Returns
    -------
    dict with ``backtest_windows_per_s``, ``model_only_windows_per_s`` (at the best batch),
    ``notebook_windows_per_s``, ``best_batch``, ``model_only_by_batch``, the two ratios and
    the settings.
    """
    import torch

    from lobstream.kernels.registry import Registry
    from lobstream.models.artifact import load_model
    from lobstream.models.runner import ModelRunner
    from lobstream.replay.backtest import rows_from_events, run_backtest, spec_from_manifest
    from lobstream.replay.readers import read_events

    torch.set_num_threads(threads)
    model_path = Path(model_path) if model_path else default_model_path()
    files = [Path(f) for f in files] if files else default_files()
    module, manifest = load_model(model_path, device=device)
    T = int(manifest["T"])
    runner = ModelRunner(module, manifest, device=device, max_batch=max(batches), threads=threads)
    rng = np.random.default_rng(seed)

    by_batch = _model_only(runner, batches, n_windows, rng)
    best_b = max(by_batch, key=by_batch.get)
    logger.info("model alone: %s windows/s by batch; best B=%d", by_batch, best_b)

    max_rows = n_windows + T - 1
    # small read batches so the timed run reads about what it scores, not the whole file
    read_rows = 8192

    def backtest_once(batches):
        return run_backtest(batches, runner, manifest, batch=best_b, max_rows=max_rows)

    def read():
        return read_events(files, Registry(), batch_rows=read_rows)

    events = []
    n_ev = 0
    for ev in read():
        events.append(ev)
        n_ev += len(ev)
        if n_ev >= 4 * max_rows:  # LAST rows are at most one per event; 4x covers sparse rows
            break
    warm = backtest_once(iter(events))
    if warm.n_windows < n_windows:
        logger.warning(
            "the files give %d windows, fewer than the %d asked", warm.n_windows, n_windows
        )
    t0 = time.perf_counter()
    res = backtest_once(iter(events))
    bt_wps = res.n_windows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    res_read = backtest_once(read())
    bt_read_wps = res_read.n_windows / (time.perf_counter() - t0)

    spec = spec_from_manifest(manifest)
    reg = Registry()
    rows_list = []
    for rows, _, _ in rows_from_events(read_events(files, reg, batch_rows=read_rows), spec, 1):
        rows_list.append(rows.copy())
        if sum(len(r) for r in rows_list) >= notebook_windows + T - 1:
            break
    rows = np.concatenate(rows_list)[: notebook_windows + T - 1]
    eager = _eager_model(module.cpu() if device != "cpu" else module, manifest)
    notebook_way(rows[: T + NOTEBOOK_BATCH], T, eager)  # warm
    t0 = time.perf_counter()
    nb = notebook_way(rows, T, eager)
    nb_wps = len(nb) / (time.perf_counter() - t0)

    model_wps = by_batch[best_b]
    return {
        "backtest_windows_per_s": bt_wps,
        "model_only_windows_per_s": model_wps,
        "notebook_windows_per_s": nb_wps,
        "backtest_with_read_windows_per_s": bt_read_wps,
        "backtest_vs_model": bt_wps / model_wps,
        "backtest_vs_notebook": bt_wps / nb_wps,
        "best_batch": best_b,
        "model_only_by_batch": {str(b): v for b, v in by_batch.items()},
        "backtest_windows": res.n_windows,
        "notebook_windows": len(nb),
        "arch": manifest.get("arch"),
        "model": str(model_path),
        "files": [str(f) for f in files],
        "threads": threads,
        "device": device,
    }
