"""The raw table's landing frame: required columns as delivered, every other column as JSON."""

from __future__ import annotations

import json
import random

import pandas as pd
import pyarrow as pa
import pytest

from covid_assets.assets.raw import EXTRA_COLUMNS, MAX_EXTRA_COLUMNS, landing_frame
from covid_assets.sources.socrata import REQUIRED_COLUMNS
from covid_assets_tests.helpers import query

# Characters JSON must escape, characters it must not, multi-byte ones and NUL.
ALPHABET = ['"', "\\", "\n", "\t", "\x01", "\x1f", "\x7f", "/", "é", "𝄞", "\u2028", " ", "a", "\x00"]


def delivery(rows: int, extras: dict[str, list[str | None]]) -> pd.DataFrame:
    required = {column: [f"{column}-{i}" for i in range(rows)] for column in REQUIRED_COLUMNS}
    return pd.DataFrame({**required, **extras}, dtype="string")


def random_values(rng: random.Random, rows: int) -> list[str | None]:
    return [None if rng.random() < 0.3 else "".join(rng.choices(ALPHABET, k=rng.randint(0, 6))) for _ in range(rows)]


def expected_objects(extras: dict[str, list[str | None]], rows: int) -> list[dict | None]:
    objects = []
    for i in range(rows):
        present = {name.replace("\x00", ""): values[i].replace("\x00", "") for name, values in extras.items() if values[i] is not None}
        objects.append(present or None)
    return objects


@pytest.mark.parametrize("columns", [1, 3], ids=["one-extra-column", "three-extra-columns"])
def test_extra_columns_become_exact_json_objects(postgres_server_url: str, columns: int) -> None:
    rng = random.Random(columns)
    rows = 2_000
    names = ['weird "name"\n', "", "no\x00te"][:columns]
    extras = {name: random_values(rng, rows) for name in names}
    landing = landing_frame(delivery(rows, extras))

    assert list(landing.frame.columns) == [*REQUIRED_COLUMNS, EXTRA_COLUMNS]
    assert str(landing.frame[EXTRA_COLUMNS].dtype) == str(pd.ArrowDtype(pa.json_()))
    texts = [None if pd.isna(text) else text for text in landing.frame[EXTRA_COLUMNS]]
    expected = expected_objects(extras, rows)
    assert [None if text is None else json.loads(text) for text in texts] == expected
    # Postgres reads the same objects (jsonb rejects what json.loads might forgive, e.g. \u0000).
    parsed = query(postgres_server_url, "SELECT t::jsonb FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n", (texts,))
    assert [value for (value,) in parsed] == expected
    assert landing.nul_values == sum(value is not None and "\x00" in value for values in extras.values() for value in values)


def test_required_columns_are_kept_as_delivered_except_nul_bytes() -> None:
    delivered = delivery(3, {})
    delivered.loc[1, "state_name"] = "Ala\x00bama"
    landing = landing_frame(delivered)
    assert landing.frame["state_name"].tolist() == ["state_name-0", "Alabama", "state_name-2"]
    assert landing.frame["state"].tolist() == delivered["state"].tolist()
    assert (landing.frame.dtypes[list(REQUIRED_COLUMNS)] == delivered.dtypes[list(REQUIRED_COLUMNS)]).all()
    assert landing.frame[EXTRA_COLUMNS].isna().all() and landing.nul_values == 1


def test_a_row_without_extra_values_gets_null_not_an_empty_object() -> None:
    landing = landing_frame(delivery(3, {"a": ["1", None, None], "b": [None, None, "2"]}))
    assert [None if pd.isna(text) else json.loads(text) for text in landing.frame[EXTRA_COLUMNS]] == [{"a": "1"}, None, {"b": "2"}]


def test_extra_columns_beyond_the_bounds_are_dropped_and_named() -> None:
    extras = {f"c{i:04}": ["v"] for i in range(MAX_EXTRA_COLUMNS + 2)}
    extras["x" * 1_001] = ["long"]
    extras["du\x00p"] = ["1"]
    landing = landing_frame(delivery(1, extras))
    assert len(landing.extras) == MAX_EXTRA_COLUMNS
    assert landing.dropped == ["c1000", "c1001", "x" * 1_001, "du\x00p"]
    assert "extra_columns_dropped" in landing.metadata() and "4 source column(s) not stored" in landing.warnings()[0]
    assert len(json.loads(landing.frame[EXTRA_COLUMNS].iloc[0])) == MAX_EXTRA_COLUMNS


def test_a_sliced_delivery_is_read_by_value_not_by_buffer() -> None:
    """Arrow slices share their parent's buffers: bytes outside the slice must not matter."""
    whole = delivery(4, {"e": ['"quoted"', "\x00", "plain", "plain"]})
    landing = landing_frame(whole.iloc[2:].reset_index(drop=True))
    assert landing.frame[EXTRA_COLUMNS].tolist() == ['{"e":"plain"}', '{"e":"plain"}'] and landing.nul_values == 0
