"""All eight tables on the real snapshot, in a real Postgres, checked against independent SQL."""

from __future__ import annotations

import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey

from covid_assets.sources.socrata import SocrataSource
from covid_assets_tests.support import FakeSocrata, Fault
from covid_assets_tests.helpers import COVID_SELECTION, SNAPSHOT, SNAPSHOT_ROWS, TABLES, fresh_database, from_api, from_file, materialize_all, query


def same_rows(actual: list[tuple], expected: list[tuple]) -> bool:
    """Equal row by row; floats equal to 1e-9 (both sides are already rounded to 2 decimals)."""

    def same(a: object, b: object) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            if a is None or b is None:
                return a is b
            return math.isclose(float(a), float(b), abs_tol=1e-9)
        return a == b

    return len(actual) == len(expected) and all(
        len(x) == len(y) and all(same(a, b) for a, b in zip(x, y)) for x, y in zip(actual, expected)
    )


@pytest.fixture(scope="module")
def loaded_warehouse(postgres_server_url: str, snapshot_load):
    """The snapshot load (all eight tables), shared by the read-only checks below: (URL, run result)."""
    template, result = snapshot_load
    with fresh_database(postgres_server_url, "e2e", template=template) as url:
        yield url, result


def test_every_table_is_loaded(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    counts = {table: query(url, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}
    assert counts["covid_19_raw.raw_covid_test_results"] == SNAPSHOT_ROWS
    assert counts["covid_19.covid_test_results"] == SNAPSHOT_ROWS
    assert counts["covid_19.outcome_results"] == 3
    assert counts["covid_19.state_results"] == 56
    assert counts["covid_19.smoothed_results"] == 364  # 2020-03-01 .. 2021-02-27
    assert counts["covid_19.total_results"] == 56
    assert counts["covid_19.recent_positivity_results"] == 10
    assert counts["covid_19.revisions"] == counts["covid_19.state_results"]  # the first load added every jurisdiction's rows


def test_base_table_has_its_primary_key_and_types(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    key = query(
        url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey) WHERE i.indrelid = 'covid_19.covid_test_results'::regclass "
        "AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    assert key == [("state",), ("overall_outcome",), ("date",)]
    assert query(url, "SELECT state_fips, date FROM covid_19.covid_test_results WHERE state = 'AL' ORDER BY date LIMIT 1")[0][0] == "01"
    assert query(url, "SELECT min(new_results_reported) FROM covid_19.covid_test_results WHERE state = 'WY'")[0][0] < 0


def test_raw_table_keeps_the_strings_as_delivered(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    with gzip.open(SNAPSHOT, "rt") as snapshot:
        header, first = snapshot.readline().strip().split(","), snapshot.readline().strip().split(",")
    columns = ", ".join(header)
    assert list(query(url, f"SELECT {columns} FROM covid_19_raw.raw_covid_test_results LIMIT 1")[0]) == first
    assert query(url, "SELECT count(DISTINCT fetched_at) FROM covid_19_raw.raw_covid_test_results") == [(1,)]


def test_outcome_results_match_sql(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    expected = query(
        url,
        """SELECT overall_outcome, sum(new_results_reported)::bigint AS total,
                  round(100 * sum(new_results_reported)::numeric / sum(sum(new_results_reported)) OVER (), 2)::float8
           FROM covid_19.covid_test_results GROUP BY 1 ORDER BY total DESC, 1""",
    )
    assert same_rows(query(url, "SELECT * FROM covid_19.outcome_results"), expected)


def test_state_results_match_sql(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    expected = query(
        url,
        """WITH s AS (
             SELECT state,
                    coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Positive'), 0) AS p,
                    coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Negative'), 0) AS n,
                    coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Inconclusive'), 0) AS i
             FROM covid_19.covid_test_results GROUP BY state)
           SELECT s.state, (SELECT state_name FROM covid_19.covid_test_results b WHERE b.state = s.state
                            ORDER BY date DESC, overall_outcome DESC LIMIT 1),
                  p::bigint, n::bigint, i::bigint, (p + n + i)::bigint,
                  round(100 * p::numeric / nullif(p + n + i, 0), 2)::float8
           FROM s ORDER BY s.state""",
    )
    assert same_rows(query(url, "SELECT * FROM covid_19.state_results"), expected)


def test_smoothed_results_match_sql(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    expected = query(
        url,
        """WITH days AS (
             SELECT d::date AS date FROM generate_series(
               (SELECT min(date) FROM covid_19.covid_test_results),
               (SELECT max(date) FROM covid_19.covid_test_results), interval '1 day') d),
           daily AS (
             SELECT days.date,
                    coalesce(sum(b.new_results_reported) FILTER (WHERE b.overall_outcome = 'Positive'), 0) AS p,
                    coalesce(sum(b.new_results_reported) FILTER (WHERE b.overall_outcome = 'Negative'), 0) AS n,
                    coalesce(sum(b.new_results_reported) FILTER (WHERE b.overall_outcome = 'Inconclusive'), 0) AS i
             FROM days LEFT JOIN covid_19.covid_test_results b USING (date) GROUP BY days.date),
           windowed AS (
             SELECT *, row_number() OVER w AS n_days,
                    sum(p) OVER w AS p7, sum(n) OVER w AS n7, sum(i) OVER w AS i7
             FROM daily WINDOW w AS (ORDER BY date ROWS BETWEEN 6 PRECEDING AND CURRENT ROW))
           SELECT date, p::bigint, n::bigint, i::bigint,
                  CASE WHEN n_days >= 7 THEN round(p7::numeric / 7, 2)::float8 END,
                  CASE WHEN n_days >= 7 THEN round(n7::numeric / 7, 2)::float8 END,
                  CASE WHEN n_days >= 7 THEN round(i7::numeric / 7, 2)::float8 END,
                  CASE WHEN n_days >= 7 THEN round(100 * p7::numeric / nullif(p7 + n7 + i7, 0), 2)::float8 END
           FROM windowed ORDER BY date""",
    )
    actual = query(url, "SELECT * FROM covid_19.smoothed_results")
    assert same_rows(actual, expected)
    assert all(value is None for row in actual[:6] for value in row[4:])


def test_total_results_match_sql(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    expected = query(
        url,
        """WITH latest AS (
             SELECT DISTINCT ON (state, overall_outcome) state, overall_outcome, total_results_reported AS t
             FROM covid_19.covid_test_results WHERE total_results_reported IS NOT NULL
             ORDER BY state, overall_outcome, date DESC),
           states AS (
             SELECT DISTINCT ON (state) state, state_name, max(date) OVER (PARTITION BY state) AS latest_date
             FROM covid_19.covid_test_results ORDER BY state, date DESC, overall_outcome DESC)
           SELECT s.state, s.state_name, s.latest_date,
                  coalesce(max(t) FILTER (WHERE overall_outcome = 'Positive'), 0),
                  coalesce(max(t) FILTER (WHERE overall_outcome = 'Negative'), 0),
                  coalesce(max(t) FILTER (WHERE overall_outcome = 'Inconclusive'), 0),
                  coalesce(sum(t), 0)::bigint
           FROM states s LEFT JOIN latest l USING (state)
           GROUP BY s.state, s.state_name, s.latest_date ORDER BY s.state""",
    )
    assert same_rows(query(url, "SELECT * FROM covid_19.total_results"), expected)


def test_recent_positivity_results_match_sql(loaded_warehouse) -> None:
    url, _ = loaded_warehouse
    expected = query(
        url,
        """WITH w AS (
             SELECT state,
                    coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Positive'), 0) AS p,
                    coalesce(sum(new_results_reported), 0) AS t
             FROM covid_19.covid_test_results
             WHERE date > (SELECT max(date) FROM covid_19.covid_test_results) - 30
             GROUP BY state),
           r AS (SELECT state, p, t, round(100 * p::numeric / t, 2)::float8 AS rate FROM w WHERE t <> 0)
           SELECT row_number() OVER (ORDER BY rate DESC, r.state)::bigint, r.state,
                  (SELECT state_name FROM covid_19.covid_test_results b WHERE b.state = r.state
                   ORDER BY date DESC, overall_outcome DESC LIMIT 1),
                  p::bigint, t::bigint, rate
           FROM r ORDER BY rate DESC, r.state LIMIT 10""",
    )
    assert same_rows(query(url, "SELECT * FROM covid_19.recent_positivity_results"), expected)


def test_materialization_metadata(loaded_warehouse) -> None:
    url, result = loaded_warehouse
    by_table = {
        ".".join(event.asset_key.path): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    assert set(by_table) == set(TABLES)
    for table, metadata in by_table.items():
        assert metadata["dagster/table_name"].value == table
        assert metadata["dagster/column_schema"].value.columns, table
        assert all(column.description for column in metadata["dagster/column_schema"].value.columns), table
        if table == "covid_19.revisions":  # a view: the latest load's counts (below), no row count or preview
            continue
        assert metadata["dagster/row_count"].value > 0, table
        assert "|" in metadata["preview"].value, table
    raw = by_table["covid_19_raw.raw_covid_test_results"]
    assert raw["fetch_bytes"].value == SNAPSHOT.stat().st_size
    base = by_table["covid_19.covid_test_results"]
    assert base["duplicates_dropped"].value == 0
    assert base["total_tests_to_date"].value == query(url, "SELECT sum(new_results_reported) FROM covid_19.covid_test_results")[0][0]
    assert base["states_reporting_latest_week"].value == query(
        url,
        "SELECT count(DISTINCT state) FROM covid_19.covid_test_results "
        "WHERE date > (SELECT max(date) FROM covid_19.covid_test_results) - 7",
    )[0][0]
    assert by_table["covid_19.smoothed_results"]["latest_7day_positivity_pct"].value == query(
        url, "SELECT smoothed_positivity_rate FROM covid_19.smoothed_results ORDER BY date DESC LIMIT 1"
    )[0][0]
    revisions = by_table["covid_19.revisions"]  # the first load: every row added
    figures = ("latest_load_id", "rows_total", "rows_added", "rows_revised", "rows_withdrawn")
    assert tuple(revisions[name].value for name in figures) == (1, SNAPSHOT_ROWS, SNAPSHOT_ROWS, 0, 0)
    assert query(url, "SELECT count(*) FROM covid_19.revisions")[0][0] == by_table["covid_19.state_results"]["dagster/row_count"].value
    lineage = by_table["covid_19.state_results"]["dagster/column_lineage"].value.deps_by_column
    assert {dep.column_name for dep in lineage["positivity_rate"]} == {"new_results_reported", "overall_outcome"}
    assert {dep.asset_key for deps in lineage.values() for dep in deps} == {AssetKey(["covid_19", "covid_test_results"])}


def test_bad_source_row_fails_the_run_and_keeps_every_table(loaded_warehouse, tmp_path: Path) -> None:
    url, _ = loaded_warehouse
    before = {table: query(url, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}
    broken = tmp_path / "broken.csv"
    with gzip.open(SNAPSHOT, "rt") as snapshot:
        lines = snapshot.read().splitlines()
    lines[5] = lines[5].replace("2020-03-", "2020-13-", 1)
    broken.write_text("\n".join(lines[:1000]) + "\n")
    result = materialize_all(url, from_file(broken), raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.event_type_value == "STEP_FAILURE")
    assert "1 of 999 source rows cannot be typed (bad date: 1)" in str(failure.event_specific_data.error)
    assert {table: query(url, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES} == before


@pytest.mark.slow
def test_the_cli_materializes_every_asset(warehouse_url: str, tmp_path: Path) -> None:
    """The README's main command, run as `./dev run` runs it (with the offline snapshot as source)."""
    env = {
        **os.environ,
        "COVID_DB_URL": warehouse_url,
        "SOCRATA_SOURCE_FILE": str(SNAPSHOT),
        "DAGSTER_HOME": str(tmp_path),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "covid_assets.definitions", "--select", COVID_SELECTION],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "RUN_SUCCESS" in completed.stderr
    assert query(warehouse_url, "SELECT count(*) FROM covid_19.state_results") == [(56,)]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["soda2", "soda3"])
def test_api_path_with_concurrent_pages_and_retries(warehouse_url: str, protocol: str) -> None:
    """The same snapshot served by a Socrata look-alike: 6 concurrent pages, a 429 and a 503 on the way.
    With an app token the run speaks SODA3 (POSTed queries), without one SODA2."""
    import pandas as pd

    snapshot = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False)
    token = "an-app-token" if protocol == "soda3" else None
    with FakeSocrata(snapshot.to_dict("records"), max_limit=50_000) as server:
        server.faults.append(Fault.error(429, retry_after="0", where="page", offset=10_000))
        server.faults.append(Fault.error(503, where="page", offset=40_000))
        knobs = SocrataSource(page_size=10_000, backoff_factor=0.01)
        result = materialize_all(warehouse_url, from_api(server.base_url, app_token=token), knobs)
    assert {r.protocol for r in server.requests if r.target in ("count", "page")} == {protocol}
    raw = next(
        event.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.asset_key.path[-1] == "raw_covid_test_results"
    )
    assert (raw["fetch_pages"].value, raw["fetch_retries"].value) == (6, 2)
    assert query(warehouse_url, "SELECT count(*), count(DISTINCT (state, overall_outcome, date)) FROM covid_19.covid_test_results") == [
        (SNAPSHOT_ROWS, SNAPSHOT_ROWS)
    ]
    assert query(warehouse_url, "SELECT count(*) FROM covid_19.state_results") == [(56,)]


def test_one_summary_materializes_on_its_own(snapshot_warehouse: str) -> None:
    """The five summaries share a step (one read of the base table) but stay separately selectable:
    selecting one rewrites that table only, with its own config."""
    from dagster import AssetSelection

    url = snapshot_warehouse
    query(url, "DELETE FROM covid_19.recent_positivity_results")
    query(url, "DELETE FROM covid_19.state_results")
    result = materialize_all(
        url, from_file(SNAPSHOT),
        selection=AssetSelection.assets(AssetKey(["covid_19", "recent_positivity_results"])),
        run_config={"ops": {"reporting_summaries": {"config": {"top_n": 3}}}},
    )
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == {AssetKey(["covid_19", "recent_positivity_results"])}
    assert query(url, "SELECT count(*) FROM covid_19.recent_positivity_results")[0][0] == 3
    assert query(url, "SELECT count(*) FROM covid_19.state_results")[0][0] == 0  # not selected: untouched
