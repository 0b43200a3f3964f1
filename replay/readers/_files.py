"""What can be wrong with an input file as a whole, said in one line.

The readers' own checks look at records; these look at the container: an empty file, a name
ending in ``.gz`` on something that is not gzip, a zstd stream that stops inside a frame, a
text file whose last line stops mid-row. Each returns the problem as text (or None) so the
reader raises its :class:`~lobstream.replay.errors.DataError` with the file and row it knows.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_FRAME = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE = 0xFFFFFFF0, 0x184D2A50
_LAST_LINE_BYTES = 1 << 16


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters: a library's
    message may go on for lines of advice that do not apply here."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def polars_problem(exc: BaseException) -> str:
    """One line for a polars CSV error, with the byte offset polars gives on a later line (its
    batches are large, so the row a reader knows is only where the failing batch starts)."""
    m = re.search(r"offset in the file is (\d+) bytes", str(exc))
    near = f" near byte {m.group(1)} of the text" if m else ""
    return one_line(exc) + near


def show_line(text: str, limit: int = 80) -> str:
    """A line of the file for a message: quoted, or said to be binary when it is not text."""
    if any(not ch.isprintable() for ch in text[:limit]):
        return "a line that is not text (binary data)"
    return repr(text[:limit])


def empty_problem(path: Path) -> str | None:
    """The problem of an empty file, else None."""
    return "the file is empty (0 bytes)" if os.path.getsize(path) == 0 else None


def magic(path: Path, n: int = 4) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def gzip_name_problem(path: Path) -> str | None:
    """The problem of a file named ``*.gz`` whose bytes are not gzip, else None."""
    if path.name.lower().endswith(".gz") and not magic(path, 2) == GZIP_MAGIC:
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes); expected gzip data"
        return "not gzip data although the name ends in .gz (renamed, or saved uncompressed?)"
    return None


def gzip_read_problem(exc: BaseException) -> str:
    """One line for an error while decompressing gzip (``gzip``, ``zlib`` or polars' reader)."""
    text = one_line(exc)
    if isinstance(exc, EOFError) or "unexpected end of file" in text.lower():
        return "the gzip stream ends early: the file is truncated; re-download it"
    if isinstance(exc, zlib.error) or "invalid" in text.lower() or "corrupt" in text.lower():
        return f"corrupt gzip data ({text}); re-download it"
    return f"cannot read the file ({text})"


def zstd_problem(path: Path) -> tuple[str, int] | None:
    """``(problem, byte offset)`` when the zstd frames of ``path`` do not end where the file
    does (a truncated download), else None.

    Walks the frame and block headers only (RFC 8878), seeking over the block contents, so it
    costs a few bytes read per 128 KiB block; the decompressor finds corrupt contents.
    """
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as fh:

        def read(at: int, n: int) -> bytes | None:
            fh.seek(at)
            b = fh.read(n)
            return b if len(b) == n else None

        while pos < size:
            head = read(pos, 4)
            if head is None:
                return f"{size - pos} bytes after the last zstd frame are not a frame", pos
            m = int.from_bytes(head, "little")
            if m & _SKIPPABLE_MASK == _SKIPPABLE:
                n = read(pos + 4, 4)
                if n is None:
                    return "the file ends inside a zstd skippable frame (truncated)", pos
                pos += 8 + int.from_bytes(n, "little")
                continue
            if m != _ZSTD_FRAME:
                return "not a zstd frame (expected zstd-compressed data here)", pos
            d = read(pos + 4, 1)
            if d is None:
                return "the file ends inside a zstd frame header (truncated)", pos
            desc = d[0]
            single = (desc >> 5) & 1
            fcs = (1 if single else 0, 2, 4, 8)[desc >> 6]
            header = 1 + (0 if single else 1) + (0, 1, 2, 4)[desc & 3] + fcs
            pos += 4 + header
            while True:
                bh = read(pos, 3)
                if bh is None:
                    return "the file ends inside a zstd frame (truncated); re-download it", pos
                v = int.from_bytes(bh, "little")
                kind, bsize = (v >> 1) & 3, v >> 3
                if kind == 3:
                    return "corrupt zstd data (reserved block type)", pos
                pos += 3 + (1 if kind == 1 else bsize)
                if pos > size:
                    return "the file ends inside a zstd block (truncated); re-download it", size
                if v & 1:  # last block of the frame
                    break
            pos += 4 if (desc >> 2) & 1 else 0  # content checksum
            if pos > size:
                return "the file ends inside a zstd checksum (truncated); re-download it", size
    return None


def last_line_problem(path: Path, columns: int, sep: bytes = b",") -> str | None:
    """For a plain-text table with ``columns`` columns: the problem of a last line that stops
    mid-row (fewer separators than a row has, and no newline after it), else None.

    A CSV parser fills a short row's missing fields as empty, which a reader would take for
    absent levels: this looks at the end of the file before the rows are read. Gzip files are
    left to their decompressor, which reports a stream that ends early.
    """
    size = os.path.getsize(path)
    if size == 0 or magic(path, 2) == GZIP_MAGIC:
        return None
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _LAST_LINE_BYTES))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return None
    last = tail[tail.rfind(b"\n") + 1 :].rstrip(b"\r")
    found = last.count(sep) + 1
    if found < columns:
        return (
            f"the last line stops mid-row ({found} of {columns} columns, no newline): the file "
            "is truncated; re-download it"
        )
    # every column is there, but the last value may be cut short: say so, read it
    logger.warning(
        "%s: the last line has no newline; if the file was cut short, its last value may be "
        "incomplete",
        path,
    )
    return None
