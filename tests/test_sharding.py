"""Live scale-out: instruments sharded across daemons by topic prefix (contract 4).

Two daemons on threads of this process, each with its own model, both connected to one feed
(an XPUB here, as a replayer or feed handler would bind it): daemon A subscribes ``md.A``,
daemon B ``md.B`` (``ingest.topics``). Both use the same registry, so instrument ids agree
across shards. One subscriber (engine/subscriber.py), connected to both signal endpoints,
sees every instrument's signals, each from its shard's model, equal to the in-process
backtest of that shard's events with that model. ipc:// only; everything stops by itself.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from lobstream.engine.daemon import Daemon, load_checked_model
from lobstream.engine.subscriber import Subscriber
from lobstream.models.artifact import load_model
from lobstream.replay.feed.synthetic import synthetic_events
from tests.test_daemon import (
    PROB_ATOL,
    backtest_probs,
    export_test_model,
    make_cfg,
)

SYMBOLS = ["AAA", "ABB", "BBB", "BCC"]
SHARDS = {"A": "md.A", "B": "md.B"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("shard-models")
    out = {}
    for seed, shard in enumerate(SHARDS):
        path = d / f"cnn_{shard}.pt"
        export_test_model(path, seed=seed)
        out[shard] = path
    return out


def test_daemons_shard_instruments_by_topic_prefix(ipc_dir, models):
    events = synthetic_events(
        3000, n_instruments=len(SYMBOLS), seed=11, levels=4, snapshot_every=300
    )
    events["ts_recv"] = time.monotonic_ns()
    ctx = zmq.Context()
    feed = ctx.socket(zmq.XPUB)
    feed.setsockopt(zmq.SNDHWM, 0)
    feed.setsockopt(zmq.LINGER, 0)
    feed.setsockopt(zmq.RCVTIMEO, 10_000)
    feed.bind(f"ipc://{ipc_dir}/md")
    daemons, threads = {}, []
    sub = None
    try:
        for shard, prefix in SHARDS.items():
            cfg = make_cfg(
                ipc_dir,
                models[shard],
                SYMBOLS,
                ingest={"topics": [prefix], "max_drain": 1},
                publish={"endpoint": f"ipc://{ipc_dir}/sig{shard}"},
            )
            d = Daemon(cfg, SYMBOLS, load_checked_model(cfg))
            t = threading.Thread(target=d.run, name=f"daemon-{shard}", daemon=True)
            t.start()
            assert d.started.wait(180), f"daemon {shard} did not open its sockets"
            daemons[shard], threads = d, [*threads, t]
        # both subscriptions reached the feed: each daemon asked for its prefix only
        subs = {feed.recv() for _ in SHARDS}
        assert subs == {b"\x01" + p.encode() for p in SHARDS.values()}
        # one SUB socket, every shard's endpoint
        sub = Subscriber([f"ipc://{ipc_dir}/sigA", f"ipc://{ipc_dir}/sigB"])
        shas = {d.model.sha256 for d in daemons.values()}
        assert len(shas) == 2
        seen: set[str] = set()
        end = time.monotonic() + 20
        while seen != shas:
            assert time.monotonic() < end, f"heartbeats from {len(seen)} of 2 daemons"
            msg = sub.recv(0.2)
            if msg is not None and msg.kind == "status":
                seen.add(msg.status["model"]["sha256"])
        sent = dict.fromkeys(SHARDS, 0)
        inst = events["instrument"]
        for chunk in np.split(events, np.flatnonzero(np.diff(inst)) + 1):
            sym = SYMBOLS[int(chunk["instrument"][0])]
            feed.send_multipart([f"md.{sym}".encode(), chunk.tobytes()])
            sent[sym[0]] += 1
        end = time.monotonic() + 30
        for shard, d in daemons.items():
            while d.metrics.totals["messages"] < sent[shard]:
                assert time.monotonic() < end, f"daemon {shard} took too few messages"
                time.sleep(0.01)
        got: dict[str, list[np.ndarray]] = {}
        last = time.monotonic()
        while time.monotonic() - last < 0.5:  # until half a second without a signal
            assert time.monotonic() < end + 30, "signals did not stop coming"
            msg = sub.recv(0.05)
            if msg is not None and msg.kind == "signal":
                got.setdefault(msg.symbol, []).append(msg.records)
                last = time.monotonic()
        totals = {s: dict(d.metrics.totals) for s, d in daemons.items()}
    finally:
        for d in daemons.values():
            d.request_stop()
        for t in threads:
            t.join(timeout=10)
        if sub is not None:
            sub.close()
        feed.close(0)
        ctx.term()
    assert not any(t.is_alive() for t in threads), "a daemon did not stop"
    # every shard took exactly its own messages: the other prefix never reached it
    for shard in SHARDS:
        assert totals[shard]["messages"] == sent[shard]
        assert totals[shard].get("unknown_instrument", 0) == 0
    assert set(got) == set(SYMBOLS), "the one subscriber sees every instrument's signals"
    ids = {shard: d.model.model_id for shard, d in daemons.items()}
    for shard in SHARDS:
        mine = np.isin(inst, [i for i, s in enumerate(SYMBOLS) if s[0] == shard])
        module, manifest = load_model(models[shard])
        expected = backtest_probs(events[mine], module, manifest, len(SYMBOLS))
        for sym in (s for s in SYMBOLS if s[0] == shard):
            recs = np.concatenate(got[sym])
            assert (recs["model_id"] == ids[shard]).all(), f"{sym} scored by another shard"
            assert (recs["instrument"] == SYMBOLS.index(sym)).all()
            for r in recs:
                key = (int(r["instrument"]), int(r["seq"]))
                np.testing.assert_allclose(r["prob"], expected[key], atol=PROB_ATOL)
