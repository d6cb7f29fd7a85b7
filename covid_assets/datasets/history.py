"""Every version of a declared base table, kept by the merge: loads, history, as-of reads in SQL.

For a base table `{schema}.{table}` (names derived from its `TableSpec`):

* `{schema}.loads`: one row per committed load that changed the table (`load_id` counts up per
  table), with the run, the commit time, the source's evidence and the merge's counts.
* `{schema}.{table}_history`: every version of every row: the base table's columns plus
  `valid_from_load` and `valid_to_load` (NULL while the version is current). A load adds one
  version per added or revised row and closes one per revised or withdrawn row, nothing else,
  so the table grows with what changed, never with the table size times the loads.
* `{schema}.{table}_as_of(ts)` and `{schema}.{table}_at_load(load_id)`: the base table as it
  stood after a load, as SQL functions returning the base table's row type (so psql, BI tools
  and notebooks get them without Python). Both are inlinable SQL functions: the planner sees
  the history scan itself.

The merge (`load.merge_base`) runs each of its three statements through `HistoryLoad`, which
wraps it in one statement whose other parts write the history from the statement's `RETURNING`
rows; so the history is written in the run's transaction, from exactly the changed rows, and is
exactly as atomic as the base table. Load ids, not timestamps, are the version axis: they are
assigned under the table's writer lock, so they are gap-free and ordered as the loads were
applied, while a timestamp taken inside a transaction is neither the commit order nor the moment
readers saw the change. `committed_at` is set by a deferred trigger at COMMIT, the moment the
version became visible; `_as_of` maps a time to the last load committed by then.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import adbc_driver_postgresql.dbapi as adbc
from psycopg import sql

from covid_assets.datasets.table_spec import TableSpec
from covid_assets.storage.postgres_io import lock_table
from covid_assets.storage.statements import execute, execute_count, listed, matched, stored_columns, table_exists

__all__ = ["HistoryCheck", "HistoryError", "HistoryLoad", "HistoryNames", "LoadOrigin", "checks_now", "history_checks"]

LOADS = "loads"
VALID_FROM = "valid_from_load"
VALID_TO = "valid_to_load"
_MAX_IDENTIFIER = 63  # bytes, Postgres' NAMEDATALEN - 1
Change = Literal["withdrawn", "revised", "added"]


class HistoryError(RuntimeError):
    """The history of a base table cannot be kept consistently (it no longer matches the table)."""


@dataclass(frozen=True)
class LoadOrigin:
    """Where a load came from, recorded with it in `loads`."""

    run_id: str | None = None
    rows_updated_at: dt.datetime | None = None  # the source's rowsUpdatedAt, when it has one
    source_file: str | None = None  # the export file read instead of the API


@dataclass(frozen=True)
class HistoryNames:
    """The names derived from one base table (refused when Postgres would have to cut them)."""

    schema: str
    table: str

    @classmethod
    def of(cls, base: TableSpec) -> HistoryNames:
        names = cls(base.schema, base.name)
        if base.name == LOADS:
            raise HistoryError(f"{base.qualified_name}: a base table cannot be named {LOADS!r} (the loads of its schema are kept there)")
        for name in (names.history_name, names.at_load_name):
            if len(name.encode()) > _MAX_IDENTIFIER:
                raise HistoryError(f"{base.qualified_name}: {name!r} is longer than Postgres' {_MAX_IDENTIFIER} bytes; shorten the base table's name")
        if clash := {VALID_FROM, VALID_TO} & set(base.column_names):
            raise HistoryError(f"{base.qualified_name}: column(s) {', '.join(sorted(clash))} are reserved for its history")
        return names

    @property
    def history_name(self) -> str:
        return f"{self.table}_history"

    @property
    def at_load_name(self) -> str:
        return f"{self.table}_at_load"

    @property
    def tables(self) -> list[tuple[str, str]]:
        """(schema, name) of the history and of the loads table: what a load writes besides the base table."""
        return [(self.schema, self.history_name), (self.schema, LOADS)]

    @property
    def base(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def loads(self) -> sql.Identifier:
        return sql.Identifier(self.schema, LOADS)

    @property
    def history(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.history_name)

    @property
    def as_of(self) -> sql.Identifier:
        return sql.Identifier(self.schema, f"{self.table}_as_of")

    @property
    def at_load(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.at_load_name)

    def index(self, suffix: str) -> sql.Identifier:
        """An index name of the history table, hashed short when table and suffix are too long together."""
        name = f"{self.history_name}_{suffix}"
        if len(name.encode()) > _MAX_IDENTIFIER:
            name = f"{self.table[:40]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}_{suffix}"[:_MAX_IDENTIFIER]
        return sql.Identifier(name)


# ----------------------------------------------------------------------------- one load
class HistoryLoad:
    """The history side of one merge of a base table, inside the caller's transaction.

    `begin` (after the base table exists and its writer lock is held; `columns` are its stored
    columns, in order, as the step that created it read them) creates what is missing,
    records a table that predates its history as load 1, and picks this load's id; `apply` runs
    one merge statement and writes its rows' versions; `finish` records the load, if it changed
    anything.
    """

    def __init__(self, names: HistoryNames, key: Sequence[str], columns: Sequence[str], load_id: int, content_hash: str | None, origin: LoadOrigin) -> None:
        self.names = names
        self.key = tuple(key)
        self.columns = tuple(columns)  # the base table's columns as stored (catalog order)
        self.load_id = load_id
        self.content_hash = content_hash
        self.origin = origin

    @classmethod
    def begin(
        cls, connection: adbc.Connection, base: TableSpec, columns: Sequence[tuple[str, str]],
        origin: LoadOrigin | None = None, content_hash: str | None = None,
    ) -> HistoryLoad:
        names = HistoryNames.of(base)
        _ensure_loads(connection, names)
        mirrored = _mirrored(columns)
        _ensure_history(connection, names, base.key, mirrored)
        last = execute(connection, sql.SQL("SELECT max(load_id) FROM {} WHERE table_name = {}").format(
            names.loads, sql.Literal(names.table)))[0][0]
        if last is None:
            last = _record_existing_table(connection, names, mirrored, LoadOrigin(run_id=(origin or LoadOrigin()).run_id))
        create_functions(connection, names, [name for name, _ in mirrored])  # the table's columns may have changed
        return cls(names, base.key, [name for name, _ in mirrored], int(last) + 1, content_hash, origin or LoadOrigin())

    def apply(self, connection: adbc.Connection, change: Change, statement: sql.Composable) -> int:
        """Run one merge statement (DELETE/UPDATE/INSERT on the base table aliased `b`, no RETURNING)
        and write its rows' versions in the same statement; returns the rows it changed."""
        returned = self.key if change == "withdrawn" else self.columns
        parts = [sql.SQL("changed AS ({} RETURNING {})").format(statement, listed(returned, "b"))]
        if change != "added":
            parts.append(sql.SQL(
                "closed AS (UPDATE {h} AS h SET {to} = {n} FROM changed AS c WHERE {match} AND h.{to} IS NULL RETURNING 1)"
            ).format(h=self.names.history, to=sql.Identifier(VALID_TO), n=sql.Literal(self.load_id), match=matched(self.key, "h", "c")))
        if change != "withdrawn":
            parts.append(sql.SQL("opened AS (INSERT INTO {} ({}, {}) SELECT {}, {} FROM changed RETURNING 1)").format(
                self.names.history, listed(self.columns), sql.Identifier(VALID_FROM), listed(self.columns), sql.Literal(self.load_id)))
        closed = sql.SQL("(SELECT count(*) FROM closed)") if change != "added" else sql.SQL("NULL")
        statement = sql.SQL("WITH {} SELECT (SELECT count(*) FROM changed), {}").format(sql.SQL(", ").join(parts), closed)
        changed, closed_count = execute(connection, statement)[0]
        if closed_count is not None and closed_count != changed:
            raise HistoryError(
                f"{self.names.history_name} holds no current version of {changed - closed_count:,} of the {changed:,} {change} row(s) of "
                f"{self.names.schema}.{self.names.table}: the history no longer matches the table (see the check "
                f"history_matches_base); nothing was written"
            )
        return int(changed)

    def finish(self, connection: adbc.Connection, total: int, added: int, revised: int, withdrawn: int) -> int | None:
        """Record the load (committed_at is set at COMMIT); a load that changed nothing is not recorded."""
        if not (added or revised or withdrawn):
            return None
        _insert_load(connection, self.names, self.load_id, self.origin, self.content_hash, total, added, revised, withdrawn)
        return self.load_id


