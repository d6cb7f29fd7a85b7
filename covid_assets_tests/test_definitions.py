"""The code location loads; the schedule refreshes every table daily in dependency order, the source
sensor on a new release; every table has a freshness policy; the alert sensors are on by default."""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Iterator

import pytest
from dagster import AssetCheckKey, AssetKey, DefaultScheduleStatus, DefaultSensorStatus, Definitions
from dagster._core.definitions.freshness import TimeWindowFreshnessPolicy

import covid_assets.definitions
from covid_assets.assets.tables import SOURCE_ASSET_KEY as SOURCE
from covid_assets.assets.tables import TABLE_ASSET_KEYS

SUMMARIES = ["outcome_results", "state_results", "smoothed_results", "total_results", "recent_positivity_results"]
REPORTING = [*SUMMARIES, "revisions"]  # the five summaries (pandas) and the revisions (SQL over the base table's history)


@pytest.fixture
def load_definitions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Definitions]]:
    """Reload the code location with environment overrides; the next test sees it as the environment left it."""

    def load(**env: str) -> Definitions:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(covid_assets.definitions).defs

    yield load
    monkeypatch.undo()
    importlib.reload(covid_assets.definitions)


def test_definitions_are_loadable() -> None:
    Definitions.validate_loadable(covid_assets.definitions.defs)


def test_lineage_is_source_then_raw_then_base_then_five_summaries_and_the_revisions() -> None:
    graph = covid_assets.definitions.defs.resolve_asset_graph()
    raw = AssetKey(["covid_19_raw", "raw_covid_test_results"])
    base = AssetKey(["covid_19", "covid_test_results"])
    assert graph.get(SOURCE).parent_keys == set()
    assert graph.get(SOURCE).is_observable and not graph.get(SOURCE).is_materializable
    assert graph.get(raw).parent_keys == {SOURCE}
    assert graph.get(base).parent_keys == {raw}
    assert {key for key in graph.get_all_asset_keys() if graph.get(key).parent_keys == {base}} == {
        AssetKey(["covid_19", name]) for name in REPORTING
    }
    covid_keys = {SOURCE, *TABLE_ASSET_KEYS}
    assert len(covid_keys) == 9
    # Everything else comes from the declared datasets (covid_assets/defs/), upstream of none of these.
    assert all(graph.get(key).parent_keys.isdisjoint(covid_keys) for key in graph.get_all_asset_keys() - covid_keys)


def test_the_source_is_observed_with_a_staleness_warning() -> None:
    spec = next(spec for spec in covid_assets.definitions.defs.resolve_all_asset_specs() if spec.key == SOURCE)
    assert spec.group_name == "ingestion" and spec.owners == ["team:data-platform"] and "socrata" in spec.kinds
    assert "rowsUpdatedAt" in spec.description
    graph = covid_assets.definitions.defs.resolve_asset_graph()
    assert AssetCheckKey(SOURCE, "publisher_updated_recently") in graph.asset_check_keys


def test_every_table_has_a_freshness_policy_of_26_hours() -> None:
    graph = covid_assets.definitions.defs.resolve_asset_graph()
    for key in TABLE_ASSET_KEYS:
        policy = graph.get(key).freshness_policy
        assert isinstance(policy, TimeWindowFreshnessPolicy), key
        assert policy.fail_window.to_timedelta() == dt.timedelta(hours=26), key
    assert graph.get(SOURCE).freshness_policy is None  # its staleness is the publisher's, a separate warning


def test_freshness_window_and_max_runtime_are_configurable(load_definitions) -> None:
    defs = load_definitions(COVID_FRESHNESS_HOURS="0.5", COVID_MAX_RUNTIME_S="900")
    policy = defs.resolve_asset_graph().get(TABLE_ASSET_KEYS[-1]).freshness_policy
    assert policy.fail_window.to_timedelta() == dt.timedelta(minutes=30)
    assert defs.resolve_job_def("refresh_warehouse").tags["dagster/max_runtime"] == "900"
    with pytest.raises(ValueError, match="COVID_FRESHNESS_HOURS='never' is not a number"):
        load_definitions(COVID_FRESHNESS_HOURS="never")


def test_the_refresh_job_has_a_one_hour_maximum_runtime_and_no_retries_of_its_own() -> None:
    tags = covid_assets.definitions.defs.resolve_job_def("refresh_warehouse").tags
    assert tags["dagster/max_runtime"] == "3600"
    assert "dagster/max_retries" not in tags  # only a transient source failure asks for a retry (datasets/operations.py)


