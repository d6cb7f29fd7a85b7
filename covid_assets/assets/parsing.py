"""Typing rules for the base table: the raw strings typed, checked and de-duplicated.

Rows that cannot be typed fail the run instead of vanishing: a full refresh that quietly
dropped rows would replace good history with a smaller table.

Counts must be whole numbers below 10^12 in absolute value (`COUNT_LIMIT`; leading zeros
aside, at most 12 digits). The largest real cumulative count is about 10^9, so a larger one is
a broken value, and the bound keeps the summaries exact in int64: a sum over n rows stays
below n x 10^12, which fits while the table has fewer than 9.2 million rows (38 times its size
in 2024; `summary_frames` refuses a larger table rather than overflow), and the rates are
computed in Python integers (`summary_frames._rate`), so scaling them by 10^4 cannot overflow.
"""

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from covid_assets.assets.tables import BASE, PRIMARY_KEY
from covid_assets.datasets.refusals import InvalidRowsError

OUTCOMES = ("Positive", "Negative", "Inconclusive")
# The base table's columns by type (its spec's order), all read from the raw columns of the same names.
TEXT_COLUMNS = BASE.names_of_type("TEXT")
COUNT_COLUMNS = BASE.names_of_type("BIGINT")
BASE_COLUMNS = BASE.column_names
DATE_DTYPE = pd.ArrowDtype(pa.date32())
MAX_REPORTED_BAD_ROWS = 5
COUNT_DIGITS = 12
COUNT_LIMIT = 10**COUNT_DIGITS  # |count| < COUNT_LIMIT, see the module docstring
# Census FIPS codes by USPS code: fills a missing state_fips (the code is implied by the state).
STATE_FIPS = dict(
    pair.split(":")
    for pair in (
        "AL:01 AK:02 AZ:04 AR:05 CA:06 CO:08 CT:09 DE:10 DC:11 FL:12 GA:13 HI:15 ID:16 IL:17 IN:18 IA:19 KS:20 "
        "KY:21 LA:22 ME:23 MD:24 MA:25 MI:26 MN:27 MS:28 MO:29 MT:30 NE:31 NV:32 NH:33 NJ:34 NM:35 NY:36 NC:37 "
        "ND:38 OH:39 OK:40 OR:41 PA:42 RI:44 SC:45 SD:46 TN:47 TX:48 UT:49 VT:50 VA:51 WA:53 WV:54 WI:55 WY:56 "
        "AS:60 FM:64 GU:66 MH:68 MP:69 PW:70 PR:72 UM:74 VI:78"
    ).split()
)


@dataclass(frozen=True)
class TypedRows:
    frame: pd.DataFrame
    duplicates_dropped: int


def type_test_results(raw: pd.DataFrame) -> TypedRows:
    """Type the raw strings; fail on any row that cannot be typed; keep the last of duplicate keys."""
    text = {column: _clean_text(raw[column]) for column in BASE_COLUMNS}
    typed = pd.DataFrame(
        {
            **{column: text[column] for column in TEXT_COLUMNS},
            "state_fips": _repair_fips(text["state_fips"], text["state"]),
            "date": _parse_dates(text["date"]),
            **{column: _parse_counts(text[column]) for column in COUNT_COLUMNS},
        }
    )
    _raise_on_invalid_rows(raw, typed, text)
    deduplicated = typed.drop_duplicates(PRIMARY_KEY, keep="last")
    frame = deduplicated.sort_values(PRIMARY_KEY, ignore_index=True)
    return TypedRows(frame=frame, duplicates_dropped=len(typed) - len(deduplicated))


def _clean_text(values: pd.Series) -> pd.Series:
    stripped = values.astype("string").str.strip()
    return stripped.mask(stripped == "")


def _repair_fips(fips: pd.Series, state: pd.Series) -> pd.Series:
    """Restore the leading zero CSV tools drop ("1" -> "01"); fill a missing code from the state."""
    return fips.str.zfill(2).fillna(state.map(STATE_FIPS).astype("string"))


def _parse_dates(text: pd.Series) -> pd.Series:
    """Accept Socrata floating timestamps (2020-03-01T00:00:00.000) and both CSV layouts (ISO, YYYY/MM/DD)."""
    well_formed = text.str.fullmatch(r"\d{4}[-/]\d{2}[-/]\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?)?").fillna(False)
    day = text.where(well_formed).str.slice(0, 10).str.replace("/", "-", regex=False)
    return pd.to_datetime(day, format="%Y-%m-%d", errors="coerce").astype(DATE_DTYPE)


def _parse_counts(text: pd.Series) -> pd.Series:
    """Whole numbers below COUNT_LIMIT, possibly negative; blank means NULL; anything else is left NA for the check."""
    whole = text.str.fullmatch(rf"-?0*\d{{1,{COUNT_DIGITS}}}").fillna(False)
    return text.where(whole).astype("Int64")


def _count_problems(column: str, text: pd.Series, typed: pd.Series) -> dict[str, pd.Series]:
    """A count given but not typed is out of range when it is a whole number, else non-numeric.

    Only the rows that failed are matched again, so good data costs nothing here.
    """
    unparsed = text.notna() & typed.isna()
    too_large = pd.Series(False, index=text.index)
    if unparsed.any():
        too_large = unparsed & text.where(unparsed).str.fullmatch(r"-?\d+").fillna(False)
    return {f"non-numeric {column}": unparsed & ~too_large, f"{column} out of range (|n| >= 10^{COUNT_DIGITS})": too_large}


def _problems(typed: pd.DataFrame, text: dict[str, pd.Series]) -> dict[str, pd.Series]:
    """One boolean mask per kind of bad row, keyed by a message naming the problem.

    `text` holds the cleaned source values: a blank count is NULL, a count that was given but
    did not parse is an error.
    """
    given = {column: text[column].notna() for column in ["date", *COUNT_COLUMNS]}
    return {
        "missing state": typed["state"].isna(),
        "state is not a 2-letter code": typed["state"].notna() & ~typed["state"].str.fullmatch(r"[A-Z]{2}").fillna(False),
        "unknown overall_outcome": ~typed["overall_outcome"].isin(OUTCOMES).fillna(False),
        "missing date": ~given["date"],
        "bad date": given["date"] & typed["date"].isna(),
        **{
            name: mask
            for column in COUNT_COLUMNS
            for name, mask in _count_problems(column, text[column], typed[column]).items()
        },
    }


def _raise_on_invalid_rows(raw: pd.DataFrame, typed: pd.DataFrame, text: dict[str, pd.Series]) -> None:
    problems = {name: mask for name, mask in _problems(typed, text).items() if mask.any()}
    if not problems:
        return
    any_bad = pd.concat(problems.values(), axis=1).any(axis=1)
    lines = []
    for position in any_bad.to_numpy().nonzero()[0][:MAX_REPORTED_BAD_ROWS]:
        reasons = ", ".join(name for name, mask in problems.items() if mask.iloc[position])
        values = {column: raw[column].iloc[position] for column in BASE_COLUMNS}
        lines.append(f"  source row {position}: {reasons}: {values}")
    counts = ", ".join(f"{name}: {int(mask.sum())}" for name, mask in problems.items())
    raise InvalidRowsError(
        f"{int(any_bad.sum())} of {len(raw)} source rows cannot be typed ({counts}); first rows:\n" + "\n".join(lines)
    )

