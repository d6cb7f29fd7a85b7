"""The COVID base table's figures, shown with each load in the UI (declared: `figures:` in its defs.yaml).

Numbers worth plotting run over run: how many jurisdictions, how many reported in the latest week
of the data, the tests to date, and the first and last day. Computed in SQL, in the run's transaction,
on the table the load just merged, so they describe exactly what the run commits.
"""

from __future__ import annotations

from typing import Any

from dagster import MetadataValue
from psycopg import sql

from covid_assets.datasets.dataset_spec import DatasetSpec


def base_table_figures(connection: Any, spec: DatasetSpec) -> dict[str, object]:
    """jurisdictions, states_reporting_latest_week, total_tests_to_date, first_date, last_date."""
    statement = sql.SQL(
        "SELECT count(DISTINCT state), count(DISTINCT state) FILTER (WHERE date > (SELECT max(date) FROM {t}) - 7), "
        "coalesce(sum(new_results_reported), 0)::bigint, min(date)::text, max(date)::text FROM {t}"
    ).format(t=sql.Identifier(spec.base.schema, spec.base.name))
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string())
        jurisdictions, reporting, total, first, last = cursor.fetchone()
    return {
        "jurisdictions": int(jurisdictions),
        "states_reporting_latest_week": int(reporting),
        "total_tests_to_date": int(total),
        "first_date": MetadataValue.text(str(first)),
        "last_date": MetadataValue.text(str(last)),
    }