def _record_existing_table(connection: adbc.Connection, names: HistoryNames, columns: list[tuple[str, str]], origin: LoadOrigin) -> int:
    """A base table that predates its history is recorded as it stands, as load 1 (0: nothing to record).

    Its committed_at is this transaction's start: the table stood so at least from then until
    this load commits; what it held before is unknown, so an earlier as-of finds no rows.
    """
    if execute(connection, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(names.history))[0][0]:
        raise HistoryError(
            f"{names.history_name} has rows but {names.schema}.{LOADS} records no load of {names.table}: "
            f"empty {names.history_name} to record the table as it stands again"
        )
    column_list = listed([name for name, _ in columns])
    rows = execute_count(connection, sql.SQL("INSERT INTO {} ({}, {}) SELECT {}, 1 FROM {}").format(
        names.history, column_list, sql.Identifier(VALID_FROM), column_list, names.base))
    if not rows:
        return 0
    _insert_load(connection, names, 1, origin, None, rows, rows, 0, 0, committed_at=sql.SQL("now()"))
    return 1


def _insert_load(
    connection: adbc.Connection, names: HistoryNames, load_id: int, origin: LoadOrigin, content_hash: str | None,
    total: int, added: int, revised: int, withdrawn: int, committed_at: sql.Composable = sql.SQL("NULL"),
) -> None:
    execute(connection, sql.SQL(
        "INSERT INTO {} (table_name, load_id, run_id, committed_at, rows_updated_at, source_file, content_hash, "
        "rows_total, rows_added, rows_revised, rows_withdrawn) VALUES ({})"
    ).format(names.loads, sql.SQL(", ").join([
        sql.Literal(names.table), sql.Literal(load_id), sql.Literal(origin.run_id), committed_at,
        sql.Literal(origin.rows_updated_at), sql.Literal(origin.source_file), sql.Literal(content_hash),
        *map(sql.Literal, (total, added, revised, withdrawn)),
    ])))


