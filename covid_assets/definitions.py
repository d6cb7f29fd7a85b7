"""The map of the pipeline. Read this first.

    Socrata API ──> covid_19_raw.raw_covid_test_results      (assets/raw.py: strings as delivered)
                      └─> covid_19.covid_test_results        (assets/base.py: typed, checked, unique)
                            ├─> covid_19.outcome_results     (assets/summaries.py)
                            ├─> covid_19.state_results
                            ├─> covid_19.smoothed_results
                            ├─> covid_19.total_results
                            └─> covid_19.recent_positivity_results

Every table is written by the Postgres IO manager (storage/postgres_io.py); checks.py
holds the asset checks; the daily schedule (schedules.py) refreshes everything. Steps run in one process: they are sequential
anyway, and a subprocess per step would cost more than most steps take.
"""

from dagster import Definitions, in_process_executor

from covid_assets.assets.base import covid_test_results
from covid_assets.assets.raw import raw_covid_test_results
from covid_assets.assets.summaries import SUMMARY_ASSETS
from covid_assets.checks import base_table_checks, summary_table_checks
from covid_assets.resources import build_resources
from covid_assets.schedules import daily_refresh_schedule, refresh_warehouse_job

defs = Definitions(
    assets=[raw_covid_test_results, covid_test_results, *SUMMARY_ASSETS],
    asset_checks=[base_table_checks, summary_table_checks],
    jobs=[refresh_warehouse_job],
    schedules=[daily_refresh_schedule()],
    resources=build_resources(),
    executor=in_process_executor,
)
