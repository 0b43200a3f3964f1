"""Offline windows/s: backtest path vs model alone vs the notebook way (``python -m bench.throughput``).

The work is :func:`lobstream.engine.throughput_bench.run_throughput`; ``lobstream bench
throughput`` runs the same with a rich table.
"""

from __future__ import annotations

from bench._common import emit_json, machine, parser, print_table


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--model", help="model artifact (default: the bundled one)")
    ap.add_argument("--windows", type=int, default=4096)
    ap.add_argument("--notebook-windows", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from lobstream.engine.throughput_bench import run_throughput

    r = run_throughput(
        args.model,
        n_windows=args.windows,
        notebook_windows=args.notebook_windows,
        threads=args.threads,
        device=args.device,
        repeat=args.repeat,
    )
    if args.json:
        emit_json({**r, "machine": machine()})
        return
    m = r["model_only_windows_per_s"]
    rows = [
        (f"model alone (B={r['best_batch']})", m, 1.0),
        ("backtest (events in memory)", r["backtest_windows_per_s"], r["backtest_vs_model"]),
        (
            "backtest (from file open)",
            r["backtest_with_read_windows_per_s"],
            r["backtest_with_read_windows_per_s"] / m,
        ),
        ("notebook way", r["notebook_windows_per_s"], r["notebook_windows_per_s"] / m),
        (
            "backtest data path alone",
            r["backtest_data_path_windows_per_s"],
            r["backtest_data_path_windows_per_s"] / m,
        ),
        (
            "notebook data path alone",
            r["notebook_data_path_windows_per_s"],
            r["notebook_data_path_windows_per_s"] / m,
        ),
    ]
    print_table(
        f"offline windows/s, {r['arch']} on {r['device']}, {r['threads']} thread(s)",
        ("path", "windows/s", "vs model alone"),
        rows,
    )
    print(
        f"backtest / notebook: {r['backtest_vs_notebook']:.1f}x end to end, "
        f"{r['data_path_vs_notebook']:.1f}x for the data path alone "
        f"(medians of {r['repeat']} turns)"
    )


if __name__ == "__main__":
    main()
