"""`covid_19.revisions`: what each load changed in each state's history, from the base table's versions.

States revise history; this table says by how much, load by load, without diffing snapshots: the
merge already recorded every version it opened and closed (`covid_19.covid_test_results_history`,
datasets/history.py). A version opened by load L is a row L added or the new value of a row it
revised; a version closed by L is the old value of a revised row or a withdrawn row. So per
(load, state): rows added, revised and withdrawn, the change the load made to the state's total
positive results and total results (new values minus old), and the earliest date it touched.
"""

from __future__ import annotations

from psycopg import sql

from covid_assets.datasets.history import LOADS, VALID_FROM, VALID_TO

__all__ = ["revisions_query"]

_COUNT = "new_results_reported"


def revisions_query(schema: str, table: str) -> sql.Composed:
    """One row per (load, state) of the base table `schema.table`, ordered by load and state."""
    history = sql.Identifier(schema, f"{table}_history")
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
        history=history,
        valid_from=sql.Identifier(VALID_FROM),
        valid_to=sql.Identifier(VALID_TO),
        count=sql.Identifier(_COUNT),
        loads=sql.Identifier(schema, LOADS),
        table=sql.Literal(table),
    )
