"""The five reporting tables analysts query (`SELECT * FROM covid_19.state_results;`).

Each asset is a thin wrapper: the arithmetic lives in `summary_frames.py` as plain pandas
functions, pinned by hand-computed tests.
"""

import pandas as pd
from dagster import AssetIn, AssetKey, Config, asset

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
        metadata={"primary_key": SUMMARY_PRIMARY_KEYS[name]},
        group_name="reporting",
        kinds={"pandas", "postgres"},
        description=description,
    )


@summary_asset(
    "outcome_results",
    "All PCR results ever reported, by outcome (Positive / Negative / Inconclusive), with each outcome's share in percent.",
)
def outcome_results(base: pd.DataFrame) -> pd.DataFrame:
    return build_outcome_results(base)


@summary_asset(
    "state_results",
    "Per jurisdiction: positive, negative, inconclusive and total tests over the whole series, and the positivity rate in percent.",
)
def state_results(base: pd.DataFrame) -> pd.DataFrame:
    return build_state_results(base)


@summary_asset(
    "smoothed_results",
    "The national daily curve: results per outcome for every calendar day, their 7-day trailing means and the 7-day positivity rate.",
)
def smoothed_results(base: pd.DataFrame) -> pd.DataFrame:
    return build_smoothed_results(base)


@summary_asset(
    "total_results",
    "Per jurisdiction: its latest reporting date and the cumulative results reported per outcome as of that outcome's latest row.",
)
def total_results(base: pd.DataFrame) -> pd.DataFrame:
    return build_total_results(base)


class RecentPositivityConfig(Config):
    top_n: int = 10
    window_days: int = 30


@summary_asset(
    "recent_positivity_results",
    "The jurisdictions with the highest positivity over the last 30 days of the data (anchored on the data's latest date, not today), ranked.",
)
def recent_positivity_results(base: pd.DataFrame, config: RecentPositivityConfig) -> pd.DataFrame:
    return build_recent_positivity_results(base, top_n=config.top_n, window_days=config.window_days)


SUMMARY_ASSETS = [outcome_results, state_results, smoothed_results, total_results, recent_positivity_results]
