"""LOBSTER message + orderbook files -> canonical event batches.

A LOBSTER sample is a pair ``SYM_DATE_START_END_message_N.csv[.gz]`` and
``SYM_DATE_START_END_orderbook_N.csv[.gz]``; row i of the orderbook file is the top N levels
per side after message i. Either file of a pair may be given: the partner is found by name.

Events per message row
----------------------
- The first row: ``ACTION_CLEAR`` then every visible level as an update, all flagged
  ``FLAG_SNAPSHOT`` (then the trade, if the first message is one).
- Types 4, 5, 6 (visible / hidden execution, cross): an ``ACTION_TRADE`` first, with the
  message's price and executed size; ``side`` is the *aggressor*: executing a sell limit order
  (direction -1) is a buy, so ``SIDE_BID``.
- Type 7 (trading halt / quoting / resume, price -1 / 0 / 1): no event of its own; the
  orderbook row repeats the previous state, so it normally produces none. Halts are counted
  and logged.
- Then the level updates that turn the previous book into this row's (rule below), deletions
  first. ``FLAG_LAST`` is set on the last event of each row, exactly once; a row that is
  neither a trade nor changes the visible book produces no event.

Levels that leave the top N
---------------------------
The file shows only the top N, so a level that drops out of it was either deleted or pushed
deeper. The reader keeps the levels it has announced. A side's *covered range* in a row is
every price at or better than its N-th level if it shows N real levels, else every price. An
announced level inside the covered range but missing from the row is deleted (size 0); one
outside it is kept without an event (it may still rest deeper), and is corrected (new size or
size 0) as soon as the covered range reaches it again. So the book rebuilt from the events
equals the orderbook file's top N after every row, and deeper levels are the last known ones.
At most ``HIDDEN_CAPACITY`` such levels are kept per side; beyond that the deepest one is
removed with a size-0 update (it lies below the top N, so the equality still holds).

Timestamps, prices, dates
-------------------------
``Time`` (seconds after midnight, 4 to 12 decimals) is parsed as a decimal string into exact
nanoseconds (a 10th decimal rounds half up); midnight is that of the file-name date in the
exchange's zone (America/New_York), so ``ts_event`` is UTC ns. Prices are USD x 10000 and
become ticks through the registry entry of the symbol (``tick_size`` and optional
``price_scale.lobster``, default 10000); a symbol not in the registry is added with tick 0.01
(logged). A price off the tick grid is a :class:`DataError`, except hidden executions (type
5), which may print at the midpoint: they are rounded half up to a tick (counted, logged).
``seq`` numbers the events of a file from 1; ``ts_recv`` is 0.

Reading and validation
----------------------
Both files are read in lockstep, ``CHUNK_ROWS`` rows at a time (gzip streamed), parsed by a
Numba kernel and checked by functions of their own (:func:`format_problems`,
:func:`validate_messages`, :func:`orderbook_problems`): column count, non-numbers, time going
backwards, message type and direction, non-positive prices, negative sizes, off-grid prices,
levels not best first, and unequal row counts. The first bad row raises :class:`DataError`
naming the file and its 1-based row; with ``skip_bad`` the row is dropped from both files and
counted by kind in ``defects``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import re
import zlib
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np

from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.kernels.registry import Instrument, Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS, _files
from lobstream.replay.readers.lobster.kernel import (
    BOOK_BAD_SIZE,
    BOOK_NON_POSITIVE_PRICE,
    BOOK_OFF_GRID,
    BOOK_UNORDERED,
    PARSE_BAD_FIELD,
    PARSE_COLUMNS,
    diff_rows,
    parse_int_csv,
    prepare_book,
)

logger = logging.getLogger(__name__)

FORMAT = "lobster"
EXCHANGE_TZ = "America/New_York"
DEFAULT_TICK = Decimal("0.01")
DEFAULT_SCALE = 10_000  # LOBSTER prices are USD x 10000
DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
HIDDEN_CAPACITY = 16  # announced levels kept beyond the top N, per side
CHUNK_ROWS = 32_768  # message rows parsed at a time: bounds memory for any file length
_READ_BLOCK = 1 << 20

_NAME_RE = re.compile(
    r"^(?P<symbol>.+?)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_"
    r"(?P<kind>message|orderbook)_(?P<levels>\d+)\.csv(?:\.gz)?$"
)


@dataclass(frozen=True)
class LobsterName:
    """What a LOBSTER file name says."""

    symbol: str
    date: dt.date
    start_ms: int
    end_ms: int
    kind: str  # "message" or "orderbook"
    levels: int


def parse_name(path: str | Path) -> LobsterName:
    """Parse ``SYM_YYYY-MM-DD_START_END_{message|orderbook}_N.csv[.gz]``."""
    path = Path(path)
    m = _NAME_RE.match(path.name)
    if m is None:
        raise DataError(
            path,
            "file name is not a LOBSTER name; expected "
            "SYMBOL_YYYY-MM-DD_START_END_message_N.csv[.gz] (or _orderbook_N); rename the file",
        )
    levels = int(m["levels"])
    if levels < 1:
        raise DataError(path, f"level count {levels} in the file name must be >= 1")
    return LobsterName(
        m["symbol"],
        dt.date.fromisoformat(m["date"]),
        int(m["start"]),
        int(m["end"]),
        m["kind"],
        levels,
    )


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """(message file, orderbook file) of the pair that ``path`` belongs to."""
    path = Path(path)
    name = parse_name(path)
    other = "orderbook" if name.kind == "message" else "message"
    stem = f"_{name.kind}_{name.levels}.csv"
    candidates = [
        path.with_name(path.name.replace(stem, f"_{other}_{name.levels}.csv") + ext)
        for ext in ("", ".gz")
    ]
    candidates = [c.with_name(c.name.replace(".gz.gz", ".gz")) for c in candidates]
    candidates += [c.with_name(c.name.removesuffix(".gz")) for c in candidates]
    for c in candidates:
        if c.is_file():
            return (path, c) if name.kind == "message" else (c, path)
    raise DataError(
        path,
        f"no {other} file found beside it (looked for {candidates[0].name} with or without "
        f".gz); LOBSTER needs both files of a pair",
    )


def detect(path: Path) -> bool:
    """True for a file named like a LOBSTER message or orderbook file."""
    return _NAME_RE.match(Path(path).name) is not None


def midnight_ns(date: dt.date, tz: str = EXCHANGE_TZ) -> int:
    """ns since the Unix epoch of local midnight of ``date`` in zone ``tz``."""
    local = dt.datetime(date.year, date.month, date.day, tzinfo=zoneinfo.ZoneInfo(tz))
    return int(local.timestamp()) * 1_000_000_000


# Symbols already reported: the default tick is said once per process, not once per read.
_reported_defaults: set[str] = set()


def _instrument(registry: Registry, symbol: str) -> tuple[Instrument, int]:
    if symbol not in registry:
        if symbol not in _reported_defaults:
            _reported_defaults.add(symbol)
            logger.warning(
                "LOBSTER symbol %s not in the registry: using tick size %s (add it to a "
                "registry TOML to choose another)",
                symbol,
                DEFAULT_TICK,
            )
        registry.add(symbol, DEFAULT_TICK, {"lobster": DEFAULT_SCALE})
    inst = registry.by_symbol(symbol)
    scale = Decimal(inst.price_scale.get("lobster", DEFAULT_SCALE))
    divisor = inst.tick_size * scale
    if divisor != int(divisor) or divisor < 1:
        raise ValueError(
            f"{symbol}: tick_size {inst.tick_size} x LOBSTER price scale {scale} = {divisor} "
            "is not a whole number of LOBSTER price units; fix the registry"
        )
    return inst, int(divisor)


class _Lines:
    """Whole lines from a (gzip) text file, a bounded number at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        problem = _files.empty_problem(path) or _files.gzip_name_problem(path)
        if problem:
            raise DataError(path, problem)
        self._fh = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
        self._buf = bytearray()
        self._nl = 0
        self._eof = False
        self._taken = 0  # lines handed out so far

    def take(self, n: int) -> tuple[np.ndarray, int]:
        """Up to ``n`` lines, (B,) uint8 ending in a newline, and how many (0 at the end)."""
        while self._nl < n and not self._eof:
            try:
                block = self._fh.read(_READ_BLOCK)
            except (OSError, EOFError, zlib.error) as exc:
                whole = self._taken + self._nl  # complete lines before the failure
                raise DataError(
                    self.path, f"cannot read the file: {_files.gzip_read_problem(exc)}",
                    row=whole + 1,
                ) from None  # fmt: skip
            if not block:
                self._eof = True
                # A last line without a newline still counts; blank trailing lines do not.
                while self._buf.endswith((b"\n", b"\r")):
                    del self._buf[-1]
                if self._buf:
                    self._buf += b"\n"
                self._nl = self._buf.count(b"\n")
                break
            self._buf += block
            self._nl += block.count(b"\n")
        if self._nl == 0:
            return np.empty(0, np.uint8), 0
        k = min(n, self._nl)
        cut = self._cut(k)
        out = np.frombuffer(self._buf, np.uint8, count=cut).copy()  # one copy, no bytes()
        del self._buf[:cut]
        self._nl -= k
        self._taken += k
        return out, k

    def _cut(self, k: int) -> int:
        # Only the tail after the (k-1)-th-from-last block can hold the k-th newline: scan
        # from the end, a block at a time, so each byte is scanned about once.
        view = np.frombuffer(self._buf, np.uint8)
        end = len(view)
        after = 0  # newlines at or beyond ``end``
        while True:
            start = max(0, end - _READ_BLOCK)
            pos = np.flatnonzero(view[start:end] == 10)
            before = self._nl - after - len(pos)
            if before < k:
                return start + int(pos[k - before - 1]) + 1
            after += len(pos)
            end = start

    def close(self) -> None:
        self._fh.close()


