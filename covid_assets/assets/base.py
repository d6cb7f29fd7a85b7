"""The base table `covid_19.covid_test_results`: one typed row per (state, outcome, day)."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Failure, MetadataValue, asset

from covid_assets.assets.parsing import BASE_COLUMNS, InvalidRowsError, type_test_results
from covid_assets.assets.tables import BASE, OWNERS, RAW_ASSET_KEY, definition_metadata


@asset(
    key=BASE.asset_key,
    ins={"raw": AssetIn(key=RAW_ASSET_KEY, metadata={"columns": BASE_COLUMNS})},
    metadata=definition_metadata(BASE),
    owners=OWNERS,
    group_name="warehouse",
    kinds={"pandas", "postgres"},
    description=BASE.description,
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
