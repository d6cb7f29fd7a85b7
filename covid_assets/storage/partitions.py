"""Partitioned tables for the Postgres IO manager: which rows a partition's write or read touches.

Dagster's `DbIOManager` hands the IO manager a `TableSlice` whose `partition_dimensions` name, per
dimension, the asset's `partition_expr` (SQL over the table's columns, written by the asset's
author) and the partitions of the run: a time window, or a list of keys. This module turns them
into one SQL condition, and refuses what would touch the wrong rows, before anything is written:

* time windows are half-open, `expr >= start AND expr < end`. The bounds are ISO strings with the
  window's UTC offset, left untyped so Postgres reads them as the expression's own type: a
  TIMESTAMPTZ compares instants, a TIMESTAMP the wall-clock time in the partitions' timezone (the
  offset is ignored), a DATE the day. So no session timezone is involved, and an index on the
  column is used. A text expression is refused (it would compare strings): cast it, e.g.
  `CAST(day AS DATE)`;
* keys (static, dynamic, one dimension of a multi-partition) are literals, never pasted text;
* a bare name with capitals (`Day`) is the column of that name, quoted, so mixed case works as
  written; anything else is used as SQL, in parentheses;
* an expression that names no column of the table (`now()`, a constant) is refused: it would
  select every row or none.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice
from psycopg import sql

BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
TEMPORAL_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")
# The IO manager's type names as Postgres' format_type spells them.
_FORMATTED_TYPES = {"DATE": "date", "TIMESTAMP": "timestamp without time zone", "TIMESTAMPTZ": "timestamp with time zone"}
MESSAGE_LIMIT = 300


class PartitionError(ValueError):
    """A partitioned write or read that would touch the wrong rows; nothing was written."""


def expression(partition_expr: str) -> sql.Composable:
    """The dimension's expression as SQL: a bare mixed-case name is that column, quoted (Postgres would
    fold it to lower case); anything else is the author's SQL, in parentheses."""
    if BARE_NAME.fullmatch(partition_expr) and partition_expr != partition_expr.lower():
        return sql.Identifier(partition_expr)
    return sql.SQL("({})").format(sql.SQL(partition_expr))


def where_clause(dimensions: Sequence[TablePartitionDimension]) -> sql.Composable:
    """The rows of the slice's partitions: every dimension's condition must hold."""
    return sql.SQL(" AND ").join(_dimension_clause(dimension) for dimension in dimensions)


def _dimension_clause(dimension: TablePartitionDimension) -> sql.Composable:
    column = expression(dimension.partition_expr)
    if isinstance(dimension.partitions, TimeWindow):
        start, end = dimension.partitions
        return sql.SQL("{0} >= {1} AND {0} < {2}").format(column, sql.Literal(_bound(start)), sql.Literal(_bound(end)))
    if not dimension.partitions:  # a mapping that selects no partition (the first run of a self-dependent asset)
        return sql.SQL("FALSE")
    return sql.SQL("{} IN ({})").format(column, sql.SQL(", ").join(sql.Literal(str(key)) for key in dimension.partitions))


def _bound(moment) -> str:
    """An untyped ISO literal with its UTC offset: Postgres gives it the expression's type."""
    return moment.isoformat(sep=" ")


def describe(table_slice: TableSlice) -> str:
    """The slice's partitions for an error message."""
    parts = []
    for dimension in table_slice.partition_dimensions or []:
        if isinstance(dimension.partitions, TimeWindow):
            parts.append(f"{dimension.partition_expr} in [{_bound(dimension.partitions.start)}, {_bound(dimension.partitions.end)})")
        else:
            parts.append(f"{dimension.partition_expr} in {list(dimension.partitions)}")
    return shorten(" and ".join(parts))


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ProbedExpression:
    """What Postgres makes of a partition expression over the table: its type and the columns it reads."""

    type_name: str
    columns: tuple[str, ...]


def check_expressions(
    connection: adbc.Connection, table_slice: TableSlice, written_columns: Mapping[str, str] | None = None
) -> None:
    """Refuse expressions that would select the wrong rows. A bare name of a column being written
    (`written_columns`: name -> the IO manager's Postgres type) is known; anything else is asked of
    Postgres itself (its parser), which costs a temporary view."""
    for dimension in table_slice.partition_dimensions or []:
        known = (written_columns or {}).get(dimension.partition_expr) if BARE_NAME.fullmatch(dimension.partition_expr) else None
        probed = (
            ProbedExpression(_FORMATTED_TYPES.get(known, known.lower()), (dimension.partition_expr,))
            if known
            else probe(connection, table_slice, dimension.partition_expr)
        )
        where = f"partition_expr {dimension.partition_expr!r} of {table_slice.schema}.{table_slice.table}"
        if not probed.columns:
            raise PartitionError(
                shorten(f"{where} names no column of the table, so it would select every row or none; "
                        "name the partition column, e.g. {'partition_expr': 'day'}")
            )
        if isinstance(dimension.partitions, TimeWindow):
            _check_time_expression(where, probed, dimension.partitions)


def _check_time_expression(where: str, probed: ProbedExpression, window: TimeWindow) -> None:
    if probed.type_name not in TEMPORAL_TYPES:
        raise PartitionError(
            shorten(f"{where} is of type {probed.type_name}; a time-window partition needs a date or timestamp "
                    f"expression (cast it, e.g. CAST({probed.columns[0]} AS DATE))")
        )
    if probed.type_name == "date" and any(_time_of_day(moment) for moment in window):
        raise PartitionError(
            shorten(f"{where} is a DATE, but the partitions start at {_bound(window.start)}: "
                    "sub-day partitions need a timestamp column")
        )


