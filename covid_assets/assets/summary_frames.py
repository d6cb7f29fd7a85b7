"""Summary tables derived from the base PCR testing table, as pure pandas functions.

They are kept free of Dagster and of the database so that their semantics can be pinned by
small hand-computed tests. Every function takes the base frame (dtypes as in
`tables.BASE.pandas_dtypes`, as the IO manager reads the base table) and returns a fresh
frame with a RangeIndex and the columns and dtypes of its table's spec (`tables.STATE_RESULTS.pandas_dtypes`, ...).

Rates and means are rounded to 2 decimals HALF AWAY FROM ZERO, like Postgres
`round(numeric, 2)`, and the rounding is done in exact integer arithmetic (see `_rate`), so a
value such as 1/32 = 3.125 % becomes 3.13 here as in SQL (float `.round(2)` would give 3.12).

No number is ever wrong by overflow: counts are below 10^12 (the declaration's
max_abs for them), so the
sums over a base table of fewer than 9.2 million rows fit in int64 (`_require_exact_sums`
refuses a frame for which they might not), the 7-day sums are differences of exact int64
running sums, and the rates are computed in Python integers, which do not overflow when
scaled by 10^4.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from covid_assets.assets.tables import (
    COUNT_COLUMNS,
    OUTCOMES,
    OUTCOME_RESULTS,
    RECENT_POSITIVITY_RESULTS,
    SMOOTHED_RESULTS,
    STATE_RESULTS,
    TOTAL_RESULTS,
)
from covid_assets.datasets.table_spec import TableSpec

DATE, COUNT, RATE = pd.ArrowDtype(pa.date32()), "Int64", "float64"  # of the intermediate columns


_INT64_MAX = int(np.iinfo(np.int64).max)


def _rate(num: pd.Series, den: pd.Series | int, scale: int = 100) -> pd.Series:
    """round(scale * num / den, 2) as float64, NaN where den is 0 or either side is NA.

    Integer arithmetic rounds exact .xx5 ties half away from zero, as Postgres does; binary
    floats cannot (most such ties are not representable, and numpy rounds half to even).
    The integers are Python's, as `num * 10^4` can exceed int64; a summary has at most a few
    thousand rows, so this costs about a millisecond.
    """
    den = den if isinstance(den, pd.Series) else pd.Series(den, index=num.index)
    rates = [_rounded_rate(n, d, scale * 100) for n, d in zip(num.astype(COUNT), den.astype(COUNT))]
    return pd.Series(rates, index=num.index, dtype=RATE)


def _rounded_rate(n: object, d: object, factor: int) -> float:
    """round(factor * n / d) / 100, half away from zero, exactly; NaN for NA or d = 0."""
    if n is pd.NA or d is pd.NA or d == 0:
        return np.nan
    n, d = int(n) * factor, int(d)
    q = (2 * abs(n) + abs(d)) // (2 * abs(d))
    return (q if (n < 0) == (d < 0) else -q) / 100  # int / int: the correctly rounded float


def _require_exact_sums(base: pd.DataFrame) -> None:
    """Refuse a frame whose count sums might overflow int64 (never reached by typed data under 9.2M rows)."""
    for column in COUNT_COLUMNS:
        values = base[column]
        count = int(values.count())  # NA skipped, as by min, max and the sums
        largest = max(abs(int(values.min())), abs(int(values.max()))) if count else 0
        if largest * count > _INT64_MAX:
            raise ValueError(
                f"{count:,} values of {column} up to {largest:,} in magnitude could sum beyond int64; "
                "refusing to compute summaries that might be wrong"
            )


def _typed(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Select and cast the spec's columns in order, with a fresh RangeIndex."""
    dtypes = spec.pandas_dtypes
    return frame[list(dtypes)].astype(dtypes).reset_index(drop=True)


def _latest_rows(base: pd.DataFrame) -> pd.DataFrame:
    """Each state's latest row (by date, then outcome for determinism), indexed by state."""
    ordered = base.dropna(subset=["state"]).sort_values(["state", "date", "overall_outcome"])
    return ordered.drop_duplicates("state", keep="last").set_index("state")


def _by_outcome(rows: pd.DataFrame, value: str, how: str, states: pd.Index) -> pd.DataFrame:
    """`value` aggregated per state and outcome: one Int64 column per outcome, rows `states`.

    Missing state/outcome pairs, and pairs whose values are all NA, become 0.
    """
    agg = rows.sort_values("date").groupby(["state", "overall_outcome"])[value].agg(how)
    wide = agg.unstack("overall_outcome").reindex(index=states, columns=OUTCOMES)
    return wide.fillna(0).astype(COUNT)


