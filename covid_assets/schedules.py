"""The refresh job (every table, in dependency order, with a maximum runtime) and its daily schedule.

The schedule is the backstop: the source sensor (sensors.py) starts a refresh within the hour of a
new release, the schedule once a day whatever happens, which also confirms an unchanged source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dagster import AssetSelection, ScheduleDefinition, define_asset_job

from covid_assets.assets.tables import COVID, TABLE_ASSET_KEYS
from covid_assets.datasets.component import dataset_schedule, scheduled_run_config
from covid_assets.settings import env_float

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

JOB_NAME = "refresh_warehouse"
DEFAULT_CRON = "0 6 * * *"
DEFAULT_TIMEZONE = "UTC"
MAX_RUNTIME_ENV = "COVID_MAX_RUNTIME_S"
DEFAULT_MAX_RUNTIME_S = 3600.0
# Read by Dagster's run monitoring (dagster.yaml `run_monitoring`): a run still going after this many
# seconds is terminated and marked failed, so a hung run cannot hold the one-run queue.
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Scheduled runs write nothing when the source is unchanged; a manual run is a forced refresh.
SCHEDULED_RUN_CONFIG = scheduled_run_config(COVID)  # the load step's (load_covid_pcr_testing) skip_if_unchanged


def refresh_warehouse_job(environ: Mapping[str, str] | None = None) -> "UnresolvedAssetJobDefinition":
    max_runtime_s = env_float(MAX_RUNTIME_ENV, DEFAULT_MAX_RUNTIME_S, minimum=1, maximum=7 * 86_400, environ=environ)
    return define_asset_job(
        name=JOB_NAME,
        selection=AssetSelection.assets(*TABLE_ASSET_KEYS),  # the COVID tables; each declared dataset has its own job
        tags={MAX_RUNTIME_TAG: str(int(max_runtime_s))},
        description=(
            "Full refresh: fetch the whole dataset, rebuild the base table, the five summaries and the revisions. "
            f"Failed by run monitoring after {max_runtime_s:g} s ({MAX_RUNTIME_ENV})."
        ),
    )


def daily_refresh_schedule(job: "UnresolvedAssetJobDefinition") -> ScheduleDefinition:
    """On by default so a new deployment refreshes without a click (`COVID_SCHEDULE_ENABLED=false` to opt out)."""
    return dataset_schedule(
        COVID,
        job,
        os.getenv("COVID_SCHEDULE_CRON") or DEFAULT_CRON,
        name="daily_refresh",
        timezone=os.getenv("COVID_SCHEDULE_TIMEZONE") or DEFAULT_TIMEZONE,
        description=(
            "Refreshes every table once a day. The rows carry no updated-at column, so a run that finds the "
            "source changed reloads it whole; when rowsUpdatedAt, count(*) and the content hash say nothing "
            "changed, it writes nothing and records that each table was confirmed. A manual materialization "
            "always refreshes."
        ),
    )
