"""The revision history of a declared base table (datasets/history.py) on a real Postgres.

Versions of CDC 9mfq-cb36 (five jurisdictions) are served by the local Socrata stand-in and
materialized through the dataset's Dagster definitions, or loaded with the loader's functions on
one ADBC connection as a run does; after each load the base table's fingerprint is kept, and
`_as_of` / `_at_load` must give exactly that fingerprint back, then and after later loads.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from covid_assets.datasets import load
from covid_assets.datasets.component import CheckQuery, base_url_env, dataset_definitions, evaluate
from covid_assets.datasets.dataset_spec import ValueChecks
from covid_assets.datasets.history import HistoryError, checks_now
from covid_assets.sources.socrata import SocrataSource
from covid_assets.storage.postgres_io import warehouse_resources
from covid_assets.storage.warehouse import WarehouseResource
from covid_assets_tests.helpers import deployment, query
from covid_assets_tests.support.fake_socrata import FakeSocrata
from covid_assets_tests.test_dataset_load import FETCHED_AT, cdc_rows, cdc_spec, pages_of

BASE = "cdc.cases_deaths"
HISTORY = "cdc.cases_deaths_history"
LOADS = "SELECT load_id, rows_total, rows_added, rows_revised, rows_withdrawn FROM cdc.loads ORDER BY load_id"
REVISED = 300  # rows whose counts v2 revises
NEW_DAYS = 2  # days v2 adds to each jurisdiction's series
WITHDRAWN_STATE = "RMI"  # the series v3 withdraws


# ----------------------------------------------------------------------------- versions of the source
def api_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """As the API serves them: empty fields left out."""
    return [{k: v for k, v in row.items() if v != ""} for row in rows]


def version_1() -> list[dict[str, str]]:
    return api_rows(cdc_rows())


def version_2() -> list[dict[str, str]]:
    """REVISED rows with different counts, and NEW_DAYS more days of every series."""
    rows = [dict(row) for row in version_1()]
    for row in rows[5 : 5 + REVISED]:
        row["tot_cases"] = str(int(row["tot_cases"]) + 11)
    last = {}
    for row in rows:
        day = dt.datetime.strptime(row["submission_date"], "%m/%d/%Y").date()
        last[row["state"]] = max(last.get(row["state"], day), day)
    for state, day in sorted(last.items()):
        for ahead in range(1, NEW_DAYS + 1):
            date = (day + dt.timedelta(days=ahead)).strftime("%m/%d/%Y")
            rows.append({"submission_date": date, "state": state, "tot_cases": "1000", "new_case": "0", "tot_death": "1",
                         "new_death": "0", "created_at": date + " 01:00:00 PM"})
    return rows


def version_3() -> list[dict[str, str]]:
    """v2 without one jurisdiction's series (accepted with allow_shrink)."""
    return [row for row in version_2() if row["state"] != WITHDRAWN_STATE]


# ----------------------------------------------------------------------------- reading the warehouse
def fingerprint(url: str, relation: str, params: tuple = ()) -> tuple[int, str]:
    """Row count and a hash of all rows (order-free), as their text: any value, row or column counts."""
    return query(
        url, f"SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM {relation} AS t", params
    )[0]


def base_fingerprint(url: str) -> tuple[int, str]:
    return fingerprint(url, BASE)


def as_of(url: str, ts: dt.datetime) -> tuple[int, str]:
    return fingerprint(url, "cdc.cases_deaths_as_of(%s)", (ts,))


def at_load(url: str, load_id: int) -> tuple[int, str]:
    return fingerprint(url, "cdc.cases_deaths_at_load(%s)", (load_id,))


def loads(url: str) -> list[tuple]:
    return query(url, LOADS)


def history_counts(url: str) -> tuple[int, int]:
    """(versions, closed versions)."""
    return query(url, f"SELECT count(*), count(valid_to_load) FROM {HISTORY}")[0]


def stored_state(url: str) -> tuple:
    """Everything a load writes: the base table, its history (with xmin: a rewrite shows) and the loads."""
    exists = query(url, "SELECT to_regclass(%s) IS NOT NULL, to_regclass('cdc.loads') IS NOT NULL", (HISTORY,))[0]
    history = sorted(map(repr, query(url, f"SELECT xmin::text, * FROM {HISTORY}"))) if exists[0] else None
    loaded = query(url, "SELECT * FROM cdc.loads ORDER BY load_id") if exists[1] else None
    return base_fingerprint(url), history, loaded


