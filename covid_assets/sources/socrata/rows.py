"""Rows as delivered -> all-string Arrow tables and pandas frames, shared by the API and the file reader.

Every value stays the text the source sent (no trimming, no type conversion, so ``state_fips``
keeps its leading zero); a value that is not a JSON string (a number, a geo object) is kept as
its JSON text. Typing happens downstream.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from covid_assets.sources.socrata.errors import SocrataError, clip

__all__ = [
    "REQUIRED_COLUMNS",
    "Extract",
    "FetchStats",
    "column_order",
    "describe_not_rows",
    "frame_from_tables",
    "rows_to_table",
    "string_rows_table",
]

# The columns of j8mb-icvb the pipeline needs: the default of every reader here.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "state",
    "state_name",
    "state_fips",
    "fema_region",
    "overall_outcome",
    "date",
    "new_results_reported",
    "total_results_reported",
)


@dataclass(frozen=True)
class FetchStats:
    """What an extract cost: for logs, asset metadata and benchmarks.

    `requests` counts logical requests (count query + pages); `retries` the extra
    attempts made for them (urllib3's, and re-requests of a body that broke
    off); `pages` the page requests (including a
    final empty page when one was needed to find the end); `bytes` the
    decoded response bodies (or the file size for a file).
    """

    rows: int
    pages: int
    requests: int
    retries: int
    bytes: int
    elapsed_s: float


@dataclass(frozen=True, eq=False)
class Extract:
    """A raw extract: all-string frame, how it was obtained, and from where (URL or path)."""

    frame: pd.DataFrame
    stats: FetchStats
    source: str


def _as_text(value: Any) -> str | None:
    """Socrata sends strings; anything else (numbers, geo objects) is kept as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """One page of row objects as an all-string Arrow table (absent keys -> null).

    Done per page as it arrives so the full extract never exists as Python dicts.
    """
    names = dict.fromkeys(itertools.chain.from_iterable(rows))
    try:
        return pa.Table.from_struct_array(pa.array(rows, type=pa.struct([(name, pa.string()) for name in names])))
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a value that is not a string: keep its JSON text
        return pa.table({name: pa.array([_as_text(row.get(name)) for row in rows], pa.string()) for name in names})


def string_rows_table(body: bytes | bytearray) -> pa.Table | None:
    """A page body that is a JSON array of row objects with only string (or null) values, parsed by
    Arrow's JSON reader straight into an all-string table; None for any other body.

    This is what Socrata sends, and the reason for it is memory: a 50,000-row page (11 MB) costs
    0.13 s and Arrow buffers here, against 0.67 s and about 50 MB of Python dicts and strings through
    `json.loads` + `rows_to_table`, memory the allocator keeps once the page is gone; with a few pages
    decoded at once that was most of a run's peak RSS. Anything else (a number or an object as a
    value, a repeated key, an empty array, not an array, not JSON) returns None and takes the general
    path, which keeps non-string values as their JSON text and says what is wrong with a bad body.
    """
    document = pa.py_buffer(b"".join((b'{"rows":', body, b"}")))  # one copy, whatever the body's type
    # One block, parsed on this thread from a native buffer: pages are decoded by several worker
    # threads at once, and Arrow's own reader threads calling back into a Python file object
    # crashed the process now and then (pyarrow 26).
    options = pa_json.ReadOptions(block_size=document.size + 1, use_threads=False)
    try:
        parsed = pa_json.read_json(pa.BufferReader(document), read_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    rows_type = parsed.schema.field("rows").type
    if parsed.num_rows != 1 or not pa.types.is_list(rows_type) or not pa.types.is_struct(rows_type.value_type):
        return None
    rows = parsed.column("rows").chunk(0).values
    fields = list(rows.type)
    if not len(rows) or not fields or rows.null_count or not all(pa.types.is_string(f.type) or pa.types.is_null(f.type) for f in fields):
        return None
    table = pa.Table.from_struct_array(rows)
    return table.cast(pa.schema([(f.name, pa.string()) for f in fields]))


def column_order(
    present: Iterable[str], source: str, required: Sequence[str] = REQUIRED_COLUMNS, quote: bool = True
) -> list[str]:
    """`required` first, extras in first-seen order; a missing required column is fatal.

    The error lists the columns present (clipped) when `quote`; for a file it only
    counts them, since the header is the file's content.
    """
    seen = list(dict.fromkeys(present))
    missing = [c for c in required if c not in seen]
    if missing:
        present_text = clip(", ".join(seen)) if quote else f"{len(seen)} column(s)"
        raise SocrataError(
            f"{source}: required column(s) missing: {', '.join(missing)} "
            f"(columns present: {present_text if seen else 'none'})"
        )
    return list(required) + [c for c in seen if c not in required]


def frame_from_tables(
    tables: Sequence[pa.Table], source: str, required: Sequence[str] = REQUIRED_COLUMNS, quote: bool = True
) -> pd.DataFrame:
    """Align page tables on the final column order and hand them to pandas as "string"."""
    order = column_order((name for t in tables for name in t.column_names), source, required, quote)
    table = pa.concat_tables(tables, promote_options="default").select(order)  # a column a page lacks: nulls
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get, self_destruct=True, split_blocks=True)


def describe_not_rows(data: Any, quote: bool = True) -> str | None:
    """Why a parsed body is not a JSON array of row objects (None when it is).

    With `quote` an object's keys and message are quoted (clipped); a file's are not.
    """
    if isinstance(data, dict):
        if not quote:
            return f"expected a JSON array of rows but got a JSON object with {len(data)} key(s)"
        hint = f" (message: {clip(data['message'])})" if data.get("message") else ""
        keys = clip(", ".join(itertools.islice(map(str, data), 5)))
        return f"expected a JSON array of rows but got a JSON object with keys [{keys}]{hint}"
    if not isinstance(data, list):
        return f"expected a JSON array of rows but got a JSON {type(data).__name__}"
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            return f"expected a JSON array of row objects but item {i} is a JSON {type(item).__name__}"
    if data and not any(data):
        return f"all {len(data)} row objects are empty (no fields at all)"
    return None
