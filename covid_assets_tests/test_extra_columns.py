"""Extra source columns as exact JSON objects (datasets/extra_columns.py), as the raw tables store them.

Moved from the tests of the pandas raw asset: the same cases, on the functions every declared
dataset's landing uses page by page.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from covid_assets.datasets.extra_columns import MAX_EXTRA_COLUMNS, extra_keys, json_objects, without_nul
from covid_assets_tests.helpers import query

# Characters JSON must escape, characters it must not, multi-byte ones and NUL.
ALPHABET = ['"', "\\", "\n", "\t", "\x01", "\x1f", "\x7f", "/", "é", "𝄞", "\u2028", " ", "a", "\x00"]


def random_values(rng: random.Random, rows: int) -> list[str | None]:
    return [None if rng.random() < 0.3 else "".join(rng.choices(ALPHABET, k=rng.randint(0, 6))) for _ in range(rows)]


def objects_of(extras: dict[str, list[str | None]], rows: int) -> list[str | None]:
    """The JSON text per row, as the landing builds it: names and values without NUL bytes."""
    kept, _ = extra_keys(list(extras))
    present = {key: without_nul(pa.chunked_array([pa.array(extras[name], pa.string())]))[0] for name, key in kept}
    return json_objects(present, rows).to_pylist()


@pytest.mark.parametrize("columns", [1, 3], ids=["one-extra-column", "three-extra-columns"])
def test_extra_columns_become_exact_json_objects(postgres_server_url: str, columns: int) -> None:
    rng = random.Random(columns)
    rows = 2_000
    names = ['weird "name"\n', "", "no\x00te"][:columns]
    extras = {name: random_values(rng, rows) for name in names}
    texts = objects_of(extras, rows)
    expected = []
    for i in range(rows):
        present = {name.replace("\x00", ""): values[i].replace("\x00", "") for name, values in extras.items() if values[i] is not None}
        expected.append(present or None)
    assert [None if text is None else json.loads(text) for text in texts] == expected
    # Postgres reads the same objects (jsonb rejects what json.loads might forgive, e.g. \u0000).
    parsed = query(postgres_server_url, "SELECT t::jsonb FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n", (texts,))
    assert [value for (value,) in parsed] == expected


def test_a_row_without_extra_values_gets_null_not_an_empty_object() -> None:
    texts = objects_of({"a": ["1", None, None], "b": [None, None, "2"]}, 3)
    assert [None if text is None else json.loads(text) for text in texts] == [{"a": "1"}, None, {"b": "2"}]


def test_extra_columns_beyond_the_bounds_are_dropped_and_named() -> None:
    names = [f"c{i:04}" for i in range(MAX_EXTRA_COLUMNS + 2)] + ["x" * 1_001, "du\x00p", "c0000"]
    kept, dropped = extra_keys(names)
    assert len(kept) == MAX_EXTRA_COLUMNS
    assert dropped == ["c1000", "c1001", "x" * 1_001, "du\x00p", "c0000"]


def test_a_sliced_array_is_read_by_value_not_by_buffer() -> None:
    """Arrow slices share their parent's buffers: bytes outside the slice must not matter."""
    whole = pa.chunked_array([pa.array(['"quoted"', "\x00", "plain", "plain"], pa.string())])
    values, removed = without_nul(whole.slice(2))
    assert json_objects({"e": values}, 2).to_pylist() == ['{"e":"plain"}', '{"e":"plain"}'] and removed == 0