# --- validation: each returns [(kind, bad mask, describe(index) -> str)] ------------------


def format_problems(bad: np.ndarray, ncols: int):
    """Problems found by the parser: ``bad`` (R,) uint8 of PARSE_* codes."""
    return [
        (
            "bad_field",
            bad == PARSE_BAD_FIELD,
            lambda i: (
                "a field is empty or not a number (integers; Time a decimal number of seconds)"
            ),
        ),
        ("column_count", bad == PARSE_COLUMNS, lambda i: f"not {ncols} columns"),
    ]


def validate_messages(ts, unparsed, mtype, size, price, direction, divisor, prev_ts):
    """Problems in a chunk of message rows (arrays (R,) int64; ``unparsed`` (R,) bool marks
    lines the parser rejected, not checked again). ``prev_ts`` is the last accepted time before
    the chunk. Returns a list of (kind, mask, describe(index) -> str)."""
    ok = ~unparsed
    # Hidden executions (type 5) may print between ticks (midpoint pegs): the reader rounds
    # them; visible executions and crosses must be on the grid like book levels.
    visible = (mtype == 4) | (mtype == 6)
    halt = mtype == 7
    running = np.maximum.accumulate(np.concatenate(([prev_ts], np.where(ok, ts, prev_ts))))
    return [
        (
            "time_backwards",
            ok & (ts < running[:-1]),
            lambda i: (
                f"time goes backwards: {ts[i]} ns after {running[i]} ns; LOBSTER rows must be in "
                "time order (sort the pair by Time)"
            ),
        ),
        (
            "bad_type",
            ok & ((mtype < 1) | (mtype > 7)),
            lambda i: f"message type {mtype[i]} is not one of 1..7",
        ),
        (
            "bad_direction",
            ok & (direction != 1) & (direction != -1),
            lambda i: f"direction {direction[i]} is neither 1 (buy) nor -1 (sell)",
        ),
        (
            "non_positive_price",
            ok & ~halt & (price <= 0),
            lambda i: f"price {price[i]} is not positive (USD x 10000 expected)",
        ),
        (
            "bad_halt",
            ok & halt & (price != -1) & (price != 0) & (price != 1),
            lambda i: f"halt message (type 7) has price {price[i]}; expected -1, 0 or 1",
        ),
        ("negative_size", ok & (size < 0), lambda i: f"size {size[i]} is negative"),
        (
            "off_grid_price",
            ok & visible & (price > 0) & (price % divisor != 0),
            lambda i: (
                f"trade price {price[i]} is not a multiple of the tick ({divisor} price units); "
                "fix tick_size of the symbol in the instrument registry"
            ),
        ),
    ]