# ----------------------------------------------------------------------------- tables and functions
def _ensure_loads(connection: adbc.Connection, names: HistoryNames) -> None:
    """The schema's loads table and its commit-time trigger, created once (under a lock: datasets may share a schema)."""
    if table_exists(connection, names.loads):
        return
    lock_table(connection, names.loads)
    if table_exists(connection, names.loads):
        return
    stamp = sql.Identifier(names.schema, "loads_committed_at")
    execute(connection, sql.SQL(
        "CREATE TABLE {} (table_name text NOT NULL, load_id bigint NOT NULL, run_id text, committed_at timestamptz, "
        "rows_updated_at timestamptz, source_file text, content_hash text, rows_total bigint NOT NULL, "
        "rows_added bigint NOT NULL, rows_revised bigint NOT NULL, rows_withdrawn bigint NOT NULL, "
        "PRIMARY KEY (table_name, load_id))"
    ).format(names.loads))
    execute(connection, sql.SQL("COMMENT ON TABLE {} IS {}").format(names.loads, sql.Literal(
        "One row per committed load that changed a base table of this schema; load_id counts up per table. "
        "The versions are in <table>_history; <table>_as_of(ts) and <table>_at_load(load_id) read them.")))
    execute(connection, sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}"
    ).format(stamp, sql.Literal(
        "BEGIN EXECUTE format('UPDATE %I.%I SET committed_at = clock_timestamp() WHERE table_name = $1 AND load_id = $2', "
        "TG_TABLE_SCHEMA, TG_TABLE_NAME) USING NEW.table_name, NEW.load_id; RETURN NULL; END")))
    # Deferred: fires at COMMIT, so committed_at is when the load became visible, not when it was written.
    execute(connection, sql.SQL(
        "CREATE CONSTRAINT TRIGGER loads_committed_at AFTER INSERT ON {} DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW WHEN (NEW.committed_at IS NULL) EXECUTE FUNCTION {}()"
    ).format(names.loads, stamp))


