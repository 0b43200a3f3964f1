"""Every reader on files that are not what their name says, truncated, or random bytes: the
one error is a one-line :class:`DataError` naming the file (and the row or byte where there is
one), never a traceback from gzip, zstd, polars or the DBN decoder; and a model file that is
not a TorchScript archive is one line without torch's internals.

The files are cut from the real recordings in the shared data folder."""

from __future__ import annotations

import gzip
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lobstream import cli
from lobstream.kernels.registry import Registry
from lobstream.models.artifact import ArtifactError, load_model
from lobstream.replay.errors import DataError
from lobstream.replay.readers import read_events
from lobstream.replay.readers._files import zstd_problem

REPO = Path(__file__).resolve().parents[1]
RANDOM = np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes()
LOCATION = re.compile(r": (row|byte) \d+: ")

# name -> (format, path under the data folder, file name to give the copy)
SOURCES = {
    "dbn_zst": ("databento", "databento/dbn_test_records/XNAS.ITCH.test_data.mbp-10.dbn.zst"),
    "dbn_big_zst": (
        "databento",
        "databento/esm4-glbx-mdp3-2024-05-08T00-00-00_00-00-02.mbo.dbn.zst",
    ),
    "dbn_plain": ("databento", "databento/dbn_test_records/GLBX.MDP3.test_data.mbp-10.v2.dbn"),
    "databento_csv": ("databento", "databento/xnas_itch_ARL_20250717_csv/mbo.csv.gz"),
    "tardis_l2": ("tardis", "tardis/deribit_incremental_book_L2_BTC-PERPETUAL.csv"),
    "tardis_snap": ("tardis", "tardis/binance-futures_book_snapshot_5_BTCUSDT.csv"),
    "binance_gz": ("binance", "binance_hftbacktest/spot/btcusdt_20240809.gz"),
    "binance_csv": ("binance", "binance_futures_depth_csv/btcusdt-depth-snap.csv"),
    "hyperliquid": ("binance", "hyperliquid_hftbacktest/btcusd_20250126.gz"),
}
LOBSTER = "lobster/truncated_first999/AAPL_2012-06-21_34200000_57600000_{}_10.csv"


def read_all(path: Path, fmt: str) -> int:
    return sum(len(b) for b in read_events([path], Registry(), fmt=fmt))


def check_error(exc: DataError, *paths: Path, located: bool = False) -> str:
    """The message is one line, starts with one of ``paths`` and, if ``located``, names a row
    or byte."""
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert any(msg.startswith(str(p)) for p in paths), msg
    if located:
        assert LOCATION.search(msg), msg
    return msg


def copy(tmp: Path, data_dir: Path, key: str, data: bytes | None = None) -> tuple[Path, str]:
    fmt, rel = SOURCES[key]
    src = data_dir / rel
    dst = tmp / src.name
    dst.write_bytes(src.read_bytes() if data is None else data)
    return dst, fmt


def source(data_dir: Path, key: str) -> bytes:
    return (data_dir / SOURCES[key][1]).read_bytes()


def plain(raw: bytes) -> bytes:
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


