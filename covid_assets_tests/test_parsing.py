"""Typing the raw strings into the base table: formats, repairs, duplicates, and bad rows."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from covid_assets.assets.parsing import BASE_COLUMNS, InvalidRowsError, type_test_results
from covid_assets_tests.helpers import SNAPSHOT

ROW = {
    "state": "AL",
    "state_name": "Alabama",
    "state_fips": "01",
    "fema_region": "Region 4",
    "overall_outcome": "Positive",
    "date": "2020-03-01T00:00:00.000",
    "new_results_reported": "5",
    "total_results_reported": "5",
}


def raw_frame(*overrides: dict) -> pd.DataFrame:
    return pd.DataFrame([{**ROW, **override} for override in overrides], dtype="string")


def test_types_and_column_order() -> None:
    frame = type_test_results(raw_frame({})).frame
    assert list(frame.columns) == BASE_COLUMNS
    assert dict(frame.dtypes.astype(str)) == {
        "state": "string",
        "state_name": "string",
        "state_fips": "string",
        "fema_region": "string",
        "overall_outcome": "string",
        "date": "date32[day][pyarrow]",
        "new_results_reported": "Int64",
        "total_results_reported": "Int64",
    }
    assert frame.iloc[0]["date"] == dt.date(2020, 3, 1)


def test_all_three_date_layouts_parse_to_the_same_day() -> None:
    frame = type_test_results(
        raw_frame(
            {"date": "2021-02-27T00:00:00.000", "overall_outcome": "Positive"},
            {"date": "2021-02-27", "overall_outcome": "Negative"},
            {"date": "2021/02/27", "overall_outcome": "Inconclusive"},
        )
    ).frame
    assert frame["date"].tolist() == [dt.date(2021, 2, 27)] * 3


def test_fips_keeps_or_regains_its_leading_zero() -> None:
    frame = type_test_results(raw_frame({"state_fips": "1"}, {"state": "AK", "state_fips": "02"})).frame
    assert sorted(frame["state_fips"].tolist()) == ["01", "02"]


def test_blank_counts_are_null_and_negative_counts_are_kept() -> None:
    frame = type_test_results(
        raw_frame({"new_results_reported": " ", "overall_outcome": "Negative"}, {"new_results_reported": "-7"})
    ).frame.set_index("overall_outcome")
    assert frame.loc["Negative", "new_results_reported"] is pd.NA
    assert frame.loc["Positive", "new_results_reported"] == -7


def test_counts_up_to_twelve_digits_are_accepted() -> None:
    # The bound is on the value: leading zeros do not count as digits.
    frame = type_test_results(
        raw_frame(
            {"new_results_reported": "999999999999", "overall_outcome": "Positive"},
            {"new_results_reported": "-999999999999", "overall_outcome": "Negative"},
            {"new_results_reported": "0000000000000007", "overall_outcome": "Inconclusive"},
        )
    ).frame.set_index("overall_outcome")
    assert frame["new_results_reported"].to_dict() == {"Inconclusive": 7, "Negative": -999_999_999_999, "Positive": 999_999_999_999}


def test_missing_fields_are_null() -> None:
    raw = raw_frame({}).assign(total_results_reported=pd.array([None], dtype="string"))
    frame = type_test_results(raw).frame
    assert frame["total_results_reported"].isna().all()


def test_duplicate_keys_keep_the_last_delivered_and_are_counted() -> None:
    typed = type_test_results(
        raw_frame({"new_results_reported": "1"}, {"state": "AK"}, {"new_results_reported": "9"})
    )
    assert typed.duplicates_dropped == 1
    assert typed.frame.set_index("state").loc["AL", "new_results_reported"] == 9


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"date": "2020-13-45"}, "bad date: 1"),
        ({"date": "2020-03-01xyz"}, "bad date: 1"),
        ({"new_results_reported": "1e3"}, "non-numeric new_results_reported: 1"),
        ({"date": None}, "missing date: 1"),
        ({"new_results_reported": "12a"}, "non-numeric new_results_reported: 1"),
        ({"total_results_reported": "1.5"}, "non-numeric total_results_reported: 1"),
        ({"new_results_reported": "1000000000000000"}, "new_results_reported out of range (|n| >= 10^12): 1"),
        ({"total_results_reported": "-1000000000000"}, "total_results_reported out of range (|n| >= 10^12): 1"),
        ({"overall_outcome": "Maybe"}, "unknown overall_outcome: 1"),
        ({"overall_outcome": None}, "unknown overall_outcome: 1"),
        ({"state": "ALA"}, "state is not a 2-letter code: 1"),
        ({"state": None}, "missing state: 1"),
    ],
)
def test_untypeable_rows_fail_with_a_message_naming_them(override: dict, problem: str) -> None:
    raw = raw_frame({"state": "AK"}, override, {"state": "AZ"})
    with pytest.raises(InvalidRowsError) as error:
        type_test_results(raw)
    message = str(error.value)
    assert message.startswith("1 of 3 source rows cannot be typed")
    assert problem in message
    assert "source row 1:" in message
    assert "source row 0" not in message and "source row 2" not in message


def test_many_bad_rows_are_counted_and_the_first_ones_shown() -> None:
    raw = raw_frame(*({"date": f"not-a-date-{i}", "state": f"S{chr(65 + i)}"} for i in range(8)))
    with pytest.raises(InvalidRowsError) as error:
        type_test_results(raw)
    message = str(error.value)
    assert message.startswith("8 of 8 source rows cannot be typed (bad date: 8)")
    assert "not-a-date-4" in message and "not-a-date-5" not in message


def test_a_missing_fips_code_is_filled_from_the_state() -> None:
    raw = raw_frame({"state": "WY"}, {"state": "PR"}, {"state": "ZZ"}).assign(state_fips=pd.array([None, " ", None], dtype="string"))
    frame = type_test_results(raw).frame.set_index("state")
    assert frame.loc["WY", "state_fips"] == "56"
    assert frame.loc["PR", "state_fips"] == "72"
    assert frame.loc["ZZ", "state_fips"] is pd.NA  # unknown jurisdiction: left NULL, flagged by the checks


def test_the_fips_table_agrees_with_the_real_snapshot() -> None:
    from covid_assets.assets.parsing import STATE_FIPS

    pairs = pd.read_csv(SNAPSHOT, dtype=str, usecols=["state", "state_fips"]).drop_duplicates()
    assert len(pairs) == 56
    assert {state: STATE_FIPS[state] for state in pairs["state"]} == dict(zip(pairs["state"], pairs["state_fips"]))
