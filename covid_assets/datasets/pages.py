"""A delivery as a stream of bounded, all-string Arrow pages read from an export file.

The loader (`datasets/load.py`) COPYs each page into the warehouse and lets it go, so the
Python process never holds more than a page (plus the API's bounded window of pages in flight),
whatever the dataset's size. Every value stays the text the source sent (no trimming, no type
conversion); a value that is not a JSON string (a number, a geo object) is kept as its JSON text.

From the API, `SocrataClient.plan()` gives the same pages (in ``:id`` order, a bounded window).

* `export_pages`: a downloaded export, read incrementally: a CSV (pyarrow's streaming reader,
  one block per page), a JSON array of row objects, or Socrata's ``rows.json`` export (``meta``
  with the view's columns, then ``data``: rows as arrays in column order; system columns such
  as ``:id`` are dropped), both streamed with ijson. The same file checks as the whole-file
  reader (`sources/socrata/export_files.py`): a regular file with a data suffix, nothing under
  /proc, /sys or /dev; errors name the file and the kind of problem, never its contents.
"""

from __future__ import annotations

import csv
import io
import itertools
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import ijson
import pyarrow as pa
import pyarrow.csv as pa_csv

from covid_assets.sources.socrata.errors import SocrataError
from covid_assets.sources.socrata.export_files import _decompressed, _file_problem, _open_export
from covid_assets.sources.socrata.metadata import parse_view
from covid_assets.sources.socrata.rows import _as_text, rows_to_table

__all__ = ["PAGE_ROWS", "CSV_BLOCK_BYTES", "export_pages"]

PAGE_ROWS = 50_000  # rows per page of a JSON export
CSV_BLOCK_BYTES = 4 << 20  # bytes of CSV per page: about 50k rows of a typical Socrata export
_HEAD_BYTES = 64


