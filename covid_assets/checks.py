"""The COVID asset checks beyond the declared ones, asked of Postgres in SQL.

The blocking checks of the base table (key, outcomes, dates, jurisdictions, row count of the
accepted load) are declared (defs/covid_pcr_testing/defs.yaml) and run by the generic path: they
stop the summaries from being rebuilt on bad data. Here: the warnings, which describe the source's
known quirks with numbers so they can be watched over time, and the summary tables' checks. (The
revisions view is checked through the history: `history_matches_base`, `loads_reconcile_with_history`.)
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    multi_asset_check,
)
from psycopg import sql

from covid_assets.assets.tables import BASE, BASE_ASSET_KEY, SPEC_BY_KEY, SUMMARIES
from covid_assets.storage.statements import repeated_key_rows
from covid_assets.storage.warehouse import WarehouseResource

RAGGED_LAG_DAYS = 14
BASE_TABLE = sql.Identifier(BASE.schema, BASE.name)

WARNING_CHECKS = {
    "negative_daily_counts": "Daily counts below zero (states revising history); how many and the worst rows.",
    "cumulative_totals_decrease": "Rows whose cumulative total is lower than the day before in the same series.",
    "ragged_reporting": f"States whose latest date lags the dataset's latest date by more than {RAGGED_LAG_DAYS} days.",
}


@multi_asset_check(
    specs=[AssetCheckSpec(name, asset=BASE_ASSET_KEY, description=text) for name, text in WARNING_CHECKS.items()],
)
def base_table_checks(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> Iterator[AssetCheckResult]:
    """The warnings on the base table (the blocking checks are the declaration's)."""

    negative, worst = _negative_counts(warehouse)
    yield _warning("negative_daily_counts", negative, negative_daily_counts=negative, worst_rows=MetadataValue.md(worst))

    (decreasing,) = warehouse.query(
        sql.SQL(
            "SELECT count(*) FROM (SELECT total_results_reported - lag(total_results_reported) OVER "
            "(PARTITION BY state, overall_outcome ORDER BY date) AS change FROM {table}) t WHERE change < 0"
        ).format(table=BASE_TABLE)
    )[0]
    yield _warning("cumulative_totals_decrease", decreasing, rows_with_decreasing_total=decreasing)

    lagging = warehouse.query(
        sql.SQL(
            "SELECT state, max(date) AS latest FROM {table} GROUP BY state "
            "HAVING max(date) < (SELECT max(date) FROM {table}) - {lag} ORDER BY latest, state"
        ).format(table=BASE_TABLE, lag=sql.Literal(RAGGED_LAG_DAYS))
    )
    yield _warning("ragged_reporting", len(lagging), lagging_states=len(lagging),
                   states=", ".join(f"{state} ({latest})" for state, latest in lagging) or "none")


SUMMARY_TOTAL_QUERIES = {
    "outcome_results": "SELECT sum(total_results_reported)::bigint FROM {table}",
    "state_results": "SELECT sum(total_tests)::bigint FROM {table}",
    "smoothed_results": "SELECT sum(positive_tests + negative_tests + inconclusive_tests)::bigint FROM {table}",
}


def _summary_specs() -> Iterator[AssetCheckSpec]:
    for spec in SUMMARIES:
        asset = spec.asset_key
        yield AssetCheckSpec("not_empty", asset=asset, description="The table has at least one row.")
        yield AssetCheckSpec("key_unique", asset=asset, description=f"({', '.join(spec.key)}) identifies one row.")
        if spec.name in SUMMARY_TOTAL_QUERIES:
            yield AssetCheckSpec(
                "reconciles_with_base", asset=asset, additional_deps=[BASE_ASSET_KEY],
                description="Its total number of results equals the base table's sum of new_results_reported.",
            )


@multi_asset_check(specs=list(_summary_specs()), can_subset=True)
def summary_table_checks(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> Iterator[AssetCheckResult]:
    (base_total,) = warehouse.query(sql.SQL("SELECT coalesce(sum(new_results_reported), 0)::bigint FROM {}").format(BASE_TABLE))[0]
    for check_key in context.selected_asset_check_keys:
        spec = SPEC_BY_KEY[check_key.asset_key]
        table = sql.Identifier(spec.schema, spec.name)
        if check_key.name == "not_empty":
            (rows,) = warehouse.query(sql.SQL("SELECT count(*) FROM {}").format(table))[0]
            yield _result("not_empty", rows > 0, asset_key=check_key.asset_key, row_count=rows)
        elif check_key.name == "key_unique":
            (duplicates,) = warehouse.query(repeated_key_rows(table, spec.key))[0]
            yield _result("key_unique", duplicates == 0, asset_key=check_key.asset_key, duplicate_keys=duplicates)
        else:
            (total,) = warehouse.query(sql.SQL(SUMMARY_TOTAL_QUERIES[spec.name]).format(table=table))[0]
            total = total or 0
            yield AssetCheckResult(
                asset_key=check_key.asset_key, check_name="reconciles_with_base", passed=total == base_total,
                severity=AssetCheckSeverity.WARN,
                metadata={"summary_total": int(total), "base_total": int(base_total), "difference": int(total - base_total)},
            )


def _negative_counts(warehouse: WarehouseResource) -> tuple[int, str]:
    rows = warehouse.query(
        sql.SQL(
            "SELECT state, overall_outcome, date, new_results_reported, count(*) OVER () FROM {} "
            "WHERE new_results_reported < 0 ORDER BY new_results_reported, state, date LIMIT 5"
        ).format(BASE_TABLE)
    )
    table = "\n".join(f"| {s} | {o} | {d} | {n:,} |" for s, o, d, n, _ in rows)
    return (rows[0][4] if rows else 0), "| state | outcome | date | new results |\n|---|---|---|---|\n" + table


def _result(name: str, passed: bool, asset_key: AssetKey, **metadata: object) -> AssetCheckResult:
    return AssetCheckResult(asset_key=asset_key, check_name=name, passed=bool(passed), metadata=metadata)


def _warning(name: str, count: int, **metadata: object) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=BASE_ASSET_KEY, check_name=name, passed=count == 0, severity=AssetCheckSeverity.WARN, metadata=metadata
    )