# Each case makes the bytes given the source's own name from the source's bytes; None: the
# bytes of a file of another format (WRONG)
CASES = {
    "empty": lambda raw: b"",
    "random": lambda raw: RANDOM,
    "text": lambda raw: b"hello world\nthis is not market data\n",
    "half": lambda raw: raw[: len(raw) // 2],
    "first 100 bytes": lambda raw: raw[:100],
    "gzip of random": lambda raw: gzip.compress(RANDOM),
    "wrong format": None,
    "ok": lambda raw: raw,
}
# a source given another format's file: each to the next one of another kind
WRONG = {
    "dbn_zst": "databento_csv",
    "dbn_big_zst": "binance_gz",
    "dbn_plain": "tardis_l2",
    "databento_csv": "dbn_zst",
    "tardis_l2": "binance_csv",
    "tardis_snap": "tardis_l2",
    "binance_gz": "dbn_zst",
    "binance_csv": "tardis_snap",
    "hyperliquid": "databento_csv",
}
# (source, case) whose other file is of the same format: an incremental file is Tardis too
SAME_FORMAT = {("tardis_snap", "wrong format")}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("key", sorted(SOURCES))
def test_each_reader_on_bad_files_gives_one_line_naming_the_file(data_dir, tmp_path, key, case):
    make = CASES[case]
    raw = source(data_dir, key)
    data = source(data_dir, WRONG[key]) if make is None else make(raw)
    path, fmt = copy(tmp_path, data_dir, key, data)
    compressed = raw.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd"))
    # good data: the file itself, another file of the same format, a plain-text table cut
    # at a line boundary (fewer rows)
    if (
        case == "ok"
        or (key, case) in SAME_FORMAT
        or (case in ("half", "first 100 bytes") and not compressed and data.endswith(b"\n"))
    ):
        assert read_all(path, fmt) > 0
        return
    with pytest.raises(DataError) as err:
        read_all(path, fmt)
    check_error(err.value, path)


@pytest.mark.parametrize("fmt", ["auto", "databento", "tardis", "binance", "lobster", "parquet"])
def test_random_bytes_under_each_name_and_format(data_dir, tmp_path, fmt):
    names = [Path(rel).name for _, rel in SOURCES.values()] + [
        Path(LOBSTER.format("message")).name,
        "part-00000.parquet",
    ]
    for name in names:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        path = folder / name
        path.write_bytes(RANDOM)
        if "message" in name:  # a LOBSTER pair needs its other file
            (folder / name.replace("message", "orderbook")).write_bytes(RANDOM)
        with pytest.raises(DataError) as err:
            read_all(path, fmt)
        check_error(err.value, path, path.with_name(name.replace("message", "orderbook")))


def test_auto_detection_failure_names_the_file_and_the_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("nothing to see\n")
    with pytest.raises(DataError) as err:
        read_all(path, "auto")
    msg = check_error(err.value, path)
    assert "not recognised" in msg and "databento" in msg and "--format" in msg


# -------------------------------------------------------------------------- truncation ---
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0.0, 0.999))
def test_a_truncated_zstd_dbn_is_an_error_at_a_byte(data_dir, tmp_path, frac):
    raw = source(data_dir, "dbn_big_zst")
    cut = raw[: int(len(raw) * frac)]
    path, fmt = copy(tmp_path, data_dir, "dbn_big_zst", cut)
    with pytest.raises(DataError) as err:
        read_all(path, fmt)
    msg = check_error(err.value, path)
    assert "empty" in msg or LOCATION.search(msg), msg


def test_zstd_frame_walk_accepts_every_real_file(data_dir):
    files = sorted((data_dir / "databento").rglob("*.zst"))
    assert len(files) >= 5
    for f in files:
        assert zstd_problem(f) is None, f


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["databento_csv", "binance_gz", "hyperliquid"]), frac=st.floats(0, 1))
def test_a_truncated_gzip_is_a_one_line_error(data_dir, tmp_path, key, frac):
    raw = source(data_dir, key)
    if key == "binance_gz":  # a smaller recording: its first 3000 lines
        raw = gzip.compress(b"".join(gzip.decompress(raw).splitlines(keepends=True)[:3000]))
    cut = raw[: min(int(len(raw) * frac), len(raw) - 9)]  # at least into the trailer
    path, fmt = copy(tmp_path, data_dir, key, cut)
    with pytest.raises(DataError) as err:
        read_all(path, fmt)
    msg = check_error(err.value, path)
    assert "empty" in msg or "gzip" in msg or LOCATION.search(msg), msg


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["tardis_l2", "tardis_snap", "binance_csv"]),
    frac=st.floats(0.02, 1.0),
)
def test_a_plain_table_cut_mid_row_is_an_error(data_dir, tmp_path, key, frac):
    raw = source(data_dir, key)
    cut = raw[: max(int(len(raw) * frac), raw.index(b"\n") + 2)]
    path, fmt = copy(tmp_path, data_dir, key, cut)
    last = cut[cut.rfind(b"\n") + 1 :]
    columns = raw[: raw.index(b"\n")].count(b",")
    if cut.endswith(b"\n") or last.count(b",") >= columns:
        # a cut at a line boundary is a shorter good file; one inside the last value cannot
        # always be told from a file without a final newline (logged): it may read
        try:
            read_all(path, fmt)
        except DataError as exc:
            check_error(exc, path)
        return
    with pytest.raises(DataError) as err:
        read_all(path, fmt)
    check_error(err.value, path)