def test_sensors_are_on_by_default_and_the_source_one_can_start_stopped(load_definitions) -> None:
    defs = covid_assets.definitions.defs
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert set(sensors) == {"socrata_source_sensor", "alert_on_refresh_failure", "alert_on_refresh_success", "alert_followup"}
    assert all(sensor.default_status == DefaultSensorStatus.RUNNING for sensor in sensors.values())
    assert sensors["socrata_source_sensor"].minimum_interval_seconds == 3600
    quiet = load_definitions(COVID_SOURCE_SENSOR_ENABLED="false", COVID_SOURCE_POLL_MINUTES="5")
    source = next(sensor for sensor in quiet.sensors if sensor.name == "socrata_source_sensor")
    assert (source.default_status, source.minimum_interval_seconds) == (DefaultSensorStatus.STOPPED, 300)


def test_every_table_has_a_description_group_owner_kinds_and_column_docs() -> None:
    for spec in covid_assets.definitions.defs.resolve_all_asset_specs():
        if spec.key not in TABLE_ASSET_KEYS:  # the source; the declared datasets: test_datasets_component.py
            continue
        assert spec.description and len(spec.description) > 80, spec.key
        assert spec.group_name in {"ingestion", "warehouse", "reporting"}, spec.key
        assert "postgres" in spec.kinds, spec.key
        assert ("pandas" in spec.kinds) == (spec.key.path[-1] in SUMMARIES), spec.key  # raw, base and revisions: SQL
        assert spec.owners == ["team:data-platform"], spec.key
        assert spec.metadata["column_descriptions"], spec.key
    raw = covid_assets.definitions.defs.resolve_assets_def(AssetKey(["covid_19_raw", "raw_covid_test_results"]))
    assert "socrata" in raw.specs_by_key[AssetKey(["covid_19_raw", "raw_covid_test_results"])].kinds


def test_column_docs_and_lineage_cover_every_summary_column() -> None:
    from covid_assets.assets.tables import SUMMARIES

    for spec in SUMMARIES:
        assert [column.name for column in spec.columns if column.description and column.lineage] == spec.column_names, spec.name


def test_daily_schedule_defaults(monkeypatch: pytest.MonkeyPatch, load_definitions) -> None:
    for name in ("COVID_SCHEDULE_CRON", "COVID_SCHEDULE_TIMEZONE", "COVID_SCHEDULE_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    defs = load_definitions()
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def(schedule.job_name)
    assert set(job.asset_layer.executable_asset_keys) == set(TABLE_ASSET_KEYS)  # every table; the source is observed


def test_schedule_is_configurable(load_definitions) -> None:
    defs = load_definitions(
        COVID_SCHEDULE_CRON="30 2 * * 1-5", COVID_SCHEDULE_TIMEZONE="America/New_York", COVID_SCHEDULE_ENABLED="false"
    )
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 2 * * 1-5", "America/New_York")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED


def test_the_alert_sensors_watch_every_refresh_job_and_every_observed_source() -> None:
    from dagster import AssetCheckEvaluation, AssetCheckSeverity, DagsterInstance, MetadataValue

    from covid_assets.alert_sensors import FollowupState, source_stale_alerts

    defs = covid_assets.definitions.defs
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    for name in ("alert_on_refresh_failure", "alert_on_refresh_success"):
        assert {job.name for job in sensors[name]._monitored_jobs} == {job.name for job in defs.jobs}
    assert {job.name for job in defs.jobs} >= {"refresh_warehouse", "refresh_cdc_cases_deaths_by_state"}

    cdc = AssetKey(["socrata", "cdc_cases_deaths_by_state"])
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            AssetCheckEvaluation(
                asset_key=cdc, check_name="publisher_updated_recently", passed=False, severity=AssetCheckSeverity.WARN,
                metadata={"rows_updated_at": MetadataValue.timestamp(1_640_000_000.0), "verdict": MetadataValue.text("old")},
            )
        )
        state = FollowupState()
        alerts = source_stale_alerts(instance, state, [SOURCE, cdc])
        assert [(alert.event, alert.summary) for alert in alerts] == [("source_stale", "The source socrata/cdc_cases_deaths_by_state is stale: old")]
        assert source_stale_alerts(instance, state, [SOURCE, cdc]) == []  # once per publisher date
