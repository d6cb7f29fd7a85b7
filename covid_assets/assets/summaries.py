"""The five reporting tables analysts query (`SELECT * FROM covid_19.state_results;`).

Each asset is a thin wrapper: the arithmetic lives in `summary_frames.py` as plain pandas
functions, pinned by hand-computed tests.
"""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetKey, Config, asset

from covid_assets.assets.catalog import OWNERS, column_descriptions, column_lineage
from covid_assets.assets.tables import BASE_ASSET_KEY, SCHEMA, SUMMARY_PRIMARY_KEYS
from covid_assets.assets.summary_frames import (
    build_outcome_results,
    build_recent_positivity_results,
    build_smoothed_results,
    build_state_results,
    build_total_results,
)


def summary_asset(name: str, description: str):
    """The shared decorator: a `covid_19.<name>` table computed from the base table."""
    return asset(
        key=AssetKey([SCHEMA, name]),
        ins={"base": AssetIn(key=BASE_ASSET_KEY)},
        metadata={"primary_key": SUMMARY_PRIMARY_KEYS[name], "column_descriptions": column_descriptions(name)},
        owners=OWNERS,
        group_name="reporting",
        kinds={"pandas", "postgres"},
        description=description,
    )


def publish(context: AssetExecutionContext, frame: pd.DataFrame, **figures: object) -> pd.DataFrame:
    """Attach column-level lineage (and any figures worth plotting) to the materialization."""
    context.add_output_metadata({"dagster/column_lineage": column_lineage(context.asset_key.path[-1]), **figures})
    return frame


@summary_asset(
    "outcome_results",
    "How many PCR results of each outcome have been reported in total, and what share of all results is "
    "positive, negative or inconclusive? One row per outcome, largest first.",
)
def outcome_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    return publish(context, build_outcome_results(base))


@summary_asset(
    "state_results",
    "How many positive, negative and inconclusive tests has each jurisdiction reported over the whole "
    "series, and what is its overall positivity rate? One row per jurisdiction, by state code.",
)
def state_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    return publish(context, build_state_results(base))


@summary_asset(
    "smoothed_results",
    "What does the national testing curve look like day by day? Results per outcome for every calendar "
    "day, their 7-day trailing means and the 7-day positivity rate, for plotting trends without weekday noise.",
)
def smoothed_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    frame = build_smoothed_results(base)
    latest = frame["smoothed_positivity_rate"].dropna()
    return publish(context, frame, latest_7day_positivity_pct=float(latest.iloc[-1]) if len(latest) else None)


@summary_asset(
    "total_results",
    "Where does each jurisdiction's cumulative count stand? Its latest reporting date and the cumulative "
    "results per outcome as of that outcome's most recent row, one labelled row per jurisdiction.",
)
def total_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    return publish(context, build_total_results(base))


class RecentPositivityConfig(Config):
    top_n: int = 10
    window_days: int = 30


@summary_asset(
    "recent_positivity_results",
    "Which jurisdictions had the highest positivity recently? The top 10 over the 30 days ending on the "
    "data's latest date (the dataset is no longer updated, so the window is anchored on the data, not today).",
)
def recent_positivity_results(
    context: AssetExecutionContext, base: pd.DataFrame, config: RecentPositivityConfig
) -> pd.DataFrame:
    return publish(context, build_recent_positivity_results(base, top_n=config.top_n, window_days=config.window_days))


SUMMARY_ASSETS = [outcome_results, state_results, smoothed_results, total_results, recent_positivity_results]
