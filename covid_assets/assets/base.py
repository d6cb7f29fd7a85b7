"""The base table `covid_19.covid_test_results`: one typed row per (state, outcome, day)."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Failure, MetadataValue, asset

from covid_assets.assets.parsing import BASE_COLUMNS, InvalidRowsError, type_test_results
from covid_assets.assets.tables import BASE_ASSET_KEY, PRIMARY_KEY, RAW_ASSET_KEY


@asset(
    key=BASE_ASSET_KEY,
    ins={"raw": AssetIn(key=RAW_ASSET_KEY, metadata={"columns": BASE_COLUMNS})},
    metadata={"primary_key": PRIMARY_KEY},
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
    context.add_output_metadata(
        {
            "duplicates_dropped": typed.duplicates_dropped,
            "jurisdictions": int(frame["state"].nunique()),
            "first_date": MetadataValue.text(str(frame["date"].min())),
            "last_date": MetadataValue.text(str(frame["date"].max())),
        }
    )
    return frame
