"""The map of the pipeline. Read this first.

    Socrata dataset (observed) ─> covid_19_raw.raw_covid_test_results   (declared: defs/covid_pcr_testing/defs.yaml,
                                    └─> covid_19.covid_test_results      loaded by datasets/component.py: typed, checked, unique)
                                          ├─> covid_19.outcome_results  (assets/summaries.py)
                                          ├─> covid_19.state_results
                                          ├─> covid_19.smoothed_results
                                          ├─> covid_19.total_results
                                          ├─> covid_19.recent_positivity_results
                                          └─> covid_19.revisions        (assets/revisions.py: a view over its history)

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
from covid_assets.assets.revisions import revisions
from covid_assets.assets.summaries import SUMMARY_ASSETS
from covid_assets.assets.tables import COVID
from covid_assets.checks import base_table_checks, summary_table_checks
from covid_assets.datasets.component import dataset_definitions
from covid_assets.freshness import table_freshness_policy, with_freshness_policy
from covid_assets.resources import build_resources
from covid_assets.schedules import daily_refresh_schedule, refresh_warehouse_job
from covid_assets.sensors import source_sensor

refresh_job = refresh_warehouse_job()
summaries = with_freshness_policy([*SUMMARY_ASSETS, revisions], table_freshness_policy())


def covid_wiring(declared: Definitions) -> Definitions:
    """What the COVID pipeline adds to its declared dataset: the five summaries and the revisions, the warnings and summary
    checks, the refresh_warehouse job with its schedule and source sensor, and the alert sensors, which
    watch the jobs, tables and sources of every `declared` dataset."""
    jobs = [refresh_job, *(declared.jobs or [])]
    tables = [*_keys(declared, materializable=True), *(key for asset in summaries for key in asset.keys)]
    sources = _keys(declared, materializable=False)
    return Definitions(
        assets=summaries,
        asset_checks=[base_table_checks, summary_table_checks],
        jobs=[refresh_job],
        schedules=[daily_refresh_schedule(refresh_job)],
        sensors=[source_sensor(refresh_job), *alert_sensors(jobs, tables, sources)],
        resources=build_resources(),
        executor=in_process_executor,
    )


def covid_definitions() -> Definitions:
    """The COVID pipeline alone: its declared source, raw and base table (built as the component builds
    them from defs/covid_pcr_testing/defs.yaml), eight tables, checks, job, schedule and sensors."""
    dataset = dataset_definitions(COVID)
    return Definitions.merge(dataset, covid_wiring(dataset))


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
    """Every declared dataset (covid_assets/defs/*/defs.yaml, the COVID one included) with the COVID wiring."""
    declared = load_from_defs_folder(path_within_project=Path(__file__).parent)
    return Definitions.merge(covid_wiring(declared), declared)


defs = code_location()
