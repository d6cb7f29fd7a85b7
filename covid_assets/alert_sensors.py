"""When to alert, on Dagster's own sensors; what to say and how to send it is in alerts.py.

* `alert_on_refresh_failure` (a `run_failure_sensor`): one alert per failed run of the refresh, the
  event `blocking_check_failed` when a blocking check stopped it, else `run_failed`. A run that
  Dagster's run retries will re-execute is not final and is not alerted; its retry is.
* `alert_on_refresh_success` (a `run_status_sensor` on SUCCESS): `recovered` on the first success
  after an alerted failure, `run_rolled_back` when the commit failed, and one
  `warning_checks_failed` listing the warning checks that failed in the run and passed (or had
  never run) before it.
* `alert_followup` (a plain sensor): `tables_stale` when Dagster's freshness evaluator newly marks
  tables as failing their policy, `source_stale` when the publisher's date passes the threshold, and
  the retries.

Retries: Dagster's run-status sensors move past a run even when their function fails (they must
not repeat side effects), so a channel that failed is recorded on the run as a tag
`covid/alert.<event>.<channel> = pending` (`sent` once delivered; `gave_up` after a day), and
`alert_followup` retries those on every tick. Its own alerts wait in its cursor. A failing channel
is logged, never raised: no sensor tick fails for it, and the run is never touched but for the tag.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetCheckSeverity,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunsFilter,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from covid_assets.alerts import Alert, Channel, channels_from_env, deliver, first_line, run_url
from covid_assets.datasets.operations import RETRY_NUMBER_TAG
from covid_assets.freshness import staleness_check_key
from covid_assets.settings import env_float
from covid_assets.storage.warehouse import COMMIT_FAILED_TAG

POLL_ENV = "COVID_ALERT_POLL_S"
DEFAULT_POLL_S = 30.0
GIVE_UP_AFTER_S = 24 * 3600.0
WILL_RETRY_TAG = "dagster/will_retry"
RUN_EVENTS = ("run_failed", "blocking_check_failed", "run_rolled_back", "recovered", "warning_checks_failed")
INTERRUPTED = "DagsterExecutionInterruptedError"  # a step stopped from outside: the run's own message says why


def alert_tag(event: str, channel: str) -> str:
    return f"covid/alert.{event}.{channel}"


def short(run_id: str | None) -> str:
    return (run_id or "")[:8]


# ------------------------------------------------------------------------------- what happened in a run
def will_retry(run: DagsterRun) -> bool:
    return run.status == DagsterRunStatus.FAILURE and run.tags.get(WILL_RETRY_TAG) == "true"


def settled(instance: DagsterInstance, run: DagsterRun, wait_s: float = 5.0) -> DagsterRun:
    """The run once Dagster has decided on a retry (it tags the run just after storing the failure)."""
    deadline = time.monotonic() + wait_s
    while instance.run_retries_enabled and WILL_RETRY_TAG not in run.tags and time.monotonic() < deadline:
        time.sleep(0.25)
        run = instance.get_run_by_id(run.run_id) or run
    return run


def failure_cause(instance: DagsterInstance, run_id: str) -> tuple[str | None, str | None]:
    """(failed step, first error line): the first step failure, else the run's own failure message."""
    records = instance.get_records_for_run(
        run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}, limit=1000
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.event_type != DagsterEventType.STEP_FAILURE:
            continue
        data = event.event_specific_data
        if data.error is not None and data.error.cls_name == INTERRUPTED:
            continue
        description = data.user_failure_data.description if data.user_failure_data else None
        return event.step_key, first_line(description or (data.error.message if data.error else None))
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.event_type == DagsterEventType.RUN_FAILURE:
            return None, first_line(event.message or record.event_log_entry.user_message)
    return None, None


