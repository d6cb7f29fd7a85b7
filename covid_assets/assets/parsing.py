"""Typing rules for the base table: the raw strings typed, checked and de-duplicated.

Rows that cannot be typed fail the run instead of vanishing: a full refresh that quietly
dropped rows would replace good history with a smaller table.
"""

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from covid_assets.assets.tables import PRIMARY_KEY

OUTCOMES = ("Positive", "Negative", "Inconclusive")
TEXT_COLUMNS = ["state", "state_name", "state_fips", "fema_region", "overall_outcome"]
COUNT_COLUMNS = ["new_results_reported", "total_results_reported"]
BASE_COLUMNS = [*TEXT_COLUMNS, "date", *COUNT_COLUMNS]
DATE_DTYPE = pd.ArrowDtype(pa.date32())
MAX_REPORTED_BAD_ROWS = 5


class InvalidRowsError(ValueError):
    """Raised with a message naming how many rows are bad and showing the first few."""


@dataclass(frozen=True)
class TypedRows:
    frame: pd.DataFrame
    duplicates_dropped: int


def type_test_results(raw: pd.DataFrame) -> TypedRows:
    """Type the raw strings; fail on any row that cannot be typed; keep the last of duplicate keys."""
    text = {column: _clean_text(raw[column]) for column in TEXT_COLUMNS}
    text["state_fips"] = text["state_fips"].str.zfill(2)  # CSV tools drop the leading zero of "01"
    typed = pd.DataFrame(
        {
            **text,
            "date": _parse_dates(raw["date"]),
            **{column: _parse_counts(raw[column]) for column in COUNT_COLUMNS},
        }
    )
    _raise_on_invalid_rows(raw, typed)
    deduplicated = typed.drop_duplicates(PRIMARY_KEY, keep="last")
    frame = deduplicated.sort_values(PRIMARY_KEY, ignore_index=True)
    return TypedRows(frame=frame, duplicates_dropped=len(typed) - len(deduplicated))


def _clean_text(values: pd.Series) -> pd.Series:
    stripped = values.astype("string").str.strip()
    return stripped.mask(stripped == "")


def _parse_dates(values: pd.Series) -> pd.Series:
    """Accept Socrata floating timestamps (2020-03-01T00:00:00.000) and both CSV layouts (ISO, YYYY/MM/DD)."""
    day = values.astype("string").str.strip().str.slice(0, 10).str.replace("/", "-", regex=False)
    return pd.to_datetime(day, format="%Y-%m-%d", errors="coerce").astype(DATE_DTYPE)


def _parse_counts(values: pd.Series) -> pd.Series:
    """Whole numbers, possibly negative; blank means NULL; anything else is left NA for the check."""
    text = _clean_text(values)
    numbers = pd.to_numeric(text, errors="coerce")
    return numbers.where(numbers.mod(1) == 0).astype("Float64").astype("Int64")


def _problems(raw: pd.DataFrame, typed: pd.DataFrame) -> dict[str, pd.Series]:
    """One boolean mask per kind of bad row, keyed by a message naming the problem."""
    raw_present = {column: _clean_text(raw[column]).notna() for column in ["date", *COUNT_COLUMNS]}
    return {
        "missing state": typed["state"].isna(),
        "state is not a 2-letter code": typed["state"].notna() & ~typed["state"].str.fullmatch(r"[A-Z]{2}").fillna(False),
        "unknown overall_outcome": ~typed["overall_outcome"].isin(OUTCOMES).fillna(False),
        "missing date": ~raw_present["date"],
        "bad date": raw_present["date"] & typed["date"].isna(),
        **{
            f"non-numeric {column}": raw_present[column] & typed[column].isna()
            for column in COUNT_COLUMNS
        },
    }


def _raise_on_invalid_rows(raw: pd.DataFrame, typed: pd.DataFrame) -> None:
    problems = {name: mask for name, mask in _problems(raw, typed).items() if mask.any()}
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