def build_outcome_results(base: pd.DataFrame) -> pd.DataFrame:
    """Results per outcome and their share of all results, largest first."""
    _require_exact_sums(base)
    totals = base.groupby("overall_outcome")["new_results_reported"].sum()  # NA ignored
    out = totals.rename("total_results_reported").reset_index()
    out["pct_of_results"] = _rate(out["total_results_reported"], int(totals.sum()))
    out = out.sort_values(["total_results_reported", "overall_outcome"], ascending=[False, True])
    return _typed(out, OUTCOME_RESULTS)


def build_state_results(base: pd.DataFrame) -> pd.DataFrame:
    """Results per state and outcome over the whole series, with positivity; by state.

    state_name is the one on the state's latest row, in case a jurisdiction was renamed.
    """
    _require_exact_sums(base)
    latest = _latest_rows(base)
    counts = _by_outcome(base, "new_results_reported", "sum", latest.index)
    out = pd.DataFrame({
        "state_name": latest["state_name"],
        "positive_tests": counts["Positive"],
        "negative_tests": counts["Negative"],
        "inconclusive_tests": counts["Inconclusive"],
        "total_tests": counts.sum(axis=1),
    })
    out["positivity_rate"] = _rate(out["positive_tests"], out["total_tests"])
    return _typed(out.rename_axis("state").reset_index(), STATE_RESULTS)


def build_smoothed_results(base: pd.DataFrame) -> pd.DataFrame:
    """National daily results per outcome with 7-day trailing means and positivity.

    Every calendar day from the first to the last date gets a row (zero counts when nothing
    was reported), so the rolling window is 7 calendar days, not 7 reporting days; the
    first 6 days have no full window and get NaN.
    """
    _require_exact_sums(base)
    daily = base.groupby(["date", "overall_outcome"])["new_results_reported"].sum()
    dates = base["date"].dropna()
    calendar = pd.date_range(dates.min(), dates.max()).date if len(dates) else []
    daily = (
        daily.unstack("overall_outcome")
        .reindex(index=pd.Index(pd.array(calendar, dtype=DATE), name="date"), columns=OUTCOMES)
        .fillna(0)
        .astype("int64")
    )
    running = daily.cumsum()  # exact in int64 (see _require_exact_sums); a float rolling sum is not above 2^53
    week = (running - running.shift(7, fill_value=0)).astype(COUNT)
    week.iloc[:6] = pd.NA
    out = daily.set_axis(["positive_tests", "negative_tests", "inconclusive_tests"], axis=1)
    for outcome in OUTCOMES:
        out[f"smoothed_{outcome.lower()}_tests"] = _rate(week[outcome], 7, scale=1)
    out["smoothed_positivity_rate"] = _rate(week["Positive"], week.sum(axis=1, skipna=False))
    return _typed(out.reset_index(), SMOOTHED_RESULTS)


def build_total_results(base: pd.DataFrame) -> pd.DataFrame:
    """Latest cumulative results per state and outcome, and the state's latest date.

    Each outcome's cumulative total comes from its most recent row with a non-NA total, so a
    state whose last rows lack totals still reports its last known figure.
    """
    _require_exact_sums(base)
    latest = _latest_rows(base)
    totals = _by_outcome(base, "total_results_reported", "last", latest.index)  # last skips NA
    out = pd.DataFrame({
        "state_name": latest["state_name"],
        "latest_date": latest["date"],
        "positive_total": totals["Positive"],
        "negative_total": totals["Negative"],
        "inconclusive_total": totals["Inconclusive"],
        "total_results_reported": totals.sum(axis=1),
    })
    return _typed(out.rename_axis("state").reset_index(), TOTAL_RESULTS)


def build_recent_positivity_results(
    base: pd.DataFrame, top_n: int = 10, window_days: int = 30
) -> pd.DataFrame:
    """The top_n jurisdictions by positivity over the last window_days days of the data.

    The window ends on the latest date in the data (not today), so a stale snapshot still
    ranks its own last month; states with no results in it are left out. Ordering is by the
    published (rounded) rate descending, then state code, so ranks are distinct and stable.
    """
    if top_n < 1 or window_days < 1:
        raise ValueError(f"top_n and window_days must be >= 1, got {top_n=} and {window_days=}")
    window = base.iloc[:0]
    if base["date"].notna().any():
        end = base["date"].max()
        window = base[(base["date"] > end - timedelta(days=window_days)) & (base["date"] <= end)]
    states = build_state_results(window)
    states = states[states["total_tests"] != 0]
    out = states.sort_values(["positivity_rate", "state"], ascending=[False, True]).head(top_n)
    out.insert(0, "rank", range(1, len(out) + 1))
    return _typed(out, RECENT_POSITIVITY_RESULTS)