def orderbook_problems(ob: np.ndarray, code: np.ndarray, col: np.ndarray):
    """Problems found by :func:`prepare_book` in orderbook rows ``ob`` (R, 4 N) int64."""

    def at(i: int) -> str:
        return f"column {int(col[i]) + 1} value {int(ob[i, col[i]])}"

    return [
        (
            "non_positive_price",
            code == BOOK_NON_POSITIVE_PRICE,
            lambda i: f"orderbook price is not positive ({at(i)})",
        ),
        (
            "negative_size",
            code == BOOK_BAD_SIZE,
            lambda i: (
                f"orderbook level size is not positive, or a dummy level has a size ({at(i)})"
            ),
        ),
        (
            "off_grid_price",
            code == BOOK_OFF_GRID,
            lambda i: (
                f"orderbook price is not a multiple of the tick ({at(i)}); fix tick_size of the "
                "symbol in the instrument registry"
            ),
        ),
        (
            "unordered_levels",
            code == BOOK_UNORDERED,
            lambda i: (
                "orderbook levels are not best-first (asks ascending, bids descending, no dummy "
                f"level before a real one) ({at(i)})"
            ),
        ),
    ]


def _apply_problems(
    problems, path: Path, rows: np.ndarray, skip_bad: bool, defects: Defects
) -> np.ndarray | None:
    """Raise on the first bad row (or count them with ``skip_bad``); the rows to keep."""
    any_bad = None
    for _, mask, _ in problems:
        any_bad = mask.copy() if any_bad is None else (any_bad | mask)
    if any_bad is None or not any_bad.any():
        return None
    first = int(np.flatnonzero(any_bad)[0])
    if not skip_bad:
        for _, mask, describe in problems:
            if mask[first]:
                raise DataError(
                    path,
                    describe(first) + " (or pass --skip-bad to skip such rows)",
                    row=int(rows[first]) + 1,
                )
    for kind, mask, _ in problems:
        n = int(mask.sum())
        if n:
            defects.add(kind, f"{path} row {int(rows[np.flatnonzero(mask)[0]]) + 1}", n)
    return ~any_bad


