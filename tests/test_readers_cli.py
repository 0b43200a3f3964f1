"""`lobstream convert` and `lobstream replay` end to end (click runner, real SUB socket)."""

from __future__ import annotations

import json
import threading

import numpy as np
import zmq
from click.testing import CliRunner

from lobstream.cli import main
from lobstream.kernels import wire
from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.kernels.registry import Registry
from lobstream.replay.readers import parquet, read_events

AAPL999 = "lobster/truncated_first999/AAPL_2012-06-21_34200000_57600000_message_10.csv"


def test_commands_are_listed():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "replay" in out and "convert" in out


def test_convert_then_read_back(data_dir, tmp_path):
    res = CliRunner().invoke(
        main, ["convert", str(data_dir / AAPL999), "--out", str(tmp_path / "pq"), "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    src = np.concatenate(list(read_events([data_dir / AAPL999], Registry())))
    assert summary["events"] == len(src) == sum(summary["written"].values())
    back = np.concatenate(list(parquet.read(tmp_path / "pq", Registry())))
    assert all((back[f] == src[f]).all() for f in EVENT_DTYPE.names)
    table = CliRunner().invoke(main, ["convert", str(data_dir / AAPL999), "--out",
                                      str(tmp_path / "pq2")])  # fmt: skip
    assert table.exit_code == 0 and "instrument=AAPL/date=2012-06-21" in table.output


def test_convert_bad_file_names_row_or_skips(data_dir, tmp_path):
    msg = (data_dir / AAPL999).read_text().splitlines()
    ob = (data_dir / AAPL999.replace("message", "orderbook")).read_text().splitlines()
    msg[4] = msg[4].replace(",1,", ",9,", 1) if ",1," in msg[4] else msg[4] + ",extra"
    name = (data_dir / AAPL999).name
    (tmp_path / name).write_text("\n".join(msg) + "\n")
    (tmp_path / name.replace("message", "orderbook")).write_text("\n".join(ob) + "\n")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / name), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "row 5" in res.output and name in res.output
    res = CliRunner().invoke(
        main, ["convert", str(tmp_path / name), "--out", str(tmp_path / "o"), "--skip-bad",
               "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sum(json.loads(res.output)["defects"].values()) == 1


def test_replay_command_to_a_real_subscriber(data_dir, tmp_path):
    want = sum(len(b) for b in read_events([data_dir / AAPL999], Registry()))
    ep = f"ipc://{tmp_path}/md.sock"
    ctx = zmq.Context()
    got = []

    def subscribe(sock):
        try:
            while sum(got) < want and sock.poll(20_000):
                msg = wire.decode(sock.recv_multipart(copy=False))
                assert msg.reason == "ok" and msg.symbol == "AAPL"
                got.append(len(msg.events))
        finally:
            sock.close()

    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"md.")
    # The replayer binds; a SUB may connect first (ipc retries until the socket exists).
    sub.connect(ep)
    thread = threading.Thread(target=subscribe, args=(sub,), daemon=True)
    thread.start()
    try:
        res = CliRunner().invoke(main, [
            "replay", str(data_dir / AAPL999), "--to", ep, "--speed", "0", "--batch", "100",
            "--subscribers", "1", "--wait", "10", "--json",
        ])  # fmt: skip
        thread.join(30)
    finally:
        ctx.term()
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["events"] == want == sum(got) and out["messages"] == len(got)
    assert out["per_symbol"] == {"AAPL": want} and out["pacing_p50_us"] is None


def test_replay_bad_endpoint():
    res = CliRunner().invoke(main, ["replay", __file__, "--to", "nonsense://x", "--wait", "0"])
    assert res.exit_code != 0 and "cannot open" in res.output
