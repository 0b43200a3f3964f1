"""What the daemon's socket calls cost, each way it could make them, warm and on a quiet market.

The quiet-market latency the daemon adds is mostly Python and pyzmq on caches gone cold
between messages (``python -m bench.daemon --low-only`` prints its stages). This benchmark
times, in one process over an ipc:// PUB/SUB pair, the choices on the receive and publish
side of a round, one 48-byte event message or one 56-byte signal record:

- receive: two ``recv`` (copy) with their ``RCVMORE`` questions, the daemon's way; the same
  with ``copy=False`` (zero-copy ``zmq.Frame``); ``recv_multipart``;
- ending a drain: a ``recv`` that raises ``zmq.Again`` against asking ``EVENTS`` first;
- waiting: ``Poller.poll(0)`` over the daemon's two sockets against one;
- publish: two ``send`` calls (the daemon's) against ``send_multipart``; the record's byte
  view made per call against made once.

Each case runs back to back (warm) and paced at ``--rate`` per second with a sleep between;
a paced call is the first thing this thread does after its sleep, so it carries the wake-up
(caches, TLB, branch state gone cold) that the first step of a quiet round pays, whatever the
call. The table gives the median and p99 microseconds of one call.

``python -m bench.transport [--json] [--rate 100] [--calls 200]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import zmq

from lobstream.bench._common import emit_json, machine, parser, print_table
from lobstream.kernels.dtypes import EVENT_DTYPE, SIGNAL_DTYPE

_NB = zmq.NOBLOCK


class Pair:
    """A PUB and a SUB over ipc:// in this process, plus an idle PAIR (the inference
    thread's socket in the daemon's poller)."""

    def __init__(self, folder: str) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind(f"ipc://{folder}/t")
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"ipc://{folder}/t")
        self.idle = self.ctx.socket(zmq.PAIR)
        self.idle.bind(f"inproc://idle-{id(self)}")
        self.payload = np.zeros(1, EVENT_DTYPE).tobytes()
        self.rec = np.zeros(4, SIGNAL_DTYPE)
        self.raw = memoryview(self.rec.view(np.uint8)).cast("B")
        self.poll2 = zmq.Poller()
        self.poll2.register(self.sub, zmq.POLLIN)
        self.poll2.register(self.idle, zmq.POLLIN)
        self.poll1 = zmq.Poller()
        self.poll1.register(self.sub, zmq.POLLIN)
        for _ in range(200):  # the subscription reaches the PUB
            self.pub.send_multipart([b"md.X", self.payload])
            if self.sub.poll(10):
                break
        self.flush()

    def flush(self) -> None:
        while self.sub.poll(20):
            while self.sub.poll(0):
                self.sub.recv_multipart()

    def arrive(self) -> None:
        """One message sent and queued at the SUB (untimed)."""
        self.pub.send_multipart([b"md.X", self.payload])
        while not self.sub.poll(0):
            pass

    def close(self) -> None:
        for s in (self.pub, self.sub, self.idle):
            s.close(0)
        self.ctx.term()


def cases(p: Pair) -> dict:
    """name -> (prepare, call): ``prepare`` runs untimed before each timed ``call``."""
    sub, pub, more = p.sub, p.pub, p.sub.getsockopt

    def recv_copy():
        sub.recv(_NB)
        more(zmq.RCVMORE)
        sub.recv(_NB)
        more(zmq.RCVMORE)

    def recv_zero_copy():
        sub.recv(_NB, copy=False)
        more(zmq.RCVMORE)
        sub.recv(_NB, copy=False)
        more(zmq.RCVMORE)

    def end_again():
        try:
            sub.recv(_NB)
        except zmq.Again:
            pass

    def end_events():
        return more(zmq.EVENTS) & zmq.POLLIN

    def send_two():
        pub.send(b"sig.X", zmq.SNDMORE | _NB)
        pub.send(p.raw[0:56], _NB)

    def send_multi():
        pub.send_multipart([b"sig.X", p.raw[0:56]], _NB)

    def send_view_each():
        raw = memoryview(p.rec.view(np.uint8)).cast("B")
        pub.send(b"sig.X", zmq.SNDMORE | _NB)
        pub.send(raw[0:56], _NB)

    def none():
        pass

    return {
        "receive: 2 x recv (copy), daemon": (p.arrive, recv_copy),
        "receive: 2 x recv (copy=False)": (p.arrive, recv_zero_copy),
        "receive: recv_multipart": (p.arrive, sub.recv_multipart),
        "end of drain: recv raising Again": (none, end_again),
        "end of drain: ask EVENTS, daemon": (none, end_events),
        "wait: Poller.poll(0), 2 sockets, daemon": (none, lambda: p.poll2.poll(0)),
        "wait: Poller.poll(0), 1 socket": (none, lambda: p.poll1.poll(0)),
        "publish: 2 x send, view kept, daemon": (none, send_two),
        "publish: 2 x send, view per call": (none, send_view_each),
        "publish: send_multipart": (none, send_multi),
    }


def time_case(prepare, call, n: int, gap_s: float) -> np.ndarray:
    out = np.empty(n)
    clock = time.perf_counter_ns
    for k in range(n):
        prepare()
        if gap_s:
            time.sleep(gap_s)
        t0 = clock()
        call()
        out[k] = clock() - t0
    return out / 1e3


def main(argv=None) -> int:
    ap = parser(__doc__.splitlines()[0], repeat=None)
    ap.add_argument("--rate", type=float, default=100.0, help="paced calls per second")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per case and way")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lobtr", dir="/tmp") as folder:
        p = Pair(folder)
        try:
            results = {}
            for name, (prepare, call) in cases(p).items():
                warm = time_case(prepare, call, 5 * args.calls, 0.0)
                paced = time_case(prepare, call, args.calls, 1.0 / args.rate)
                p.flush()  # what the publish cases queued at the SUB
                results[name] = {
                    "warm_p50_us": float(np.median(warm)),
                    "warm_p99_us": float(np.percentile(warm, 99)),
                    "paced_p50_us": float(np.median(paced)),
                    "paced_p99_us": float(np.percentile(paced, 99)),
                }
        finally:
            p.close()
    if args.json:
        emit_json({"machine": machine(), "rate": args.rate, "calls": args.calls,
                   "cases": results})  # fmt: skip
        return 0
    print_table(
        f"one call, us (warm: back to back; paced: {args.rate:g}/s, sleeping between)",
        ["case", "warm p50", "warm p99", "paced p50", "paced p99"],
        [[k, v["warm_p50_us"], v["warm_p99_us"], v["paced_p50_us"], v["paced_p99_us"]]
         for k, v in results.items()],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