def failed_blocking_checks(instance: DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION, limit=1000).records
    names = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed and evaluation.blocking and evaluation.severity == AssetCheckSeverity.ERROR:
            names.append(f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    return names


def failure_alert(instance: DagsterInstance, run: DagsterRun) -> Alert | None:
    """The one alert of a failed run (None while Dagster is going to retry it)."""
    if will_retry(run):
        return None
    step, error = failure_cause(instance, run.run_id)
    blocking = failed_blocking_checks(instance, run.run_id)
    retry = f" (automatic retry of run {short(run.parent_run_id)})" if run.tags.get(RETRY_NUMBER_TAG) else ""
    details = ["Its warehouse transaction was rolled back: no table changed."]
    if blocking:
        details.insert(0, f"Blocking checks failed: {', '.join(blocking)}")
    return Alert(
        event="blocking_check_failed" if blocking else "run_failed",
        summary=f"{run.job_name} run {short(run.run_id)} failed{retry}",
        job=run.job_name,
        run_id=run.run_id,
        status=run.status.value,
        failed_step=step,
        error=error or "no error message recorded",
        details=tuple(details),
        url=run_url(run.run_id),
    )


def failed(instance: DagsterInstance, run: DagsterRun) -> bool:
    """Failed as far as alerts go: a RUN_FAILURE was recorded. A run that run monitoring terminated
    at its maximum runtime ends CANCELED after one; a run cancelled by hand has none."""
    if run.status == DagsterRunStatus.FAILURE:
        return True
    if run.status != DagsterRunStatus.CANCELED:
        return False
    return bool(instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_FAILURE, limit=1).records)


def previous_outcome(instance: DagsterInstance, run: DagsterRun) -> DagsterRun | None:
    """The last run of the job before `run` that succeeded or was alerted as failed (Dagster's
    retried failures and hand-cancelled runs are skipped)."""
    record = instance.get_run_record_by_id(run.run_id)
    if record is None:
        return None
    earlier = instance.get_runs(
        filters=RunsFilter(
            job_name=run.job_name,
            statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
            created_before=record.create_timestamp,
        ),
        limit=50,
    )
    return next(
        (r for r in earlier if r.run_id != run.run_id and not will_retry(r) and (r.status == DagsterRunStatus.SUCCESS or failed(instance, r))),
        None,
    )


def newly_failing_warnings(instance: DagsterInstance, run: DagsterRun) -> list[str]:
    """Warning checks that failed in this run and passed, or never ran, in the evaluation before it."""
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION, limit=1000).records
    found = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.passed or evaluation.severity != AssetCheckSeverity.WARN:
            continue
        key = AssetCheckKey(evaluation.asset_key, evaluation.check_name)
        history = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=10, status={AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
        )
        when = record.event_log_entry.timestamp
        before = next((h for h in history if h.run_id != run.run_id and h.create_timestamp < when), None)
        if before is None or before.status == AssetCheckExecutionRecordStatus.SUCCEEDED:
            numbers = [f"{name} {entry.value}" for name, entry in evaluation.metadata.items() if isinstance(entry.value, (int, float))]
            found.append(f"{key.asset_key.to_user_string()}:{key.name}" + (f" ({', '.join(numbers[:2])})" if numbers else ""))
    return found


def success_alerts(instance: DagsterInstance, run: DagsterRun) -> list[Alert]:
    common = dict(job=run.job_name, run_id=run.run_id, status=run.status.value, url=run_url(run.run_id))
    alerts = []
    if COMMIT_FAILED_TAG in run.tags:
        alerts.append(Alert(
            event="run_rolled_back",
            summary=f"{run.job_name} run {short(run.run_id)} was rolled back: committing its warehouse transaction failed",
            details=("No table changed; the next run loads the data again.",),
            **common,
        ))
    else:
        previous = previous_outcome(instance, run)
        if previous is not None and (previous.status != DagsterRunStatus.SUCCESS or COMMIT_FAILED_TAG in previous.tags):
            alerts.append(Alert(
                event="recovered",
                summary=f"{run.job_name} recovered: run {short(run.run_id)} succeeded after run {short(previous.run_id)} failed",
                **common,
            ))
    if warnings := newly_failing_warnings(instance, run):
        alerts.append(Alert(
            event="warning_checks_failed",
            summary=f"{run.job_name} run {short(run.run_id)}: {len(warnings)} warning check(s) newly failing",
            details=tuple(f"- {warning}" for warning in warnings),
            **common,
        ))
    return alerts


def run_alerts(instance: DagsterInstance, run: DagsterRun) -> list[Alert]:
    if failed(instance, run):
        return [alert] if (alert := failure_alert(instance, run)) else []
    if run.status == DagsterRunStatus.SUCCESS:
        return success_alerts(instance, run)
    return []


# ------------------------------------------------------------------------------- sending, recording retries
def configured_channels(logger: logging.Logger) -> list[Channel]:
    channels, problems = channels_from_env()
    for problem in problems:
        logger.error(problem)
    if not channels and not problems:
        logger.info("no alert channel configured (ALERT_WEBHOOK_URL, ALERT_SMTP_HOST): alerts are only logged here")
    return channels


