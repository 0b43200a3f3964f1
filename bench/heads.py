"""One multi-horizon model against one single-head model per horizon: same data, same budget.

``python -m bench.heads [FILES] [--arch binctabl] [--horizons 10,50,100] [--loss-weights ...]
[--json]``

Trains, in one run and with one ``TrainConfig`` (epochs, patience, windows per epoch, seed):
an H-head model on every horizon at once, then a single-head model per horizon. Each is
scored on its own chronological test split, as ``lobstream train`` does; the H-head dataset
leaves the longest horizon's gap between parts and keeps windows where every head has a
label, so its test windows are those of each single-head split bar at most ``k_max - k``
rows at each end of a part. Reported per horizon: test and validation macro-F1 of the
H-head model's head and of the single-head model, their difference (the bar: >= -0.02), the
best baseline on that split (logistic or trend), training time, and inference cost per window
(ModelRunner batch-1 p50 and per-window wall time at batch 256; causal models also the
IncrementalRunner's per-event push), where the H-head model's one call answers every horizon.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lobstream.bench._common import emit_json, machine, parser, print_table
from lobstream.models.artifact import load_model
from lobstream.models.causal.runner import IncrementalRunner, is_causal
from lobstream.models.heads import parse_horizons, parse_loss_weights
from lobstream.models.runner import ModelRunner
from lobstream.models.train import TrainConfig
from lobstream.replay.samples import GOOG_MESSAGE_10
from lobstream.replay.training.pipeline import run_training

BAR = -0.02  # each head's test macro-F1 minus its single-head model's, at least this


def _times(fn, calls: int) -> list[float]:
    fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def inference_cost(path: Path, calls: int) -> dict:
    """Per-window cost of an artifact on one CPU thread: batch-1 p50, batch-256 per window,
    and for a causal model the incremental per-event push p50."""
    torch.set_num_threads(1)
    module, manifest = load_model(path)
    runner = ModelRunner(module, manifest, device="cpu", max_batch=256)
    runner.input[:] = np.random.default_rng(0).standard_normal(runner.input.shape)
    b1 = _times(lambda: runner.infer(1), calls)
    b256 = _times(lambda: runner.infer(256), max(3, calls // 50))
    out = {
        "b1_p50_us": 1e6 * statistics.median(b1),
        "b256_us_per_window": 1e6 * statistics.median(b256) / 256,
    }
    if is_causal(manifest):
        inc = IncrementalRunner(module, manifest, n_slots=1)
        rows = runner.input[0, 0]
        inc.push_many(0, rows)
        one = np.ascontiguousarray(rows[-1:])
        ids = np.zeros(1, np.int64)
        out["incremental_p50_us"] = 1e6 * statistics.median(
            _times(lambda: inc.push(ids, one), calls)
        )
    return out


def _best_baseline(baselines: dict, split: str) -> tuple[str, float]:
    cands = {k: v[split]["f1_macro"] for k, v in baselines.items() if k != "majority"}
    name = max(cands, key=cands.get)
    return name, cands[name]


def _args(argv: list[str] | None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="LOB files (default: the bundled GOOG day)")
    ap.add_argument("--arch", default="binctabl")
    ap.add_argument("--horizons", default="10,50,100")
    ap.add_argument("--loss-weights", default=None, help="default: equal")
    ap.add_argument("--label", default="future")
    ap.add_argument("--features", default="zscore")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--max-train-windows", type=int, default=20000)
    ap.add_argument("--max-eval-windows", type=int, default=6000)
    ap.add_argument("--max-events", type=int, default=None)
    ap.add_argument("--calls", type=int, default=400, help="timed batch-1 calls per artifact")
    ap.add_argument("--out-dir", default=None, help="keep the artifacts here (default: temp)")
    return ap.parse_args(argv)


def _train_all(args, files: list[str], hs, lw, tc: TrainConfig) -> list[tuple]:
    """(name, artifact path, training summary, seconds): the H-head model, then each single."""
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench-heads-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "arch": args.arch,
        "label_kind": args.label,
        "features": args.features,
        "max_events": args.max_events,
        "train_config": tc,
    }

    def status(m: str) -> None:
        print(f"  {m}", file=sys.stderr)

    runs = []
    name = f"{len(hs)}-head"
    print(f"training the {name} model ({args.arch}, horizons {hs})", file=sys.stderr)
    path = out_dir / f"{args.arch}_heads.pt"
    t0 = time.perf_counter()
    multi = run_training(
        files, horizon=hs[0], horizons=hs, loss_weights=lw, out=path, status=status, **common
    )
    runs.append((name, path, multi, time.perf_counter() - t0))
    for k in hs:
        print(f"training the single-head model k={k:g}", file=sys.stderr)
        path = out_dir / f"{args.arch}_k{k:g}.pt"
        t0 = time.perf_counter()
        s = run_training(files, horizon=k, out=path, status=status, **common)
        runs.append((f"k={k:g}", path, s, time.perf_counter() - t0))
    return runs


def _per_horizon(hs, lw, runs: list[tuple]) -> tuple[list[dict], list[list]]:
    """Each horizon's head against its single-head model: JSON cases and table rows."""
    multi = runs[0][2]
    rows, cases = [], []
    for h, k in enumerate(hs):
        head = multi["heads"][h]
        single = runs[1 + h][2]
        base_name, base_f1 = _best_baseline(single["baselines"], "test")
        case = {
            "horizon": k,
            "loss_weight": lw[h],
            "heads_test_f1": head["metrics"]["test"]["f1_macro"],
            "heads_val_f1": head["metrics"]["validation"]["f1_macro"],
            "single_test_f1": single["metrics"]["test"]["f1_macro"],
            "single_val_f1": single["metrics"]["validation"]["f1_macro"],
            "heads_trend_test_f1": head["baselines"]["trend"]["test"]["f1_macro"],
            "best_baseline": base_name,
            "best_baseline_test_f1": base_f1,
            "heads_test_windows": multi["trained_on"]["split_windows"]["test"],
            "single_test_windows": single["trained_on"]["split_windows"]["test"],
        }
        case["diff_test"] = case["heads_test_f1"] - case["single_test_f1"]
        case["meets_bar"] = case["diff_test"] >= BAR
        cases.append(case)
        rows.append(
            [
                f"k={k:g}",
                *(
                    f"{case[key]:+.4f}" if key == "diff_test" else f"{case[key]:.4f}"
                    for key in ("heads_test_f1", "single_test_f1", "diff_test")
                ),
                "yes" if case["meets_bar"] else "NO",
                f"{case['heads_val_f1']:.4f}",
                f"{case['single_val_f1']:.4f}",
                f"{base_name} {base_f1:.4f}",
            ]
        )
    return cases, rows