# Byte columns of an event not covered by a field: Numba's record stores leave them undefined.
_PAD = np.setdiff1d(
    np.arange(EVENT_DTYPE.itemsize),
    np.concatenate([np.arange(o, o + d.itemsize) for d, o in EVENT_DTYPE.fields.values()]),
)


def _clean(events: np.ndarray) -> np.ndarray:
    """Zero the padding bytes, so equal events have equal bytes (on the wire, in tests)."""
    events.view(np.uint8).reshape(len(events), EVENT_DTYPE.itemsize)[:, _PAD] = 0
    return events


def _take_pair(msgs: _Lines, obs: _Lines, n_rows: int, row0: int) -> tuple:
    """The next ``n_rows`` lines of both files (``n`` 0 at the end); refuses a pair whose files
    do not have the same number of rows."""
    mbuf, n = msgs.take(n_rows)
    if n == 0:
        if obs.take(1)[1]:
            raise DataError(
                obs.path,
                f"has more rows than its message file "
                f"{msgs.path.name} ({row0}); the pair must have equal rows",
                row=row0 + 1,
            )
        return mbuf, mbuf, 0
    obuf, n_ob = obs.take(n)
    if n_ob < n:
        raise DataError(
            obs.path,
            f"ends after {row0 + n_ob} rows but its message file "
            f"{msgs.path.name} has more; the pair must have equal rows",
            row=row0 + n_ob,
        )
    return mbuf, obuf, n


