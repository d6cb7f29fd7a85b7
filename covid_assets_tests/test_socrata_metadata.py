"""View metadata (/api/views/{id}.json) and the warehouse types derived from it: the real document of
data.cdc.gov xt86-xqxz, hostile documents, and the client reading it from the local stand-in."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from covid_assets.sources.socrata import (
    ColumnType,
    SocrataClient,
    SocrataError,
    SocrataSource,
    SocrataTarget,
    column_types,
    parse_view,
    warehouse_type,
)
from covid_assets.sources.socrata import client as client_module
from covid_assets.sources.socrata.metadata import MAX_COLUMNS, MAX_DESCRIPTION, MAX_FIELD_NAME
from covid_assets_tests.helpers import environment, from_api
from covid_assets_tests.support import FakeSocrata, Fault

pytestmark = pytest.mark.timeout(60, method="thread")

# Socrata's rows.json export of xt86-xqxz: meta.view is what /api/views/xt86-xqxz.json returns.
ROWS_JSON = Path(__file__).parent / "fixtures" / "cdc_xt86-xqxz_rows.json.gz"
SYSTEM_COLUMNS = [":sid", ":id", ":position", ":created_at", ":created_meta", ":updated_at", ":updated_meta", ":meta"]
# The dataset's 16 data columns and their dataTypeName in the real document: codes and estimates
# are "number", labels (and the year, which holds ranges like "2009-2010") are "text".
DATA_COLUMNS = {
    "indicator": "TEXT", "panel": "TEXT", "panel_num": "NUMERIC", "unit": "TEXT", "unit_num": "NUMERIC",
    "stub_name": "TEXT", "stub_name_num": "NUMERIC", "stub_label": "TEXT", "stub_label_num": "NUMERIC",
    "year": "TEXT", "year_num": "NUMERIC", "age": "TEXT", "age_num": "NUMERIC", "estimate": "NUMERIC",
    "se": "NUMERIC", "flag": "TEXT",
}


@pytest.fixture(scope="module")
def export() -> dict[str, Any]:
    with gzip.open(ROWS_JSON, "rt", encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture
def real_view(export: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(export["meta"]["view"])


def a_view(columns: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": "abcd-1234", "name": "A dataset", "rowsUpdatedAt": 1_700_000_000, "columns": columns, **extra}


def a_column(field_name: str = "value", data_type: str = "text", **extra: Any) -> dict[str, Any]:
    return {"fieldName": field_name, "name": field_name.upper(), "dataTypeName": data_type, **extra}


# ---------------------------------------------------------------------------------------
# The real document
# ---------------------------------------------------------------------------------------
def test_the_real_view_metadata_is_read(real_view: dict[str, Any]) -> None:
    view = parse_view(real_view, str(ROWS_JSON))
    assert (view.dataset_id, view.rows_updated_at) == ("xt86-xqxz", 1622757527)
    assert view.name is not None and view.name.startswith("Visits to physician offices")
    assert view.description is not None and "National Ambulatory Medical Care Survey" in view.description
    assert len(view.columns) == 24
    assert [c.field_name for c in view.columns if c.system] == SYSTEM_COLUMNS
    assert [c.field_name for c in view.data_columns] == list(DATA_COLUMNS)
    estimate = next(c for c in view.columns if c.field_name == "estimate")
    assert (estimate.name, estimate.data_type, estimate.description) == ("ESTIMATE", "number", "Calculated estimate of the measure.")


def test_the_data_columns_are_the_values_rows_carry(export: dict[str, Any], real_view: dict[str, Any]) -> None:
    """In the export rows are arrays in column order: the data columns hold the data, the system ones row ids."""
    view = parse_view(real_view, str(ROWS_JSON))
    first = export["data"][0]
    values = {c.field_name: first[c.position] for c in view.data_columns}
    assert values["indicator"].startswith("Visits to physician offices")
    assert (values["year"], values["year_num"], values["age"]) == ("2000", "1", "All ages")
    assert str(first[next(c.position for c in view.columns if c.field_name == ":id")]).startswith("00000000-")


def test_types_are_derived_from_the_real_metadata(real_view: dict[str, Any]) -> None:
    types = column_types(parse_view(real_view, str(ROWS_JSON)))
    assert {name: t.warehouse_type for name, t in types.items()} == DATA_COLUMNS
    assert list(types) == list(DATA_COLUMNS)  # the view's order, system columns left out
    assert types["se"] == ColumnType("se", "NUMERIC", "number", "Calculated standard error of the estimate.", None)


def test_a_declaration_overrides_types_per_column(real_view: dict[str, Any]) -> None:
    view = parse_view(real_view, str(ROWS_JSON))
    types = column_types(view, {"year_num": "bigint", "estimate": "double  precision", "flag": "TEXT"})
    assert types["year_num"].warehouse_type == "BIGINT" and "declared BIGINT" in (types["year_num"].note or "")
    assert types["estimate"].warehouse_type == "DOUBLE PRECISION" and types["estimate"].note
    assert types["flag"].warehouse_type == "TEXT" and types["flag"].note is None  # what it would be anyway
    assert types["se"].warehouse_type == "NUMERIC"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"no_such_column": "BIGINT"}, r"type overrides name column\(s\) the view does not have: no_such_column"),
        ({":id": "TEXT"}, r"the view does not have: :id"),  # a system column is not a data column
        ({"estimate": "INTEGER"}, r"unknown column type 'INTEGER' for column 'estimate': expected one of TEXT, NUMERIC"),
    ],
    ids=["unknown-column", "system-column", "unknown-type"],
)
def test_a_bad_override_is_refused_by_name(real_view: dict[str, Any], overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(SocrataError, match=expected):
        column_types(parse_view(real_view, str(ROWS_JSON)), overrides)


@pytest.mark.parametrize(
    "data_type, expected",
    [
        ("text", "TEXT"), ("number", "NUMERIC"), ("calendar_date", "DATE"), ("floating_timestamp", "TIMESTAMP"),
        ("fixed_timestamp", "TIMESTAMPTZ"), ("checkbox", "BOOLEAN"), ("point", "JSONB"), ("location", "JSONB"),
        ("multipolygon", "JSONB"), ("line", "JSONB"), ("url", "JSONB"),
    ],
)
def test_socrata_types_map_to_warehouse_types(data_type: str, expected: str) -> None:
    assert warehouse_type(data_type) == (expected, None)


@pytest.mark.parametrize("data_type", ["blob", "photo", "", "Number "])
def test_an_unknown_type_is_kept_as_text_with_a_note(data_type: str) -> None:
    [column] = column_types(parse_view(a_view([a_column("x", data_type)]), "test")).values()
    assert column.warehouse_type == "TEXT"
    shown = repr(data_type.strip()) if data_type.strip() else "no Socrata type"  # quoted clipped, like all source text
    assert column.note and "kept as TEXT" in column.note and shown in column.note


# ---------------------------------------------------------------------------------------
# A hostile document
# ---------------------------------------------------------------------------------------
def test_a_column_count_beyond_the_cap_is_refused() -> None:
    parse_view(a_view([a_column(f"c{i}") for i in range(MAX_COLUMNS)]), "test")  # at the cap: fine
    with pytest.raises(SocrataError, match=rf"lists {MAX_COLUMNS + 1:,} columns, more than the {MAX_COLUMNS:,} accepted"):
        parse_view(a_view([a_column(f"c{i}") for i in range(MAX_COLUMNS + 1)]), "https://example.org/api/views/x.json")


@pytest.mark.parametrize(
    "column, expected",
    [
        ({"fieldName": "x" * (MAX_FIELD_NAME + 1)}, rf"the fieldName of column 1 is not a column name \({MAX_FIELD_NAME + 1} characters"),
        ({"fieldName": "x" * 100_000}, r"100,000 characters, at most 255 printable ones accepted"),
        ({"fieldName": "bad\x00name"}, r"the fieldName of column 1 is not a column name"),
        ({"fieldName": "line\nbreak"}, r"the fieldName of column 1 is not a column name"),
        ({"name": "no field name"}, r"column 1 has no fieldName"),
        ({"fieldName": 7}, r"column 1 has no fieldName"),
        ("a string", r"column 1 is a JSON str, not an object"),
        ({"fieldName": "first"}, r"columns 0 and 1 have the same fieldName 'first'"),
    ],
    ids=["long-name", "huge-name", "nul", "newline", "missing", "not-a-string", "not-an-object", "duplicate"],
)
def test_a_bad_column_is_refused_by_position_with_little_of_its_text(column: Any, expected: str) -> None:
    with pytest.raises(SocrataError, match=expected) as info:
        parse_view(a_view([a_column("first"), column]), "test")
    assert len(str(info.value)) < 400


def test_long_names_descriptions_and_types_are_cut_to_size() -> None:
    description = "Line one.\nLine two\x07 with a bell.\r\n" + "y" * 50_000
    column = a_column("x", "t" * 10_000, name="N" * 10_000, description=description)
    view = parse_view(a_view([column], description="D" * 10_000, name="\x1b[31mred\x1b[0m"), "test")
    [parsed] = view.columns
    assert len(parsed.name) < 400 and parsed.name.startswith("NNN")
    assert len(parsed.data_type) < 100
    assert parsed.description is not None and len(parsed.description) <= MAX_DESCRIPTION + 10
    assert parsed.description.startswith("Line one.\nLine two  with a bell.") and parsed.description.endswith("[...]")
    assert view.description is not None and len(view.description) <= MAX_DESCRIPTION + 10
    assert view.name is not None and "\x1b" not in view.name
    [typed] = column_types(view).values()
    assert typed.warehouse_type == "TEXT" and typed.note is not None and len(typed.note) < 300


@pytest.mark.parametrize(
    "document, expected",
    [
        ([], r"expected a JSON object, got a JSON list"),
        ({"id": "x"}, r"has no column list"),
        ({"columns": {"fieldName": "x"}}, r"has no column list"),
    ],
    ids=["array", "no-columns", "columns-not-a-list"],
)
def test_a_document_that_is_not_view_metadata_is_refused(document: Any, expected: str) -> None:
    with pytest.raises(SocrataError, match=expected):
        parse_view(document, "test")


@pytest.mark.parametrize("value", ["1622757527", True, 1.5, None])
def test_rows_updated_at_is_evidence_only_when_it_is_a_number(value: Any) -> None:
    assert parse_view(a_view([a_column()], rowsUpdatedAt=value), "test").rows_updated_at is None


# ---------------------------------------------------------------------------------------
# From the API
# ---------------------------------------------------------------------------------------
def test_the_client_reads_the_view_metadata_from_the_api(real_view: dict[str, Any]) -> None:
    with FakeSocrata([], dataset_id="xt86-xqxz", view=real_view) as server:
        server.rows_updated_at = real_view["rowsUpdatedAt"]
        client = SocrataClient(SocrataTarget(base_url=server.base_url, dataset_id="xt86-xqxz"), SocrataSource())
        from_api_view = client.metadata()
        with environment(**from_api(server.base_url), SOCRATA_DATASET_ID="xt86-xqxz"):
            from_resource = SocrataSource().metadata()
    assert from_api_view == from_resource == parse_view(real_view, str(ROWS_JSON))
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/views/xt86-xqxz.json")] * 2


def test_view_metadata_larger_than_its_cap_is_refused_unread(real_view: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_METADATA_BYTES", 10_000)  # the real document is 18 kB
    with FakeSocrata([], dataset_id="xt86-xqxz", view=real_view) as server:
        client = SocrataClient(SocrataTarget(base_url=server.base_url, dataset_id="xt86-xqxz"), SocrataSource())
        with pytest.raises(SocrataError, match=r"/api/views/xt86-xqxz.json is larger than 10,000 bytes, the most this request may return"):
            client.metadata()


def test_metadata_that_is_not_json_is_an_error_naming_the_url() -> None:
    with FakeSocrata([]) as server:
        server.faults.append(Fault.html(where="views"))
        client = SocrataClient(SocrataTarget(base_url=server.base_url), SocrataSource())
        with pytest.raises(SocrataError, match=r"bad response from GET .*/api/views/j8mb-icvb.json: the response is an HTML page"):
            client.metadata()
