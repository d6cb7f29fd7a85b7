"""Names of the warehouse tables, shared by assets, checks and guards (key = [schema, table])."""

from dagster import AssetKey

RAW_SCHEMA = "covid_19_raw"
SCHEMA = "covid_19"
# The published dataset itself, observed (never materialized): upstream of the raw table.
SOURCE_ASSET_KEY = AssetKey(["socrata", "covid_pcr_testing_time_series"])
RAW_ASSET_KEY = AssetKey([RAW_SCHEMA, "raw_covid_test_results"])
BASE_ASSET_KEY = AssetKey([SCHEMA, "covid_test_results"])
PRIMARY_KEY = ["state", "overall_outcome", "date"]
SERIES_KEY = ["state", "overall_outcome"]
SUMMARY_PRIMARY_KEYS = {
    "outcome_results": ["overall_outcome"],
    "state_results": ["state"],
    "smoothed_results": ["date"],
    "total_results": ["state"],
    "recent_positivity_results": ["state"],
}
SUMMARY_ASSET_KEYS = [AssetKey([SCHEMA, name]) for name in SUMMARY_PRIMARY_KEYS]
# Every table a full refresh writes, as analysts name them (schema.table), in lineage order.
TABLE_ASSET_KEYS = [RAW_ASSET_KEY, BASE_ASSET_KEY, *SUMMARY_ASSET_KEYS]
ALL_TABLES = [".".join(key.path) for key in TABLE_ASSET_KEYS]