def export_pages(path: str | Path, *, page_rows: int = PAGE_ROWS, block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[pa.Table]:
    """The rows of a downloaded export (CSV, JSON array, or ``rows.json``; gzipped or not), page by page."""
    source = str(path)
    with _export(Path(path)) as fh:
        head = fh.peek(_HEAD_BYTES)[:_HEAD_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
    if head[:1] == b"[":
        yield from _guarded(source, _json_array_pages(Path(path), page_rows))
    elif head[:1] == b"{":
        yield from _guarded(source, _rows_json_pages(Path(path), source, page_rows))
    else:
        yield from _guarded(source, _csv_pages(Path(path), block_bytes))


@contextmanager
def _export(path: Path) -> Iterator[IO[bytes]]:
    """The export opened after the file checks, decompressed when it is gzip."""
    opened, _size = _open_export(path)
    with opened, _decompressed(opened) as fh:
        yield fh


def _guarded(source: str, pages: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Reading errors as a SocrataError naming the file and the problem, never the file's contents."""
    try:
        yield from pages
    except SocrataError:
        raise
    except ijson.JSONError:  # yajl's messages quote the text they choke on
        raise SocrataError(f"cannot read export file {source}: not valid JSON") from None
    except pa.ArrowInvalid as exc:  # pyarrow's CSV messages quote rows
        raise SocrataError(f"cannot read export file {source}: {_csv_problem(exc)}") from None
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise SocrataError(f"cannot read export file {source}: {_file_problem(exc)}") from None


def _csv_problem(exc: pa.ArrowInvalid) -> str:
    text = str(exc)
    if "UTF8" in text or "UTF-8" in text:
        return "not valid UTF-8 text"
    if "Empty CSV file" in text:
        return "no CSV header (the file is empty)"
    return "malformed CSV (a row has more or fewer cells than the header)" if "columns" in text else "malformed CSV"


# ----------------------------------------------------------------------------- CSV
def _csv_pages(path: Path, block_bytes: int) -> Iterator[pa.Table]:
    """Every cell a string; only an empty cell is missing (a literal "NA" stays "NA").

    The file is cut into pieces of about `block_bytes` at record boundaries and each piece is
    parsed on its own: pyarrow's streaming reader keeps more memory the longer the file is
    (measured: 70 MB more at 243k rows, 200 MB at 2.5M), these pieces a constant few MB.
    """
    with _export(path) as fh:
        pieces = _records(fh, block_bytes)
        first = next(pieces, b"")
        header, first = _split_header(first.removeprefix(b"\xef\xbb\xbf"))
        names = _unique(next(csv.reader(io.StringIO(header.decode("utf-8"))), []))
        if not names:
            raise pa.ArrowInvalid("Empty CSV file")
        read = pa_csv.ReadOptions(column_names=names, use_threads=False)
        convert = pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names}, null_values=[""], strings_can_be_null=True
        )
        for piece in itertools.chain([first], pieces):
            if piece.strip():
                table = pa_csv.read_csv(pa.BufferReader(piece), read_options=read, convert_options=convert)
                if table.num_rows:
                    yield table


def _records(fh: IO[bytes], block_bytes: int) -> Iterator[bytes]:
    """The file in pieces of about `block_bytes`, each ending at a record boundary."""
    carry = b""
    while True:
        block = fh.read(block_bytes)
        data = carry + block if carry else block
        if not block:
            if data:
                yield data
            return
        cut = _last_record_end(data)
        data, carry = (data[:cut], data[cut:]) if cut else (b"", data)  # no boundary yet: a record longer than a block
        if data:
            yield data


def _last_record_end(data: bytes) -> int:
    """Just after the last newline outside quotes (0 when none): a piece starts outside quotes, and
    CSV doubles quotes inside a quoted field, so a newline is outside quotes when the quotes before it are even."""
    cut = data.rfind(b"\n") + 1
    quotes = data.count(b'"', 0, cut)
    while cut and quotes % 2:
        previous = data.rfind(b"\n", 0, cut - 1) + 1
        quotes -= data.count(b'"', previous, cut)
        cut = previous
    return cut


def _split_header(piece: bytes) -> tuple[bytes, bytes]:
    """The header record and the rest of the first piece."""
    end = piece.find(b"\n")
    while end != -1 and piece.count(b'"', 0, end) % 2:
        end = piece.find(b"\n", end + 1)
    return (piece, b"") if end == -1 else (piece[:end], piece[end + 1 :])


def _unique(names: list[str]) -> list[str]:
    """A repeated header name gets a suffix, as pandas reads it ("a", "a.1"), so every column is kept apart."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if not count else f"{name}.{count}")
    return unique


# ----------------------------------------------------------------------------- JSON
def _json_array_pages(path: Path, page_rows: int) -> Iterator[pa.Table]:
    """A JSON array of row objects (the API's shape), `page_rows` objects at a time."""
    with _export(path) as fh:
        for rows in _batched(ijson.items(fh, "item", use_float=True), page_rows):
            bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
            if bad is not None:
                raise SocrataError(f"cannot read export file {path}: expected a JSON array of row objects but an item is a JSON {type(rows[bad]).__name__}")
            yield rows_to_table(rows)


def _rows_json_pages(path: Path, source: str, page_rows: int) -> Iterator[pa.Table]:
    """Socrata's ``rows.json``: the columns from ``meta.view``, then the ``data`` arrays, system columns dropped."""
    fields, positions, width = _rows_json_columns(path, source)
    with _export(path) as fh:
        for number, rows in enumerate(_batched(ijson.items(fh, "data.item", use_float=True), page_rows)):
            yield _array_rows_table(rows, fields, positions, width, source, number * page_rows)


def _rows_json_columns(path: Path, source: str) -> tuple[list[str], list[int], int]:
    """(data column names, their positions in a row array, the row width) from ``meta.view``."""
    with _export(path) as fh:
        view = next(ijson.items(fh, "meta.view", use_float=True), None)  # stops reading once meta.view ends
    if view is None:
        raise SocrataError(f"cannot read export file {source}: a JSON object without meta.view (not a rows.json export)")
    metadata = parse_view(view, source)
    data = metadata.data_columns
    return [column.field_name for column in data], [column.position for column in data], len(metadata.columns)


def _array_rows_table(
    rows: Sequence[Any], fields: list[str], positions: list[int], width: int, source: str, first: int
) -> pa.Table:
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            shape = f"an array of {len(row)} values" if isinstance(row, list) else f"a JSON {type(row).__name__}"
            raise SocrataError(f"cannot read export file {source}: data row {first + index} is {shape}, expected {width} values")
    columns = list(zip(*rows)) if rows else [()] * width
    return pa.table({name: _text_array(columns[position]) for name, position in zip(fields, positions)})


def _text_array(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a number or an object: its JSON text
        return pa.array([_as_text(value) for value in values], pa.string())


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
