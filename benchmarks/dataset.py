"""A synthetic, full-size stand-in for the HHS PCR testing time series (healthdata.gov `j8mb-icvb`).

Same shape and quirks as the real dataset, deterministic for a given (rows, seed):

* 56 jurisdictions: the 50 states, DC and the territories (GU, MH, MP, PR, VI) with their real
  codes, names, 2-digit FIPS codes with leading zeros ("01") and FEMA regions ("Region 4");
* 3 outcomes (Positive, Negative, Inconclusive) per jurisdiction and day;
* days from 2020-03-01; each jurisdiction starts on its real first reporting day (from the
  bundled 2021-02-28 snapshot), Inconclusive series often start later, and series end on ragged
  dates (a few days before the last date; some territories months before);
* plausible daily counts (testing ramp-up and decline, positivity waves, weekday dips) whose
  cumulative totals are exactly the running sums of the daily counts, including a few negative
  daily counts (revisions);
* a few blank numbers: Socrata omits a field whose value is null, so those rows simply lack
  `new_results_reported` or `total_results_reported`;
* every value is a string, dates are Socrata floating timestamps (`2020-03-01T00:00:00.000`);
* rows in Socrata `:id` order: by jurisdiction, then date, then outcome.

`generate()` returns the raw frame (pandas "string" columns, <NA> where a field is omitted);
`iter_rows()` turns it into the row objects the API serves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd

DEFAULT_ROWS = 243_000
DEFAULT_SEED = 20_240_301
FIRST_DAY = dt.date(2020, 3, 1)
OUTCOMES = ("Inconclusive", "Negative", "Positive")  # alphabetical, as the :id order has them
COLUMNS = (
    "state", "state_name", "state_fips", "fema_region",
    "overall_outcome", "date", "new_results_reported", "total_results_reported",
)
NEGATIVE_COUNTS = 25  # daily counts set negative (revisions)
BLANK_NEW = 12        # rows without new_results_reported
BLANK_TOTAL = 12      # rows without total_results_reported

# code, name, FIPS, FEMA region, population (millions, 2020), first reporting day (days after
# 2020-03-01, from the bundled snapshot), extra end lag in days (territories that stopped early).
JURISDICTIONS: tuple[tuple[str, str, str, int, float, int, int], ...] = (
    ("AK", "Alaska", "02", 10, 0.73, 0, 0),
    ("AL", "Alabama", "01", 4, 5.02, 5, 0),
    ("AR", "Arkansas", "05", 6, 3.01, 3, 0),
    ("AZ", "Arizona", "04", 9, 7.15, 1, 0),
    ("CA", "California", "06", 9, 39.5, 0, 0),
    ("CO", "Colorado", "08", 8, 5.77, 8, 0),
    ("CT", "Connecticut", "09", 1, 3.61, 0, 0),
    ("DC", "District of Columbia", "11", 3, 0.69, 5, 0),
    ("DE", "Delaware", "10", 3, 0.99, 1, 0),
    ("FL", "Florida", "12", 4, 21.5, 0, 0),
    ("GA", "Georgia", "13", 4, 10.7, 0, 0),
    ("GU", "Guam", "66", 9, 0.17, 11, 0),
    ("HI", "Hawaii", "15", 9, 1.46, 1, 0),
    ("IA", "Iowa", "19", 7, 3.19, 6, 0),
    ("ID", "Idaho", "16", 10, 1.84, 1, 0),
    ("IL", "Illinois", "17", 5, 12.8, 1, 0),
    ("IN", "Indiana", "18", 5, 6.79, 1, 0),
    ("KS", "Kansas", "20", 7, 2.94, 2, 0),
    ("KY", "Kentucky", "21", 4, 4.51, 1, 0),
    ("LA", "Louisiana", "22", 6, 4.66, 2, 0),
    ("MA", "Massachusetts", "25", 1, 7.03, 2, 0),
    ("MD", "Maryland", "24", 3, 6.18, 8, 0),
    ("ME", "Maine", "23", 1, 1.36, 8, 0),
    ("MH", "Marshall Islands", "68", 9, 0.06, 67, 40),
    ("MI", "Michigan", "26", 5, 10.1, 3, 0),
    ("MN", "Minnesota", "27", 5, 5.71, 12, 0),
    ("MO", "Missouri", "29", 7, 6.15, 1, 0),
    ("MP", "Northern Mariana Islands", "69", 9, 0.05, 34, 28),
    ("MS", "Mississippi", "28", 4, 2.96, 1, 0),
    ("MT", "Montana", "30", 8, 1.08, 8, 0),
    ("NC", "North Carolina", "37", 4, 10.4, 1, 0),
    ("ND", "North Dakota", "38", 8, 0.78, 6, 0),
    ("NE", "Nebraska", "31", 7, 1.96, 1, 0),
    ("NH", "New Hampshire", "33", 1, 1.38, 2, 0),
    ("NJ", "New Jersey", "34", 2, 9.29, 1, 0),
    ("NM", "New Mexico", "35", 6, 2.12, 3, 0),
    ("NV", "Nevada", "32", 9, 3.10, 1, 0),
    ("NY", "New York", "36", 2, 20.2, 0, 0),
    ("OH", "Ohio", "39", 5, 11.8, 3, 0),
    ("OK", "Oklahoma", "40", 6, 3.96, 5, 0),
    ("OR", "Oregon", "41", 10, 4.24, 0, 0),
    ("PA", "Pennsylvania", "42", 3, 13.0, 1, 0),
    ("PR", "Puerto Rico", "72", 2, 3.29, 0, 0),
    ("RI", "Rhode Island", "44", 1, 1.10, 11, 0),
    ("SC", "South Carolina", "45", 4, 5.12, 0, 0),
    ("SD", "South Dakota", "46", 8, 0.89, 15, 0),
    ("TN", "Tennessee", "47", 4, 6.91, 2, 0),
    ("TX", "Texas", "48", 6, 29.1, 1, 0),
    ("UT", "Utah", "49", 8, 3.27, 2, 0),
    ("VA", "Virginia", "51", 3, 8.63, 2, 0),
    ("VI", "U.S. Virgin Islands", "78", 2, 0.09, 47, 35),
    ("VT", "Vermont", "50", 1, 0.64, 14, 0),
    ("WA", "Washington", "53", 10, 7.71, 0, 0),
    ("WI", "Wisconsin", "55", 5, 5.89, 1, 0),
    ("WV", "West Virginia", "54", 3, 1.79, 8, 0),
    ("WY", "Wyoming", "56", 8, 0.58, 23, 0),
)
assert len(JURISDICTIONS) == 56


def _series_bounds(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per series (jurisdiction x outcome, in :id order): first day and end lag in days."""
    starts, lags = [], []
    for _code, _name, _fips, _region, _pop, first_day, extra_lag in JURISDICTIONS:
        state_lag = int(rng.integers(0, 7)) + extra_lag  # ragged end dates per state
        for outcome in OUTCOMES:
            delay = int(rng.integers(0, 15)) if outcome == "Inconclusive" else int(rng.integers(0, 3))
            starts.append(first_day + delay)
            lags.append(state_lag)
    return np.array(starts), np.array(lags)


