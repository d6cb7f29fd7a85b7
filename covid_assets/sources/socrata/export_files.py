"""Downloaded exports for offline runs: a JSON array of rows or a CSV, optionally gzipped.

Only a regular file named ``*.json``, ``*.csv``, ``*.json.gz`` or ``*.csv.gz`` is read (a FIFO,
a device, a directory or anything resolving into /proc, /sys or /dev is refused before it is
read), and an error names the file and the kind of problem, never the file's contents: the path
may come from a deployment's environment, and the file may hold anything.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import stat
import time
import zlib
from pathlib import Path
from typing import IO, Sequence

import pandas as pd

from covid_assets.sources.socrata.errors import SocrataError, clip
from covid_assets.sources.socrata.rows import (
    REQUIRED_COLUMNS,
    Extract,
    FetchStats,
    column_order,
    describe_not_rows,
    frame_from_tables,
    rows_to_table,
)

__all__ = ["EXPORT_SUFFIXES", "read_export_file"]

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
EXPORT_SUFFIXES: tuple[str, ...] = (".json", ".csv", ".json.gz", ".csv.gz")
_EXPORT_RULE = "an export must be a regular file named *.json, *.csv, *.json.gz or *.csv.gz"
_PSEUDO_FILESYSTEMS = frozenset({"proc", "sys", "dev"})


def _refuse(source: str, why: str) -> SocrataError:
    return SocrataError(f"refusing export file {source}: {why}; {_EXPORT_RULE}")


def _open_export(path: Path) -> tuple[IO[bytes], int]:
    """The export opened for reading, and its size; only a regular file with a data suffix.

    The path and (for a symlink) its resolved target must both be named like an
    export, and the target must not live in /proc, /sys or /dev. The file is
    opened non-blocking (a FIFO would otherwise hang the open) and checked with
    fstat on the open descriptor, so what is read is what was checked.
    """
    source = str(path)
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise SocrataError(f"export file not found: {source}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise SocrataError(f"cannot read export file {source}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    for name in dict.fromkeys((path.name, target.name)):
        if not name.lower().endswith(EXPORT_SUFFIXES):
            raise _refuse(source, f"{clip(name, 120)!r} does not end in a data suffix")
    if target.parts[1:2] and target.parts[1] in _PSEUDO_FILESYSTEMS:
        raise _refuse(source, f"it resolves into /{target.parts[1]}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise SocrataError(f"cannot read export file {source}: {exc.strerror or type(exc).__name__}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refuse(source, "it is not a regular file (a directory, FIFO, socket or device)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), info.st_size


def _decompressed(fh: IO[bytes]) -> IO[bytes]:
    """Plain or gzip-compressed by the magic bytes, whatever the file is called; peekable."""
    magic = fh.read(2)
    fh.seek(0)
    if magic == _GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=fh, mode="rb"))  # type: ignore[arg-type]
    return fh


def _file_problem(exc: BaseException) -> str:
    """What is wrong with an export file, with a position where one is known, never its contents.

    Parser messages can quote the bytes they choke on; only fixed phrases and numbers pass.
    """
    if isinstance(exc, json.JSONDecodeError):  # exc.msg is one of the json module's fixed phrases
        return f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (character {exc.pos:,})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 text ({exc.reason})"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error, EOFError)):
        return "corrupt or truncated gzip data"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "no CSV header (the file is empty)"
    if isinstance(exc, pd.errors.ParserError):
        where = re.search(r"\b(line|row) (\d+)", str(exc))
        return "malformed CSV" + (f" near {where[1]} {where[2]}" if where else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"unreadable content ({type(exc).__name__})"


def _read_json_export(fh: IO[bytes], source: str, required: Sequence[str]) -> pd.DataFrame:
    data = json.load(fh)
    problem = describe_not_rows(data, quote=False)
    if problem:
        raise SocrataError(f"cannot read export file {source}: {problem}")
    table = rows_to_table(data)
    del data
    if table.num_rows == 0:
        return pd.DataFrame()
    return frame_from_tables([table], source, required, quote=False)


def _read_csv_export(fh: IO[bytes], source: str, required: Sequence[str]) -> pd.DataFrame:
    """All cells as strings; only a blank cell is missing (so a literal "NA" stays "NA")."""
    frame = pd.read_csv(
        fh,
        dtype=pd.StringDtype(),
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8-sig",
    )
    order = column_order(map(str, frame.columns), source, required, quote=False)
    return frame[order].reset_index(drop=True)


def read_export_file(path: str | Path, required: Sequence[str] = REQUIRED_COLUMNS) -> Extract:
    """Load a downloaded export (JSON array or CSV, optionally gzipped) for offline runs.

    Accepts the API's JSON array, the old 8-column CSV with ISO dates and the
    newer 9-column CSV with ``geocoded_state`` and ``YYYY/MM/DD`` dates; values
    are returned as delivered, like the API path. Only a regular file named
    ``*.json``, ``*.csv``, ``*.json.gz`` or ``*.csv.gz`` is read (see
    `_open_export`), and an error names the file and the kind of problem,
    never the file's contents.
    """
    started = time.monotonic()
    p = Path(path)
    source = str(p)
    opened, size = _open_export(p)
    try:
        with opened, _decompressed(opened) as fh:
            head = fh.peek(64)[:64].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
            if head[:1] == b"[" or head[:1] == b"{":
                frame = _read_json_export(fh, source, required)
            else:
                frame = _read_csv_export(fh, source, required)
    except (ValueError, OSError, EOFError, zlib.error) as exc:  # pandas' ParserError is a ValueError
        raise SocrataError(f"cannot read export file {source}: {_file_problem(exc)}") from None
    if len(frame) == 0:
        raise SocrataError(f"source returned no rows: export file {source} has no data rows")
    stats = FetchStats(
        rows=len(frame), pages=1, requests=0, retries=0, bytes=size, elapsed_s=round(time.monotonic() - started, 3)
    )
    log.info("Read %d rows from export file %s", len(frame), source)
    return Extract(frame=frame, stats=stats, source=source)
