"""Pins the semantics of the summary frames with tiny hand-computed fixtures.

Expected values are written out literally, with the arithmetic in a comment; dtypes are
spelled out here too (not imported) so that a change to the module's dtypes is caught.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from covid_assets_tests.helpers import SNAPSHOT
from covid_assets.assets.summary_frames import (
    build_outcome_results,
    build_recent_positivity_results,
    build_smoothed_results,
    build_state_results,
    build_total_results,
)

NaN = np.nan
TEXT, DATE, COUNT, RATE = pd.StringDtype(), pd.ArrowDtype(pa.date32()), pd.Int64Dtype(), np.dtype("float64")
BASE = {
    "state": TEXT, "state_name": TEXT, "state_fips": TEXT, "fema_region": TEXT,
    "overall_outcome": TEXT, "date": DATE,
    "new_results_reported": COUNT, "total_results_reported": COUNT,
}
OUTCOME = {"overall_outcome": TEXT, "total_results_reported": COUNT, "pct_of_results": RATE}
STATE = {
    "state": TEXT, "state_name": TEXT, "positive_tests": COUNT, "negative_tests": COUNT,
    "inconclusive_tests": COUNT, "total_tests": COUNT, "positivity_rate": RATE,
}
SMOOTHED = {
    "date": DATE, "positive_tests": COUNT, "negative_tests": COUNT, "inconclusive_tests": COUNT,
    "smoothed_positive_tests": RATE, "smoothed_negative_tests": RATE,
    "smoothed_inconclusive_tests": RATE, "smoothed_positivity_rate": RATE,
}
TOTAL = {
    "state": TEXT, "state_name": TEXT, "latest_date": DATE, "positive_total": COUNT,
    "negative_total": COUNT, "inconclusive_total": COUNT, "total_results_reported": COUNT,
}
RECENT = {
    "rank": COUNT, "state": TEXT, "state_name": TEXT, "positive_tests": COUNT,
    "total_tests": COUNT, "positivity_rate": RATE,
}
NAMES = {"AA": "Alpha", "BB": "Beta", "CC": "Gamma", "DD": "Delta", "EE": "Epsilon", "FF": "Phi", "GG": "Gee"}
POS, NEG, INC = "Positive", "Negative", "Inconclusive"


def make_base(rows: list[tuple]) -> pd.DataFrame:
    """Base frame from (state, outcome, 'YYYY-MM-DD', new, total[, state_name]); None is NA."""
    records = [
        (r[0], r[5] if len(r) > 5 else NAMES[r[0]], "99", "Region 1", r[1], date.fromisoformat(r[2]), r[3], r[4])
        for r in rows
    ]
    return pd.DataFrame(records, columns=list(BASE)).astype(BASE)


def expect(data: dict, dtypes: dict) -> pd.DataFrame:
    """Expected frame with the output dtypes; dates given as ISO strings."""
    def column(values: list, dtype) -> pd.Series:
        return pd.Series([date.fromisoformat(v) for v in values] if dtype == DATE else values, dtype=dtype)

    return pd.DataFrame({col: column(data.get(col, []), dtype) for col, dtype in dtypes.items()})


def assert_frame(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Exact values, column order, dtypes and a fresh RangeIndex."""
    assert isinstance(actual.index, pd.RangeIndex) and actual.index.start == 0
    pd.testing.assert_frame_equal(actual, expected, check_exact=True)


# AA: negative revision and NA counts; BB: ends early, no Inconclusive rows;
# CC: counts cancel to 0 and Positive is all NA. Rows deliberately out of order.
SMALL = make_base([
    ("CC", POS, "2021-01-03", None, None),
    ("CC", NEG, "2021-01-03", -5, 0),
    ("CC", NEG, "2021-01-02", 5, 5),
    ("AA", POS, "2021-01-02", -2, 8),
    ("AA", POS, "2021-01-01", 10, 10),
    ("AA", NEG, "2021-01-01", 30, 30),
    ("AA", NEG, "2021-01-02", None, None),
    ("AA", INC, "2021-01-02", 2, 2),
    ("BB", POS, "2021-01-01", 1, 101),
    ("BB", NEG, "2021-01-01", 2, 202),
])


