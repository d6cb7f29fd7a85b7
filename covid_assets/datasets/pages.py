"""A delivery as a stream of bounded, all-string Arrow pages: from the API or from an export file.

The loader (`datasets/load.py`) COPYs each page into the warehouse and lets it go, so the
Python process never holds more than a page (plus the API's bounded window of pages in flight),
whatever the dataset's size. Every value stays the text the source sent (no trimming, no type
conversion); a value that is not a JSON string (a number, a geo object) is kept as its JSON text.

* `api_pages`: `SocrataClient.plan()`, which fetches in ``:id`` order with a bounded window.
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

from covid_assets.sources.socrata.client import SocrataClient
from covid_assets.sources.socrata.errors import SocrataError
from covid_assets.sources.socrata.export_files import _decompressed, _file_problem, _open_export
from covid_assets.sources.socrata.metadata import parse_view
from covid_assets.sources.socrata.paging import ProgressFn
from covid_assets.sources.socrata.rows import _as_text, rows_to_table

__all__ = ["PAGE_ROWS", "CSV_BLOCK_BYTES", "api_pages", "export_pages"]

PAGE_ROWS = 50_000  # rows per page of a JSON export
CSV_BLOCK_BYTES = 4 << 20  # bytes of CSV per page: about 50k rows of a typical Socrata export
_HEAD_BYTES = 64


def api_pages(client: SocrataClient, known_count: int | None = None, progress: ProgressFn | None = None) -> Iterator[pa.Table]:
    """Every row of the dataset in ``:id`` order, page by page, as the paging plan delivers them.

    The plan's own checks (no rows, fewer rows than counted) run after its last page, which is
    why the loader refuses nothing it has not finished landing and commits nothing itself.
    """
    with client.plan(progress) as plan:
        yield from plan.pages(known_count)


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
    """Every cell a string; only an empty cell is missing (a literal "NA" stays "NA")."""
    names = _csv_header(path)
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in names}, null_values=[""], strings_can_be_null=True
    )
    with _export(path) as fh:
        reader = pa_csv.open_csv(fh, read_options=pa_csv.ReadOptions(block_size=block_bytes), convert_options=convert)
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch])


def _csv_header(path: Path) -> list[str]:
    """The header's column names (read on their own: pyarrow must be told every column's type up front)."""
    with _export(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
        header = next(csv.reader(text), None)
    if not header:
        raise pa.ArrowInvalid("Empty CSV file")
    return header


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
