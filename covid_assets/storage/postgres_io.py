"""Postgres IO manager for pandas DataFrames, in the shape of dagster-duckdb-pandas.

Three small pieces plug into Dagster's `DbIOManager` (which maps an asset key
`[schema, table]` to a table and handles column selection):

* `PostgresClient` hands out the run's warehouse transaction (`storage/warehouse.py`): every
  table a run replaces becomes visible at once when the run commits, and none if it fails.
* `PandasArrowTypeHandler` converts a DataFrame to Arrow, keeps the table's DDL in step
  with it, and bulk-loads with ADBC's `adbc_ingest` (binary COPY underneath).
* `PostgresPandasIOManager` is the configurable resource users wire into `Definitions`.

Identifiers are quoted by psycopg's `sql.Identifier`, never pasted into SQL text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import adbc_driver_postgresql.dbapi as adbc
import pandas as pd
import pyarrow as pa
from dagster import (
    ConfigurableIOManagerFactory,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableSchema,
)
from dagster._core.storage.db_io_manager import DbClient, DbIOManager, DbTypeHandler, TableSlice
from psycopg import sql

from covid_assets.storage.keyed_diff import diff_by_key
from covid_assets.storage.warehouse import WarehouseResource

PRIMARY_KEY_METADATA = "primary_key"
COLUMN_DESCRIPTIONS_METADATA = "column_descriptions"
PREVIEW_ROWS = 10

# Arrow type -> (Postgres type, the Arrow type ADBC must be handed for that column).
_POSTGRES_TYPES: tuple[tuple[object, str, pa.DataType | None], ...] = (
    (pa.types.is_boolean, "BOOLEAN", pa.bool_()),
    (pa.types.is_integer, "BIGINT", pa.int64()),
    (pa.types.is_floating, "DOUBLE PRECISION", pa.float64()),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t), "TEXT", pa.string()),
    (pa.types.is_date, "DATE", pa.date32()),
    (lambda t: pa.types.is_timestamp(t) and t.tz is not None, "TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    (pa.types.is_timestamp, "TIMESTAMP", pa.timestamp("us")),
)

# Arrow type read back from Postgres -> pandas dtype, so a round trip keeps the dtypes:
# Int64 stays Int64 (NULL -> <NA>), text stays "string", dates stay dates.
_PANDAS_DTYPES: dict[pa.DataType, object] = {
    pa.int64(): pd.Int64Dtype(),
    pa.string(): pd.StringDtype(),
    pa.large_string(): pd.StringDtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.date32(): pd.ArrowDtype(pa.date32()),
}


def qualified_name(table_slice: TableSlice) -> sql.Identifier:
    return sql.Identifier(table_slice.schema, table_slice.table)


def select_statement(table_slice: TableSlice) -> sql.Composed:
    columns = (
        sql.SQL(", ").join(map(sql.Identifier, table_slice.columns))
        if table_slice.columns
        else sql.SQL("*")
    )
    return sql.SQL("SELECT {} FROM {}").format(columns, qualified_name(table_slice))


class PostgresClient(DbClient):
    """Table-level statements, all inside the run's warehouse transaction."""

    def __init__(self, warehouse: WarehouseResource) -> None:
        self.warehouse = warehouse

    @contextmanager
    def connect(self, context: OutputContext | InputContext, table_slice: TableSlice) -> Iterator[adbc.Connection]:
        with self.warehouse.transaction() as connection:
            yield connection

    @staticmethod
    def ensure_schema_exists(context: OutputContext, table_slice: TableSlice, connection: adbc.Connection) -> None:
        _execute(connection, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table_slice.schema)))

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: adbc.Connection) -> None:
        """Only claims the table: the type handler replaces its rows (see `replace_rows`).

        Writers of the same table take turns (a transaction-scoped advisory lock), so two runs
        started at once replace the table one after the other instead of mixing their rows.
        Readers take no such lock and are never blocked.
        """
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext($1))", (qualified_name(table_slice).as_string(),))
            cursor.fetchall()

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return select_statement(table_slice).as_string()

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"


