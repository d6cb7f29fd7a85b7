"""The code location loads, and the schedule refreshes every asset daily in dependency order."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

import pytest
from dagster import AssetKey, DefaultScheduleStatus, Definitions

import covid_assets.definitions

SUMMARIES = ["outcome_results", "state_results", "smoothed_results", "total_results", "recent_positivity_results"]


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


def test_lineage_is_raw_then_base_then_five_summaries() -> None:
    graph = covid_assets.definitions.defs.resolve_asset_graph()
    raw = AssetKey(["covid_19_raw", "raw_covid_test_results"])
    base = AssetKey(["covid_19", "covid_test_results"])
    assert graph.get(raw).parent_keys == set()
    assert graph.get(base).parent_keys == {raw}
    assert {key for key in graph.get_all_asset_keys() if graph.get(key).parent_keys == {base}} == {
        AssetKey(["covid_19", name]) for name in SUMMARIES
    }
    assert len(graph.get_all_asset_keys()) == 7


def test_every_asset_has_a_description_group_owner_kinds_and_column_docs() -> None:
    for spec in covid_assets.definitions.defs.resolve_all_asset_specs():
        assert spec.description and len(spec.description) > 80, spec.key
        assert spec.group_name in {"ingestion", "warehouse", "reporting"}, spec.key
        assert {"postgres", "pandas"} <= set(spec.kinds), spec.key
        assert spec.owners == ["team:data-platform"], spec.key
        assert spec.metadata["column_descriptions"], spec.key
    raw = covid_assets.definitions.defs.resolve_assets_def(AssetKey(["covid_19_raw", "raw_covid_test_results"]))
    assert "socrata" in raw.specs_by_key[raw.key].kinds


def test_column_docs_and_lineage_cover_every_summary_column() -> None:
    from covid_assets.assets.catalog import SUMMARY_COLUMNS
    from covid_assets.assets.summary_frames import (
        OUTCOME_RESULTS_DTYPES,
        RECENT_POSITIVITY_RESULTS_DTYPES,
        SMOOTHED_RESULTS_DTYPES,
        STATE_RESULTS_DTYPES,
        TOTAL_RESULTS_DTYPES,
    )

    produced = {
        "outcome_results": OUTCOME_RESULTS_DTYPES,
        "state_results": STATE_RESULTS_DTYPES,
        "smoothed_results": SMOOTHED_RESULTS_DTYPES,
        "total_results": TOTAL_RESULTS_DTYPES,
        "recent_positivity_results": RECENT_POSITIVITY_RESULTS_DTYPES,
    }
    assert {table: list(columns) for table, columns in SUMMARY_COLUMNS.items()} == {
        table: list(dtypes) for table, dtypes in produced.items()
    }


def test_daily_schedule_defaults(monkeypatch: pytest.MonkeyPatch, load_definitions) -> None:
    for name in ("COVID_SCHEDULE_CRON", "COVID_SCHEDULE_TIMEZONE", "COVID_SCHEDULE_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    defs = load_definitions()
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def(schedule.job_name)
    assert set(job.asset_layer.executable_asset_keys) == set(defs.resolve_asset_graph().get_all_asset_keys())


def test_schedule_is_configurable(load_definitions) -> None:
    defs = load_definitions(
        COVID_SCHEDULE_CRON="30 2 * * 1-5", COVID_SCHEDULE_TIMEZONE="America/New_York", COVID_SCHEDULE_ENABLED="false"
    )
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 2 * * 1-5", "America/New_York")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