def send_for_run(instance: DagsterInstance, run: DagsterRun, alerts: Sequence[Alert], logger: logging.Logger) -> None:
    """Send each alert; record on the run, per channel, whether it went or waits for a retry."""
    channels = configured_channels(logger)
    tags = {}
    for alert in alerts:
        logger.info(alert.payload()["text"] or "")
        failed = deliver(alert, channels, logger)
        tags.update({alert_tag(alert.event, channel.name): "pending" if channel.name in failed else "sent" for channel in channels})
    if tags:
        instance.add_run_tags(run.run_id, tags)


def redeliver_run_alerts(instance: DagsterInstance, channels: Sequence[Channel], logger: logging.Logger) -> int:
    """Retry every run alert a channel did not take; a day after the run, give up (logged)."""
    delivered = 0
    for channel in channels:
        for event in RUN_EVENTS:
            tag = alert_tag(event, channel.name)
            for run in instance.get_runs(filters=RunsFilter(tags={tag: "pending"}), limit=20):
                alert = next((a for a in run_alerts(instance, run) if a.event == event), None)
                record = instance.get_run_record_by_id(run.run_id)
                ended = record.end_time if record and record.end_time else time.time()
                if alert is not None and deliver(alert, [channel], logger) == []:
                    instance.add_run_tags(run.run_id, {tag: "sent"})
                    delivered += 1
                elif alert is None or time.time() - ended > GIVE_UP_AFTER_S:
                    logger.error(f"giving up on alert {event} of run {run.run_id} by {channel.name}")
                    instance.add_run_tags(run.run_id, {tag: "gave_up"})
    return delivered