class PandasArrowTypeHandler(DbTypeHandler[pd.DataFrame]):
    """Stores and loads DataFrames through Arrow, so neither direction goes row by row."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pd.DataFrame]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection: adbc.Connection
    ) -> Mapping[str, object]:
        table, column_types = to_postgres_arrow(obj)
        definition = context.definition_metadata or {}
        primary_key = list(definition.get(PRIMARY_KEY_METADATA) or [])
        created = _sync_table_definition(connection, table_slice, column_types, primary_key)
        if primary_key and not created:
            merge_rows(connection, table_slice, table, primary_key)
        else:
            replace_rows(connection, table_slice, table, delete_first=not created)
        return table_metadata(obj, column_types, definition.get(COLUMN_DESCRIPTIONS_METADATA) or {})

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: adbc.Connection) -> pd.DataFrame:
        return read_frame(connection, table_slice)


def replace_rows(connection: adbc.Connection, table_slice: TableSlice, table: pa.Table, delete_first: bool) -> None:
    """DELETE, not TRUNCATE: MVCC keeps the old rows visible to readers until commit."""
    if delete_first:
        _execute(connection, sql.SQL("DELETE FROM {}").format(qualified_name(table_slice)))
    with connection.cursor() as cursor:
        cursor.adbc_ingest(table_slice.table, table, mode="append", db_schema_name=table_slice.schema)


def merge_rows(connection: adbc.Connection, table_slice: TableSlice, table: pa.Table, primary_key: list[str]) -> None:
    """Make a keyed table equal to `table`, writing only the rows that differ.

    A daily refresh revises few rows: deleting every row and re-inserting it would rebuild the
    whole key index and leave a table's worth of dead rows behind. Instead the stored rows are
    read back (one Arrow fetch), compared with the new ones by key, and only vanished or
    changed rows are deleted and only new or changed rows inserted, in the same transaction.
    """
    target = qualified_name(table_slice)
    stored = read_arrow(connection, table_slice._replace(columns=None)).cast(table.schema)
    inserts, deletes = diff_by_key(stored, table, primary_key)
    if deletes.num_rows:
        stage_name = "stage_" + hashlib.sha1(target.as_string().encode()).hexdigest()[:16]  # safe for any table name
        stage = sql.Identifier(stage_name)
        columns = sql.SQL(", ").join(map(sql.Identifier, primary_key))
        _execute(connection, sql.SQL("CREATE TEMPORARY TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(stage, columns, target))
        with connection.cursor() as cursor:
            cursor.adbc_ingest(stage_name, deletes, mode="append", temporary=True)
        _execute(connection, sql.SQL("ANALYZE {}").format(stage))  # else the planner guesses a hash join over the whole table
        matches = sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(column)) for column in primary_key)
        _execute(connection, sql.SQL("DELETE FROM {} t USING {} s WHERE {}").format(target, stage, matches))
        _execute(connection, sql.SQL("DROP TABLE {}").format(stage))
    if inserts.num_rows:
        with connection.cursor() as cursor:
            cursor.adbc_ingest(table_slice.table, inserts, mode="append", db_schema_name=table_slice.schema)


def read_frame(connection: adbc.Connection, table_slice: TableSlice) -> pd.DataFrame:
    return read_arrow(connection, table_slice).to_pandas(types_mapper=_PANDAS_DTYPES.get)


def read_arrow(connection: adbc.Connection, table_slice: TableSlice) -> pa.Table:
    with connection.cursor() as cursor:
        cursor.execute(select_statement(table_slice).as_string())
        return cursor.fetch_arrow_table()


def to_postgres_arrow(frame: pd.DataFrame) -> tuple[pa.Table, dict[str, str]]:
    """Convert to Arrow with one canonical Arrow type per Postgres type (NaN/NA -> NULL)."""
    if frame.columns.duplicated().any():
        raise ValueError(f"duplicate column names: {sorted(set(frame.columns[frame.columns.duplicated()]))}")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    column_types: dict[str, str] = {}
    for index, field in enumerate(table.schema):
        postgres_type, arrow_type = _postgres_type(field)
        column_types[field.name] = postgres_type
        if field.type != arrow_type:
            table = table.set_column(index, field.name, table.column(index).cast(arrow_type))
    return table.replace_schema_metadata(None), column_types


def _postgres_type(field: pa.Field) -> tuple[str, pa.DataType]:
    for matches, postgres_type, arrow_type in _POSTGRES_TYPES:
        if matches(field.type):
            return postgres_type, arrow_type
    raise TypeError(f"column {field.name!r} has type {field.type}, which has no Postgres mapping")


def table_metadata(
    frame: pd.DataFrame, column_types: Mapping[str, str], descriptions: Mapping[str, str] | None = None
) -> dict[str, object]:
    descriptions = descriptions or {}
    schema = TableSchema(
        columns=[TableColumn(name, pg_type, description=descriptions.get(name)) for name, pg_type in column_types.items()]
    )
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": schema,
        "preview": MetadataValue.md(frame.head(PREVIEW_ROWS).to_markdown(index=False)),
    }


def _sync_table_definition(
    connection: adbc.Connection, table_slice: TableSlice, column_types: Mapping[str, str], primary_key: list[str]
) -> bool:
    """Rebuild the table (inside the caller's transaction) only when its shape changed; True if (re)built."""
    if missing := [column for column in primary_key if column not in column_types]:
        raise ValueError(f"primary key columns {missing} are not in the frame for {table_slice.schema}.{table_slice.table}")
    current_columns, current_key = _current_definition(connection, table_slice)
    if list(current_columns.items()) == list(column_types.items()) and current_key == primary_key:
        return False
    name = qualified_name(table_slice)
    columns = [sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(pg_type)) for column, pg_type in column_types.items()]
    if primary_key:
        columns.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, primary_key))))
    _execute(connection, sql.SQL("DROP TABLE IF EXISTS {}").format(name))
    _execute(connection, sql.SQL("CREATE TABLE {} ({})").format(name, sql.SQL(", ").join(columns)))
    return True


