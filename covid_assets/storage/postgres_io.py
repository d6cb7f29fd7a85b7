"""Postgres IO manager for pandas DataFrames, in the shape of dagster-duckdb-pandas.

Three small pieces plug into Dagster's `DbIOManager` (which maps an asset key
`[schema, table]` to a table and handles column selection):

* `PostgresClient` hands out the run's warehouse transaction (`storage/warehouse.py`): every
  table a run replaces becomes visible at once when the run commits, and none if it fails.
* `PandasArrowTypeHandler` converts a DataFrame to Arrow, keeps the table's DDL in step
  with it, and bulk-loads with ADBC's `adbc_ingest` (binary COPY underneath).
* `PostgresPandasIOManager` is the configurable resource users wire into `Definitions`.

Partitioned assets (`partition_expr` metadata) write and read only their partitions' rows; the
SQL for that, and what is refused, is in `storage/partitions.py`.

Identifiers are quoted by psycopg's `sql.Identifier`, never pasted into SQL text.

Column types: an asset that declares its columns (`dagster/column_schema` definition metadata, a
`TableSchema` whose types are Postgres type names) gets exactly those types, and its frames must
have exactly those columns; otherwise each column's type follows its Arrow type.

A table is created on its first write and never dropped afterwards, so analysts' views, grants
and indexes on it survive every refresh. When the frame's shape differs from the table's:

* a new column is added (`ALTER TABLE ... ADD COLUMN`, nullable; existing rows get NULL);
* a column the frame no longer has is kept: rows written from then on hold NULL in it (all rows
  of a table without a key, since those are rewritten; in a keyed table the unchanged rows keep
  their values). Drop it by hand once nothing needs it; the output metadata names it;
* a column whose type changed is an error naming both types: converting data is left to a person
  (`ALTER TABLE ... ALTER COLUMN ... TYPE ... USING ...`);
* a changed primary key is swapped in place: the old constraint is dropped, the rows replaced,
  the new key added (a key that the new rows repeat fails the run);
* a different column order changes nothing: rows are written by column name.

Adding a column or changing the key takes an ACCESS EXCLUSIVE lock on the table until the run
commits (readers of that table wait for that one run); unchanged shapes take no such lock.
Column names must be valid Postgres identifiers as they are (non-empty, at most 63 bytes,
at most 1,600 columns), since Postgres would silently truncate a longer one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc
import pandas as pd
import pyarrow as pa
from dagster import (
    ConfigurableIOManagerFactory,
    InputContext,
    MetadataValue,
    MultiPartitionsDefinition,
    OutputContext,
    TableColumn,
    TableSchema,
)
from dagster._core.storage.db_io_manager import DbClient, DbIOManager, DbTypeHandler, TableSlice
from psycopg import sql
from pydantic import Field

from covid_assets.storage import partitions
from covid_assets.storage.keyed_diff import diff_by_key
from covid_assets.storage.statements import execute, listed, matched
from covid_assets.storage.warehouse import WarehouseResource

PRIMARY_KEY_METADATA = "primary_key"
COLUMN_DESCRIPTIONS_METADATA = "column_descriptions"
COLUMN_SCHEMA_METADATA = "dagster/column_schema"
PREVIEW_ROWS = 10
# Up to this many keys are deleted in one statement (one JSON literal); more are staged in a temporary table.
LITERAL_DELETE_LIMIT = 500
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1
MAX_COLUMNS = 1_600

# Arrow type -> (Postgres type, the Arrow type ADBC must be handed for that column).
_POSTGRES_TYPES: tuple[tuple[object, str, pa.DataType | None], ...] = (
    (pa.types.is_boolean, "BOOLEAN", pa.bool_()),
    (pa.types.is_integer, "BIGINT", pa.int64()),
    (pa.types.is_floating, "DOUBLE PRECISION", pa.float64()),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t), "TEXT", pa.string()),
    (pa.types.is_date, "DATE", pa.date32()),
    (lambda t: pa.types.is_timestamp(t) and t.tz is not None, "TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    (pa.types.is_timestamp, "TIMESTAMP", pa.timestamp("us")),
    (lambda t: isinstance(t, pa.JsonType), "JSONB", pa.json_()),  # ADBC writes arrow.json as jsonb
    (pa.types.is_decimal, "NUMERIC", pa.decimal128(38, 10)),  # ADBC writes decimals as numeric (28 digits, 10 decimals)
)
# A declared Postgres type -> the Arrow type ADBC must be handed for it.
_ARROW_TYPES: dict[str, pa.DataType] = {postgres_type: arrow_type for _, postgres_type, arrow_type in _POSTGRES_TYPES}

# Arrow type read back from Postgres -> pandas dtype, so a round trip keeps the dtypes:
# Int64 stays Int64 (NULL -> <NA>), text stays "string", dates stay dates.
_PANDAS_DTYPES: dict[pa.DataType, object] = {
    pa.int64(): pd.Int64Dtype(),
    pa.string(): pd.StringDtype(),
    pa.large_string(): pd.StringDtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.date32(): pd.ArrowDtype(pa.date32()),
    pa.json_(): pd.ArrowDtype(pa.json_()),
}


def qualified_name(table_slice: TableSlice) -> sql.Identifier:
    return sql.Identifier(table_slice.schema, table_slice.table)


def select_statement(table_slice: TableSlice) -> sql.Composed:
    columns = (
        listed(table_slice.columns)
        if table_slice.columns
        else sql.SQL("*")
    )
    return sql.SQL("SELECT {} FROM {}").format(columns, qualified_name(table_slice)) + _where(table_slice)


def _where(table_slice: TableSlice) -> sql.Composable:
    """The slice's partitions (nothing for an unpartitioned slice: the whole table)."""
    if not table_slice.partition_dimensions:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + partitions.where_clause(table_slice.partition_dimensions)