def test_a_truncated_snapshot_row_is_not_read_as_missing_levels(data_dir, tmp_path):
    raw = source(data_dir, "tardis_snap")
    lines = raw.splitlines(keepends=True)
    # the last row cut after its first two levels: a CSV parser would fill the rest as empty
    last = b",".join(lines[-1].split(b",")[:12])
    path, fmt = copy(tmp_path, data_dir, "tardis_snap", b"".join(lines[:-1]) + last)
    with pytest.raises(DataError, match="last line stops mid-row") as err:
        read_all(path, fmt)
    check_error(err.value, path)
    # with --skip-bad the cut row is dropped and counted, the rows before it kept
    from lobstream.replay.errors import Defects

    defects = Defects()
    got = sum(len(b) for b in read_events([path], Registry(), fmt=fmt, skip_bad=True,
                                          defects=defects))  # fmt: skip
    (tmp_path / "whole").mkdir()
    whole = tmp_path / "whole" / path.name
    whole.write_bytes(b"".join(lines[:-1]))
    assert got == read_all(whole, fmt) and defects["truncated_file"] == 1


@pytest.mark.parametrize("which", ["message", "orderbook"])
@pytest.mark.parametrize("case", ["empty", "random", "cut mid-row", "not gzip", "gzip cut"])
def test_lobster_pairs(data_dir, tmp_path, which, case):
    paths = {k: data_dir / LOBSTER.format(k) for k in ("message", "orderbook")}
    data = {k: p.read_bytes() for k, p in paths.items()}
    suffix = ".gz" if case in ("not gzip", "gzip cut") else ""
    if suffix:
        data = {k: gzip.compress(v) for k, v in data.items()}
    bad = data[which]
    bad = {
        "empty": b"",
        "random": RANDOM,
        "cut mid-row": bad[: len(bad) // 2 + 3],
        "not gzip": plain(bad),
        "gzip cut": bad[: len(bad) // 2],
    }[case]
    data[which] = bad
    out = {}
    for k, v in data.items():
        out[k] = tmp_path / (paths[k].name + suffix)
        out[k].write_bytes(v)
    with pytest.raises(DataError) as err:
        read_all(out["message"], "lobster")
    check_error(err.value, *out.values(), located=case in ("random", "cut mid-row", "gzip cut"))


def test_parquet_part_files(data_dir, tmp_path):
    from lobstream.replay.convert import convert

    convert([data_dir / LOBSTER.format("message")], tmp_path / "ds", Registry())
    part = next((tmp_path / "ds").rglob("*.parquet"))
    good = part.read_bytes()
    assert read_all(part, "parquet") > 0
    for data in (b"", RANDOM, good[: len(good) // 2], good[:-8], b"a,b\n1,2\n"):
        part.write_bytes(data)
        with pytest.raises(DataError) as err:
            read_all(part, "parquet")
        check_error(err.value, part)


# --------------------------------------------------------------------- command line ---
def test_convert_databento_on_a_file_that_is_not_gzip_is_one_line(data_dir, tmp_path):
    """The reported case: a .csv.gz that is plain text, converted with --format databento."""
    path = tmp_path / "mbo.csv.gz"
    path.write_bytes(plain(source(data_dir, "databento_csv"))[:5000])
    res = CliRunner().invoke(
        cli.main, ["convert", "--format", "databento", str(path), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: not gzip data"), res.output


@pytest.mark.parametrize(
    "case", ["empty", "text", "random", "truncated", "torch.save", "other zip"]
)
def test_a_model_file_that_is_not_torchscript_is_one_line(tmp_path, case):
    path = tmp_path / "model.pt"
    bundled = sorted((REPO / "models" / "assets").glob("*.pt"))[0].read_bytes()
    if case == "torch.save":
        torch.save({"w": torch.zeros(3)}, path)
    elif case == "other zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes/readme.txt", "hello")
    else:
        path.write_bytes(
            {
                "empty": b"",
                "text": b"not a model\n",
                "random": RANDOM,
                "truncated": bundled[: len(bundled) // 2],
            }[case]
        )
    with pytest.raises(ArtifactError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: not a TorchScript archive"), msg
    for internal in ("miniz", "PytorchStreamReader", "enforce fail", "inline_container"):
        assert internal not in msg, msg


def test_serve_check_with_a_model_that_is_not_torchscript_is_one_line(tmp_path):
    from lobstream.bench.harness import daemon_tables, write_config

    model = tmp_path / "model.pt"
    model.write_bytes(RANDOM)
    tables = daemon_tables(
        model, ["AAA"], "ipc:///tmp/lob-x-md", "ipc:///tmp/lob-x-sig", window=10, levels=2
    )
    config = write_config(tmp_path, tables)
    res = CliRunner().invoke(cli.main, ["serve", "--check", "--config", str(config)])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"Error: {model}: not a TorchScript archive"), res.output
