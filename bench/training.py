"""Training speed of causal models: per-window against sequence training, same network, one run.

``python -m bench.training [--json] [--quick] [--archs deeplob_causal,cnn_causal] [--threads 1]``

Both paths run the optimizer steps of :func:`lobstream.models.train.train_model` (AdamW,
class-weighted cross-entropy, backward, step) on the same windows of one stream of rows:
*per-window* gathers batches of ``--batch`` random (T, F) windows and runs the whole network on
each; *sequence* (:mod:`lobstream.models.causal.seqtrain`) runs ``row_features`` once over chunks of
``--chunk-rows`` consecutive rows (``--chunks-per-step`` chunks a step) and the head per window.
Reported: training windows/s of each (median of ``--repeat`` timed runs after an untimed
warm-up step), their ratio, and the loss of the same windows both ways with the same weights
(eval mode, so BatchNorm uses running statistics in both), which must agree to float
re-association. Rows are random normal: speed does not depend on the values.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from lobstream.bench._common import emit_json, machine, parser, print_table
from lobstream.models.baselines import class_weights
from lobstream.models.causal import seqtrain
from lobstream.models.train import Windows
from lobstream.models.zoo import ARCHITECTURES, build_model

CAUSAL = sorted(a for a, (_, m) in ARCHITECTURES.items() if getattr(m, "causal", False))


def _stream(n_rows: int, T: int, F: int, seed: int = 0) -> Windows:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n_rows, F)).astype(np.float32)
    ends = np.arange(T - 1, n_rows)
    return Windows(rows, ends, rng.integers(0, 3, len(ends)), T)


def _per_window_run(model, opt, loss_fn, w: Windows, y, n: int, batch: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    order = rng.choice(len(w), size=n, replace=False)
    t0 = time.perf_counter()
    for a in range(0, n, batch):
        idx = order[a : a + batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(torch.from_numpy(w.batch(idx))), y[idx]).backward()
        opt.step()
    return time.perf_counter() - t0


def _sequence_run(model, opt, loss_fn, w: Windows, y, chunks, n: int, per_step: int, seed: int):
    order = seqtrain.epoch_chunks(chunks, np.random.default_rng(seed), n)
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    for a in range(0, len(order), per_step):
        step = order[a : a + per_step]
        idx = seqtrain.chunk_windows(step)
        opt.zero_grad(set_to_none=True)
        loss_fn(seqtrain.chunk_logits(model, w.rows, step, w.window, cpu), y[idx]).backward()
        opt.step()
    return time.perf_counter() - t0


def _same_loss(model, loss_fn, w: Windows, y, chunk: seqtrain.Chunk) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        idx = chunk.windows
        lw = float(loss_fn(model(torch.from_numpy(w.batch(idx))), y[idx]))
        ls = float(
            loss_fn(seqtrain.chunk_logits(model, w.rows, chunk, w.window, torch.device("cpu")),
                    y[idx])
        )  # fmt: skip
    model.train()
    return lw, ls


def bench_arch(arch: str, args) -> dict:
    T, levels = args.T, args.levels
    torch.manual_seed(0)
    model = build_model(arch, T=T, levels=levels).train()
    w = _stream(args.rows, T, 4 * levels)
    y = torch.from_numpy(w.labels.astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(class_weights(w.labels.astype(np.int64)), dtype=torch.float32)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    chunks = seqtrain.plan_chunks(w, args.chunk_rows)
    # warm-up: first calls allocate and pick kernels; not timed
    _per_window_run(model, opt, loss_fn, w, y, args.batch, args.batch, seed=99)
    _sequence_run(model, opt, loss_fn, w, y, chunks, 2 * len(chunks[0]), args.chunks_per_step, 99)
    pw, sq = [], []
    for r in range(args.repeat):
        sec = _per_window_run(model, opt, loss_fn, w, y, args.per_window, args.batch, seed=r)
        pw.append(args.per_window / sec)
        sec = _sequence_run(
            model, opt, loss_fn, w, y, chunks, args.sequence, args.chunks_per_step, seed=r
        )
        sq.append(args.sequence / sec)
    lw, ls = _same_loss(model, loss_fn, w, y, max(chunks, key=len))
    pw_med, sq_med = statistics.median(pw), statistics.median(sq)
    return {
        "arch": arch,
        "T": T,
        "levels": levels,
        "receptive_field": model.receptive_field,
        "per_window_windows_per_s": pw_med,
        "sequence_windows_per_s": sq_med,
        "ratio": sq_med / pw_med,
        "per_window_runs": pw,
        "sequence_runs": sq,
        "windows_per_step": {
            "per_window": args.batch,
            "sequence": args.chunks_per_step * (args.chunk_rows - T + 1),
        },
        "loss_per_window": lw,
        "loss_sequence": ls,
        "loss_abs_diff": abs(lw - ls),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer windows and repeats")
    ap.add_argument("--archs", default=",".join(CAUSAL), help="comma-separated causal archs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64, help="per-window batch size")
    ap.add_argument("--chunk-rows", type=int, default=128)
    ap.add_argument("--chunks-per-step", type=int, default=32)
    ap.add_argument("--per-window", type=int, default=512, help="windows per timed run")
    ap.add_argument("--sequence", type=int, default=8192, help="windows per timed run")
    ap.add_argument("--rows", type=int, default=40_000, help="rows of the stream")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.per_window, args.sequence, args.rows = 1, 128, 2048, 10_000
    archs = [a for a in args.archs.split(",") if a]
    bad = [a for a in archs if a not in CAUSAL]
    if bad:
        ap.error(f"not causal architectures: {bad}; expected some of {CAUSAL}")
    torch.set_num_threads(args.threads)
    results = [bench_arch(a, args) for a in archs]
    if args.json:
        emit_json({"benchmark": "training", "machine": machine(), "threads": args.threads,
                   "results": results})  # fmt: skip
        return 0
    print_table(
        f"training windows/s, {args.threads} thread(s), median of {args.repeat}",
        ["arch", "per-window", "sequence", "ratio", "loss per-window", "loss |diff|"],
        [
            (r["arch"], r["per_window_windows_per_s"], r["sequence_windows_per_s"],
             r["ratio"], f"{r['loss_per_window']:.6f}", f"{r['loss_abs_diff']:.1e}")
            for r in results
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
