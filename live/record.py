"""Record what a live feed received, as the Binance reader reads it.

One gzip file per symbol at a time, ``DIR/<symbol lower>_<YYYYMMDD>.<HHMMSS>.gz`` (UTC, the
time the file was opened), holding ``<local_ns> <json>`` lines: the websocket messages and the
REST snapshots as they came (hftbacktest's recorder layout, which
:mod:`lobstream.replay.readers.binance` reads). A file is rotated at each UTC midnight and when
it reaches ``rotate_bytes`` of input; the next file continues the book (the reader chains files
of one instrument read in name order, which is time order). Lines are in the order the sync
state machine consumed them (:mod:`lobstream.live.sync`), so ``lobstream backtest DIR/*.gz``
replays exactly what was published.

The stream is flushed (a gzip sync point) every ``flush_s``, so a crash loses at most that much
and a file being written can be read up to its last flush (the reader then reports the end as
truncated: pass ``--skip-bad``, or read closed files).
"""

from __future__ import annotations

import gzip
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_ROTATE_BYTES = 1 << 30


class _File:
    def __init__(self, path: Path, day: str, level: int) -> None:
        self.path = path
        self.day = day
        self.fh = gzip.open(path, "wb", compresslevel=level)
        self.bytes = 0


class Recorder:
    """Rotating gzip files of recorder lines, per symbol.

    Parameters
    ----------
    folder : Path
        Created if missing.
    rotate_bytes : int
        Uncompressed bytes after which a file is closed and the next one opened.
    flush_s : float
        At most this long between gzip sync points of an open file.
    level : int
        gzip compression level.
    """

    def __init__(
        self,
        folder: Path,
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        flush_s: float = 1.0,
        level: int = 6,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rotate_bytes = rotate_bytes
        self.flush_s = flush_s
        self.level = level
        self._files: dict[str, _File] = {}
        self._next_flush = time.monotonic() + flush_s
        self.lines = 0
        self.bytes = 0
        self.paths: list[Path] = []

    def write(self, symbol: str, line: bytes, wall_ns: int | None = None) -> None:
        """Append one line (without its newline) to ``symbol``'s file."""
        self.write_many([(symbol, line)], wall_ns)

    def write_many(self, lines: list[tuple[str, bytes]], wall_ns: int | None = None) -> None:
        """Append ``(symbol, line)`` pairs, in order; ``wall_ns`` (now by default) picks the
        UTC day of the file."""
        if not lines:
            return
        now = time.time_ns() if wall_ns is None else wall_ns
        by_symbol: dict[str, list[bytes]] = {}
        for symbol, line in lines:
            by_symbol.setdefault(symbol, []).append(line)
        for symbol, parts in by_symbol.items():
            parts.append(b"")
            data = b"\n".join(parts)
            f = self._file(symbol, now)
            f.fh.write(data)
            f.bytes += len(data)
            self.bytes += len(data)
            self.lines += len(parts) - 1
            if f.bytes >= self.rotate_bytes:
                self._close(symbol)
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        for f in self._files.values():
            f.fh.flush()
        self._next_flush = time.monotonic() + self.flush_s

    def close(self) -> None:
        for symbol in list(self._files):
            self._close(symbol)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _file(self, symbol: str, wall_ns: int) -> _File:
        now = datetime.fromtimestamp(wall_ns / 1e9, UTC)
        day = now.strftime("%Y%m%d")
        f = self._files.get(symbol)
        if f is not None and f.day != day:
            self._close(symbol)
            f = None
        if f is None:
            stem = f"{symbol.lower()}_{day}.{now.strftime('%H%M%S')}"
            path = self.folder / f"{stem}.gz"
            k = 1
            while path.exists():  # two files opened in one second: keep name order = time order
                path = self.folder / f"{stem}_{k}.gz"
                k += 1
            f = self._files[symbol] = _File(path, day, self.level)
            self.paths.append(path)
            logger.info("recording %s to %s", symbol, path)
        return f

    def _close(self, symbol: str) -> None:
        f = self._files.pop(symbol)
        f.fh.close()