def test_outcome_results():
    # Negative 30 + NA + 2 + 5 - 5 = 32; Positive 10 - 2 + 1 + NA = 9; Inconclusive 2; all = 43
    # 32/43 = 74.4186 %, 9/43 = 20.9302 %, 2/43 = 4.6512 %
    assert_frame(build_outcome_results(SMALL), expect({
        "overall_outcome": [NEG, POS, INC],
        "total_results_reported": [32, 9, 2],
        "pct_of_results": [74.42, 20.93, 4.65],
    }, OUTCOME))


def test_outcome_results_ties_by_name_and_zero_grand_total():
    # Negative 5 and Positive 5 tie -> by name; 5/10 = 50 %
    tie = make_base([("AA", POS, "2021-01-01", 5, 5), ("AA", NEG, "2021-01-01", 5, 5), ("AA", INC, "2021-01-01", 0, 0)])
    assert_frame(build_outcome_results(tie), expect({
        "overall_outcome": [NEG, POS, INC], "total_results_reported": [5, 5, 0], "pct_of_results": [50.0, 50.0, 0.0],
    }, OUTCOME))
    # 3 + (-3) = 0: no share, no division error; only the outcomes present
    zero = make_base([("AA", POS, "2021-01-01", 3, 3), ("AA", NEG, "2021-01-01", -3, 0)])
    assert_frame(build_outcome_results(zero), expect({
        "overall_outcome": [POS, NEG], "total_results_reported": [3, -3], "pct_of_results": [NaN, NaN],
    }, OUTCOME))


def test_rounding_is_half_away_from_zero():
    # Exact .xx5 ties, rounded like Postgres round(numeric, 2), not half to even:
    # outcomes -1 and 33 of 32: -1/32 = -3.125 % -> -3.13, 33/32 = 103.125 % -> 103.13
    frame = make_base([("AA", POS, "2021-01-01", -1, 0), ("AA", NEG, "2021-01-01", 33, 33)])
    assert build_outcome_results(frame)["pct_of_results"].tolist() == [103.13, -3.13]
    # 1 positive of 1 + 31 = 32: 3.125 % -> 3.13
    frame = make_base([("AA", POS, "2021-01-01", 1, 1), ("AA", NEG, "2021-01-01", 31, 31)])
    assert build_state_results(frame)["positivity_rate"].tolist() == [3.13]


def test_large_counts_give_exact_rates_not_overflowed_ones():
    # 10^15 positive of 2 x 10^15 = 50 %; scaled by 10^4 for the rounding, 10^19 exceeds int64
    # (an int64 computation gave 3.88). Counts this large are bad rows in the typed table
    # (parsing.COUNT_LIMIT), but the summaries must never return a wrong number.
    big = make_base([("AA", POS, "2021-01-01", 10**15, 10**15), ("AA", NEG, "2021-01-01", 10**15, 10**15)])
    assert build_state_results(big)["positivity_rate"].tolist() == [50.0]
    assert build_outcome_results(big)["pct_of_results"].tolist() == [50.0, 50.0]
    # 1 of 3 x 10^15 + 1 rounds like SQL: 33.333... -> 33.33; 2/3 -> 66.67
    odd = make_base([("AA", POS, "2021-01-01", 10**15, 10**15), ("AA", NEG, "2021-01-01", 2 * 10**15, 2 * 10**15)])
    assert build_outcome_results(odd)["pct_of_results"].tolist() == [66.67, 33.33]
    week = make_base([("AA", POS, f"2021-01-0{d}", 10**15, 10**15) for d in range(1, 8)])
    assert build_smoothed_results(week)["smoothed_positivity_rate"].iloc[6] == 100.0


def test_sums_that_could_overflow_int64_are_refused_not_wrapped():
    # Ten counts of 10^18 sum to 10^19 > 2^63 - 1: int64 would wrap to a negative total.
    huge = make_base([("AA", POS, f"2021-01-{d:02}", 10**18, 10**18) for d in range(1, 11)])
    for build in (build_outcome_results, build_state_results, build_smoothed_results, build_total_results):
        with pytest.raises(ValueError, match=r"10 values of new_results_reported up to 1,000,000,000,000,000,000 .* beyond int64"):
            build(huge)


