"""The raw landing asset: the dataset exactly as Socrata (or a local export) delivered it.

Keeping the untyped strings lets a bad night be diagnosed from the warehouse alone, and
lets the base table be rebuilt without calling the API again. This asset is also the gate
of every run: the delivery is typed and compared with what is stored *before* anything is
written, so a refused refresh leaves every table as it was.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    DagsterRunStatus,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from covid_assets.assets.catalog import OWNERS, column_descriptions
from covid_assets.assets.guards import ShrinkingSourceError, StoredTable, check_not_shrinking, content_hash
from covid_assets.assets.parsing import InvalidRowsError, type_test_results
from covid_assets.assets.tables import BASE_ASSET_KEY, RAW_ASSET_KEY, SERIES_KEY
from covid_assets.sources.socrata import Extract, SocrataError, SocrataSource, SourceSignature
from covid_assets.storage.warehouse import COMMIT_FAILED_TAG, WarehouseResource


class RawFetchConfig(Config):
    allow_shrink: bool = Field(
        default=False, description="Accept a source that lost rows or whole (state, outcome) series."
    )
    max_shrink_fraction: float = Field(
        default=0.05, ge=0, le=1, description="Largest share of base-table rows a refresh may lose without allow_shrink."
    )
    skip_if_unchanged: bool = Field(
        default=False,
        description="Write nothing (and skip downstream) when the source is unchanged since the last load. "
        "The daily schedule turns this on; a manual materialization is a forced refresh.",
    )


@dataclass(frozen=True)
class LastLoad:
    """What the previous successful load recorded in its materialization metadata."""

    signature: SourceSignature
    content_hash: str | None
    base_rows: int | None


@asset(
    key=RAW_ASSET_KEY,
    output_required=False,
    metadata={"column_descriptions": column_descriptions(RAW_ASSET_KEY.path[-1])},
    owners=OWNERS,
    group_name="ingestion",
    kinds={"socrata", "pandas", "postgres"},
    description=(
        "Every row of the HHS COVID-19 PCR testing time series (healthdata.gov j8mb-icvb) exactly as "
        "delivered: all values are strings, columns the source added are kept, and `fetched_at` says "
        "when the full refresh fetched them."
    ),
)
def raw_covid_test_results(
    context: AssetExecutionContext, config: RawFetchConfig, socrata: SocrataSource, warehouse: WarehouseResource
) -> Iterator[Output[pd.DataFrame]]:
    last_load = read_last_load(context) if config.skip_if_unchanged else None
    still_stored = last_load is not None and warehouse.row_count(*BASE_ASSET_KEY.path) == last_load.base_rows

    signature = read_signature(context, socrata)
    if still_stored and signature is not None and signature.rows_updated_at is not None and signature == last_load.signature:
        report_unchanged(context, f"rowsUpdatedAt {signature.rows_updated_at} and count {signature.row_count:,}")
        return

    extract = extract_or_explain(context, socrata, signature.row_count if signature else None)
    base_rows = gate(extract, read_stored_base(warehouse), config)
    fingerprint = content_hash(extract.frame)
    if still_stored and fingerprint == last_load.content_hash:
        report_unchanged(context, f"content hash {fingerprint}")
        return

    yield Output(
        extract.frame.assign(fetched_at=pd.Timestamp.now(tz="UTC")),
        data_version=DataVersion(fingerprint),
        metadata={
            **fetch_metadata(extract),
            "content_hash": fingerprint,
            "rows_updated_at": signature.rows_updated_at if signature and signature.rows_updated_at else None,
            "source_row_count": len(extract.frame),
            "base_rows": base_rows,
        },
    )


def extract_or_explain(context: AssetExecutionContext, socrata: SocrataSource, known_count: int | None) -> Extract:
    try:
        return socrata.extract(progress=_progress_logger(context), known_count=known_count)
    except SocrataError as error:
        hint = (
            " No complete answer came back from the API: check the network, or load a local export instead "
            "(SOCRATA_SOURCE_FILE, e.g. `./dev offline` for the bundled snapshot)."
            if error.status is None and error.transient
            else ""
        )
        raise Failure(description=f"{error}{hint}") from error


def gate(extract: Extract, stored: StoredTable | None, config: RawFetchConfig) -> int:
    """Type the delivery and compare it with what is stored; raise before anything is written."""
    try:
        typed = type_test_results(extract.frame)
        if not config.allow_shrink:
            check_not_shrinking(stored, typed.frame, config.max_shrink_fraction)
    except (InvalidRowsError, ShrinkingSourceError) as error:
        raise Failure(description=f"{extract.source}: {error}") from error
    return len(typed.frame)


def read_stored_base(warehouse: WarehouseResource) -> StoredTable | None:
    rows_per_series = warehouse.count_by(*BASE_ASSET_KEY.path, SERIES_KEY)
    if rows_per_series is None:
        return None
    return StoredTable(row_count=sum(rows_per_series.values()), series=set(rows_per_series))


def read_signature(context: AssetExecutionContext, socrata: SocrataSource) -> SourceSignature | None:
    """Two small requests; a source without them (a file, an old API) just gets a full fetch."""
    try:
        return socrata.signature()
    except SocrataError as error:
        context.log.warning(f"could not read the source's rowsUpdatedAt/count ({error}); doing a full fetch")
        return None


def read_last_load(context: AssetExecutionContext) -> LastLoad | None:
    """The last load that was committed: a failed run emits its materializations, then rolls back."""
    event = context.instance.get_latest_materialization_event(RAW_ASSET_KEY)
    if event is None or event.asset_materialization is None:
        return None
    run = context.instance.get_run_by_id(event.run_id)
    if run is None or run.status != DagsterRunStatus.SUCCESS or COMMIT_FAILED_TAG in run.tags:
        return None
    metadata = event.asset_materialization.metadata

    def value(name: str):
        entry = metadata.get(name)
        return None if entry is None else entry.value

    return LastLoad(
        signature=SourceSignature(rows_updated_at=value("rows_updated_at"), row_count=value("source_row_count")),
        content_hash=value("content_hash"),
        base_rows=value("base_rows"),
    )


def report_unchanged(context: AssetExecutionContext, evidence: str) -> None:
    message = f"Source unchanged since the last load ({evidence}): no table rewritten, downstream assets skipped."
    context.log.info(message)
    context.log_event(AssetObservation(asset_key=RAW_ASSET_KEY, metadata={"source_unchanged": MetadataValue.text(message)}))
    context.instance.add_run_tags(context.run_id, {"covid/source_unchanged": "true"})


def fetch_metadata(extract: Extract) -> dict[str, object]:
    stats = extract.stats
    return {
        "source": MetadataValue.url(extract.source) if extract.source.startswith("http") else MetadataValue.path(extract.source),
        "fetch_pages": stats.pages,
        "fetch_requests": stats.requests,
        "fetch_retries": stats.retries,
        "fetch_bytes": stats.bytes,
        "fetch_seconds": round(stats.elapsed_s, 3),
    }


def _progress_logger(context: AssetExecutionContext) -> Callable[[int, int | None], None]:
    def log_progress(rows_so_far: int, total: int | None) -> None:
        of_total = f" of {total:,}" if total else ""
        context.log.info(f"fetched {rows_so_far:,}{of_total} rows")

    return log_progress