def _ensure_history(connection: adbc.Connection, names: HistoryNames, key: Sequence[str], columns: list[tuple[str, str]]) -> None:
    """Create the history table, or add the base table's columns it lacks."""
    definitions = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type_)) for name, type_ in columns]
    if not table_exists(connection, names.history):
        versions = [sql.SQL("{} bigint NOT NULL").format(sql.Identifier(VALID_FROM)), sql.SQL("{} bigint").format(sql.Identifier(VALID_TO))]
        primary = sql.SQL("PRIMARY KEY ({}, {})").format(listed(key), sql.Identifier(VALID_FROM))
        execute(connection, sql.SQL("CREATE TABLE {} ({})").format(names.history, sql.SQL(", ").join([*definitions, *versions, primary])))
        # The version axis: what a load opened, what it closed (per-load changes, the reconciliation).
        for column in (VALID_FROM, VALID_TO):
            execute(connection, sql.SQL("CREATE INDEX {} ON {} ({})").format(names.index(column), names.history, sql.Identifier(column)))
        execute(connection, sql.SQL("COMMENT ON TABLE {} IS {}").format(names.history, sql.Literal(
            f"Every version of every row of {names.schema}.{names.table}: valid from load valid_from_load until load "
            f"valid_to_load (NULL while current); loads in {names.schema}.{LOADS}.")))
        return
    present = {name for name, _ in stored_columns(connection, names.history)}
    if missing := [d for (name, _), d in zip(columns, definitions) if name not in present]:
        execute(connection, sql.SQL("ALTER TABLE {} {}").format(names.history, sql.SQL(", ").join(sql.SQL("ADD COLUMN ") + d for d in missing)))


def create_functions(connection: adbc.Connection, names: HistoryNames, columns: Sequence[str]) -> None:
    """`_at_load(load_id)` and `_as_of(ts)`: SETOF the base table's row type, from the history.

    Plain SQL, STABLE, one SELECT: Postgres inlines them into the calling query. Recreated by
    every load, so their SELECT lists the table's columns as they are (a column gained, or dropped
    by hand).
    """
    column_list = listed(columns, "h")
    current = sql.SQL("h.{frm} <= v.n AND (h.{to} IS NULL OR h.{to} > v.n)").format(frm=sql.Identifier(VALID_FROM), to=sql.Identifier(VALID_TO))
    of_table = sql.SQL("table_name = {}").format(sql.Literal(names.table))
    at_load = sql.SQL(
        "SELECT {c} FROM {h} AS h, (SELECT $1 AS n WHERE $1 <= (SELECT max(load_id) FROM {l} WHERE {t})) AS v WHERE {w}"
    ).format(c=column_list, h=names.history, l=names.loads, t=of_table, w=current)
    as_of = sql.SQL(
        "SELECT {c} FROM {h} AS h, (SELECT max(load_id) AS n FROM {l} WHERE {t} AND committed_at <= $1) AS v WHERE {w}"
    ).format(c=column_list, h=names.history, l=names.loads, t=of_table, w=current)
    for function, argument, body, about in (
        (names.at_load, "load_id bigint", at_load, "after load load_id (no rows for a load id not recorded)"),
        (names.as_of, "ts timestamptz", as_of, "after the last load committed at or before ts (no rows before the first)"),
    ):
        execute(connection, sql.SQL("CREATE OR REPLACE FUNCTION {}({}) RETURNS SETOF {} LANGUAGE sql STABLE AS {}").format(
            function, sql.SQL(argument), names.base, sql.Literal(body.as_string())))
        execute(connection, sql.SQL("COMMENT ON FUNCTION {}({}) IS {}").format(
            function, sql.SQL(argument.split()[1]), sql.Literal(f"{names.schema}.{names.table} as it stood {about}.")))


