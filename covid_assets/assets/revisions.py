"""`covid_19.revisions`: what each load changed in each state's history, from the base table's versions.

States revise history; this table says by how much, load by load, without diffing snapshots: the
merge already recorded every version it opened and closed (`covid_19.covid_test_results_history`,
datasets/history.py). A version opened by load L is a row L added or the new value of a row it
revised; a version closed by L is the old value of a revised row or a withdrawn row. So per
(load, state): rows added, revised and withdrawn, the change the load made to the state's total
positive results and total results (new values minus old), and the earliest date it touched.

It is a view, not a table the IO manager writes: a run writes inside one transaction, and the
load's `committed_at` is stamped by a deferred trigger at COMMIT, so a copy written by the run
would hold NULL for exactly the load it describes. The view reads it when asked; a filter on
`load_id` reaches the history's indexes on `valid_from_load` and `valid_to_load`. The asset keeps
the view's definition current (replacing it only when it changed, so readers are not locked out
for the rest of the run) and reports the latest load's figures, which the UI plots run over run.
"""


from dagster import AssetExecutionContext, Failure, MaterializeResult, asset
from psycopg import sql

from covid_assets.assets.tables import BASE, BASE_ASSET_KEY, OWNERS, REVISIONS
from covid_assets.datasets.history import VALID_FROM, VALID_TO, HistoryNames
from covid_assets.datasets.table_spec import TableSpec
from covid_assets.storage.statements import listed
from covid_assets.storage.warehouse import WarehouseResource

__all__ = ["revisions", "revisions_query"]

_COUNT = "new_results_reported"


def revisions_query(schema: str, table: str) -> sql.Composed:
    """One row per (load, state) of the base table `schema.table`, ordered by load and state."""
    names = HistoryNames(schema, table)
    return sql.SQL(
        """
        WITH versions AS (
            SELECT {valid_from} AS load_id, TRUE AS opened, state, overall_outcome, date, {count} AS n FROM {history}
            UNION ALL
            SELECT {valid_to}, FALSE, state, overall_outcome, date, -{count} FROM {history} WHERE {valid_to} IS NOT NULL
        ), by_key AS (
            SELECT load_id, state, overall_outcome, date, bool_or(opened) AS opened, bool_or(NOT opened) AS closed,
                   coalesce(sum(n), 0) AS change
            FROM versions GROUP BY load_id, state, overall_outcome, date
        )
        SELECT k.load_id, l.committed_at, k.state,
               count(*) FILTER (WHERE opened AND NOT closed) AS rows_added,
               count(*) FILTER (WHERE opened AND closed) AS rows_revised,
               count(*) FILTER (WHERE closed AND NOT opened) AS rows_withdrawn,
               coalesce(sum(change) FILTER (WHERE overall_outcome = 'Positive'), 0)::bigint AS positive_results_change,
               sum(change)::bigint AS total_results_change,
               min(date) AS earliest_date_touched
        FROM by_key k JOIN {loads} l ON l.table_name = {table} AND l.load_id = k.load_id
        GROUP BY k.load_id, l.committed_at, k.state
        ORDER BY k.load_id, k.state
        """
    ).format(
        history=names.history,
        valid_from=sql.Identifier(VALID_FROM),
        valid_to=sql.Identifier(VALID_TO),
        count=sql.Identifier(_COUNT),
        loads=names.loads,
        table=sql.Literal(table),
    )


# ----------------------------------------------------------------------------- the asset
_LOAD_FIGURES = ("rows_total", "rows_added", "rows_revised", "rows_withdrawn")


@asset(
    key=REVISIONS.asset_key,
    deps=[BASE_ASSET_KEY],
    metadata=REVISIONS.definition_metadata(),
    owners=OWNERS,
    group_name="reporting",
    kinds={"postgres", "sql"},
    description=REVISIONS.description,
)
def revisions(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Keep `covid_19.revisions` defined over the base table's history; report the latest load's figures.

    The figures come from `covid_19.loads` (one row), not from the view: reading the view
    aggregates the history (0.2-0.3 s for a 243k-row load), and a run only needs the totals the
    loads table already holds; per-state figures are a query away.
    """
    names = HistoryNames.of(BASE)
    needed = names.tables
    if missing := warehouse.missing_tables(needed):
        named = [f"{schema}.{table}" for schema, table in needed if sql.Identifier(schema, table).as_string() in missing]
        raise Failure(f"{', '.join(named)} missing: materialize {BASE.qualified_name} first (its loads record the history)")
    view = ensure_view(warehouse, REVISIONS, revisions_query(BASE.schema, BASE.name))
    context.log.info(f"{REVISIONS.qualified_name}: view {view}")
    return MaterializeResult(metadata={
        "dagster/table_name": REVISIONS.qualified_name,
        "dagster/column_schema": REVISIONS.written_column_schema,
        "dagster/column_lineage": REVISIONS.column_lineage(BASE_ASSET_KEY),
        "dagster/storage_kind": "postgres",
        "view": view,
        **latest_load(warehouse),
    })


def latest_load(warehouse: WarehouseResource) -> dict[str, int | None]:
    """The latest load's id and counts (None before the first load), as `covid_19.loads` records them."""
    rows = warehouse.query(sql.SQL("SELECT load_id, {} FROM {} WHERE table_name = {} ORDER BY load_id DESC LIMIT 1").format(
        listed(_LOAD_FIGURES), HistoryNames.of(BASE).loads, sql.Literal(BASE.name)))
    values = rows[0] if rows else (None,) * (1 + len(_LOAD_FIGURES))
    return {"latest_load_id": values[0], **{f: None if v is None else int(v) for f, v in zip(_LOAD_FIGURES, values[1:])}}


def ensure_view(warehouse: WarehouseResource, spec: TableSpec, query: sql.Composable) -> str:
    """Create the view `spec` describes, or replace it when its definition differs from `query`:
    "created", "replaced" or "unchanged".

    Replacing a view locks out its readers until the run commits, so an unchanged one is left alone
    (compared through a temporary view of `query`, deparsed by Postgres as the stored one is).
    """
    view = sql.Identifier(spec.schema, spec.name)
    (kind,) = warehouse.query(sql.SQL("SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass({}))").format(
        sql.Literal(view.as_string())))[0]
    if kind not in (None, "v"):
        raise Failure(f"{spec.qualified_name} exists and is not a view (relkind {kind!r}): rename or drop it, the revisions are a view")
    if kind == "v":
        wanted = sql.Identifier("pg_temp", f"{spec.name}_wanted")
        warehouse.query(sql.SQL("CREATE TEMPORARY VIEW {} AS {}").format(wanted, query))
        (same,) = warehouse.query(sql.SQL("SELECT pg_get_viewdef({}::regclass) = pg_get_viewdef({}::regclass)").format(
            sql.Literal(wanted.as_string()), sql.Literal(view.as_string())))[0]
        warehouse.query(sql.SQL("DROP VIEW {}").format(wanted))
        if same:
            return "unchanged"
    warehouse.query(sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(view, query))
    warehouse.query(sql.SQL("COMMENT ON VIEW {} IS {}").format(view, sql.Literal(spec.description)))
    return "created" if kind is None else "replaced"
