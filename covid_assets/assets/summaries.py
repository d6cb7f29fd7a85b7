"""The five reporting tables analysts query (`SELECT * FROM covid_19.state_results;`).

Five assets computed in one step from one read of the base table: each summary needs all of its
243k rows, and reading them through the IO manager once instead of five times saves 0.7 s of a
run. The step is subsettable, so any one summary can still be materialized on its own. The
arithmetic lives in `summary_frames.py` as plain pandas functions, pinned by hand-computed tests;
each table (key, description, columns, lineage) is described by its spec in `tables.py`.
"""

from collections.abc import Callable, Iterator

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, Output, multi_asset

from covid_assets.assets.summary_frames import (
    build_outcome_results,
    build_recent_positivity_results,
    build_smoothed_results,
    build_state_results,
    build_total_results,
)
from covid_assets.assets.tables import (
    BASE_ASSET_KEY,
    OUTCOME_RESULTS,
    OWNERS,
    RECENT_POSITIVITY_RESULTS,
    SMOOTHED_RESULTS,
    STATE_RESULTS,
    SUMMARIES,
    TOTAL_RESULTS,
)
from covid_assets.datasets.table_spec import TableSpec


class SummaryConfig(Config):
    """Knobs of covid_19.recent_positivity_results."""

    top_n: int = 10
    window_days: int = 30


Build = Callable[[pd.DataFrame, SummaryConfig], pd.DataFrame]

BUILDERS: dict[str, Build] = {
    OUTCOME_RESULTS.name: lambda base, _: build_outcome_results(base),
    STATE_RESULTS.name: lambda base, _: build_state_results(base),
    SMOOTHED_RESULTS.name: lambda base, _: build_smoothed_results(base),
    TOTAL_RESULTS.name: lambda base, _: build_total_results(base),
    RECENT_POSITIVITY_RESULTS.name: lambda base, config: build_recent_positivity_results(
        base, top_n=config.top_n, window_days=config.window_days
    ),
}


def _out(spec: TableSpec) -> AssetOut:
    return AssetOut(
        key=spec.asset_key,
        metadata=spec.definition_metadata(),
        owners=OWNERS,
        group_name="reporting",
        kinds={"pandas", "postgres"},
        description=spec.description,
        is_required=False,
    )


def figures(spec: TableSpec, frame: pd.DataFrame) -> dict[str, object]:
    """Numbers worth plotting across materializations."""
    if spec is not SMOOTHED_RESULTS:
        return {}
    latest = frame["smoothed_positivity_rate"].dropna()
    return {"latest_7day_positivity_pct": float(latest.iloc[-1]) if len(latest) else None}


@multi_asset(
    name="reporting_summaries",
    outs={spec.name: _out(spec) for spec in SUMMARIES},
    ins={"base": AssetIn(key=BASE_ASSET_KEY)},
    can_subset=True,
)
def reporting_summaries(context: AssetExecutionContext, base: pd.DataFrame, config: SummaryConfig) -> Iterator[Output]:
    """The selected summaries, each with the column-level lineage of its spec."""
    for spec in SUMMARIES:
        if spec.asset_key not in context.selected_asset_keys:
            continue
        frame = BUILDERS[spec.name](base, config)
        metadata = {"dagster/column_lineage": spec.column_lineage(BASE_ASSET_KEY), **figures(spec, frame)}
        yield Output(frame, output_name=spec.name, metadata=metadata)


SUMMARY_ASSETS = [reporting_summaries]