def _mirrored(columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The base table's columns the history mirrors: all but its own version columns (a column the
    declaration no longer names included)."""
    return [(name, type_) for name, type_ in columns if name not in (VALID_FROM, VALID_TO)]


# ----------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class HistoryCheck:
    """One check of the history, as SQL returning one row of offending counts (zero everywhere: passed)."""

    name: str
    description: str
    blocking: bool
    query: sql.Composable


MATCHES_BASE = "history_matches_base"
RECONCILES = "loads_reconcile_with_history"


def history_checks(base: TableSpec, columns: Sequence[str] | None = None) -> list[HistoryCheck]:
    """The history's two checks; `columns` are the base table's stored columns (default: the declared ones)."""
    names = HistoryNames.of(base)
    column_list = listed(columns or base.column_names)
    current = sql.SQL("SELECT {} FROM {} WHERE {} IS NULL").format(column_list, names.history, sql.Identifier(VALID_TO))
    stored = sql.SQL("SELECT {} FROM {}").format(column_list, names.base)
    # Two fingerprints first (row count and the sum of 64-bit row hashes: one scan each, no sort);
    # only when they differ are the two EXCEPT ALL sorts run to count the offending rows. Equal
    # fingerprints of different row multisets would take a 64-bit hash collision. On the 243k-row
    # COVID table: 0.18 s instead of 0.47 s.
    fingerprint = sql.SQL("count(*) AS n, sum(hash_record_extended(ROW({}), 0)::numeric) AS h").format(column_list)
    matches = sql.SQL(
        "SELECT CASE WHEN {same} THEN 0 ELSE (SELECT count(*) FROM ({b} EXCEPT ALL {c}) d) END AS base_rows_not_current_in_history, "
        "CASE WHEN {same} THEN 0 ELSE (SELECT count(*) FROM ({c} EXCEPT ALL {b}) d) END AS current_history_rows_not_in_base "
        "FROM (SELECT {f} FROM ({b}) s) b, (SELECT {f} FROM ({c}) s) c"
    ).format(b=stored, c=current, f=fingerprint, same=sql.SQL("(b.n, b.h) IS NOT DISTINCT FROM (c.n, c.h)"))
    frm, to = sql.Identifier(VALID_FROM), sql.Identifier(VALID_TO)
    reconciles = sql.SQL(
        "WITH l AS (SELECT * FROM {loads} WHERE table_name = {t}), "
        "o AS (SELECT {frm} AS load_id, count(*) AS n FROM {h} GROUP BY 1), "
        "c AS (SELECT {to} AS load_id, count(*) AS n FROM {h} WHERE {to} IS NOT NULL GROUP BY 1), "
        "j AS (SELECT load_id, l.rows_total, l.rows_added, l.rows_revised, l.rows_withdrawn, l.table_name IS NOT NULL AS recorded, "
        "coalesce(o.n, 0) AS opened, coalesce(c.n, 0) AS closed, "
        "l.rows_total - lag(l.rows_total, 1, 0::bigint) OVER (ORDER BY load_id) AS growth "
        "FROM l FULL JOIN o USING (load_id) FULL JOIN c USING (load_id)) "
        "SELECT count(*) FILTER (WHERE NOT recorded) AS versions_of_unrecorded_loads, "
        "count(*) FILTER (WHERE recorded AND opened <> rows_added + rows_revised) AS loads_opened_mismatch, "
        "count(*) FILTER (WHERE recorded AND closed <> rows_revised + rows_withdrawn) AS loads_closed_mismatch, "
        "count(*) FILTER (WHERE recorded AND growth <> rows_added - rows_withdrawn) AS loads_total_mismatch, "
        "(SELECT count(*) FROM {h} WHERE {to} IS NULL) - coalesce((SELECT rows_total FROM l ORDER BY load_id DESC LIMIT 1), 0) "
        "AS current_rows_minus_last_total FROM j"
    ).format(loads=names.loads, t=sql.Literal(names.table), h=names.history, frm=frm, to=to)
    return [
        HistoryCheck(
            MATCHES_BASE,
            f"The current versions in {names.schema}.{names.history_name} are exactly the rows of {base.qualified_name}, "
            "so its as-of reads end at the table analysts see.",
            True,
            matches,
        ),
        HistoryCheck(
            RECONCILES,
            f"{names.schema}.{LOADS} reconciles with the history: per load, added + revised versions opened and revised + "
            "withdrawn closed; each rows_total is the previous one plus added minus withdrawn, the last one the current rows.",
            False,  # a past inconsistency cannot be repaired by reloading, so it does not hold up the loads
            reconciles,
        ),
    ]


def checks_now(connection: adbc.Connection, base: TableSpec) -> list[HistoryCheck]:
    """The checks as the warehouse stands: over the base table's stored columns; failing (a count of 1
    in `history_tables_missing`) where the history or loads table does not exist yet."""
    names = HistoryNames.of(base)
    if not table_exists(connection, names.history, names.loads, names.base):
        missing = sql.SQL("SELECT 1 AS history_tables_missing")
        return [HistoryCheck(c.name, c.description, c.blocking, missing) for c in history_checks(base)]
    return history_checks(base, [name for name, _ in _mirrored(stored_columns(connection, names.base))])