def lock_table(connection: adbc.Connection, name: sql.Identifier) -> None:
    """The writer lock of a table until the transaction ends: every writer of the table (the IO
    manager, the dataset loader) takes it, so two runs write it one after the other."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext($1))", (name.as_string(),))
        cursor.fetchall()


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
        execute(connection, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table_slice.schema)))

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: adbc.Connection) -> None:
        """Only claims the table: the type handler replaces its rows (see `replace_rows`).

        Writers of the same table take turns (a transaction-scoped advisory lock), so two runs
        started at once replace the table one after the other instead of mixing their rows.
        Readers take no such lock and are never blocked.
        """
        lock_table(connection, qualified_name(table_slice))

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
        definition = context.definition_metadata or {}
        declared = declared_columns(definition)
        table, column_types = to_postgres_arrow(obj, {name: column.type.upper() for name, column in declared.items()} or None)
        primary_key = list(definition.get(PRIMARY_KEY_METADATA) or [])
        descriptions = definition.get(COLUMN_DESCRIPTIONS_METADATA) or {
            name: column.description for name, column in declared.items() if column.description
        }
        metadata = table_metadata(obj, column_types, descriptions, table_slice)
        if obj.empty and _table_exists(connection, table_slice):
            empty_rows(connection, table_slice)  # an empty frame empties its rows and leaves the table's columns
            return metadata
        if not column_types:
            context.log.warning(f"{table_slice.schema}.{table_slice.table}: a frame without columns creates no table")
            return metadata
        changes = sync_table_definition(connection, table_slice, column_types, primary_key)
        if table_slice.partition_dimensions:
            partitions.check_expressions(connection, table_slice, column_types)
            partitions.ensure_index(connection, table_slice, primary_key)
        if primary_key and not changes.rewrite:
            merge_rows(connection, table_slice, table, primary_key)
        else:
            replace_rows(connection, table_slice, table, delete_first=not changes.created)
            if primary_key and changes.key_changed:
                _add_primary_key(connection, table_slice, primary_key)
        if table_slice.partition_dimensions:
            partitions.check_rows_inside(connection, table_slice, table.num_rows)
        if changes.unwritten:
            context.log.warning(
                f"{table_slice.schema}.{table_slice.table}: columns {list(changes.unwritten)} are no longer written "
                "(kept, NULL in the rows written from now on); drop them by hand when nothing needs them"
            )
        return {**metadata, **changes.metadata()}

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: adbc.Connection) -> pd.DataFrame:
        if _selects_no_partition(table_slice) and not _table_exists(connection, table_slice):
            return pd.DataFrame(columns=list(table_slice.columns or []))  # e.g. a self-dependent asset's first partition
        return read_frame(connection, table_slice)


def _selects_no_partition(table_slice: TableSlice) -> bool:
    return any(not dimension.partitions for dimension in table_slice.partition_dimensions or [])


def _table_exists(connection: adbc.Connection, table_slice: TableSlice) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass($1) IS NOT NULL", (qualified_name(table_slice).as_string(),))
        return bool(cursor.fetchone()[0])


def empty_rows(connection: adbc.Connection, table_slice: TableSlice) -> None:
    """Delete the slice's rows: its partitions', or the whole table's."""
    if table_slice.partition_dimensions:
        partitions.check_expressions(connection, table_slice)
    execute(connection, sql.SQL("DELETE FROM {}").format(qualified_name(table_slice)) + _where(table_slice))