def _checked_rows(mbuf, obuf, rows, paths, n_lev, day_ns, divisor, prev_ts, skip_bad, defects):
    """Parse and check one chunk of the pair: (ts, mtype, size, price, direction, px, sz, nvis)
    of the rows that pass; a bad row raises, or with ``skip_bad`` is counted and left out."""
    n = len(rows)
    m = np.empty((n, 6), np.int64)
    m_bad = np.empty(n, np.uint8)
    parse_int_csv(mbuf, 6, 0, m, m_bad)
    ob = np.empty((n, 4 * n_lev), np.int64)
    ob_bad = np.empty(n, np.uint8)
    parse_int_csv(obuf, 4 * n_lev, -1, ob, ob_bad)
    ts = m[:, 0] + day_ns
    mtype, size, price, direction = m[:, 1], m[:, 3], m[:, 4], m[:, 5]
    m_fmt = format_problems(m_bad, 6)
    ob_fmt = format_problems(ob_bad, 4 * n_lev)
    m_sem = validate_messages(ts, m_bad != 0, mtype, size, price, direction, divisor, prev_ts)
    px = np.empty((n, 2, n_lev), np.int64)
    sz = np.empty((n, 2, n_lev), np.float64)
    nvis = np.empty((n, 2), np.int64)
    b_code = np.empty(n, np.uint8)
    b_col = np.empty(n, np.int64)
    prepare_book(ob, DUMMY_ASK, DUMMY_BID, divisor, px, sz, nvis, b_code, b_col)
    ob_sem = orderbook_problems(ob, np.where(ob_bad != 0, 0, b_code), b_col)
    out = (ts, mtype, size, price, direction, px, sz, nvis)
    good = _apply_problems(m_fmt + m_sem, paths[0], rows, skip_bad, defects)
    good_ob = _apply_problems(ob_fmt + ob_sem, paths[1], rows, skip_bad, defects)
    if good is None and good_ob is None:
        return out
    sel = np.ones(n, bool)
    sel &= good if good is not None else True
    sel &= good_ob if good_ob is not None else True
    return tuple(a[sel] for a in out)


