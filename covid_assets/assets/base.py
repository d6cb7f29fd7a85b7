"""The base table `covid_19.covid_test_results`: one typed row per (state, outcome, day)."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Failure, MetadataValue, asset

from covid_assets.assets.catalog import OWNERS, column_descriptions
from covid_assets.assets.parsing import BASE_COLUMNS, InvalidRowsError, type_test_results
from covid_assets.assets.tables import BASE_ASSET_KEY, PRIMARY_KEY, RAW_ASSET_KEY


@asset(
    key=BASE_ASSET_KEY,
    ins={"raw": AssetIn(key=RAW_ASSET_KEY, metadata={"columns": BASE_COLUMNS})},
    metadata={"primary_key": PRIMARY_KEY, "column_descriptions": column_descriptions(BASE_ASSET_KEY.path[-1])},
    owners=OWNERS,
    group_name="warehouse",
    kinds={"pandas", "postgres"},
    description=(
        "One row per jurisdiction, test outcome and day: how many PCR results were reported that day "
        "(`new_results_reported`, negative when a state revised its history) and the cumulative count "
        "(`total_results_reported`). Typed, checked, and unique on (state, overall_outcome, date)."
    ),
)
def covid_test_results(context: AssetExecutionContext, raw: pd.DataFrame) -> pd.DataFrame:
    try:
        typed = type_test_results(raw)
    except InvalidRowsError as error:
        raise Failure(description=str(error)) from error
    frame = typed.frame
    context.add_output_metadata({"duplicates_dropped": typed.duplicates_dropped, **base_table_figures(frame)})
    return frame


def base_table_figures(frame: pd.DataFrame) -> dict[str, object]:
    """Numbers worth plotting run over run in the UI."""
    last_date = frame["date"].max()
    latest_week = frame["date"] > last_date - pd.Timedelta(days=7)
    return {
        "jurisdictions": int(frame["state"].nunique()),
        "states_reporting_latest_week": int(frame.loc[latest_week, "state"].nunique()),
        "total_tests_to_date": int(frame["new_results_reported"].sum()),
        "first_date": MetadataValue.text(str(frame["date"].min())),
        "last_date": MetadataValue.text(str(last_date)),
    }
