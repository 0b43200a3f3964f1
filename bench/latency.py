"""End-to-end signal latency of a live daemon at fixed rates (``python -m bench.latency``).

The work is :func:`lobstream.engine.latency_bench.run_latency`; ``lobstream bench latency``
runs the same with rich tables.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench._common import emit_json, machine, parser, print_table


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument(
        "--rates",
        default="1000,10000,100000,0",
        help="target events/s, comma-separated; 0 = as fast as possible",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="replay duration per rate")
    ap.add_argument("--instruments", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", help="model artifact (default: the bundled one)")
    ap.add_argument("--out", help="folder for latency.json and latency.png")
    args = ap.parse_args(argv)
    from lobstream.engine.latency_bench import run_latency

    rates = tuple(float(x) for x in args.rates.split(",") if x.strip())
    r = run_latency(
        args.model,
        rates=rates,
        seconds=args.seconds,
        n_instruments=args.instruments,
        device=args.device,
        threads=args.threads,
    )
    if args.out:
        from lobstream.replay.backtest.plots import plot_latency

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.json").write_text(json.dumps(r, indent=2))
        r["plot"] = str(plot_latency(out / "latency.png", r["rates"], r["model_b1_p50_us"]))
    if args.json:
        emit_json({**r, "machine": machine()})
        return
    rows = [
        (
            x["target_events_per_s"] or "max",
            x["events_per_s"],
            x["signals_per_s"],
            x["p50_us"],
            x["p90_us"],
            x["p99_us"],
            x["p999_us"],
            x["max_us"],
            x["conflated"],
            x["dropped"],
            x["daemon_cpu"],
        )
        for x in r["rates"]
    ]
    print_table(
        f"end-to-end latency (us), {r['arch']} on {r['device']}, model alone B=1 p50 "
        f"{r['model_b1_p50_us']:.0f} us",
        (
            "target/s",
            "sent/s",
            "signals/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "conflated",
            "dropped",
            "daemon cpu",
        ),
        rows,
    )
    stages = list(r["rates"][0]["stages"]) if r["rates"] else []
    print_table(
        "daemon stages, mean us",
        ("target/s", *stages),
        [
            (x["target_events_per_s"] or "max", *(x["stages"][s]["mean_us"] for s in stages))
            for x in r["rates"]
        ],
    )


if __name__ == "__main__":
    main()
