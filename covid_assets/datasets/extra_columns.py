"""Every source column a table does not name, kept as one JSON object per row, and NUL bytes removed.

What a source sends must never block a refresh by its shape, so no source name becomes a Postgres
identifier: the columns a table names are TEXT columns, and every other column lands in one JSONB
column, `extra_columns` (column name -> value as text, only the columns the row has a value in;
NULL when none). Bounds: at most MAX_EXTRA_COLUMNS extra columns are kept (the first ones, in
source order) and names of at most MAX_EXTRA_NAME_CHARS characters; the others are dropped and
listed. Postgres text cannot hold a NUL byte, so NUL bytes are removed from names and values.
The JSON text is built column-wise with Arrow string kernels, never row by row.

Used by the declared datasets' loader
(`datasets/load.py`, page by page).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from covid_assets.datasets.dataset_spec import EXTRA_COLUMNS

__all__ = [
    "EXTRA_COLUMNS",
    "MAX_EXTRA_COLUMNS",
    "MAX_EXTRA_NAME_CHARS",
    "extra_keys",
    "json_objects",
    "may_contain",
    "without_nul",
]

MAX_EXTRA_COLUMNS = 1_000
MAX_EXTRA_NAME_CHARS = 1_000


def extra_keys(names: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(source name, JSON key) of the extra columns kept, and the names dropped, within the bounds."""
    kept: list[tuple[str, str]] = []
    dropped: list[str] = []
    keys: set[str] = set()
    for name in names:
        key = name.replace("\x00", "")
        if len(kept) >= MAX_EXTRA_COLUMNS or len(name) > MAX_EXTRA_NAME_CHARS or key in keys or not is_utf8(key):
            dropped.append(name)
            continue
        kept.append((name, key))
        keys.add(key)
    return kept, dropped


def is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON keys and Postgres reject
        return False
    return True


def json_objects(columns: dict[str, pa.ChunkedArray], rows: int) -> pa.ChunkedArray:
    """One JSON object per row, {"key": "value", ...} of the non-null values; NULL when there are none.

    Built column-wise (Arrow string kernels): ',"key":"value"' per column and row ('' for a
    null), concatenated, first comma cut. (`binary_join_element_wise` with null_handling="skip"
    is avoided: pyarrow 26 drops the rows whose inputs are all null.)
    """
    if not columns:
        return pa.chunked_array([pa.nulls(rows, pa.string())]).cast(pa.json_())

    def text(value: str | None) -> pa.Scalar:
        return pa.scalar(value, pa.large_string())  # the type pandas' string columns have

    if len(columns) == 1:  # the usual case (geocoded_state): one join, a null value gives a null object
        ((key, values),) = columns.items()
        prefix = text("{" + json.dumps(key, ensure_ascii=False) + ':"')
        return pc.binary_join_element_wise(prefix, json_text(values.cast(pa.large_string())), text('"}'), text("")).cast(pa.json_())
    members = [
        pc.fill_null(
            pc.binary_join_element_wise(
                text("," + json.dumps(key, ensure_ascii=False) + ':"'), json_text(values.cast(pa.large_string())), text('"'), text("")
            ),
            text(""),
        )
        for key, values in columns.items()
    ]
    body = pc.binary_join_element_wise(*members, text(""))
    objects = pc.binary_join_element_wise(text("{"), pc.utf8_slice_codeunits(body, 1), text("}"), text(""))
    return pc.if_else(pc.equal(body, text("")), text(None), objects).cast(pa.json_())


def json_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The inside of a JSON string literal for each value (RFC 8259 escapes; NUL bytes already gone)."""
    if may_contain(values, lambda data: (data == ord("\\")).any()):
        values = pc.replace_substring(values, "\\", "\\\\")
    if may_contain(values, lambda data: (data == ord('"')).any()):
        values = pc.replace_substring(values, '"', '\\"')
    if may_contain(values, lambda data: data.min() < 0x20):
        for code in range(1, 0x20):
            values = pc.replace_substring(values, chr(code), f"\\u{code:04x}")
    return values


def without_nul(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, int]:
    """The values without NUL bytes, and how many values had one."""
    if not may_contain(values, lambda data: (data == 0).any()):
        return values, 0
    has_nul = pc.match_substring(values, "\x00")
    return pc.replace_substring(values, "\x00", ""), int(pc.sum(has_nul).as_py() or 0)


def may_contain(values: pa.ChunkedArray, test: Callable[[np.ndarray], bool]) -> bool:
    """`test` on the raw bytes of each chunk's data buffer (no copy; may include bytes outside a
    sliced chunk, so True can be a false alarm, False is certain): a scan of a few ms per 243k
    values, where a string kernel takes 5-30 ms."""
    for chunk in values.chunks:
        data = chunk.buffers()[2] if chunk.null_count < len(chunk) else None
        if data is not None and data.size and test(np.frombuffer(data, dtype=np.uint8)):
            return True
    return False