def read(
    path: str | Path,
    registry: Registry,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    skip_bad: bool = False,
    defects: Defects | None = None,
    chunk_rows: int = CHUNK_ROWS,
    hidden_capacity: int = HIDDEN_CAPACITY,
) -> Iterator[np.ndarray]:
    """Event batches from a LOBSTER pair (``path`` is either file of it).

    Parameters
    ----------
    path : the message or the orderbook file.
    registry : instrument registry; the symbol is added (tick 0.01) if missing.
    batch_rows : about how many events per yielded batch (at least one row's worth).
    skip_bad : skip bad rows (both files) and count them into ``defects`` instead of raising.
    chunk_rows : message rows parsed at a time (bounds memory).
    hidden_capacity : levels kept per side beyond the top N (see the module docstring).

    Yields
    ------
    ndarray (n,) EVENT_DTYPE, a fresh array each time, ending at a row boundary.

    Raises
    ------
    DataError naming the file and 1-based row of the first bad record.
    """
    defects = Defects() if defects is None else defects
    msg_path, ob_path = pair_paths(path)
    name = parse_name(msg_path)
    ob_name = parse_name(ob_path)
    if (ob_name.symbol, ob_name.date, ob_name.levels) != (name.symbol, name.date, name.levels):
        raise DataError(ob_path, f"does not match its message file {msg_path.name}")
    inst, divisor = _instrument(registry, name.symbol)
    day_ns = midnight_ns(name.date)
    n_lev = name.levels
    st_px = np.zeros((2, n_lev + hidden_capacity), np.int64)
    st_sz = np.zeros((2, n_lev + hidden_capacity), np.float64)
    st_n = np.full(2, -1, np.int64)
    per_row = 2 + 2 * (n_lev + hidden_capacity + 2 * n_lev)
    cap = max(int(batch_rows), per_row)
    out = np.zeros(cap, EVENT_DTYPE)  # zeroed padding: deterministic bytes
    n_out = 0
    seq = 1
    row0 = 0
    prev_ts = np.iinfo(np.int64).min
    halts = 0
    rounded = 0
    msgs = _Lines(msg_path)
    try:
        obs = _Lines(ob_path)
    except DataError:
        msgs.close()
        raise
    try:
        while True:
            mbuf, obuf, n = _take_pair(msgs, obs, chunk_rows, row0)
            if n == 0:
                break
            rows = np.arange(row0, row0 + n)
            row0 += n
            ts, mtype, size, price, direction, px, sz, nvis = _checked_rows(
                mbuf, obuf, rows, (msg_path, ob_path), n_lev, day_ns, divisor, prev_ts,
                skip_bad, defects)  # fmt: skip
            if len(ts) == 0:
                continue
            prev_ts = int(ts[-1])
            halts += int((mtype == 7).sum())
            trade = (mtype >= 4) & (mtype <= 6)
            # Round half up: hidden midpoint executions sit half a tick off the grid.
            mprice = np.where(trade, (price + divisor // 2) // divisor, 0)
            rounded += int((trade & (price % divisor != 0)).sum())
            pos = 0
            while pos < len(ts):
                done, k = diff_rows(
                    px[pos:],
                    sz[pos:],
                    nvis[pos:],
                    ts[pos:],
                    mtype[pos:],
                    mprice[pos:],
                    size[pos:],
                    direction[pos:],
                    inst.id,
                    seq,
                    st_px,
                    st_sz,
                    st_n,
                    out[n_out:],
                )
                pos += done
                n_out += k
                seq += k
                if pos < len(ts):
                    yield _clean(out[:n_out])
                    out = np.zeros(cap, EVENT_DTYPE)  # zeroed padding: deterministic bytes
                    n_out = 0
        if n_out:
            yield _clean(out[:n_out])
    finally:
        msgs.close()
        obs.close()
    if rounded:
        logger.info(
            "%s: %d hidden-execution prices off the tick grid rounded to the nearest tick",
            msg_path,
            rounded,
        )
    if halts:
        logger.info("%s: %d trading-halt messages (type 7); no book change", msg_path, halts)


def warm_up() -> None:
    """Compile the kernels now (they are cached on disk after the first process)."""
    one = np.ones((1, 4), np.int64)
    prepare_book(one, DUMMY_ASK, DUMMY_BID, 1, np.empty((1, 2, 1), np.int64),
                 np.empty((1, 2, 1)), np.empty((1, 2), np.int64), np.empty(1, np.uint8),
                 np.empty(1, np.int64))  # fmt: skip
    parse_int_csv(
        np.frombuffer(b"1.5,2\n", np.uint8), 2, 0, np.empty((1, 2), np.int64), np.empty(1, np.uint8)
    )
    st = np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float64), np.full(2, -1, np.int64)
    z = np.zeros(1, np.int64)
    diff_rows(
        np.ones((1, 2, 1), np.int64),
        np.ones((1, 2, 1)),
        np.ones((1, 2), np.int64),
        z,
        z + 1,
        z,
        z,
        z + 1,
        0,
        1,
        *st,
        np.empty(16, EVENT_DTYPE),
    )
