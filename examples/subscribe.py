"""Print the signals and heartbeats of a running ``lobstream serve`` daemon.

    python examples/subscribe.py ipc:///tmp/lobstream-sig [ENDPOINT ...] [--symbol GOOG] [--seconds 30]

Several endpoints: daemons that shard the instruments by topic prefix, seen as one stream.

Both encodings (binary SIGNAL_DTYPE records and JSON) are decoded by the subscriber helper;
a multi-horizon model's v2 records also print each head's horizon and class.
"""

from __future__ import annotations

import argparse
import time

from lobstream.engine.subscriber import Subscriber
from lobstream.kernels.dtypes import CLASS_NAMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint", nargs="+", help="the daemon's publish.endpoint (one per shard)")
    ap.add_argument("--symbol", action="append", help="only these symbols (repeatable)")
    ap.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    args = ap.parse_args()
    end = time.monotonic() + args.seconds
    with Subscriber(args.endpoint, symbols=args.symbol) as sub:
        while time.monotonic() < end:
            msg = sub.recv(timeout_s=0.5)
            if msg is None:
                continue
            if msg.kind == "status":
                s = msg.status
                print(f"status: {s['stale']} stale, counts {s['counts']}")
                continue
            for rec, lat in zip(msg.records, msg.latency_ns, strict=True):
                probs = " ".join(
                    f"{n}={p:.3f}" for n, p in zip(CLASS_NAMES, rec["prob"], strict=True)
                )
                heads = ""
                if "n_heads" in rec.dtype.names:  # v2: every head of a multi-horizon model
                    heads = " heads " + " ".join(
                        f"k={rec['horizon'][h]:g}:{CLASS_NAMES[rec['head_pred'][h]]}"
                        for h in range(int(rec["n_heads"]))
                    )
                print(
                    f"{msg.symbol} seq={rec['seq']} {CLASS_NAMES[rec['pred']]:>4} {probs} "
                    f"latency={lat / 1e3:.0f}us{heads}"
                )


if __name__ == "__main__":
    main()
