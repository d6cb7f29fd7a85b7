"""What each table's columns mean and where the summary columns come from.

The descriptions become the `dagster/column_schema` the UI shows on every asset, and the
dependencies its column-level lineage (`dagster/column_lineage`).
"""

from dagster import AssetKey, TableColumnDep, TableColumnLineage

from covid_assets.assets.tables import BASE_ASSET_KEY

OWNERS = ["team:data-platform"]

BASE_COLUMNS = {
    "state": "Two-letter USPS code of the jurisdiction (state, DC, territory).",
    "state_name": "Name of the jurisdiction.",
    "state_fips": "Two-digit Census FIPS code, leading zero kept.",
    "fema_region": "FEMA region the jurisdiction belongs to, e.g. 'Region 4'.",
    "overall_outcome": "Test outcome: Positive, Negative or Inconclusive.",
    "date": "Day the results were reported for.",
    "new_results_reported": "Results with this outcome reported that day; negative when history was revised.",
    "total_results_reported": "Cumulative results with this outcome up to and including that day.",
}
RAW_COLUMNS = {
    **{name: f"As delivered (text). {text}" for name, text in BASE_COLUMNS.items()},
    "extra_columns": (
        "Every other column the source sent, as a JSON object: column name -> value as delivered (text), "
        "only the columns this row has a value in; NULL when none. E.g. extra_columns->>'geocoded_state'."
    ),
    "fetched_at": "When this full refresh fetched the rows (UTC).",
}

_COUNT = ("new_results_reported", "overall_outcome")
SUMMARY_COLUMNS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    # column: (description, base-table columns it is computed from)
    "outcome_results": {
        "overall_outcome": ("Test outcome.", ("overall_outcome",)),
        "total_results_reported": ("All results with this outcome (sum of daily results).", _COUNT),
        "pct_of_results": ("Share of all results, percent, 2 decimals.", _COUNT),
    },
    "state_results": {
        "state": ("Two-letter jurisdiction code.", ("state",)),
        "state_name": ("Name of the jurisdiction (from its latest row).", ("state_name", "date")),
        "positive_tests": ("Positive results over the whole series.", _COUNT),
        "negative_tests": ("Negative results over the whole series.", _COUNT),
        "inconclusive_tests": ("Inconclusive results over the whole series.", _COUNT),
        "total_tests": ("All results over the whole series.", _COUNT),
        "positivity_rate": ("positive / total × 100, 2 decimals; NULL when there are no tests.", _COUNT),
    },
    "smoothed_results": {
        "date": ("Calendar day; days without reports are included with zero counts.", ("date",)),
        "positive_tests": ("National positive results that day.", (*_COUNT, "date")),
        "negative_tests": ("National negative results that day.", (*_COUNT, "date")),
        "inconclusive_tests": ("National inconclusive results that day.", (*_COUNT, "date")),
        "smoothed_positive_tests": ("7-day trailing mean of positive results; NULL for the first 6 days.", (*_COUNT, "date")),
        "smoothed_negative_tests": ("7-day trailing mean of negative results; NULL for the first 6 days.", (*_COUNT, "date")),
        "smoothed_inconclusive_tests": ("7-day trailing mean of inconclusive results; NULL for the first 6 days.", (*_COUNT, "date")),
        "smoothed_positivity_rate": ("7-day positives / 7-day results × 100; NULL for the first 6 days.", (*_COUNT, "date")),
    },
    "total_results": {
        "state": ("Two-letter jurisdiction code.", ("state",)),
        "state_name": ("Name of the jurisdiction (from its latest row).", ("state_name", "date")),
        "latest_date": ("The jurisdiction's last reported day.", ("date",)),
        "positive_total": ("Cumulative positive results on that outcome's latest row (0 if none).", ("total_results_reported", "overall_outcome", "date")),
        "negative_total": ("Cumulative negative results on that outcome's latest row (0 if none).", ("total_results_reported", "overall_outcome", "date")),
        "inconclusive_total": ("Cumulative inconclusive results on that outcome's latest row (0 if none).", ("total_results_reported", "overall_outcome", "date")),
        "total_results_reported": ("Sum of the three cumulative totals.", ("total_results_reported", "overall_outcome", "date")),
    },
    "recent_positivity_results": {
        "rank": ("1 = highest positivity in the window; ties broken by state code.", (*_COUNT, "date", "state")),
        "state": ("Two-letter jurisdiction code.", ("state",)),
        "state_name": ("Name of the jurisdiction (from its latest row).", ("state_name", "date")),
        "positive_tests": ("Positive results in the 30 days ending on the data's latest date.", (*_COUNT, "date")),
        "total_tests": ("All results in the same window.", (*_COUNT, "date")),
        "positivity_rate": ("positive / total × 100 in the window, 2 decimals.", (*_COUNT, "date")),
    },
}


def column_descriptions(table: str) -> dict[str, str]:
    if table == "covid_test_results":
        return BASE_COLUMNS
    if table == "raw_covid_test_results":
        return RAW_COLUMNS
    return {column: description for column, (description, _) in SUMMARY_COLUMNS[table].items()}


def column_lineage(table: str, upstream: AssetKey = BASE_ASSET_KEY) -> TableColumnLineage:
    return TableColumnLineage(
        deps_by_column={
            column: [TableColumnDep(asset_key=upstream, column_name=source) for source in sources]
            for column, (_, sources) in SUMMARY_COLUMNS[table].items()
        }
    )