def replace_rows(connection: adbc.Connection, table_slice: TableSlice, table: pa.Table, delete_first: bool) -> None:
    """DELETE, not TRUNCATE: MVCC keeps the old rows visible to readers until commit (and a
    partition's write deletes only its partitions' rows)."""
    if delete_first:
        execute(connection, sql.SQL("DELETE FROM {}").format(qualified_name(table_slice)) + _where(table_slice))
    with connection.cursor() as cursor:
        cursor.adbc_ingest(table_slice.table, table, mode="append", db_schema_name=table_slice.schema)


def merge_rows(connection: adbc.Connection, table_slice: TableSlice, table: pa.Table, primary_key: list[str]) -> None:
    """Make a keyed table equal to `table`, writing only the rows that differ.

    A daily refresh revises few rows: deleting every row and re-inserting it would rebuild the
    whole key index and leave a table's worth of dead rows behind. Instead the stored rows are
    read back (one Arrow fetch), compared with the new ones by key, and only vanished or
    changed rows are deleted and only new or changed rows inserted, in the same transaction.
    A partition's write reads back, and so deletes from, only its partitions' rows.
    """
    target = qualified_name(table_slice)
    stored = read_arrow(connection, table_slice._replace(columns=table.column_names)).cast(table.schema)
    inserts, deletes = diff_by_key(_plain(stored), _plain(table), primary_key)
    if inserts.schema != table.schema:
        inserts = inserts.cast(table.schema)  # the extension types back, for ADBC
    if deletes.num_rows:
        delete_keys(connection, target, deletes, primary_key)
    if inserts.num_rows:
        with connection.cursor() as cursor:
            cursor.adbc_ingest(table_slice.table, inserts, mode="append", db_schema_name=table_slice.schema)