def test_state_results():
    # AA: pos 10 - 2 = 8, neg 30 + NA = 30, inc 2, total 40 -> 8/40 = 20 %
    # BB: pos 1, neg 2, no Inconclusive rows -> 0, total 3 -> 1/3 = 33.333 %
    # CC: pos all NA -> 0, neg 5 - 5 = 0, total 0 -> positivity NaN
    assert_frame(build_state_results(SMALL), expect({
        "state": ["AA", "BB", "CC"],
        "state_name": ["Alpha", "Beta", "Gamma"],
        "positive_tests": [8, 1, 0],
        "negative_tests": [30, 2, 0],
        "inconclusive_tests": [2, 0, 0],
        "total_tests": [40, 3, 0],
        "positivity_rate": [20.0, 33.33, NaN],
    }, STATE))


def test_state_name_comes_from_the_latest_row():
    renamed = make_base([
        ("AA", POS, "2021-01-02", 1, 2, "New name"),
        ("AA", POS, "2021-01-01", 1, 1, "Old name"),
    ])
    assert build_state_results(renamed)["state_name"].tolist() == ["New name"]
    assert build_total_results(renamed)["state_name"].tolist() == ["New name"]


def test_total_results():
    # AA: pos latest total 8 (01-02); neg latest 01-02 total is NA -> 01-01's 30; inc 2 -> 40
    # BB: ends 01-01; 101 + 202 + no Inconclusive 0 = 303
    # CC: Positive has no non-NA total -> 0; Negative latest total 0 (01-03) -> 0
    assert_frame(build_total_results(SMALL), expect({
        "state": ["AA", "BB", "CC"],
        "state_name": ["Alpha", "Beta", "Gamma"],
        "latest_date": ["2021-01-02", "2021-01-01", "2021-01-03"],
        "positive_total": [8, 101, 0],
        "negative_total": [30, 202, 0],
        "inconclusive_total": [2, 0, 0],
        "total_results_reported": [40, 303, 0],
    }, TOTAL))


def test_total_results_latest_date_counts_rows_without_totals():
    # The 01-05 row has no totals but still moves latest_date; the total comes from 01-03.
    frame = make_base([("AA", POS, "2021-01-03", 4, 7), ("AA", POS, "2021-01-05", 1, None)])
    assert_frame(build_total_results(frame), expect({
        "state": ["AA"], "state_name": ["Alpha"], "latest_date": ["2021-01-05"],
        "positive_total": [7], "negative_total": [0], "inconclusive_total": [0], "total_results_reported": [7],
    }, TOTAL))