def _calendar_days(rows: int, starts: np.ndarray, lags: np.ndarray) -> int:
    """The smallest calendar length whose series hold at least `rows` rows."""
    days = 1
    while np.maximum(0, days - starts - lags).sum() < rows:
        days += max(1, (rows - int(np.maximum(0, days - starts - lags).sum())) // len(starts))
    return days


def _curves(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tests per million per day and positivity for days `t` of one jurisdiction."""
    shift = rng.normal(0, 10)
    scale = rng.uniform(0.6, 1.4)
    ramp = 3_000 / (1 + np.exp(-(t - 120) / 30))
    decline = 0.1 + 0.9 / (1 + np.exp((t - 800) / 90))
    tests = ramp * decline * scale
    waves = ((45, 20, 0.15), (140, 25, 0.08), (300, 35, 0.10), (540, 25, 0.08), (680, 20, 0.20), (900, 40, 0.06))
    positivity = 0.05 + sum(a * rng.uniform(0.5, 1.5) * np.exp(-(((t - c - shift) / w) ** 2)) for c, w, a in waves)
    return tests, np.clip(positivity, 0.01, 0.5)


WEEKDAY_FACTOR = np.array([1.05, 1.1, 1.1, 1.05, 1.0, 0.7, 0.6])  # Monday .. Sunday


def generate(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Exactly `rows` rows of raw data (all "string"; <NA> = field omitted), in :id order."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    starts, lags = _series_bounds(rng)
    days = _calendar_days(rows, starts, lags)
    ends = days - lags  # exclusive
    # Trim the surplus rows off the ends of randomly chosen series (raggeder end dates).
    lengths = np.maximum(0, ends - starts)
    surplus = int(lengths.sum()) - rows
    candidates = np.flatnonzero(lengths > 1)
    ends[rng.choice(candidates, size=surplus, replace=False)] -= 1

    n_outcomes = len(OUTCOMES)
    pieces: dict[str, list[np.ndarray]] = {"jur": [], "outcome": [], "day": [], "new": []}
    for j, (_code, _name, _fips, _region, population, _first, _lag) in enumerate(JURISDICTIONS):
        t = np.arange(days)
        tests_per_m, positivity = _curves(t, rng)
        weekday = WEEKDAY_FACTOR[(t + FIRST_DAY.weekday()) % 7]
        tests = population * tests_per_m * weekday * rng.lognormal(0, 0.15, days)
        expected = {
            "Positive": tests * positivity,
            "Negative": tests * (1 - positivity) * 0.99,
            "Inconclusive": tests * 0.004 * rng.lognormal(0, 0.5, days),
        }
        for k, outcome in enumerate(OUTCOMES):
            series = j * n_outcomes + k
            span = np.arange(starts[series], ends[series])
            if len(span) == 0:
                continue
            pieces["jur"].append(np.full(len(span), j))
            pieces["outcome"].append(np.full(len(span), k))
            pieces["day"].append(span)
            pieces["new"].append(rng.poisson(expected[outcome][span]))
    jur = np.concatenate(pieces["jur"])
    outcome = np.concatenate(pieces["outcome"])
    day = np.concatenate(pieces["day"])
    new = np.concatenate(pieces["new"]).astype(np.int64)
    assert len(jur) == rows, (len(jur), rows)

    # Socrata :id order: jurisdiction, date, outcome.
    order = np.lexsort((outcome, day, jur))
    series_id = jur * n_outcomes + outcome
    first_of_series = np.r_[True, series_id[1:] != series_id[:-1]]  # in series order (before sorting)
    # A few revisions: negative daily counts (never a series' first row).
    revisable = np.flatnonzero(~first_of_series)
    negative_at = rng.choice(revisable, size=min(NEGATIVE_COUNTS, len(revisable)), replace=False)
    new[negative_at] = -rng.integers(1, 10, size=len(negative_at))
    # Cumulative totals: running sums per series (exact, including the negative revisions).
    cumulative = np.cumsum(new)
    series_start = np.flatnonzero(first_of_series)
    offsets = np.repeat(cumulative[series_start] - new[series_start], np.diff(np.r_[series_start, rows]))
    total = cumulative - offsets

    jur, outcome, day, new, total = jur[order], outcome[order], day[order], new[order], total[order]
    dates = np.array([(FIRST_DAY + dt.timedelta(days=int(d))).isoformat() + "T00:00:00.000" for d in range(days)], dtype=object)
    table = np.array([row[:4] for row in JURISDICTIONS], dtype=object)
    frame = pd.DataFrame(
        {
            "state": table[jur, 0],
            "state_name": table[jur, 1],
            "state_fips": table[jur, 2],
            "fema_region": np.array([f"Region {r}" for r in table[:, 3]], dtype=object)[jur],
            "overall_outcome": np.array(OUTCOMES, dtype=object)[outcome],
            "date": dates[day],
            "new_results_reported": new.astype(str).astype(object),
            "total_results_reported": total.astype(str).astype(object),
        },
        columns=list(COLUMNS),
    ).astype(pd.StringDtype())
    blank_rows = rng.choice(rows, size=min(BLANK_NEW + BLANK_TOTAL, rows), replace=False)
    frame.loc[blank_rows[:BLANK_NEW], "new_results_reported"] = pd.NA
    frame.loc[blank_rows[BLANK_NEW:], "total_results_reported"] = pd.NA
    return frame


def iter_rows(frame: pd.DataFrame) -> Iterator[dict[str, str]]:
    """The row objects Socrata serves: string values, a null field left out."""
    names = list(frame.columns)
    columns = [frame[name].astype(object).where(frame[name].notna(), None).tolist() for name in names]
    for values in zip(*columns):
        yield {name: value for name, value in zip(names, values) if value is not None}


def describe(frame: pd.DataFrame) -> str:
    """One line about a generated frame, for the benchmark's header."""
    dates = frame["date"].str.slice(0, 10)
    return (
        f"{len(frame):,} rows, {frame['state'].nunique()} jurisdictions, {frame['overall_outcome'].nunique()} outcomes, "
        f"{dates.min()} .. {dates.max()} ({dates.nunique()} days)"
    )


if __name__ == "__main__":
    import sys
    import time

    started = time.perf_counter()
    generated = generate(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROWS)
    print(describe(generated), f"in {time.perf_counter() - started:.2f}s")
    print(generated.head(6).to_string())


def typed_base(raw: pd.DataFrame) -> pd.DataFrame:
    """The base table of a generated delivery as a frame (the summaries' and the IO manager's input):
    the generator writes clean values, so typing is a cast; the warehouse types in SQL (datasets/load.py)."""
    from covid_assets.assets.tables import BASE, PRIMARY_KEY

    text = raw[BASE.column_names].apply(lambda column: column.str.strip()).replace("", None)
    frame = text.assign(
        date=pd.to_datetime(text["date"].str.slice(0, 10).str.replace("/", "-"), format="%Y-%m-%d").dt.date,
        state_fips=text["state_fips"].str.zfill(2),
    )
    frame = frame.drop_duplicates(PRIMARY_KEY, keep="last").sort_values(PRIMARY_KEY, ignore_index=True)
    return frame.astype(BASE.pandas_dtypes)