# ----------------------------------------------------------------------------- two ways to load
def load_directly(url: str, rows: list[dict[str, str]], spec=None, **merge) -> load.MergeCounts:
    """land, gate, publish, merge and commit on one connection, as a run's step does."""
    spec = spec or cdc_spec()
    with adbc.connect(url) as connection:
        landing = load.land(connection, spec, pages_of(rows), FETCHED_AT)
        checked = load.gate(connection, spec, landing, allow_shrink=True, max_shrink_fraction=0.05)
        load.publish_raw(connection, spec, landing)
        counts = load.merge_base(connection, spec, checked, **merge)
        connection.commit()
    return counts


def run_dataset(url: str, spec, server: FakeSocrata, instance: DagsterInstance, **config):
    """Materialize the dataset's raw and base tables and their checks from the stand-in, in process."""
    defs = dataset_definitions(spec)
    with deployment(url, **{base_url_env(spec.name): server.base_url}):
        return materialize(
            [*defs.assets, *defs.asset_checks],
            selection=AssetSelection.assets(spec.raw.asset_key, spec.base.asset_key),
            resources={**warehouse_resources(), "socrata": SocrataSource()},
            run_config={"ops": {f"load_{spec.name}": {"config": config}}} if config else None,
            raise_on_error=False,
            instance=instance,
        )


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def server() -> Iterator[FakeSocrata]:
    with FakeSocrata(version_1(), dataset_id="9mfq-cb36") as fake:
        yield fake


def publish(server: FakeSocrata, rows: list[dict[str, str]]) -> None:
    server.set_rows(rows)
    server.rows_updated_at += 86_400


# ----------------------------------------------------------------------------- three versions
def test_three_versions_are_each_readable_as_of_their_commit_and_by_load(warehouse_url: str, server, instance) -> None:
    spec = cdc_spec()
    n1, n2 = len(version_1()), len(version_2())
    withdrawn = sum(row["state"] == WITHDRAWN_STATE for row in version_2())
    added = len(version_2()) - n1
    seen: list[tuple[int, str]] = []
    for version, rows, config in ((1, version_1(), {}), (2, version_2(), {}), (3, version_3(), {"allow_shrink": True})):
        publish(server, rows)
        started = dt.datetime.now(dt.timezone.utc)
        result = run_dataset(warehouse_url, spec, server, instance, **config)
        assert result.success, version
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert {"history_matches_base", "loads_reconcile_with_history"} <= set(evaluations)
        assert all(e.passed for e in evaluations.values()), [(e.check_name, e.metadata) for e in evaluations.values() if not e.passed]
        seen.append(base_fingerprint(warehouse_url))
        run_id, committed_at, rows_updated_at, source_file, content_hash = query(
            warehouse_url,
            "SELECT run_id, committed_at, rows_updated_at, source_file, content_hash FROM cdc.loads WHERE load_id = %s",
            (version,),
        )[0]
        raw = result.asset_materializations_for_node(f"load_{spec.name}")[0].metadata
        assert (run_id, source_file, content_hash) == (result.run_id, None, raw["content_hash"].value)
        assert rows_updated_at == dt.datetime.fromtimestamp(server.rows_updated_at, dt.timezone.utc)
        assert started < committed_at < dt.datetime.now(dt.timezone.utc)
        assert as_of(warehouse_url, committed_at) == at_load(warehouse_url, version) == seen[-1]

    assert loads(warehouse_url) == [
        (1, n1, n1, 0, 0),
        (2, n2, added, REVISED, 0),
        (3, n2 - withdrawn, 0, 0, withdrawn),
    ]
    assert history_counts(warehouse_url) == (n1 + added + REVISED, REVISED + withdrawn)
    # Every earlier version is still there, exactly; between commits, the earlier one; before the first, nothing.
    committed = [ts for (ts,) in query(warehouse_url, "SELECT committed_at FROM cdc.loads ORDER BY load_id")]
    for load_id, (ts, expected) in enumerate(zip(committed, seen), start=1):
        assert as_of(warehouse_url, ts) == at_load(warehouse_url, load_id) == expected
        assert as_of(warehouse_url, ts - dt.timedelta(microseconds=1)) == (seen[load_id - 2] if load_id > 1 else (0, ""))
    assert len(set(seen)) == 3
    assert at_load(warehouse_url, 4) == at_load(warehouse_url, 0) == (0, "")
    # The withdrawn series is closed, never deleted: its last versions end at load 3.
    assert query(warehouse_url, f"SELECT count(*) FROM {HISTORY} WHERE state = %s AND valid_to_load = 3", (WITHDRAWN_STATE,)) == [(withdrawn,)]

    # An unchanged source: the run writes nothing, neither history nor a load.
    before = stored_state(warehouse_url)
    assert run_dataset(warehouse_url, spec, server, instance).success
    assert stored_state(warehouse_url) == before


