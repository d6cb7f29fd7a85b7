"""The daily full refresh: every asset, in dependency order, on a cron that deployments can change."""

from __future__ import annotations

import os

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from covid_assets.assets.tables import RAW_ASSET_KEY

DEFAULT_CRON = "0 6 * * *"
DEFAULT_TIMEZONE = "UTC"
# Scheduled runs write nothing when the source is unchanged; a manual run is a forced refresh.
SCHEDULED_RUN_CONFIG = {"ops": {RAW_ASSET_KEY.to_python_identifier(): {"config": {"skip_if_unchanged": True}}}}

refresh_warehouse_job = define_asset_job(
    name="refresh_warehouse",
    selection=AssetSelection.all(),
    description="Full refresh: fetch the whole dataset, rebuild the base table and the five summaries.",
)


def daily_refresh_schedule() -> ScheduleDefinition:
    """On by default so a new deployment refreshes without a click (`COVID_SCHEDULE_ENABLED=false` to opt out)."""
    enabled = os.getenv("COVID_SCHEDULE_ENABLED", "true").strip().lower() not in {"0", "false", "no", "off"}
    return ScheduleDefinition(
        name="daily_refresh",
        job=refresh_warehouse_job,
        cron_schedule=os.getenv("COVID_SCHEDULE_CRON") or DEFAULT_CRON,
        execution_timezone=os.getenv("COVID_SCHEDULE_TIMEZONE") or DEFAULT_TIMEZONE,
        run_config=SCHEDULED_RUN_CONFIG,
        default_status=DefaultScheduleStatus.RUNNING if enabled else DefaultScheduleStatus.STOPPED,
        description=(
            "Refreshes every table once a day. The rows carry no updated-at column, so a run that finds the "
            "source changed reloads it whole; when rowsUpdatedAt, count(*) and the content hash say nothing "
            "changed, it writes nothing. A manual materialization always refreshes."
        ),
    )
