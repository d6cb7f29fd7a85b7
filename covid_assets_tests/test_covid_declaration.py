"""The COVID dataset as a declaration (covid_assets/covid_pcr_testing.yaml), loaded by the generic path.

The declaration must give today's COVID tables: the same columns and types, the same typing of
the snapshot cell for cell, and the bad-row report worded as the pandas typing words it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from covid_assets.assets.tables import BASE, RAW, SOURCE_ASSET_KEY
from covid_assets.datasets import load
from covid_assets.datasets.component import check_queries, row_count_check_name
from covid_assets.datasets.dataset_spec import DatasetSpec
from covid_assets.datasets.declaration import DatasetDeclaration
from covid_assets.datasets.pages import export_pages
from covid_assets_tests.helpers import SNAPSHOT, query

DECLARATION = Path(__file__).parents[1] / "covid_assets" / "covid_pcr_testing.yaml"
FETCHED_AT = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
ROW = {
    "state": "AL",
    "state_name": "Alabama",
    "state_fips": "01",
    "fema_region": "Region 4",
    "overall_outcome": "Positive",
    "date": "2020-03-01T00:00:00.000",
    "new_results_reported": "5",
    "total_results_reported": "5",
}


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return DatasetDeclaration.model_validate(yaml.safe_load(DECLARATION.read_text())["attributes"]).to_spec(DECLARATION)


@pytest.fixture
def connection(warehouse_url: str) -> Iterator[adbc.Connection]:
    with adbc.connect(warehouse_url) as conn:
        yield conn


def one_page(*overrides: dict) -> list[pa.Table]:
    rows = [{**ROW, **override} for override in overrides]
    return [pa.table({name: pa.array([row[name] for row in rows], pa.string()) for name in ROW})]


def test_the_declaration_describes_todays_tables_source_and_checks(spec: DatasetSpec) -> None:
    assert (spec.base.qualified_name, spec.raw.qualified_name, spec.source_key) == (BASE.qualified_name, RAW.qualified_name, SOURCE_ASSET_KEY)
    assert [(c.name, c.type, c.description) for c in spec.base.columns] == [(c.name, c.type, c.description) for c in BASE.columns]
    assert spec.base.key == BASE.key and spec.base.description == BASE.description
    assert [(c.name, c.type) for c in spec.raw.columns] == [(c.name, c.type) for c in RAW.columns]
    names = {query.name for query in check_queries(spec)} | {row_count_check_name(spec)}
    assert names == {"primary_key_unique_and_not_null", "outcomes_are_known", "dates_in_range",
                     "states_are_known_jurisdictions", "row_count_matches_accepted_load"}


def test_the_known_jurisdictions_are_the_fips_lookups_codes_and_agree_with_the_snapshot(spec: DatasetSpec) -> None:
    fips = dict(spec.base["state_fips"].rules.fill_map)
    assert sorted(spec.checks.allowed_values["state"]) == sorted(fips)
    pairs = pd.read_csv(SNAPSHOT, dtype=str, usecols=["state", "state_fips"]).drop_duplicates()
    assert len(pairs) == 56
    assert {state: fips[state] for state in pairs["state"]} == dict(zip(pairs["state"], pairs["state_fips"]))


def test_the_generic_load_of_the_snapshot_matches_todays_tables_cell_for_cell(
    spec: DatasetSpec, connection, warehouse_url: str, snapshot_warehouse: str
) -> None:
    """Today's tables (the pandas path, `snapshot_warehouse`) against the declaration's (SQL typing)."""
    landing = load.land(connection, spec, export_pages(SNAPSHOT), FETCHED_AT)
    accepted = load.gate(connection, spec, landing, allow_shrink=False, max_shrink_fraction=0.05)
    load.publish_raw(connection, spec, landing)
    load.merge_base(connection, spec, accepted)
    connection.commit()
    for table in (spec.raw, spec.base):
        columns = ", ".join(f'"{c}"' for c in table.column_names if c != "fetched_at")
        statement = f"SELECT {columns} FROM {table.qualified_name} ORDER BY {columns}"
        declared, today = query(warehouse_url, statement), query(snapshot_warehouse, statement)
        assert len(declared) == len(today) == 57_459
        assert declared == today, table.qualified_name


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"date": "2020-13-45"}, "bad date: 1"),
        ({"date": "2020-03-01xyz"}, "bad date: 1"),
        ({"new_results_reported": "1e3"}, "non-numeric new_results_reported: 1"),
        ({"date": None}, "missing date: 1"),
        ({"new_results_reported": "12a"}, "non-numeric new_results_reported: 1"),
        ({"total_results_reported": "1.5"}, "non-numeric total_results_reported: 1"),
        ({"new_results_reported": "1\x002"}, "non-numeric new_results_reported: 1"),
        ({"new_results_reported": "1000000000000000"}, "new_results_reported out of range (|n| >= 10^12): 1"),
        ({"total_results_reported": "-1000000000000"}, "total_results_reported out of range (|n| >= 10^12): 1"),
        ({"overall_outcome": "Maybe"}, "unknown overall_outcome: 1"),
        ({"overall_outcome": None}, "unknown overall_outcome: 1"),
        ({"state": "ALA"}, "state is not a 2-letter code: 1"),
        ({"state": None}, "missing state: 1"),
    ],
)
def test_untypeable_rows_are_refused_worded_as_today(spec: DatasetSpec, connection, override: dict, problem: str) -> None:
    landing = load.land(connection, spec, one_page({"state": "AK"}, override, {"state": "AZ"}), FETCHED_AT)
    with pytest.raises(load.InvalidRowsError) as error:
        load.gate(connection, spec, landing, allow_shrink=False, max_shrink_fraction=0.05)
    message = str(error.value)
    assert message.startswith(f"1 of 3 source rows cannot be typed ({problem}); first rows:"), message
    assert "source row 1:" in message and "source row 0" not in message and "source row 2" not in message


@pytest.mark.parametrize(
    ("override", "column", "expected"),
    [
        ({"state_fips": "1"}, "state_fips", "01"),
        ({"state_fips": None, "state": "WY"}, "state_fips", "56"),
        ({"state_fips": " ", "state": "PR"}, "state_fips", "72"),
        ({"state_fips": None, "state": "ZZ"}, "state_fips", None),  # unknown jurisdiction: NULL, flagged by the checks
        ({"date": "2021/02/27"}, "date", dt.date(2021, 2, 27)),
        ({"date": "2021-02-27"}, "date", dt.date(2021, 2, 27)),
        ({"new_results_reported": " "}, "new_results_reported", None),
        ({"new_results_reported": "-999999999999"}, "new_results_reported", -999_999_999_999),
        ({"new_results_reported": "0000000000000007"}, "new_results_reported", 7),
    ],
)
def test_values_are_typed_and_repaired_as_today(spec: DatasetSpec, connection, warehouse_url: str, override: dict, column: str, expected) -> None:
    landing = load.land(connection, spec, one_page(override), FETCHED_AT)
    load.merge_base(connection, spec, load.gate(connection, spec, landing, allow_shrink=False, max_shrink_fraction=0.05))
    connection.commit()
    assert query(warehouse_url, f"SELECT {column} FROM covid_19.covid_test_results") == [(expected,)]
