"""The source sensor: new data lands within the hour instead of at the next 06:00 tick.

Every `COVID_SOURCE_POLL_MINUTES` (60) it observes the source asset (assets/source.py: the two small
requests the runs already make), records the observation and the publisher-staleness evaluation,
and, when the data version differs from the one it saw last, asks for a `refresh_warehouse` run
keyed by that version: Dagster starts one run per run key, so one release gives exactly one run,
whatever the ticks and restarts. The run has the schedule's config (it writes nothing if the
contents turn out equal). An unreachable source fails the tick, visibly, with the error (never the
token), and the next tick tries again; no run is launched for it. The daily schedule stays the backstop.

Silence it in the UI (Automation, `socrata_source_sensor`), with `dagster sensor stop
socrata_source_sensor`, or start deployments with `COVID_SOURCE_SENSOR_ENABLED=false`.
"""

from __future__ import annotations

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from covid_assets.assets.source import SourceObservation, observe_source
from covid_assets.assets.tables import SOURCE_ASSET_KEY
from covid_assets.schedules import SCHEDULED_RUN_CONFIG
from covid_assets.settings import env_flag, env_float
from covid_assets.sources.socrata import SocrataError, SocrataSource

POLL_ENV = "COVID_SOURCE_POLL_MINUTES"
DEFAULT_POLL_MINUTES = 60.0
ENABLED_ENV = "COVID_SOURCE_SENSOR_ENABLED"
SOURCE_VERSION_TAG = "covid/source_version"


class SourceUnreachable(RuntimeError):
    """The observation failed; the tick shows this, the next tick tries again."""


def observation_events(observation: SourceObservation) -> list:
    """The observation as Dagster records it for a source asset (data version tags), and the check."""
    tags = {"dagster/data_version": observation.version, "dagster/data_version_is_user_provided": "true"}
    return [AssetObservation(asset_key=SOURCE_ASSET_KEY, metadata=observation.metadata, tags=tags), observation.staleness]


def source_sensor(job) -> SensorDefinition:
    minutes = env_float(POLL_ENV, DEFAULT_POLL_MINUTES, minimum=1 / 60, maximum=7 * 24 * 60)

    @sensor(
        name="socrata_source_sensor",
        job=job,
        minimum_interval_seconds=max(int(minutes * 60), 1),
        default_status=DefaultSensorStatus.RUNNING if env_flag(ENABLED_ENV) else DefaultSensorStatus.STOPPED,
        description=(
            f"Observes the source every {minutes:g} min ({POLL_ENV}) and starts one refresh per new version "
            "(rowsUpdatedAt and row count)."
        ),
    )
    def socrata_source_sensor(context: SensorEvaluationContext, socrata: SocrataSource) -> SensorResult:
        try:
            observation = observe_source(socrata)
        except (SocrataError, OSError) as error:
            raise SourceUnreachable(f"could not observe the source ({error}); the next tick tries again") from None
        events = observation_events(observation)
        if context.cursor == observation.version:
            return SensorResult(asset_events=events, skip_reason=f"source version {observation.version} already seen")
        context.log.info(f"new source version {observation.version} (last seen: {context.cursor or 'none'}): requesting a refresh")
        request = RunRequest(run_key=observation.run_key, run_config=SCHEDULED_RUN_CONFIG, tags={SOURCE_VERSION_TAG: observation.version})
        return SensorResult(run_requests=[request], asset_events=events, cursor=observation.version)

    return socrata_source_sensor
