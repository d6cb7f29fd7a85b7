"""The map of the pipeline. Read this first.

    Socrata dataset (observed) ─> covid_19_raw.raw_covid_test_results   (assets/source.py, assets/raw.py)
                                    └─> covid_19.covid_test_results     (assets/base.py: typed, checked, unique)
                                          ├─> covid_19.outcome_results  (assets/summaries.py)
                                          ├─> covid_19.state_results
                                          ├─> covid_19.smoothed_results
                                          ├─> covid_19.total_results
                                          └─> covid_19.recent_positivity_results

Every table is written by the Postgres IO manager (storage/postgres_io.py) and carries a freshness
policy (freshness.py); checks.py holds the asset checks. The daily schedule (schedules.py) refreshes
everything, the source sensor (sensors.py) as soon as a new version is published, and the alert
sensors (alert_sensors.py, alerts.py) tell people when a run fails, recovers or data goes stale.
Steps run in one process: they are sequential anyway, and a subprocess per step would cost more
than most steps take.

Declared datasets live in defs/, one folder per dataset whose defs.yaml is a `SocrataDataset`
(datasets/component.py): each brings its source, raw and typed base table, checks, job and
schedule, and shares the resources below. `dg list defs` shows them all.
"""

from pathlib import Path

from dagster import AssetKey, Definitions, in_process_executor, load_from_defs_folder

from covid_assets.alert_sensors import alert_sensors
from covid_assets.assets.base import covid_test_results
from covid_assets.assets.raw import raw_covid_test_results
from covid_assets.assets.source import socrata_source
from covid_assets.assets.summaries import SUMMARY_ASSETS
from covid_assets.assets.tables import SOURCE_ASSET_KEY, TABLE_ASSET_KEYS
from covid_assets.checks import base_table_checks, summary_table_checks
from covid_assets.freshness import table_freshness_policy, with_freshness_policy
from covid_assets.resources import build_resources
from covid_assets.schedules import daily_refresh_schedule, refresh_warehouse_job
from covid_assets.sensors import source_sensor

refresh_job = refresh_warehouse_job()
covid_tables = with_freshness_policy([raw_covid_test_results, covid_test_results, *SUMMARY_ASSETS], table_freshness_policy())


def covid_definitions(declared: Definitions | None = None) -> Definitions:
    """The COVID pipeline: the observed source, seven tables, their checks, job, schedule and sensors;
    its alert sensors also watch the jobs, tables and sources of the `declared` datasets."""
    declared = declared or Definitions()
    jobs = [refresh_job, *(declared.jobs or [])]
    tables = [*TABLE_ASSET_KEYS, *_keys(declared, materializable=True)]
    sources = [SOURCE_ASSET_KEY, *_keys(declared, materializable=False)]
    return Definitions(
        assets=[socrata_source, *covid_tables],
        asset_checks=[base_table_checks, summary_table_checks],
        jobs=[refresh_job],
        schedules=[daily_refresh_schedule(refresh_job)],
        sensors=[source_sensor(refresh_job), *alert_sensors(jobs, tables, sources)],
        resources=build_resources(),
        executor=in_process_executor,
    )


def _keys(defs: Definitions, *, materializable: bool) -> list[AssetKey]:
    """The tables (materializable) or the observed sources of `defs`."""
    found = []
    for assets_def in defs.assets or []:
        if materializable:
            found += [key for key in assets_def.keys if assets_def.is_materializable]
        elif assets_def.is_observable:
            found += list(assets_def.keys)
    return found


def code_location() -> Definitions:
    """The COVID pipeline merged with the declared datasets (covid_assets/defs/*/defs.yaml), which use the same resources."""
    declared = load_from_defs_folder(path_within_project=Path(__file__).parent)
    return Definitions.merge(covid_definitions(declared), declared)


defs = code_location()