def test_smoothed_results():
    # Two states summed nationally; no rows at all on 01-04, 01-05 and 01-09 (gaps -> zeros).
    frame = make_base([
        ("AA", POS, "2021-01-01", 1, 1), ("AA", NEG, "2021-01-01", 9, 9),
        ("BB", POS, "2021-01-01", 1, 1), ("BB", NEG, "2021-01-01", 1, 1),
        ("AA", POS, "2021-01-02", 3, 4), ("AA", NEG, "2021-01-02", 7, 16), ("AA", INC, "2021-01-02", 1, 1),
        ("AA", POS, "2021-01-03", 0, 4), ("AA", NEG, "2021-01-03", 10, 26), ("BB", NEG, "2021-01-03", None, None),
        ("AA", POS, "2021-01-06", 5, 9), ("AA", NEG, "2021-01-06", 5, 31),
        ("AA", POS, "2021-01-07", 1, 10), ("AA", NEG, "2021-01-07", 6, 37), ("AA", INC, "2021-01-07", 1, 2),
        ("AA", POS, "2021-01-08", -1, 9), ("AA", NEG, "2021-01-08", 4, 41),
        ("BB", POS, "2021-01-10", 2, 3), ("BB", NEG, "2021-01-10", 2, 3),
    ])
    # 7-day sums (pos, neg, inc), all windows spanning the 01-04/05 gap:
    # ..07: 2+3+0+0+0+5+1=11, 10+7+10+0+0+5+6=38, 0+1+0+0+0+0+1=2 -> 11/7, 38/7, 2/7; 11/51=21.5686 %
    # ..08: 3+0+0+0+5+1-1=8,  7+10+0+0+5+6+4=32,  1+0+0+0+0+1+0=2 -> 8/7, 32/7, 2/7;  8/42=19.0476 %
    # ..09: 0+0+0+5+1-1+0=5,  10+0+0+5+6+4+0=25,  0+0+0+0+1+0+0=1 -> 5/7, 25/7, 1/7;  5/31=16.1290 %
    # ..10: 0+0+5+1-1+0+2=7,  0+0+5+6+4+0+2=17,   0+0+0+1+0+0+0=1 -> 7/7, 17/7, 1/7;  7/25=28 %
    assert_frame(build_smoothed_results(frame), expect({
        "date": [f"2021-01-{d:02}" for d in range(1, 11)],
        "positive_tests": [2, 3, 0, 0, 0, 5, 1, -1, 0, 2],
        "negative_tests": [10, 7, 10, 0, 0, 5, 6, 4, 0, 2],
        "inconclusive_tests": [0, 1, 0, 0, 0, 0, 1, 0, 0, 0],
        "smoothed_positive_tests": [NaN] * 6 + [1.57, 1.14, 0.71, 1.0],
        "smoothed_negative_tests": [NaN] * 6 + [5.43, 4.57, 3.57, 2.43],
        "smoothed_inconclusive_tests": [NaN] * 6 + [0.29, 0.29, 0.14, 0.14],
        "smoothed_positivity_rate": [NaN] * 6 + [21.57, 19.05, 16.13, 28.0],
    }, SMOOTHED))


def test_smoothed_positivity_is_nan_when_the_week_nets_to_zero():
    # 01-01 pos 1, 01-07 pos -1, nothing else: 7-day sums 0, 0, 0 -> means 0, positivity NaN
    frame = make_base([("AA", POS, "2021-01-01", 1, 1), ("AA", POS, "2021-01-07", -1, 0)])
    out = build_smoothed_results(frame)
    assert len(out) == 7
    assert out.iloc[6][["smoothed_positive_tests", "smoothed_negative_tests"]].tolist() == [0.0, 0.0]
    assert np.isnan(out["smoothed_positivity_rate"]).all()


# Latest date overall 01-10; a 3-day window is 01-08..01-10.
RECENT_BASE = make_base([
    ("AA", POS, "2021-01-07", 100, 100),  # the day before the window: must not count
    ("AA", POS, "2021-01-08", 1, 101), ("AA", NEG, "2021-01-08", 3, 3),  # 1/4 = 25 %
    ("BB", POS, "2021-01-10", 1, 1), ("BB", NEG, "2021-01-10", 1, 1), ("BB", INC, "2021-01-10", 2, 2),  # 1/4 = 25 %
    ("CC", POS, "2021-01-06", 9, 9), ("CC", NEG, "2021-01-06", 1, 1),  # data ends before the window
    ("DD", POS, "2021-01-09", 1, 1), ("DD", NEG, "2021-01-09", 1, 1),  # 1/2 = 50 %
    ("EE", POS, "2021-01-10", 0, 0), ("EE", NEG, "2021-01-10", 0, 0),  # rows, but no results
    ("FF", POS, "2021-01-09", 1, 1), ("FF", NEG, "2021-01-09", 9, 9),  # 1/10 = 10 %
    ("GG", POS, "2021-01-08", 1, 1), ("GG", NEG, "2021-01-08", 3, 3),
    ("GG", POS, "2021-01-10", None, None), ("GG", NEG, "2021-01-10", 4, 7),  # 1/(1+3+4) = 12.5 %
])