# ------------------------------------------------------------------------------- stale tables and source
@dataclass
class FollowupState:
    """The cursor of `alert_followup`: what it already alerted about, and its alerts still to deliver."""

    stale_seen: list[str] = field(default_factory=list)  # stale at the last tick
    stale_alerted: list[str] = field(default_factory=list)  # stale and alerted, until fresh again
    sources_stale_since: dict[str, float] = field(default_factory=dict)  # source -> the rowsUpdatedAt already alerted on
    pending: list[dict] = field(default_factory=list)  # {"alert": ..., "channels": [...], "at": timestamp}

    @classmethod
    def from_cursor(cls, cursor: str | None) -> FollowupState:
        """The stored state; fields it does not know (an older or newer version's) are dropped."""
        stored = json.loads(cursor) if cursor else {}
        return cls(**{name: value for name, value in stored.items() if name in cls.__dataclass_fields__})

    def to_cursor(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def stale_tables(instance: DagsterInstance, tables: Sequence[AssetKey]) -> list[str]:
    """Tables Dagster's freshness evaluator has marked as failing their policy (state FAIL)."""
    records = instance.get_freshness_state_records(list(tables))
    return sorted(key.to_user_string() for key, record in records.items() if record.freshness_state.value == "FAIL")


def newly_stale(state: FollowupState, stale: list[str]) -> list[str]:
    """Stale tables not alerted yet, once the stale set held still for a tick: tables confirmed
    together go stale together, but the evaluator flips them a few seconds apart; one message."""
    settled = stale == state.stale_seen
    state.stale_seen = stale
    state.stale_alerted = [table for table in state.stale_alerted if table in stale]
    newly = [table for table in stale if table not in state.stale_alerted] if settled else []
    state.stale_alerted += newly
    return newly


def tables_stale_alert(instance: DagsterInstance, newly: Iterable[str], tables: Sequence[AssetKey]) -> Alert:
    latest = instance.get_latest_materialization_events(list(tables))
    confirmed = {key.to_user_string(): entry.timestamp for key, entry in latest.items() if entry is not None}
    lines = tuple(
        f"- {name}: last confirmed {dt.datetime.fromtimestamp(confirmed[name], dt.UTC):%Y-%m-%d %H:%M} UTC" if name in confirmed
        else f"- {name}: never loaded"
        for name in newly
    )
    return Alert(
        event="tables_stale",
        summary=f"{len(lines)} table(s) not confirmed within their freshness window (COVID_FRESHNESS_HOURS)",
        details=(*lines, "Check the refresh runs of their jobs (refresh_warehouse, refresh_<dataset>) and their schedules."),
    )


def source_stale_alerts(instance: DagsterInstance, state: FollowupState, sources: Sequence[AssetKey]) -> list[Alert]:
    """Once per source and publisher date: the latest staleness evaluation, when it is a failed warning."""
    alerts = []
    for source in sources:
        if alert := _source_stale_alert(instance, state, source):
            alerts.append(alert)
    return alerts


def _source_stale_alert(instance: DagsterInstance, state: FollowupState, source: AssetKey) -> Alert | None:
    record = instance.get_latest_asset_check_evaluation_record(staleness_check_key(source))
    evaluation = record.event.dagster_event.event_specific_data if record and record.event and record.event.dagster_event else None
    name = source.to_user_string()
    if evaluation is None or evaluation.passed:
        state.sources_stale_since.pop(name, None)
        return None
    updated = evaluation.metadata.get("rows_updated_at")
    since = float(updated.value) if updated is not None else 0.0
    if state.sources_stale_since.get(name) == since:
        return None
    state.sources_stale_since[name] = since
    verdict = evaluation.metadata.get("verdict")
    return Alert(
        event="source_stale",
        summary=f"The source {name} is stale: " + (str(verdict.value) if verdict is not None else "the publisher stopped updating"),
        details=("A warning, not a failure: the pipeline runs; the tables hold the last data published.",),
    )


def deliver_pending(state: FollowupState, new: Sequence[Alert], channels: Sequence[Channel], logger: logging.Logger) -> None:
    now = time.time()
    state.pending += [{"alert": alert.to_json(), "channels": [c.name for c in channels], "at": now} for alert in new]
    for alert in new:
        logger.info(alert.payload()["text"] or "")
    by_name = {channel.name: channel for channel in channels}
    still = []
    for item in state.pending:
        owed = [by_name[name] for name in item["channels"] if name in by_name]
        failed = deliver(Alert.from_json(item["alert"]), owed, logger)
        if failed and now - item["at"] < GIVE_UP_AFTER_S:
            still.append({**item, "channels": failed})
        elif failed:
            logger.error(f"giving up on alert {item['alert']['event']} by {', '.join(failed)}")
    state.pending = still


# ------------------------------------------------------------------------------- the sensors
def alert_sensors(jobs: Sequence, tables: Sequence[AssetKey], sources: Sequence[AssetKey]) -> list[SensorDefinition]:
    """The three alert sensors for every refresh job, table and observed source (on by default; with no
    channel set they only log)."""
    poll_s = max(int(env_float(POLL_ENV, DEFAULT_POLL_S, minimum=1, maximum=3600)), 1)

    @run_failure_sensor(
        name="alert_on_refresh_failure",
        monitored_jobs=list(jobs),
        minimum_interval_seconds=poll_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="One alert (webhook, email) per failed refresh run, with its failed step and first error line.",
    )
    def alert_on_refresh_failure(context: RunFailureSensorContext) -> None:
        run = settled(context.instance, context.dagster_run)
        alert = failure_alert(context.instance, run)
        if alert is None:
            context.log.info(f"run {run.run_id} failed and will be retried by Dagster: its retry is alerted if it fails")
            return
        send_for_run(context.instance, run, [alert], context.log)

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name="alert_on_refresh_success",
        monitored_jobs=list(jobs),
        minimum_interval_seconds=poll_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="'Recovered' after a failure, a rolled-back commit, and warning checks that newly fail.",
    )
    def alert_on_refresh_success(context: RunStatusSensorContext) -> None:
        if alerts := success_alerts(context.instance, context.dagster_run):
            send_for_run(context.instance, context.dagster_run, alerts, context.log)

    @sensor(
        name="alert_followup",
        minimum_interval_seconds=poll_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Alerts on stale tables (freshness policy failing) and a stale source; retries undelivered alerts.",
    )
    def alert_followup(context: SensorEvaluationContext) -> SkipReason:
        state = FollowupState.from_cursor(context.cursor)
        channels = configured_channels(context.log)
        redelivered = redeliver_run_alerts(context.instance, channels, context.log)
        stale = stale_tables(context.instance, tables)
        new = [tables_stale_alert(context.instance, newly, tables)] if (newly := newly_stale(state, stale)) else []
        new += source_stale_alerts(context.instance, state, sources)
        deliver_pending(state, new, channels, context.log)
        context.update_cursor(state.to_cursor())
        return SkipReason(
            f"{len(stale)} stale table(s); {len(new)} new alert(s); {redelivered} run alert(s) redelivered; "
            f"{len(state.pending)} waiting for a channel"
        )

    return [alert_on_refresh_failure, alert_on_refresh_success, alert_followup]