def delete_keys(connection: adbc.Connection, target: sql.Identifier, keys: pa.Table, primary_key: list[str]) -> None:
    """Delete the rows with these keys, by the key index.

    A few keys (a partition's revisions) go in one statement, as one JSON literal; many (a daily refresh
    of a whole table) are staged in a temporary table that is ANALYZEd, else the planner would
    guess a hash join over the whole table.
    """
    if keys.num_rows <= LITERAL_DELETE_LIMIT:
        record = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(_postgres_type(keys.schema.field(column))[0]))
            for column in primary_key
        )
        matches = matched(primary_key, "t", "s")
        document = json.dumps(keys.select(primary_key).to_pylist(), default=str)  # one quoted literal, whatever the keys hold
        execute(
            connection,
            sql.SQL("DELETE FROM {} t USING jsonb_to_recordset({}::jsonb) AS s({}) WHERE {}").format(
                target, sql.Literal(document), record, matches
            ),
        )
        return
    stage_name = "stage_" + hashlib.sha1(target.as_string().encode()).hexdigest()[:16]  # safe for any table name
    stage = sql.Identifier(stage_name)
    columns = listed(primary_key)
    execute(connection, sql.SQL("CREATE TEMPORARY TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(stage, columns, target))
    with connection.cursor() as cursor:
        cursor.adbc_ingest(stage_name, keys, mode="append", temporary=True)
    execute(connection, sql.SQL("ANALYZE {}").format(stage))
    matches = matched(primary_key, "t", "s")
    execute(connection, sql.SQL("DELETE FROM {} t USING {} s WHERE {}").format(target, stage, matches))
    execute(connection, sql.SQL("DROP TABLE {}").format(stage))


def _plain(table: pa.Table) -> pa.Table:
    """Extension columns (JSON) as their storage strings, which Arrow can compare.

    A JSONB value reads back in Postgres' normal form, so a keyed table with a JSON column
    rewrites the rows whose JSON text is spelled differently: correct, only slower.
    """
    if not any(isinstance(field.type, pa.BaseExtensionType) for field in table.schema):
        return table
    return table.cast(pa.schema([field.with_type(getattr(field.type, "storage_type", field.type)) for field in table.schema]))


def read_frame(connection: adbc.Connection, table_slice: TableSlice) -> pd.DataFrame:
    """NUMERIC columns become float64 (what a frame holds them in); the rest keep their dtypes."""
    table = read_arrow(connection, table_slice)
    for index, field in enumerate(table.schema):
        if field.metadata and field.metadata.get(b"POSTGRESQL:type") == b"numeric":
            table = table.set_column(index, field.name, table.column(index).cast(pa.float64()))
    return table.to_pandas(types_mapper=_PANDAS_DTYPES.get)


def read_arrow(connection: adbc.Connection, table_slice: TableSlice) -> pa.Table:
    """The slice as Arrow; NUMERIC columns (which ADBC returns as an opaque type) as their text."""
    with connection.cursor() as cursor:
        cursor.execute(select_statement(table_slice).as_string())
        table = cursor.fetch_arrow_table()
    for index, field in enumerate(table.schema):
        if isinstance(field.type, pa.OpaqueType):
            storage = pa.chunked_array([chunk.storage for chunk in table.column(index).chunks], field.type.storage_type)
            table = table.set_column(index, field.with_type(field.type.storage_type), storage)
    return table


def declared_columns(definition: Mapping[str, object]) -> dict[str, TableColumn]:
    """The asset's declared column schema (`dagster/column_schema` definition metadata) by column name.

    Each type must be one the IO manager can write (`_ARROW_TYPES`); an asset without a schema
    declares nothing, and its frame's Arrow types decide.
    """
    entry = definition.get(COLUMN_SCHEMA_METADATA)
    schema = entry.value if isinstance(entry, MetadataValue) else entry
    if schema is None:
        return {}
    if not isinstance(schema, TableSchema):
        raise TypeError(f"{COLUMN_SCHEMA_METADATA} metadata must be a TableSchema, not {type(schema).__name__}")
    columns = {column.name: column for column in schema.columns}
    if unknown := {name: column.type for name, column in columns.items() if column.type.upper() not in _ARROW_TYPES}:
        raise ValueError(
            f"declared column types with no Postgres mapping: {_shown([f'{name} {type_}' for name, type_ in unknown.items()])} "
            f"(expected one of {', '.join(_ARROW_TYPES)})"
        )
    return columns


def to_postgres_arrow(frame: pd.DataFrame, declared: Mapping[str, str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """Convert to Arrow with one canonical Arrow type per Postgres type (NaN/NA -> NULL).

    With `declared` (column -> Postgres type) the frame must have exactly those columns, and each
    gets its declared type; without, each column's type follows its Arrow type.
    """
    _check_column_names(frame.columns)
    if declared is not None:
        _check_declared(frame.columns, declared)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    column_types: dict[str, str] = {}
    for index, field in enumerate(table.schema):
        if declared is None:
            postgres_type, arrow_type = _postgres_type(field)
        else:
            postgres_type, arrow_type = declared[field.name], _ARROW_TYPES[declared[field.name]]
        column_types[field.name] = postgres_type
        if field.type != arrow_type:
            table = table.set_column(index, field.name, _cast(table.column(index), field, arrow_type, postgres_type))
    return table.replace_schema_metadata(None), column_types


def _check_declared(columns: pd.Index, declared: Mapping[str, str]) -> None:
    """A frame whose columns differ from the declared schema is an error naming the differences."""
    undeclared = [name for name in columns if name not in declared]
    missing = [name for name in declared if name not in columns]
    if undeclared or missing:
        raise ValueError(
            f"the frame's columns differ from the declared column schema: not declared {_shown(undeclared)}, "
            f"declared but missing {_shown(missing)}"
        )


def _cast(values: pa.ChunkedArray, field: pa.Field, arrow_type: pa.DataType, postgres_type: str) -> pa.ChunkedArray:
    try:
        return values.cast(arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise TypeError(
            f"column {field.name!r} holds {field.type}, which cannot be written as {postgres_type}: {str(error)[:300]}"
        ) from error


def _check_column_names(columns: pd.Index) -> None:
    """Names Postgres would reject or silently truncate are an error here, naming them."""
    if columns.duplicated().any():
        raise ValueError(f"duplicate column names: {_shown(sorted(set(map(str, columns[columns.duplicated()]))))}")
    if len(columns) > MAX_COLUMNS:
        raise ValueError(f"{len(columns):,} columns: a Postgres table holds at most {MAX_COLUMNS:,}")
    bad = [name for name in columns if not isinstance(name, str) or not 0 < len(name.encode()) <= MAX_IDENTIFIER_BYTES or "\x00" in name]
    if bad:
        raise ValueError(
            f"column names must be non-empty strings of at most {MAX_IDENTIFIER_BYTES} bytes without NUL "
            f"(Postgres truncates longer ones): {_shown(bad)}"
        )


def _shown(values: Sequence[object], limit: int = 300) -> str:
    """A list for an error message, cut to about `limit` characters."""
    text = repr(list(values))
    return text if len(text) <= limit else text[:limit] + "...]"


def _postgres_type(field: pa.Field) -> tuple[str, pa.DataType]:
    for matches, postgres_type, arrow_type in _POSTGRES_TYPES:
        if matches(field.type):
            return postgres_type, arrow_type
    raise TypeError(f"column {field.name!r} has type {field.type}, which has no Postgres mapping")


def table_metadata(
    frame: pd.DataFrame,
    column_types: Mapping[str, str],
    descriptions: Mapping[str, str] | None = None,
    table_slice: TableSlice | None = None,
) -> dict[str, object]:
    """Row count (of the partition, for a partition's write), column schema, storage kind, preview."""
    descriptions = descriptions or {}
    schema = TableSchema(
        columns=[TableColumn(name, pg_type, description=descriptions.get(name)) for name, pg_type in column_types.items()]
    )
    partitioned = table_slice is not None and bool(table_slice.partition_dimensions)
    return {
        "dagster/partition_row_count" if partitioned else "dagster/row_count": len(frame),
        "dagster/column_schema": schema,
        "dagster/storage_kind": "postgres",
        "preview": MetadataValue.md(frame.head(PREVIEW_ROWS).to_markdown(index=False)),
    }


@dataclass(frozen=True)
class TableChanges:
    """What `sync_table_definition` did to the table before the rows are written."""

    created: bool = False
    added: tuple[str, ...] = ()
    unwritten: tuple[str, ...] = ()  # stored columns the frame no longer has: kept, NULL in new rows
    key_changed: bool = False

    @property
    def rewrite(self) -> bool:
        """Replace every row instead of merging: a new table, or one whose key changed."""
        return self.created or self.key_changed

    def metadata(self) -> dict[str, object]:
        entries = {"columns_added": list(self.added), "columns_no_longer_written": list(self.unwritten)}
        return {name: MetadataValue.json(value) for name, value in entries.items() if value}


def sync_table_definition(
    connection: adbc.Connection, table_slice: TableSlice, column_types: Mapping[str, str], primary_key: list[str]
) -> TableChanges:
    """Create the table, or bring its columns and key in step with the frame without dropping it.

    Runs inside the caller's transaction; the rules are in the module docstring.
    """
    name = qualified_name(table_slice)
    label = f"{table_slice.schema}.{table_slice.table}"
    if missing := [column for column in primary_key if column not in column_types]:
        raise ValueError(f"primary key columns {_shown(missing)} are not in the frame for {label}")
    current_columns, current_key = _current_definition(connection, table_slice)
    if not current_columns:
        _create_table(connection, name, column_types, primary_key)
        return TableChanges(created=True)
    if changed := {c: (current_columns[c], t) for c, t in column_types.items() if c in current_columns and current_columns[c] != t}:
        details = "; ".join(f"{column!r} is {old} in the table, {new} in the frame" for column, (old, new) in changed.items())
        raise ValueError(
            f"column types of {label} changed ({details[:300]}). The table is not rebuilt (that would drop the views "
            "and grants on it): convert the columns by hand (ALTER TABLE ... ALTER COLUMN ... TYPE ... USING ...)"
        )
    added = tuple(column for column in column_types if column not in current_columns)
    for column in added:
        execute(connection, sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(name, sql.Identifier(column), sql.SQL(column_types[column])))
    key_changed = current_key != primary_key
    if key_changed:
        _drop_primary_key(connection, table_slice, [column for column in current_key if column not in primary_key])
    unwritten = tuple(column for column in current_columns if column not in column_types)
    return TableChanges(added=added, unwritten=unwritten, key_changed=key_changed)


def _create_table(connection: adbc.Connection, name: sql.Identifier, column_types: Mapping[str, str], primary_key: list[str]) -> None:
    columns = [sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(pg_type)) for column, pg_type in column_types.items()]
    if primary_key:
        columns.append(sql.SQL("PRIMARY KEY ({})").format(listed(primary_key)))
    execute(connection, sql.SQL("CREATE TABLE {} ({})").format(name, sql.SQL(", ").join(columns)))


def _drop_primary_key(connection: adbc.Connection, table_slice: TableSlice, leaving_key: list[str]) -> None:
    """Drop the key constraint, and the NOT NULL it put on columns that leave the key."""
    name = qualified_name(table_slice)
    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'", (name.as_string(),))
        constraints = [row[0] for row in cursor.fetchall()]
    for constraint in constraints:
        execute(connection, sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(name, sql.Identifier(constraint)))
    for column in leaving_key:
        execute(connection, sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(name, sql.Identifier(column)))


def _add_primary_key(connection: adbc.Connection, table_slice: TableSlice, primary_key: list[str]) -> None:
    """Built after the rows are loaded (one index build instead of row-by-row maintenance)."""
    columns = listed(primary_key)
    execute(connection, sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(qualified_name(table_slice), columns))


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


class PostgresPandasIOManager(ConfigurableIOManagerFactory):
    """Stores each asset as the Postgres table `<key prefix>.<asset name>`.

    `warehouse` is the run's transaction (`storage/warehouse.py`: its target comes from the environment).
    Declare a primary key with asset metadata `{"primary_key": ["col", ...]}`, the columns' Postgres
    types with `{"dagster/column_schema": TableSchema(...)}` (e.g. `TableSpec.column_schema`), and column
    descriptions with `{"column_descriptions": {"col": "..."}}` (else the schema's); load a subset of columns
    with `AssetIn(metadata={"columns": [...]})`. Partitioned assets name their partition column
    with `{"partition_expr": "day"}` (`{"partition_expr": {"dimension": "column", ...}}` for
    multi-partitions). The schema is the asset's `{"schema": ...}` metadata, else its key prefix,
    else `schema` here, else `public` (dagster-duckdb puts the config before the key prefix; here run
    config cannot move a prefixed asset's table).
    """

    warehouse: WarehouseResource
    schema_: str | None = Field(default=None, alias="schema", description="Schema of assets whose metadata names none.")

    def create_io_manager(self, context) -> DbIOManager:
        return PostgresDbIOManager(
            type_handlers=[PandasArrowTypeHandler()],
            db_client=PostgresClient(self.warehouse),
            database="",
            schema=self.schema_,
            io_manager_name="PostgresPandasIOManager",
            default_load_type=pd.DataFrame,
        )


class PostgresDbIOManager(DbIOManager):
    """DbIOManager, with partition_expr metadata checked before it is used (DbIOManager would pass
    a multi-partition dimension without an expression on as None), and a key prefix placing its
    asset before the `schema` config does: run config, which anyone who reaches the UI can set,
    must not move the tables of assets keyed [schema, table]."""

    def _get_table_slice(self, context: OutputContext | InputContext, output_context: OutputContext) -> TableSlice:
        if context.has_asset_key and context.has_asset_partitions:
            partitions_def = context.asset_partitions_def
            names = (
                [dimension.name for dimension in partitions_def.partitions_defs]
                if isinstance(partitions_def, MultiPartitionsDefinition)
                else None
            )
            partitions.validate_metadata(context.asset_key, (output_context.definition_metadata or {}).get("partition_expr"), names)
        table_slice = super()._get_table_slice(context, output_context)
        prefixed = context.has_asset_key and len(context.asset_key.path) > 1
        if prefixed and not (output_context.definition_metadata or {}).get("schema"):
            return table_slice._replace(schema=context.asset_key.path[-2])
        return table_slice


def warehouse_resources(warehouse: WarehouseResource | None = None) -> dict[str, object]:
    """The IO manager and the guards/checks resource, sharing one run transaction."""
    warehouse = warehouse or WarehouseResource()
    return {"io_manager": PostgresPandasIOManager(warehouse=warehouse), "warehouse": warehouse}