def test_recent_positivity_results():
    # AA and BB tie at 25 % -> state code order; CC (ended early) and EE (total 0) left out
    assert_frame(build_recent_positivity_results(RECENT_BASE, window_days=3), expect({
        "rank": [1, 2, 3, 4, 5],
        "state": ["DD", "AA", "BB", "GG", "FF"],
        "state_name": ["Delta", "Alpha", "Beta", "Gee", "Phi"],
        "positive_tests": [1, 1, 1, 1, 1],
        "total_tests": [2, 4, 4, 8, 10],
        "positivity_rate": [50.0, 25.0, 25.0, 12.5, 10.0],
    }, RECENT))


def test_recent_positivity_top_n_and_window_edges():
    top2 = build_recent_positivity_results(RECENT_BASE, top_n=2, window_days=3)
    assert top2["state"].tolist() == ["DD", "AA"] and top2["rank"].tolist() == [1, 2]
    # 1-day window = 01-10 only: BB 1/4 = 25 %; EE has rows but total 0; GG 0/4 = 0 %
    one_day = build_recent_positivity_results(RECENT_BASE, window_days=1)
    assert one_day["state"].tolist() == ["BB", "GG"] and one_day["positivity_rate"].tolist() == [25.0, 0.0]
    # 4-day window = 01-07..01-10: AA now (100 + 1)/(100 + 1 + 3) = 97.115 %
    four_days = build_recent_positivity_results(RECENT_BASE, top_n=1, window_days=4)
    assert four_days["state"].tolist() == ["AA"] and four_days["positivity_rate"].tolist() == [97.12]


@pytest.mark.parametrize("kwargs", [{"top_n": 0}, {"window_days": 0}, {"top_n": -3}])
def test_recent_positivity_validates_arguments(kwargs):
    with pytest.raises(ValueError, match="must be >= 1"):
        build_recent_positivity_results(RECENT_BASE, **kwargs)


@pytest.mark.parametrize("build, dtypes", [
    (build_outcome_results, OUTCOME),
    (build_state_results, STATE),
    (build_smoothed_results, SMOOTHED),
    (build_total_results, TOTAL),
    (build_recent_positivity_results, RECENT),
])
def test_empty_input_gives_empty_typed_frame(build, dtypes):
    assert_frame(build(make_base([])), expect({}, dtypes))


@pytest.fixture(scope="module")
def snapshot() -> pd.DataFrame:
    raw = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False, na_values=[""])
    raw["date"] = pd.to_datetime(raw["date"]).dt.date
    return raw.astype(BASE)


def test_real_snapshot_invariants(snapshot):
    outcomes = build_outcome_results(snapshot)
    states = build_state_results(snapshot)
    smoothed = build_smoothed_results(snapshot)
    totals = build_total_results(snapshot)
    recent = build_recent_positivity_results(snapshot)

    grand = int(snapshot["new_results_reported"].sum())
    assert int(states["total_tests"].sum()) == int(outcomes["total_results_reported"].sum()) == grand
    assert outcomes["overall_outcome"].tolist() == [NEG, POS, INC]
    assert abs(outcomes["pct_of_results"].sum() - 100) < 0.02
    assert states["state"].is_monotonic_increasing and states["state"].is_unique
    assert int(smoothed[["positive_tests", "negative_tests", "inconclusive_tests"]].sum().sum()) == grand

    first, last = snapshot["date"].min(), snapshot["date"].max()
    assert len(smoothed) == (last - first).days + 1
    assert smoothed["date"].iloc[0] == first and smoothed["date"].iloc[-1] == last
    assert smoothed["smoothed_positive_tests"].isna().tolist()[:7] == [True] * 6 + [False]

    assert len(totals) == 56 and totals["state"].is_unique
    assert totals["latest_date"].max() == last and totals["latest_date"].min() < last  # ragged ends

    assert len(recent) == 10 and recent["rank"].tolist() == list(range(1, 11))
    assert (recent["positivity_rate"].diff().dropna() <= 0).all()
    for frame, dtypes in [(outcomes, OUTCOME), (states, STATE), (smoothed, SMOOTHED), (totals, TOTAL), (recent, RECENT)]:
        assert frame.dtypes.to_dict() == dtypes
