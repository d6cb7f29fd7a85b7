"""What "fresh" means here, how an unchanged-source day confirms it, and when the publisher is stale.

* **Table freshness** is Dagster's own: every table carries `FreshnessPolicy.time_window` (26 h by
  default, `COVID_FRESHNESS_HOURS`), which the daemon's freshness evaluator turns into the state the
  UI shows. That evaluator reads only an asset's last *materialization*
  (`dagster/_core/definitions/freshness_evaluator.py`). A day on which the platform confirmed that the
  source is unchanged is therefore recorded as a materialization of each table that rewrites
  nothing (`confirmation_materializations`): metadata `rows_written: 0`, the change-detection
  evidence carried forward, and the data-version provenance of the load that wrote the rows, so the
  UI neither calls the tables stale nor "unsynced".
* **Source staleness** is a separate signal about the publisher, not the pipeline: a warning (never
  a failure) when the dataset's `rowsUpdatedAt` is older than `COVID_SOURCE_STALE_DAYS` (14).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetKey,
    AssetCheckSeverity,
    AssetMaterialization,
    AssetsDefinition,
    DagsterInstance,
    FreshnessPolicy,
    MetadataValue,
    map_asset_specs,
)

from covid_assets.settings import env_float

FRESHNESS_HOURS_ENV = "COVID_FRESHNESS_HOURS"
DEFAULT_FRESHNESS_HOURS = 26.0  # a daily run, plus slack for a late or slow one
SOURCE_STALE_DAYS_ENV = "COVID_SOURCE_STALE_DAYS"
DEFAULT_SOURCE_STALE_DAYS = 14.0
STALENESS_CHECK = "publisher_updated_recently"  # the warning check of every observed source
# Where a confirmation says which run last wrote the rows it confirms.
LOADED_BY_RUN = "loaded_by_run"
# Dagster's data-version provenance on a materialization (dagster/_core/definitions/data_version.py).
PROVENANCE_TAG_PREFIXES = (
    "dagster/data_version",
    "dagster/logical_version",
    "dagster/code_version",
    "dagster/input_data_version/",
    "dagster/input_logical_version/",
    "dagster/input_event_pointer/",
)


# ------------------------------------------------------------------------------- table freshness
def table_freshness_policy(environ: Mapping[str, str] | None = None) -> FreshnessPolicy:
    """Fresh = confirmed (loaded, or checked unchanged) within the window. Dagster's floor is 1 minute."""
    hours = env_float(FRESHNESS_HOURS_ENV, DEFAULT_FRESHNESS_HOURS, minimum=1 / 60, maximum=24 * 366, environ=environ)
    return FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=hours))


def with_freshness_policy(assets: Sequence[AssetsDefinition], policy: FreshnessPolicy) -> list[AssetsDefinition]:
    return list(map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy), assets))


def confirmation_materializations(
    instance: DagsterInstance,
    run_id: str,
    message: str,
    raw_evidence: Mapping[str, object],
    *,
    table_keys: Sequence[AssetKey],
    raw_key: AssetKey,
    source_key: AssetKey,
) -> list[AssetMaterialization]:
    """One materialization per table, writing nothing: "this run confirmed the table matches the source".

    Each carries the provenance tags of the table's previous materialization (same rows, same data
    version), except that the raw table's input from the source points at the source's latest
    observation, which is what was just confirmed. The raw table's also carries the change-detection
    evidence (`raw_evidence`), so the next run compares with what was confirmed today.
    """
    previous = instance.get_latest_materialization_events(table_keys)
    source_tags = _latest_source_version_tags(instance, source_key)
    events = []
    for key in table_keys:
        entry = previous.get(key)
        before = entry.asset_materialization if entry is not None else None
        tags = {name: value for name, value in (entry.tags or {}).items() if name.startswith(PROVENANCE_TAG_PREFIXES)} if entry else {}
        metadata: dict[str, object] = {
            "rows_written": 0,
            "source_unchanged": MetadataValue.text(message),
            LOADED_BY_RUN: MetadataValue.text(_loaded_by(before, entry.run_id) if entry else "unknown"),
        }
        if key == raw_key:
            tags.update(source_tags)
            metadata.update(raw_evidence)
        events.append(AssetMaterialization(asset_key=key, metadata=metadata, tags=tags, description=message))
    return events


def _loaded_by(before: AssetMaterialization | None, run_id: str) -> str:
    """The run that wrote the rows: the previous event's own run, or the one it confirmed in turn."""
    carried = before.metadata.get(LOADED_BY_RUN) if before is not None else None
    return str(carried.value) if carried is not None else run_id


def _latest_source_version_tags(instance: DagsterInstance, source_key: AssetKey) -> dict[str, str]:
    record = instance.get_latest_data_version_record(source_key, is_source=True)
    version = (record.event_log_entry.tags or {}).get("dagster/data_version") if record else None
    if record is None or version is None:
        return {}
    name = source_key.to_user_string()
    return {f"dagster/input_data_version/{name}": version, f"dagster/input_event_pointer/{name}": str(record.storage_id)}


# ------------------------------------------------------------------------------- source staleness
def source_stale_days(environ: Mapping[str, str] | None = None) -> float:
    return env_float(SOURCE_STALE_DAYS_ENV, DEFAULT_SOURCE_STALE_DAYS, minimum=0, environ=environ)


def staleness_check_key(source_key: AssetKey) -> AssetCheckKey:
    return AssetCheckKey(source_key, STALENESS_CHECK)


def source_staleness(
    rows_updated_at: int | None, now: dt.datetime, stale_days: float, source_key: AssetKey
) -> AssetCheckEvaluation:
    """A warning with the publisher's last update and its age when older than `stale_days`.

    Without a `rowsUpdatedAt` (a local export file, an API that does not say) it passes and says so.
    """
    if rows_updated_at is None:
        return _staleness(source_key, True, {"verdict": MetadataValue.text("the source gives no rowsUpdatedAt: its age is unknown")})
    updated = dt.datetime.fromtimestamp(rows_updated_at, dt.UTC)
    age_days = (now - updated).total_seconds() / 86_400
    stale = age_days > stale_days
    verdict = (
        f"the publisher last updated the dataset on {updated:%Y-%m-%d %H:%M} UTC, {age_days:.1f} days ago "
        f"(more than {stale_days:g}): the pipeline is fine, the source stopped"
        if stale
        else f"the publisher updated the dataset {age_days:.1f} days ago ({updated:%Y-%m-%d %H:%M} UTC)"
    )
    return _staleness(
        source_key,
        not stale,
        {
            "rows_updated_at": MetadataValue.timestamp(updated),
            "age_days": round(age_days, 2),
            "stale_after_days": stale_days,
            "verdict": MetadataValue.text(verdict),
        },
    )


def _staleness(source_key: AssetKey, passed: bool, metadata: dict[str, object]) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=source_key,
        check_name=STALENESS_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
    )