_DEFINITION_QUERY = """
SELECT a.attname, upper(format_type(a.atttypid, a.atttypmod)),
       coalesce(a.attnum = ANY (i.indkey), false), array_position(i.indkey::int2[], a.attnum)
FROM pg_attribute a
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_TYPE_ALIASES = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ", "TIMESTAMP WITHOUT TIME ZONE": "TIMESTAMP"}


def _current_definition(connection: adbc.Connection, table_slice: TableSlice) -> tuple[dict[str, str], list[str]]:
    with connection.cursor() as cursor:
        cursor.execute(_DEFINITION_QUERY, (qualified_name(table_slice).as_string(),))
        rows = cursor.fetchall()
    columns = {name: _TYPE_ALIASES.get(pg_type, pg_type) for name, pg_type, _, _ in rows}
    primary_key = [name for name, _, in_key, position in sorted(rows, key=lambda row: row[3] or 0) if in_key]
    return columns, primary_key


def _execute(connection: adbc.Connection, statement: sql.Composable) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string())


class PostgresPandasIOManager(ConfigurableIOManagerFactory):
    """Stores each asset as the Postgres table `<key prefix>.<asset name>`.

    `warehouse` is the run's transaction (`storage/warehouse.py`: its target comes from the environment).
    Declare a primary key with asset metadata `{"primary_key": ["col", ...]}` and column
    descriptions with `{"column_descriptions": {"col": "..."}}`; load a subset of columns
    with `AssetIn(metadata={"columns": [...]})`.
    """

    warehouse: WarehouseResource

    def create_io_manager(self, context) -> DbIOManager:
        return DbIOManager(
            type_handlers=[PandasArrowTypeHandler()],
            db_client=PostgresClient(self.warehouse),
            database="",
            io_manager_name="PostgresPandasIOManager",
            default_load_type=pd.DataFrame,
        )


def warehouse_resources(warehouse: WarehouseResource | None = None) -> dict[str, object]:
    """The IO manager and the guards/checks resource, sharing one run transaction."""
    warehouse = warehouse or WarehouseResource()
    return {"io_manager": PostgresPandasIOManager(warehouse=warehouse), "warehouse": warehouse}
