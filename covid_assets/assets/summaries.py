"""The five reporting tables analysts query (`SELECT * FROM covid_19.state_results;`).

Each asset is a thin wrapper: the arithmetic lives in `summary_frames.py` as plain pandas
functions, pinned by hand-computed tests; the table (key, description, columns, lineage) is
described by its spec in `tables.py`.
"""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, asset

from covid_assets.assets.tables import (
    BASE_ASSET_KEY,
    OUTCOME_RESULTS,
    OWNERS,
    RECENT_POSITIVITY_RESULTS,
    SMOOTHED_RESULTS,
    STATE_RESULTS,
    SPEC_BY_KEY,
    TOTAL_RESULTS,
)
from covid_assets.assets.summary_frames import (
    build_outcome_results,
    build_recent_positivity_results,
    build_smoothed_results,
    build_state_results,
    build_total_results,
)
from covid_assets.datasets.table_spec import TableSpec



def summary_asset(spec: TableSpec):
    """The shared decorator: the table `spec` describes, computed from the base table."""
    return asset(
        key=spec.asset_key,
        ins={"base": AssetIn(key=BASE_ASSET_KEY)},
        metadata=spec.definition_metadata(),
        owners=OWNERS,
        group_name="reporting",
        kinds={"pandas", "postgres"},
        description=spec.description,
    )


def publish(context: AssetExecutionContext, frame: pd.DataFrame, **figures: object) -> pd.DataFrame:
    """Attach the column-level lineage of the table's spec (and any figures worth plotting) to the materialization."""
    lineage = SPEC_BY_KEY[context.asset_key].column_lineage(BASE_ASSET_KEY)
    context.add_output_metadata({"dagster/column_lineage": lineage, **figures})
    return frame


@summary_asset(OUTCOME_RESULTS)
def outcome_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    return publish(context, build_outcome_results(base))


@summary_asset(STATE_RESULTS)
def state_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    return publish(context, build_state_results(base))


@summary_asset(SMOOTHED_RESULTS)
def smoothed_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    frame = build_smoothed_results(base)
    latest = frame["smoothed_positivity_rate"].dropna()
    return publish(context, frame, latest_7day_positivity_pct=float(latest.iloc[-1]) if len(latest) else None)


@summary_asset(TOTAL_RESULTS)
def total_results(context: AssetExecutionContext, base: pd.DataFrame) -> pd.DataFrame:
    return publish(context, build_total_results(base))


class RecentPositivityConfig(Config):
    top_n: int = 10
    window_days: int = 30


@summary_asset(RECENT_POSITIVITY_RESULTS)
def recent_positivity_results(
    context: AssetExecutionContext, base: pd.DataFrame, config: RecentPositivityConfig
) -> pd.DataFrame:
    return publish(context, build_recent_positivity_results(base, top_n=config.top_n, window_days=config.window_days))


SUMMARY_ASSETS = [outcome_results, state_results, smoothed_results, total_results, recent_positivity_results]
