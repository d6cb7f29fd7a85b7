"""The raw landing asset: the dataset exactly as Socrata (or a local export) delivered it.

Keeping the untyped strings lets a bad night be diagnosed from the warehouse alone, and
lets the base table be rebuilt without calling the API again.
"""

from collections.abc import Callable

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, MetadataValue, asset

from covid_assets.sources.socrata import Extract, SocrataSource

RAW_SCHEMA = "covid_19_raw"
RAW_ASSET_KEY = AssetKey([RAW_SCHEMA, "raw_covid_test_results"])


@asset(
    key=RAW_ASSET_KEY,
    group_name="ingestion",
    kinds={"socrata", "pandas", "postgres"},
    description=(
        "Every row of the HHS COVID-19 PCR testing time series (healthdata.gov j8mb-icvb) exactly as "
        "delivered: all values are strings, columns the source added are kept, and `fetched_at` says "
        "when the full refresh fetched them."
    ),
)
def raw_covid_test_results(context: AssetExecutionContext, socrata: SocrataSource) -> pd.DataFrame:
    extract = socrata.extract(progress=_progress_logger(context))
    context.add_output_metadata(fetch_metadata(extract))
    return extract.frame.assign(fetched_at=pd.Timestamp.now(tz="UTC"))


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