def _costs(runs: list[tuple], calls: int, n_heads: int) -> tuple[list[dict], dict]:
    """Training and inference cost of each model, and of the single-head models together."""
    models = []
    for n, path, s, secs in runs:
        models.append(
            {
                "model": n,
                "train_seconds": secs,
                "best_epoch": s["training"]["best_epoch"],
                "parameters": s["training"]["parameters"],
                **inference_cost(path, calls),
            }
        )
    singles = models[1:]
    total = {
        "model": f"{n_heads} single-head models together",
        "b1_p50_us": sum(m["b1_p50_us"] for m in singles),
        "b256_us_per_window": sum(m["b256_us_per_window"] for m in singles),
        "train_seconds": sum(m["train_seconds"] for m in singles),
        "parameters": sum(m["parameters"] for m in singles),
    }
    if all("incremental_p50_us" in m for m in singles):
        total["incremental_p50_us"] = sum(m["incremental_p50_us"] for m in singles)
    return models, total


def _print(arch: str, name: str, rows: list[list], models: list[dict], total: dict) -> None:
    print_table(
        f"{arch}: {name} model vs one model per horizon (test macro-F1, chronological split)",
        ["horizon", name, "single", "diff", ">= -0.02", f"{name} val", "single val",
         "best baseline"],
        rows,
    )  # fmt: skip
    print()
    hdr = ["model", "train s", "params", "b1 p50 us", "us/window @256"]
    inc = "incremental_p50_us" in models[0]
    if inc:
        hdr.append("incremental p50 us")
    table = []
    for m in [*models, total]:
        r = [m["model"], m["train_seconds"], m["parameters"], m["b1_p50_us"],
             m["b256_us_per_window"]]  # fmt: skip
        if inc:
            r.append(m.get("incremental_p50_us", float("nan")))
        table.append(r)
    print_table("cost (one CPU thread; one H-head call answers every horizon)", hdr, table)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    files = args.files or [str(GOOG_MESSAGE_10)]
    hs = parse_horizons(args.horizons)
    lw = parse_loss_weights(args.loss_weights, len(hs))
    tc = TrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        max_train_windows=args.max_train_windows,
        max_eval_windows=args.max_eval_windows,
        device="cpu",
        threads=1,
    )
    runs = _train_all(args, files, hs, lw, tc)
    cases, rows = _per_horizon(hs, lw, runs)
    models, total = _costs(runs, args.calls, len(hs))
    result = {
        "bench": "heads",
        "machine": machine(),
        "arch": args.arch,
        "files": [Path(f).name for f in files],
        "horizons": hs,
        "loss_weights": lw,
        "train_config": tc.to_dict(),
        "per_horizon": cases,
        "models": models,
        "singles_total": total,
        "bar": {"min_diff_test": BAR, "met": all(c["meets_bar"] for c in cases)},
    }
    if args.json:
        emit_json(result)
    else:
        _print(args.arch, runs[0][0], rows, models, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