def test_the_functions_return_the_base_tables_columns_and_types(warehouse_url: str) -> None:
    load_directly(warehouse_url, version_1())
    types = """SELECT attname::text, atttypid::int FROM pg_attribute
               WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
    columns = query(warehouse_url, types, (BASE,))
    assert len(columns) == len(cdc_spec().base.columns)
    for function in ("cdc.cases_deaths_as_of(now())", "cdc.cases_deaths_at_load(1)"):
        with psycopg.connect(warehouse_url) as conn:
            cursor = conn.execute(f"SELECT * FROM {function} LIMIT 0")
            assert [(c.name, c.type_code) for c in cursor.description] == columns


# ----------------------------------------------------------------------------- nothing on failure
def test_a_rolled_back_load_leaves_history_and_loads_unchanged(warehouse_url: str, server, instance) -> None:
    spec = cdc_spec(checks=ValueChecks(ranges={"tot_cases": (0, None)}))
    assert run_dataset(warehouse_url, spec, server, instance).success
    assert loads(warehouse_url) == [(1, len(version_1()), len(version_1()), 0, 0)]
    before = stored_state(warehouse_url)
    rows = version_2()
    rows[100]["tot_cases"] = "-5"  # typed fine, merged, then the blocking range check fails: the run rolls back
    publish(server, rows)

    result = run_dataset(warehouse_url, spec, server, instance)
    assert not result.success
    assert [e.check_name for e in result.get_asset_check_evaluations() if not e.passed] == ["ranges"]
    assert stored_state(warehouse_url) == before


def test_a_killed_load_leaves_history_and_loads_unchanged(warehouse_url: str) -> None:
    """The loader's backend is terminated after the merge wrote base rows and versions, before its load row."""
    load_directly(warehouse_url, version_1())
    before = stored_state(warehouse_url)
    failures: list[BaseException] = []

    def second_load() -> None:
        try:
            load_directly(warehouse_url, version_2())
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            failures.append(error)

    with psycopg.connect(warehouse_url) as blocker:
        blocker.execute("LOCK TABLE cdc.loads IN SHARE MODE")  # readers pass, the load's INSERT waits
        loader = threading.Thread(target=second_load)
        loader.start()
        waiting = []
        for _ in range(600):
            waiting = query(
                warehouse_url,
                "SELECT pid, query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"cdc\".\"loads\"%%'",
            )
            if waiting:
                break
            time.sleep(0.05)
        assert len(waiting) == 1, "the load never reached its load row"
        assert query(warehouse_url, "SELECT pg_terminate_backend(%s)", (waiting[0][0],)) == [(True,)]
        loader.join(timeout=60)
        blocker.rollback()
    assert not loader.is_alive() and len(failures) == 1
    assert stored_state(warehouse_url) == before


# ----------------------------------------------------------------------------- lifecycle
def test_a_base_table_that_predates_its_history_is_recorded_as_load_1(warehouse_url: str) -> None:
    load_directly(warehouse_url, version_1(), keep_history=False)
    assert query(warehouse_url, "SELECT to_regclass('cdc.loads'), to_regclass(%s)", (HISTORY,)) == [(None, None)]
    existing = base_fingerprint(warehouse_url)
    n1 = len(version_1())

    counts = load_directly(warehouse_url, version_2())
    assert loads(warehouse_url) == [(1, n1, n1, 0, 0), (2, counts.total, counts.added, counts.revised, 0)]
    assert at_load(warehouse_url, 1) == existing != at_load(warehouse_url, 2) == base_fingerprint(warehouse_url)
    (first, second), = query(warehouse_url, "SELECT min(committed_at), max(committed_at) FROM cdc.loads")
    assert first < second and as_of(warehouse_url, first) == existing  # the table as it stood when it was recorded
    assert as_of(warehouse_url, first - dt.timedelta(microseconds=1)) == (0, "")


def test_an_unchanged_delivery_writes_no_history_and_no_load(warehouse_url: str) -> None:
    load_directly(warehouse_url, version_1())
    assert loads(warehouse_url) == [(1, len(version_1()), len(version_1()), 0, 0)]
    before = stored_state(warehouse_url)
    assert load_directly(warehouse_url, version_1()) == load.MergeCounts(len(version_1()), 0, 0, 0)
    assert stored_state(warehouse_url) == before


