"""The published dataset as an observable source asset, upstream of the raw table in the lineage.

An observation costs the two small requests every run already makes for change detection
(`SocrataSource.signature()`: the dataset's `rowsUpdatedAt` from /api/views and its `count(*)`);
their pair is the data version, so a new release is a new version. With `SOCRATA_SOURCE_FILE` the
version is the file's size and modification time. The observation also evaluates the publisher's
staleness (a warning, see freshness.py). The source sensor (sensors.py) observes it on a timer; the
UI's "Observe" button runs the same function.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSpec,
    AssetSpec,
    DataVersion,
    MetadataValue,
    ObserveResult,
    multi_observable_source_asset,
)

from covid_assets.assets.tables import OWNERS, SOURCE_ASSET_KEY
from covid_assets.freshness import SOURCE_STALENESS_CHECK, source_stale_days, source_staleness
from covid_assets.sources.socrata import SocrataSource

# Each observation request gets this long (connect included) so a sensor tick ends within a minute.
OBSERVE_DEADLINE_S = 8.0


@dataclass(frozen=True)
class SourceObservation:
    """What one observation found: the data version, what to show for it, and the publisher's staleness."""

    version: str
    metadata: dict[str, object]
    staleness: AssetCheckEvaluation

    @property
    def run_key(self) -> str:
        """One release, one run: the key of the refresh a new version asks for."""
        return f"source-version-{self.version}"


def observe_source(socrata: SocrataSource, now: dt.datetime | None = None) -> SourceObservation:
    """Ask the source what it holds now; a failing request raises SocrataError (URL and status, never the token)."""
    now = now or dt.datetime.now(dt.UTC)
    if source_file := socrata.target.source_file:
        stat = os.stat(source_file)
        metadata: dict[str, object] = {"source": MetadataValue.path(source_file), "file_bytes": stat.st_size}
        return SourceObservation(f"file-{stat.st_size}-{stat.st_mtime_ns}", metadata, source_staleness(None, now, 0))
    signature = socrata.signature(deadline_s=OBSERVE_DEADLINE_S)
    assert signature is not None  # only a file source has none
    metadata = {"source": MetadataValue.url(socrata.client().resource_url), "row_count": signature.row_count}
    if signature.rows_updated_at is not None:
        metadata["rows_updated_at"] = MetadataValue.timestamp(dt.datetime.fromtimestamp(signature.rows_updated_at, dt.UTC))
    version = f"{signature.rows_updated_at or 'unknown'}-{signature.row_count}"
    return SourceObservation(version, metadata, source_staleness(signature.rows_updated_at, now, source_stale_days()))


@multi_observable_source_asset(
    specs=[
        AssetSpec(
            SOURCE_ASSET_KEY,
            description=(
                "The HHS COVID-19 PCR testing time series as published on healthdata.gov (Socrata dataset "
                "j8mb-icvb): observed, never written. Its data version is the publisher's rowsUpdatedAt and "
                "the row count; a new version makes the source sensor refresh the warehouse."
            ),
            group_name="ingestion",
            owners=OWNERS,
            kinds={"socrata"},
        )
    ],
    check_specs=[
        AssetCheckSpec(
            SOURCE_STALENESS_CHECK.name,
            asset=SOURCE_ASSET_KEY,
            description="The publisher updated the dataset within COVID_SOURCE_STALE_DAYS (14) days. A warning: "
            "when it fails the pipeline is fine and the source has stopped.",
        )
    ],
    name="observe_socrata_source",
)
def socrata_source(socrata: SocrataSource):
    observation = observe_source(socrata)
    yield ObserveResult(
        asset_key=SOURCE_ASSET_KEY,
        data_version=DataVersion(observation.version),
        metadata=observation.metadata,
        check_results=[_as_check_result(observation.staleness)],
    )


def _as_check_result(evaluation: AssetCheckEvaluation) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=evaluation.asset_key,
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        metadata=evaluation.metadata,
    )
