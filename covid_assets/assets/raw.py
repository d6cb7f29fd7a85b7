"""The raw landing asset: the dataset exactly as Socrata (or a local export) delivered it.

Keeping the untyped strings lets a bad night be diagnosed from the warehouse alone, and
lets the base table be rebuilt without calling the API again. This asset is also the gate
of every run: the delivery is typed and compared with what is stored *before* anything is
written, so a refused refresh leaves every table as it was.

What the source sends must never block a refresh by its shape, so the table's columns do not
follow the source's: the eight required columns are TEXT columns, as delivered, and every other
column the source sends lands in one JSONB column, `extra_columns` (an object column name ->
value as text, holding only the columns the row has a value in; NULL when none). No source name
ever becomes a Postgres identifier, so names that are empty, longer than 63 bytes, equal in
their first 63 bytes, or more than 1,600 of them cannot fail the write. Bounds: at most 1,000
extra columns are kept (the first ones, in source order) and names of at most 1,000 characters;
the others are dropped, logged and listed in the asset's metadata. Postgres text cannot hold a
NUL byte, so NUL bytes are removed from names and values (counted in the metadata). The gate
types the values as delivered, so a NUL in a value that must be typed (a count, a date, a state
code, an outcome) is a bad row, named as such, not a value quietly read another way (a count
"1<NUL>2" is not 12); only free text (names, regions, FIPS codes, extra columns) is stored
without them.
The JSON text is built column-wise in Arrow (about 0.05-0.1 s per 243k rows and extra column),
never row by row.

Two operational duties live here too, because only this step knows why a run stops:
* a scheduled run that finds the source unchanged records a confirmation for every table (see
  freshness.py), which keeps the tables fresh without rewriting them;
* a run that fails on a transient source error (HTTP 5xx/429, a timeout, a dropped connection)
  asks Dagster's run retries for one more attempt, which starts after `COVID_RETRY_DELAY_S`;
  a refusal (bad rows, a shrinking source, a failed check) is never retried.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    Config,
    DagsterRunStatus,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from covid_assets.assets.guards import ShrinkingSourceError, StoredTable, check_not_shrinking, content_hash
from covid_assets.assets.parsing import InvalidRowsError, type_test_results
from covid_assets.assets.tables import (
    BASE_ASSET_KEY,
    OWNERS,
    RAW,
    RAW_ASSET_KEY,
    SERIES_KEY,
    SOURCE_ASSET_KEY,
    TABLE_ASSET_KEYS,
    definition_metadata,
)
from covid_assets.datasets.dataset_spec import EXTRA_COLUMNS, FETCHED_AT
from covid_assets.datasets.extra_columns import (  # shared with the declared datasets' streaming loader
    MAX_EXTRA_COLUMNS,
    MAX_EXTRA_NAME_CHARS,
    extra_keys as _extra_keys,
    json_objects as _json_objects,
    without_nul as _without_nul,
)
from covid_assets.datasets.operations import (  # the same duties as every declared dataset's load step
    confirm_unchanged as _confirm_unchanged,
    source_failure,
    wait_if_retrying,
)
from covid_assets.sources.socrata import REQUIRED_COLUMNS, Extract, SocrataError, SocrataSource, SourceSignature
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

    def evidence(self) -> dict[str, object]:
        """The materialization metadata that `read_last_load` reads back."""
        return {
            "content_hash": self.content_hash,
            "rows_updated_at": self.signature.rows_updated_at or None,
            "source_row_count": self.signature.row_count,
            "base_rows": self.base_rows,
        }


@asset(
    key=RAW_ASSET_KEY,
    deps=[SOURCE_ASSET_KEY],
    output_required=False,
    metadata=definition_metadata(RAW),
    owners=OWNERS,
    group_name="ingestion",
    kinds={"socrata", "pandas", "postgres"},
    description=RAW.description,
)
def raw_covid_test_results(
    context: AssetExecutionContext, config: RawFetchConfig, socrata: SocrataSource, warehouse: WarehouseResource
) -> Iterator[Output[pd.DataFrame]]:
    wait_if_retrying(context)
    last_load = read_last_load(context) if config.skip_if_unchanged else None
    still_stored = last_load is not None and holds_last_load(warehouse, last_load)

    signature = read_signature(context, socrata)
    if still_stored and signature is not None and signature.rows_updated_at is not None and signature == last_load.signature:
        confirm_unchanged(context, last_load, f"rowsUpdatedAt {signature.rows_updated_at} and count {signature.row_count:,}")
        return

    extract = extract_or_explain(context, socrata, signature.row_count if signature else None)
    base_rows = gate(extract, read_stored_base(warehouse), config)  # the values as delivered, NUL bytes and all
    load = LastLoad(
        signature=SourceSignature(rows_updated_at=signature.rows_updated_at if signature else None, row_count=len(extract.frame)),
        content_hash=content_hash(extract.frame),  # of the delivery itself, so an upgrade does not look like a change
        base_rows=base_rows,
    )
    if still_stored and load.content_hash == last_load.content_hash:
        confirm_unchanged(context, load, f"content hash {load.content_hash}")  # today's rowsUpdatedAt from now on
        return

    landing = landing_frame(extract.frame)
    for warning in landing.warnings():
        context.log.warning(warning)
    yield Output(
        landing.frame.assign(**{FETCHED_AT: pd.Timestamp.now(tz="UTC")}),
        data_version=DataVersion(load.content_hash),
        metadata={**fetch_metadata(extract), **landing.metadata(), **load.evidence()},
    )


def extract_or_explain(context: AssetExecutionContext, socrata: SocrataSource, known_count: int | None) -> Extract:
    try:
        return socrata.extract(progress=_progress_logger(context), known_count=known_count)
    except SocrataError as error:
        raise source_failure(context, error) from error


def gate(extract: Extract, stored: StoredTable | None, config: RawFetchConfig) -> int:
    """Type the delivery and compare it with what is stored; raise before anything is written."""
    try:
        typed = type_test_results(extract.frame)
        if not config.allow_shrink:
            check_not_shrinking(stored, typed.frame, config.max_shrink_fraction)
    except (InvalidRowsError, ShrinkingSourceError) as error:
        raise Failure(description=f"{extract.source}: {error}") from error
    return len(typed.frame)


def holds_last_load(warehouse: WarehouseResource, last_load: LastLoad) -> bool:
    """The base table still has the rows of the last load, and no table of it has been dropped."""
    if warehouse.row_count(*BASE_ASSET_KEY.path) != last_load.base_rows:
        return False
    return not warehouse.missing_tables([tuple(key.path) for key in TABLE_ASSET_KEYS if key != BASE_ASSET_KEY])


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


def confirm_unchanged(context: AssetExecutionContext, load: LastLoad, evidence: str) -> None:
    """Write nothing, skip downstream, and record for every table that it still matches the source."""
    _confirm_unchanged(context, evidence, load.evidence(), tables=TABLE_ASSET_KEYS, raw_key=RAW_ASSET_KEY, source_key=SOURCE_ASSET_KEY)


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


# ----------------------------------------------------------------------------- the landing frame
@dataclass(frozen=True)
class Landing:
    """The rows as the raw table stores them, and what had to change on the way."""

    frame: pd.DataFrame  # REQUIRED_COLUMNS as delivered (text), then EXTRA_COLUMNS (JSON)
    extras: list[str]  # source columns kept in EXTRA_COLUMNS
    dropped: list[str]  # source columns left out (beyond the bounds)
    nul_values: int  # values from which NUL bytes were removed

    def metadata(self) -> dict[str, object]:
        entries: dict[str, object] = {"extra_columns": MetadataValue.text(_names(self.extras) or "none")}
        if self.dropped:
            entries["extra_columns_dropped"] = MetadataValue.text(_names(self.dropped))
        if self.nul_values:
            entries["nul_values_stripped"] = self.nul_values
        return entries

    def warnings(self) -> list[str]:
        notes = []
        if self.dropped:
            notes.append(
                f"{len(self.dropped)} source column(s) not stored (beyond {MAX_EXTRA_COLUMNS:,} extra columns, a name over "
                f"{MAX_EXTRA_NAME_CHARS:,} characters or not UTF-8, or a repeated name): {_names(self.dropped)}"
            )
        if self.nul_values:
            notes.append(f"NUL bytes removed from {self.nul_values:,} source value(s) (Postgres text cannot hold them)")
        return notes


def landing_frame(delivered: pd.DataFrame) -> Landing:
    """The required columns as delivered (NUL bytes removed) and every other column as one JSON object per row."""
    table = pa.Table.from_pandas(delivered, preserve_index=False)  # no copy: the columns are Arrow strings
    columns: dict[str, pa.ChunkedArray] = {}
    stripped: set[str] = set()
    nul_values = 0
    for name, values in zip(table.column_names, table.columns):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = values.cast(pa.large_string())
        columns[name], removed = _without_nul(values)
        nul_values += removed
        if removed:
            stripped.add(name)
    kept, dropped = _extra_keys([name for name in table.column_names if name not in REQUIRED_COLUMNS])
    frame = pd.DataFrame(
        {name: _as_pandas(columns[name], delivered.index) if name in stripped else delivered[name] for name in REQUIRED_COLUMNS}
    )
    objects = _json_objects({key: columns[name] for name, key in kept}, table.num_rows)
    frame[EXTRA_COLUMNS] = pd.Series(pd.arrays.ArrowExtensionArray(objects), index=frame.index)
    return Landing(frame=frame, extras=[name for name, _ in kept], dropped=dropped, nul_values=nul_values)


def _as_pandas(values: pa.ChunkedArray, index: pd.Index) -> pd.Series:
    return pd.Series(pd.arrays.ArrowStringArray(values), index=index)


def _names(names: list[str], limit: int = 300) -> str:
    """Column names for a log line or metadata, cut to about `limit` characters."""
    text = ", ".join(repr(name[:60] + "..." if len(name) > 60 else name) for name in names)
    return text if len(text) <= limit else text[:limit] + f"... ({len(names):,} in all)"