def test_a_column_the_base_table_gains_reaches_history_and_functions(warehouse_url: str) -> None:
    from covid_assets.datasets.dataset_spec import raw_table_spec
    from covid_assets.datasets.table_spec import ColumnSpec, TableSpec

    load_directly(warehouse_url, version_1())
    narrow = cdc_spec().base
    base = TableSpec.build("cdc", "cases_deaths", [*narrow.columns, ColumnSpec("conf_cases", "BIGINT")], key=narrow.key)
    counts = load_directly(warehouse_url, version_1(), spec=cdc_spec(base=base, raw=raw_table_spec("cdc_raw", "cases_deaths", base)))
    assert counts.revised > 0  # the rows that have conf_cases
    assert at_load(warehouse_url, 2) == base_fingerprint(warehouse_url)
    assert query(warehouse_url, "SELECT count(conf_cases), count(*) FROM cdc.cases_deaths_at_load(1)") == [(0, len(version_1()))]
    assert query(warehouse_url, "SELECT count(conf_cases) FROM cdc.cases_deaths_at_load(2)") == [(counts.revised,)]


def test_a_load_refuses_to_revise_a_row_whose_current_version_is_missing(warehouse_url: str) -> None:
    load_directly(warehouse_url, version_1())
    row = version_1()[6]  # v2 revises it
    query(warehouse_url, f"DELETE FROM {HISTORY} WHERE state = %s AND submission_date = to_date(%s, 'MM/DD/YYYY')",
          (row["state"], row["submission_date"]))
    before = stored_state(warehouse_url)
    with pytest.raises(HistoryError, match=r"cases_deaths_history holds no current version of 1 of the 300 revised row\(s\)"):
        load_directly(warehouse_url, version_2())
    assert stored_state(warehouse_url) == before


# ----------------------------------------------------------------------------- checks
def history_check_results(url: str) -> dict[str, dict[str, int]]:
    """Each history check's offending counts (empty: passed), evaluated as the dataset's check step does."""
    with deployment(url):
        warehouse = WarehouseResource()
        with warehouse.transaction() as connection:
            checks = checks_now(connection, cdc_spec().base)
        results = {c.name: evaluate(cdc_spec().base.asset_key, CheckQuery(c.name, c.description, c.query), warehouse) for c in checks}
    for result in results.values():
        assert result.passed == (not any(v.value for v in result.metadata.values()))
    return {name: {k: v.value for k, v in result.metadata.items() if v.value} for name, result in results.items()}


@pytest.mark.parametrize(
    ("tampering", "expected"),
    [
        (f"UPDATE {HISTORY} SET tot_cases = tot_cases + 1 WHERE state = 'AK' AND valid_to_load IS NULL "
         "AND submission_date = '2021-07-27'",
         {"history_matches_base": {"base_rows_not_current_in_history_violations": 1, "current_history_rows_not_in_base_violations": 1}}),
        (f"DELETE FROM {HISTORY} WHERE valid_to_load = 2 AND ctid = (SELECT min(ctid) FROM {HISTORY} WHERE valid_to_load = 2)",
         {"loads_reconcile_with_history": {"loads_opened_mismatch_violations": 1, "loads_closed_mismatch_violations": 1}}),
        (f"UPDATE {HISTORY} SET valid_to_load = 2 WHERE state = 'NY' AND valid_to_load IS NULL "
         "AND submission_date = '2021-07-27'",
         {"history_matches_base": {"base_rows_not_current_in_history_violations": 1},
          "loads_reconcile_with_history": {"loads_closed_mismatch_violations": 1, "current_rows_minus_last_total_violations": -1}}),
        ("UPDATE cdc.loads SET rows_added = rows_added + 1 WHERE load_id = 2",
         {"loads_reconcile_with_history": {"loads_opened_mismatch_violations": 1, "loads_total_mismatch_violations": 1}}),
        (f"DELETE FROM {HISTORY}",
         {"history_matches_base": {"base_rows_not_current_in_history_violations": len(version_2())},
          "loads_reconcile_with_history": {"loads_opened_mismatch_violations": 2, "loads_closed_mismatch_violations": 1,
                                           "current_rows_minus_last_total_violations": -len(version_2())}}),
    ],
    ids=["value-changed", "closed-version-deleted", "current-version-closed", "load-count-changed", "history-emptied"],
)
def test_the_checks_pass_and_fail_when_the_history_is_tampered_with(warehouse_url: str, tampering: str, expected) -> None:
    load_directly(warehouse_url, version_1())
    load_directly(warehouse_url, version_2())
    assert history_check_results(warehouse_url) == {"history_matches_base": {}, "loads_reconcile_with_history": {}}
    query(warehouse_url, tampering)
    assert history_check_results(warehouse_url) == {"history_matches_base": {}, "loads_reconcile_with_history": {}, **expected}
