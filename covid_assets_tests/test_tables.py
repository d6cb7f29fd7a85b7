"""The eight tables' specs (assets/tables.py) are what Postgres holds and what the UI shows."""

from __future__ import annotations

import psycopg
import pytest

import covid_assets.definitions
from covid_assets.assets.tables import BASE_ASSET_KEY, REPORTING, REVISIONS, TABLES
from covid_assets.datasets.table_spec import TableSpec
from covid_assets_tests.helpers import query

# information_schema.columns.data_type -> the spec's type name
_SPEC_TYPE = {"timestamp with time zone": "TIMESTAMPTZ", "timestamp without time zone": "TIMESTAMP"}


def stored_definition(url: str, spec: TableSpec) -> tuple[dict[str, str], list[str]]:
    """The table's columns with their Postgres types (in table order) and its primary key (in key order)."""
    with psycopg.connect(url) as connection:
        columns = connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (spec.schema, spec.name),
        ).fetchall()
        key = connection.execute(
            "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY k.position",
            (spec.qualified_name,),
        ).fetchall()
    types = {name: _SPEC_TYPE.get(data_type, data_type.upper()) for name, data_type in columns}
    return types, [name for (name,) in key]


@pytest.mark.parametrize("spec", TABLES, ids=lambda spec: spec.qualified_name)
def test_each_table_in_postgres_has_the_columns_types_and_key_its_spec_declares(snapshot_warehouse: str, spec: TableSpec) -> None:
    types, key = stored_definition(snapshot_warehouse, spec)
    assert types == spec.postgres_types
    assert list(types) == spec.column_names  # and in the declared order
    if spec is REVISIONS:  # a view: its key holds by construction (GROUP BY load, state), no constraint
        listed = ", ".join(spec.key)
        assert query(snapshot_warehouse, "SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)", (spec.qualified_name,)) == [("v",)]
        rows, keys = query(snapshot_warehouse, f"SELECT count(*), count(DISTINCT ({listed})) FROM {spec.qualified_name}")[0]
        assert rows == keys > 0
    else:
        assert key == list(spec.key)


def test_the_ui_shows_the_column_schema_and_descriptions_of_each_spec() -> None:
    asset_specs = {spec.key: spec for spec in covid_assets.definitions.defs.resolve_all_asset_specs()}
    assert {spec.asset_key for spec in TABLES} <= set(asset_specs)
    for table in TABLES:
        metadata = asset_specs[table.asset_key].metadata
        assert metadata["dagster/column_schema"] == table.column_schema, table.qualified_name
        assert metadata["column_descriptions"] == table.column_descriptions, table.qualified_name
        assert metadata.get("primary_key", []) == list(table.key), table.qualified_name
        assert asset_specs[table.asset_key].description == table.description, table.qualified_name


def test_each_materialization_carries_its_spec_types_and_the_reporting_tables_their_column_lineage(snapshot_load) -> None:
    _, result = snapshot_load
    events = {event.asset_key: event.materialization.metadata for event in result.get_asset_materialization_events()}
    for table in TABLES:
        schema = events[table.asset_key]["dagster/column_schema"].schema
        assert {column.name: column.type for column in schema.columns} == table.postgres_types, table.qualified_name
        assert {column.name: column.description or "" for column in schema.columns} == table.column_descriptions
    for summary in REPORTING:
        lineage = events[summary.asset_key]["dagster/column_lineage"].value
        assert lineage == summary.column_lineage(BASE_ASSET_KEY), summary.qualified_name
        derived = set(summary.column_names) - ({"load_id", "committed_at"} if summary is REVISIONS else set())  # from covid_19.loads
        assert set(lineage.deps_by_column) == derived, summary.qualified_name