def _time_of_day(moment) -> bool:
    return (moment.hour, moment.minute, moment.second, moment.microsecond) != (0, 0, 0, 0)


_PROBE_QUERY = """
SELECT format_type(v.atttypid, v.atttypmod),
       ARRAY(SELECT DISTINCT a.attname::text
             FROM pg_depend d
             JOIN pg_rewrite r ON r.oid = d.objid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = v.attrelid
               AND d.refobjid = to_regclass($2) AND d.refobjsubid > 0
             ORDER BY 1)
FROM pg_attribute v
WHERE v.attrelid = to_regclass($1) AND v.attname = 'value'
"""


def probe(connection: adbc.Connection, table_slice: TableSlice, partition_expr: str) -> ProbedExpression:
    """Type and columns of `partition_expr`, from a temporary view over it (the columns a view
    reads are recorded in pg_depend); a wrong expression fails here, with Postgres' words."""
    table = sql.Identifier(table_slice.schema, table_slice.table)
    name = "partition_probe_" + hashlib.sha1(f"{table.as_string()} {partition_expr}".encode()).hexdigest()[:16]
    view = sql.Identifier("pg_temp", name)
    with connection.cursor() as cursor:
        try:
            cursor.execute(
                sql.SQL("CREATE TEMPORARY VIEW {} AS SELECT {} AS value FROM {}")
                .format(view, expression(partition_expr), table)
                .as_string()
            )
        except adbc.Error as error:
            raise PartitionError(
                shorten(f"partition_expr {partition_expr!r} is not an expression over the columns of "
                        f"{table_slice.schema}.{table_slice.table}: {_postgres_words(str(error))}")
            ) from error
        cursor.execute(_PROBE_QUERY, (view.as_string(), table.as_string()))
        type_name, columns = cursor.fetchone()
        cursor.execute(sql.SQL("DROP VIEW {}").format(view).as_string())
    return ProbedExpression(type_name, tuple(columns or ()))


def _postgres_words(error_text: str) -> str:
    """The server's ERROR and HINT lines of an ADBC error, without the query it quotes."""
    lines = error_text.split("ERROR:", 1)[-1].splitlines()
    hints = [line.strip() for line in lines if line.startswith("HINT:")]
    return " ".join([lines[0].strip(), *hints]) if lines else error_text


def ensure_index(connection: adbc.Connection, table_slice: TableSlice, primary_key: Sequence[str]) -> None:
    """An index on the partition columns, so a partition's delete, merge and read cost its own rows,
    not a scan of the table. Only for bare column names (an expression index would need an
    IMMUTABLE expression; index such expressions by hand) and when the key does not lead with them."""
    columns = [d.partition_expr for d in table_slice.partition_dimensions or [] if BARE_NAME.fullmatch(d.partition_expr)]
    if not columns or list(primary_key[: len(columns)]) == columns:
        return
    name = "partitions_" + hashlib.sha1(repr((table_slice.schema, table_slice.table, columns)).encode()).hexdigest()[:16]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass($1) IS NULL", (sql.Identifier(table_slice.schema, name).as_string(),))
        if cursor.fetchone()[0]:
            cursor.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})")
                .format(
                    sql.Identifier(name),
                    sql.Identifier(table_slice.schema, table_slice.table),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                )
                .as_string()
            )


def check_rows_inside(connection: adbc.Connection, table_slice: TableSlice, written: int) -> None:
    """After the write: the partitions hold exactly the frame's rows, or some fell outside them
    (they would sit in another partition, or none, and be lost or doubled by its next write)."""
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {}")
            .format(sql.Identifier(table_slice.schema, table_slice.table), where_clause(table_slice.partition_dimensions))
            .as_string()
        )
        inside = cursor.fetchone()[0]
    if inside != written:
        raise PartitionError(
            shorten(f"{written - inside} of the {written} rows written to {table_slice.schema}.{table_slice.table} "
                     f"lie outside the run's partitions ({describe(table_slice)}); a partition's frame must hold "
                     "only that partition's rows")
        )


def validate_metadata(asset_key: object, partition_expr: object, dimension_names: Sequence[str] | None) -> None:
    """Refuse partition_expr metadata that DbIOManager would misread (before any connection)."""
    if partition_expr is None:
        return  # DbIOManager's own error says what to add
    if dimension_names is None:
        if not isinstance(partition_expr, str) or not partition_expr.strip():
            raise PartitionError(
                shorten(f"asset {asset_key}: partition_expr must be a non-empty SQL expression string, "
                         f"got {partition_expr!r}")
            )
        return
    if not isinstance(partition_expr, Mapping):
        raise PartitionError(
            shorten(f"asset {asset_key} has multi-partitions {list(dimension_names)}: partition_expr must map "
                     f"each dimension to its expression, e.g. {{'{dimension_names[0]}': 'column'}}, got {partition_expr!r}")
        )
    missing = [name for name in dimension_names if not isinstance(partition_expr.get(name), str) or not partition_expr[name].strip()]
    if missing:
        raise PartitionError(shorten(f"asset {asset_key}: partition_expr has no expression for dimension(s) {missing}"))
