"""Freshness and the run's own operational duties, on a real Postgres and the local Socrata stand-in:

* an unchanged-source run confirms every table with a materialization that writes nothing (what
  Dagster's freshness evaluator reads), carrying the data version of the load and the evidence that
  the next run compares with, so change detection stays correct day after day;
* a run that failed on a transient source error asks Dagster's run retries for one retry, which
  waits before asking again; a refusal asks for none;
* a run failed from outside (run monitoring) commits nothing, even if its steps go on;
* the source observation, its staleness warning, and the sensor that turns a new version into a run.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from dagster import AssetKey, DagsterInstance, asset, build_sensor_context, materialize

from covid_assets.datasets.operations import RETRY_REASON_TAG, TRANSIENT_SOURCE_ERROR
from covid_assets.assets.tables import COVID, RAW_ASSET_KEY, TABLE_ASSET_KEYS
from covid_assets.definitions import covid_definitions
from covid_assets.freshness import source_staleness
from covid_assets.schedules import SCHEDULED_RUN_CONFIG
from covid_assets.datasets.component import SourceUnreachable, observe_source
from covid_assets.sources.socrata import SocrataSource
from covid_assets.storage.postgres_io import warehouse_resources
from covid_assets_tests.support import FakeSocrata, Fault
from covid_assets_tests.helpers import (
    SNAPSHOT,
    confirmed,
    deployment,
    environment,
    failure_message,
    from_api,
    from_file,
    materialize_all,
    materialize_on,
    materialized,
    query,
    table_fingerprints,
)

STATES = ("AK", "WY")
KNOBS = SocrataSource(page_size=1000, max_retries=0, backoff_factor=0)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    snapshot = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False)
    return snapshot[snapshot["state"].isin(STATES)].to_dict("records")


def scheduled(url: str, server: FakeSocrata, instance: DagsterInstance, **kwargs):
    return materialize_all(url, from_api(server.base_url), KNOBS, instance=instance, run_config=SCHEDULED_RUN_CONFIG, **kwargs)


def latest(instance: DagsterInstance) -> dict[AssetKey, object]:
    return instance.get_latest_materialization_events(TABLE_ASSET_KEYS)


# --------------------------------------------------------------------------- confirmations
def test_an_unchanged_day_confirms_every_table_without_writing_and_keeps_change_detection(warehouse_url: str, rows) -> None:
    instance = DagsterInstance.ephemeral()
    with FakeSocrata(rows) as server:
        load = scheduled(warehouse_url, server, instance)
        assert len(materialized(load)) == len(TABLE_ASSET_KEYS)
        loaded = latest(instance)
        before = table_fingerprints(warehouse_url)

        for day in (1, 2):  # the second day compares with what the first confirmed
            requests_before = len(server.requests)
            result = scheduled(warehouse_url, server, instance)
            assert result.success and materialized(result) == set(), day
            assert confirmed(result) == {key.path[-1] for key in TABLE_ASSET_KEYS}, day
            assert len(server.requests) - requests_before == 2, day  # rowsUpdatedAt and count(*) only
            assert table_fingerprints(warehouse_url) == before
            for key, entry in latest(instance).items():
                assert entry.run_id == result.run_id, key
                metadata = entry.asset_materialization.metadata
                assert metadata["rows_written"].value == 0 and metadata["loaded_by_run"].value == load.run_id, key
                assert entry.tags["dagster/data_version"] == loaded[key].tags["dagster/data_version"], key
            raw = latest(instance)[RAW_ASSET_KEY].asset_materialization.metadata
            first = loaded[RAW_ASSET_KEY].asset_materialization.metadata
            assert {name: raw[name].value for name in ("content_hash", "rows_updated_at", "source_row_count", "base_rows")} == {
                name: first[name].value for name in ("content_hash", "rows_updated_at", "source_row_count", "base_rows")
            }


def test_a_touched_source_is_confirmed_by_content_and_the_next_day_needs_two_requests(warehouse_url: str, rows) -> None:
    instance = DagsterInstance.ephemeral()
    with FakeSocrata(rows) as server:
        assert len(materialized(scheduled(warehouse_url, server, instance))) == len(TABLE_ASSET_KEYS)
        server.rows_updated_at += 86_400  # republished, same rows
        touched = scheduled(warehouse_url, server, instance)
        assert materialized(touched) == set() and len(confirmed(touched)) == len(TABLE_ASSET_KEYS)
        assert latest(instance)[RAW_ASSET_KEY].asset_materialization.metadata["rows_updated_at"].value == server.rows_updated_at
        pages_before = len(server.page_requests())
        next_day = scheduled(warehouse_url, server, instance)
        assert len(confirmed(next_day)) == len(TABLE_ASSET_KEYS) and len(server.page_requests()) == pages_before  # no full fetch again


def test_a_dropped_table_is_reloaded_not_confirmed(warehouse_url: str, rows) -> None:
    instance = DagsterInstance.ephemeral()
    with FakeSocrata(rows) as server:
        scheduled(warehouse_url, server, instance)
        with psycopg.connect(warehouse_url) as conn:
            conn.execute("DROP TABLE covid_19.state_results")
        again = scheduled(warehouse_url, server, instance)
        assert len(materialized(again)) == len(TABLE_ASSET_KEYS) and confirmed(again) == set()
        assert query(warehouse_url, "SELECT count(*) FROM covid_19.state_results") == [(2,)]


# --------------------------------------------------------------------------- retries
@pytest.mark.slow
def test_a_transient_source_failure_asks_for_one_retry_and_a_refusal_does_not(warehouse_url: str, rows, tmp_path: Path) -> None:
    instance = DagsterInstance.ephemeral()
    with FakeSocrata(rows) as server:
        server.faults.append(Fault.error(503, times=1000))
        failed = scheduled(warehouse_url, server, instance, raise_on_error=False)
    assert not failed.success and "HTTP 503" in failure_message(failed)
    tags = instance.get_run_by_id(failed.run_id).tags
    assert (tags.get("dagster/max_retries"), tags.get("dagster/retry_on_asset_or_op_failure"), tags.get(RETRY_REASON_TAG)) == (
        "1", "true", TRANSIENT_SOURCE_ERROR
    )  # fmt: skip

    assert materialize_all(warehouse_url, from_file(SNAPSHOT), instance=instance).success
    shrunk = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False).head(1000)
    shrunk.to_csv(tmp_path / "shrunk.csv", index=False)
    refused = materialize_all(warehouse_url, from_file(tmp_path / "shrunk.csv"), instance=instance, raise_on_error=False)
    assert not refused.success and "allow_shrink" in failure_message(refused)
    assert not {"dagster/max_retries", "dagster/retry_on_asset_or_op_failure", RETRY_REASON_TAG} & set(instance.get_run_by_id(refused.run_id).tags)


@pytest.mark.slow
def test_a_retry_waits_before_asking_the_source_again(warehouse_url: str, rows) -> None:
    asked: list[float] = []
    with FakeSocrata(rows) as server, environment(COVID_RETRY_DELAY_S="1.5"), deployment(warehouse_url, **from_api(server.base_url)):
        server.on_request = lambda target, params: asked.append(time.monotonic())
        started = time.monotonic()
        result = materialize(
            [*covid_definitions().assets, *covid_definitions().asset_checks],
            resources={**warehouse_resources(), "socrata": KNOBS},
            tags={"dagster/retry_number": "1", RETRY_REASON_TAG: TRANSIENT_SOURCE_ERROR},
        )
    assert result.success
    assert asked[0] - started >= 1.5, asked[0] - started


# --------------------------------------------------------------------------- a run stopped from outside
def test_a_run_failed_from_outside_commits_nothing(warehouse_url: str) -> None:
    """Run monitoring marks a hung run failed and terminates it; should its process still reach the
    end of the run, the warehouse transaction must roll back."""
    key = AssetKey(["covid_19", "written_before_the_stop"])
    stopped = threading.Event()

    @asset(key=key)
    def writer() -> pd.DataFrame:
        return pd.DataFrame({"n": pd.array([1, 2], dtype="Int64")})

    @asset(deps=[key])
    def monitoring_fails_the_run(context) -> None:
        context.instance.report_run_failed(context.dagster_run, "Exceeded maximum runtime of 1 seconds.")
        stopped.set()

    materialize_on(warehouse_url, [writer, monitoring_fails_the_run], raise_on_error=False)
    assert stopped.is_set()
    assert query(warehouse_url, "SELECT to_regclass('covid_19.written_before_the_stop') IS NULL") == [(True,)]


# --------------------------------------------------------------------------- the source
def test_the_observation_is_rows_updated_at_and_count_and_warns_when_the_publisher_stopped(rows) -> None:
    with FakeSocrata(rows) as server, environment(SOCRATA_BASE_URL=server.base_url, SOCRATA_SOURCE_FILE=None):
        server.rows_updated_at = 1_700_000_000
        observation = observe_source(COVID, SocrataSource(), now=dt.datetime(2023, 12, 14, 22, 13, tzinfo=dt.UTC))
        assert len(server.requests) == 2 and server.page_requests() == []
    assert observation.version == f"1700000000-{len(rows)}" and observation.run_key == f"source-version-1700000000-{len(rows)}"
    staleness = observation.staleness
    assert not staleness.passed and staleness.severity.value == "WARN"
    assert staleness.metadata["verdict"].value == (
        "the publisher last updated the dataset on 2023-11-14 22:13 UTC, 30.0 days ago (more than 14): "
        "the pipeline is fine, the source stopped"
    )
    fresh = source_staleness(1_700_000_000, dt.datetime(2023, 11, 20, tzinfo=dt.UTC), 14, COVID.source_key)
    assert fresh.passed and fresh.metadata["age_days"].value == 5.07
    assert source_staleness(None, dt.datetime.now(dt.UTC), 14, COVID.source_key).passed


def test_the_source_sensor_asks_for_one_run_per_version_and_fails_visibly_when_unreachable(rows) -> None:
    sensor = next(definition for definition in covid_definitions().sensors if definition.name == "socrata_source_sensor")
    with FakeSocrata(rows) as server, environment(SOCRATA_BASE_URL=server.base_url, SOCRATA_SOURCE_FILE=None):
        with DagsterInstance.ephemeral() as instance:

            def tick(cursor: str | None):
                return sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"socrata": KNOBS}))

            first = tick(None)
            (request,) = first.run_requests
            assert request.run_key == f"source-version-{server.rows_updated_at}-{len(rows)}"
            assert request.run_config == SCHEDULED_RUN_CONFIG and first.cursor == f"{server.rows_updated_at}-{len(rows)}"
            observation, check = first.asset_events
            assert observation.tags["dagster/data_version"] == first.cursor and check.check_name == "publisher_updated_recently"

            again = tick(first.cursor)
            assert not again.run_requests and "already seen" in again.skip_reason.skip_message
            assert len(again.asset_events) == 2  # observed every tick, so "last observed" and the warning stay current

            server.faults.append(Fault.error(500, times=100))
            with pytest.raises(SourceUnreachable, match="HTTP 500.*the next tick tries again"):
                tick(first.cursor)
            server.faults.clear()
            server.rows_updated_at += 3600
            assert tick(first.cursor).run_requests[0].run_key == f"source-version-{server.rows_updated_at}-{len(rows)}"
