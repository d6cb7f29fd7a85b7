"""Partitioned assets and DbIOManager parity on a real Postgres.

Ports the behaviours dagster-duckdb-pandas' own suite tests (dagster_duckdb_pandas_tests/
test_type_handler.py and dagster_duckdb_tests/test_io_manager.py, 0.29.27) to the project's IO
manager, and adds what a Postgres warehouse needs on top: every partition kind written twice,
rewritten, read alone and as a range; keyed tables merged within their partition; DATE,
TIMESTAMP and TIMESTAMPTZ columns across timezones; refusals that leave the table as it was.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    DagsterInstance,
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    HourlyPartitionsDefinition,
    MetadataValue,
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    Out,
    PartitionsDefinition,
    SpecificPartitionsPartitionMapping,
    StaticPartitionsDefinition,
    TimeWindowPartitionMapping,
    asset,
    graph,
    op,
)
from dagster._check import CheckError

from covid_assets.storage.postgres_io import PostgresPandasIOManager, warehouse_resources
from covid_assets_tests.helpers import deployment, materialize_on, query

DATE = pd.ArrowDtype(pa.date32())

pytestmark = pytest.mark.slow  # many cases on a real Postgres: `./dev test` runs them, `./dev test-fast` does not


# ------------------------------------------------------------------------------- the issue's reproduction
def daily_day_asset(values: dict[str, str], primary_key: list[str] | None = None):
    """scratch.daily: three rows per day in a DATE column `day`, valued from `values[partition]`."""

    @asset(
        key_prefix=["scratch"],
        partitions_def=DailyPartitionsDefinition(start_date="2024-01-01"),
        metadata={"partition_expr": "day", **({"primary_key": primary_key} if primary_key else {})},
    )
    def daily(context: AssetExecutionContext) -> pd.DataFrame:
        day = dt.date.fromisoformat(context.partition_key)
        return pd.DataFrame(
            {
                "day": pd.array([day] * 3, dtype=DATE),
                "n": pd.array([0, 1, 2], dtype="Int64"),
                "value": pd.array([values.get(context.partition_key, "v")] * 3, dtype="string"),
            }
        )

    return daily


def values_by_day(url: str, table: str = "scratch.daily") -> dict[str, list[str]]:
    rows = query(url, f"SELECT day::text, value FROM {table} ORDER BY day, n")
    grouped: dict[str, list[str]] = {}
    for day, value in rows:
        grouped.setdefault(day, []).append(value)
    return grouped


def test_a_second_partition_keeps_the_first_and_a_rewrite_replaces_only_its_rows(warehouse_url: str) -> None:
    values = {"2024-01-01": "first", "2024-01-02": "second"}
    daily = daily_day_asset(values)
    materialize_on(warehouse_url, [daily], partition_key="2024-01-01")
    materialize_on(warehouse_url, [daily], partition_key="2024-01-02")
    assert values_by_day(warehouse_url) == {"2024-01-01": ["first"] * 3, "2024-01-02": ["second"] * 3}

    values["2024-01-01"] = "again"
    before = query(warehouse_url, "SELECT xmin::text FROM scratch.daily WHERE day = '2024-01-02'")
    materialize_on(warehouse_url, [daily], partition_key="2024-01-01")
    assert values_by_day(warehouse_url) == {"2024-01-01": ["again"] * 3, "2024-01-02": ["second"] * 3}
    assert query(warehouse_url, "SELECT xmin::text FROM scratch.daily WHERE day = '2024-01-02'") == before


# ------------------------------------------------------------------------------- every partition kind
@dataclass(frozen=True)
class Kind:
    """A partitioned asset shape: its partitions, how it names them, and the rows of one partition.

    Each kind writes partitions `keys[0]`, `keys[1]`, `keys[2]`; the range read `range_reader`
    selects keys[0] and keys[1] only, so a read that returned the whole table would be caught.
    """

    name: str
    partitions_def: PartitionsDefinition
    partition_expr: str | dict[str, str]
    keys: tuple[object, object, object]
    rows: Callable[[object], dict[str, object]]  # the partition columns of a partition's three rows
    range_in: Callable[[], AssetIn]  # how a downstream asset reads keys[0] and keys[1]
    range_partitions_def: PartitionsDefinition | None = None
    range_key: object = None  # the downstream partition that maps to keys[0] and keys[1]

    def __str__(self) -> str:
        return self.name


def _day(key: str) -> dt.date:
    return dt.date.fromisoformat(key)


def _days(key: str) -> dict[str, object]:
    return {"day": pd.array([_day(key)] * 3, dtype=DATE)}


def _naive_times(key: str) -> dict[str, object]:
    return {"time": pd.to_datetime([key] * 3).as_unit("us")}


NEW_YORK_HOURS = HourlyPartitionsDefinition(start_date="2024-03-10-00:00", timezone="America/New_York")


def _instants_in_new_york_hour(key: str) -> dict[str, object]:
    """Three instants inside the New York hour `key`, stored as TIMESTAMPTZ (UTC)."""
    start = pd.Timestamp(dt.datetime.strptime(key, "%Y-%m-%d-%H:%M"), tz="America/New_York")
    return {"at": pd.DatetimeIndex([start + pd.Timedelta(minutes=m) for m in (0, 25, 59)]).tz_convert("UTC").as_unit("us")}


def _month_days(key: str) -> dict[str, object]:
    first = _day(key)
    last = (pd.Timestamp(first) + pd.offsets.MonthEnd(0)).date()
    return {"day": pd.array([first, first + dt.timedelta(days=14), last], dtype=DATE)}


def _colors(key: str) -> dict[str, object]:
    return {"color": pd.array([key] * 3, dtype="string")}


def _multi(key: MultiPartitionKey) -> dict[str, object]:
    parts = key.keys_by_dimension
    return {"time": pd.array([parts["time"]] * 3, dtype="string"), "color": pd.array([parts["color"]] * 3, dtype="string")}


FRUITS = DynamicPartitionsDefinition(name="fruits")
ODD_FRUIT = "it's a \\ test'); DELETE FROM scratch.parts; --"
COLORS = StaticPartitionsDefinition(["red", "yellow", "blue"])
DAY_BY_COLOR = MultiPartitionsDefinition({"time": DailyPartitionsDefinition(start_date="2024-01-01"), "color": COLORS})


def _specific(keys: list[str]) -> Callable[[], AssetIn]:
    return lambda: AssetIn(key=AssetKey(["scratch", "parts"]), partition_mapping=SpecificPartitionsPartitionMapping(keys))


KINDS = [
    Kind("daily DATE", DailyPartitionsDefinition(start_date="2024-01-01"), "day",
         ("2024-01-01", "2024-01-02", "2024-01-03"), _days, _specific(["2024-01-01", "2024-01-02"])),
    Kind("daily TIMESTAMP", DailyPartitionsDefinition(start_date="2022-01-01"), "time",
         ("2022-01-01", "2022-01-02", "2022-01-03"), _naive_times,
         lambda: AssetIn(key=AssetKey(["scratch", "parts"]), partition_mapping=TimeWindowPartitionMapping(start_offset=-1)),
         DailyPartitionsDefinition(start_date="2022-01-01"), "2022-01-02"),
    Kind("hourly TIMESTAMPTZ, New York across the DST change", NEW_YORK_HOURS, "at",
         ("2024-03-10-01:00", "2024-03-10-03:00", "2024-03-10-04:00"), _instants_in_new_york_hour,
         _specific(["2024-03-10-01:00", "2024-03-10-03:00"])),
    Kind("monthly DATE", MonthlyPartitionsDefinition(start_date="2024-01-01"), "day",
         ("2024-01-01", "2024-02-01", "2024-03-01"), _month_days, _specific(["2024-01-01", "2024-02-01"])),
    Kind("static", COLORS, "color", ("red", "blue", "yellow"), _colors, _specific(["red", "blue"])),
    Kind("dynamic, a key with quotes and a backslash", FRUITS, "fruit", ("apple", ODD_FRUIT, "orange"),
         lambda key: {"fruit": pd.array([key] * 3, dtype="string")}, _specific(["apple", ODD_FRUIT])),
    Kind("multi: daily text cast to TIMESTAMP x static", DAY_BY_COLOR, {"time": "CAST(time AS TIMESTAMP)", "color": "color"},
         (MultiPartitionKey({"time": "2024-01-01", "color": "red"}), MultiPartitionKey({"time": "2024-01-01", "color": "blue"}),
          MultiPartitionKey({"time": "2024-01-02", "color": "red"})), _multi,
         lambda: AssetIn(key=AssetKey(["scratch", "parts"]),
                         partition_mapping=MultiToSingleDimensionPartitionMapping(partition_dimension_name="time")),
         DailyPartitionsDefinition(start_date="2024-01-01"), "2024-01-01"),
]


class Harness:
    """The kind's writer asset `scratch.parts`, and readers that record what they were handed."""

    def __init__(self, url: str, kind: Kind) -> None:
        self.url, self.kind = url, kind
        self.values: dict[str, str] = {}
        self.loaded: dict[str, pd.DataFrame] = {}
        self.instance = DagsterInstance.ephemeral()
        if isinstance(kind.partitions_def, DynamicPartitionsDefinition):
            self.instance.add_dynamic_partitions(kind.partitions_def.name, [str(key) for key in kind.keys])

        @asset(key_prefix=["scratch"], name="parts", partitions_def=kind.partitions_def,
               metadata={"partition_expr": kind.partition_expr})
        def parts(context: AssetExecutionContext) -> pd.DataFrame:
            key = context.partition_key
            return pd.DataFrame(
                {**kind.rows(key), "n": pd.array([0, 1, 2], dtype="Int64"),
                 "value": pd.array([self.values[str(key)]] * 3, dtype="string")}
            )

        @asset(partitions_def=kind.partitions_def, ins={"parts": AssetIn(key=AssetKey(["scratch", "parts"]))})
        def one(parts: pd.DataFrame) -> None:
            self.loaded["one"] = parts

        @asset(partitions_def=kind.range_partitions_def, ins={"parts": kind.range_in()})
        def some(parts: pd.DataFrame) -> None:
            self.loaded["range"] = parts

        self.parts, self.one, self.some = parts, one, some

    def write(self, key: object, value: str) -> None:
        self.values[str(key)] = value
        assert materialize_on(self.url, [self.parts], partition_key=str(key), instance=self.instance).success

    def read(self, reader, key: object) -> None:
        result = materialize_on(self.url, [self.parts, reader], selection=[reader.key], partition_key=key, instance=self.instance)
        assert result.success

    def stored(self) -> dict[str, int]:
        return dict(query(self.url, "SELECT value, count(*) FROM scratch.parts GROUP BY value"))


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_partitions_are_written_rewritten_and_read_alone_and_as_a_range(warehouse_url: str, kind: Kind) -> None:
    h = Harness(warehouse_url, kind)
    first, second, third = kind.keys
    h.write(first, "1")
    assert h.stored() == {"1": 3}
    h.write(second, "2")
    h.write(third, "3")
    assert h.stored() == {"1": 3, "2": 3, "3": 3}

    h.write(first, "rewritten")
    assert h.stored() == {"rewritten": 3, "2": 3, "3": 3}

    h.read(h.one, str(first))
    assert sorted(h.loaded["one"]["value"]) == ["rewritten"] * 3
    h.read(h.some, kind.range_key)
    assert sorted(h.loaded["range"]["value"]) == ["2"] * 3 + ["rewritten"] * 3


# ------------------------------------------------------------------------------- keyed tables, backfills
def test_a_keyed_partition_is_merged_within_itself(warehouse_url: str) -> None:
    values = {"2024-01-01": "a", "2024-01-02": "b"}
    daily = daily_day_asset(values, primary_key=["day", "n"])
    materialize_on(warehouse_url, [daily], partition_key="2024-01-01")
    materialize_on(warehouse_url, [daily], partition_key="2024-01-02")
    before = dict(query(warehouse_url, "SELECT day::text || '/' || n, xmin::text FROM scratch.daily"))

    values["2024-01-01"] = "a"  # same rows: nothing of the day is rewritten, the other day is not touched
    materialize_on(warehouse_url, [daily], partition_key="2024-01-01")
    assert dict(query(warehouse_url, "SELECT day::text || '/' || n, xmin::text FROM scratch.daily")) == before

    values["2024-01-01"] = "changed"
    materialize_on(warehouse_url, [daily], partition_key="2024-01-01")
    assert values_by_day(warehouse_url) == {"2024-01-01": ["changed"] * 3, "2024-01-02": ["b"] * 3}
    after = dict(query(warehouse_url, "SELECT day::text || '/' || n, xmin::text FROM scratch.daily"))
    assert all(after[f"2024-01-02/{n}"] == before[f"2024-01-02/{n}"] for n in range(3))
    assert query(warehouse_url, "SELECT count(*) FROM pg_tables WHERE starts_with(tablename, 'stage_')") == [(0,)]


def test_a_keyed_partition_losing_rows_loses_only_its_own(warehouse_url: str) -> None:
    @asset(key_prefix=["scratch"], partitions_def=COLORS, metadata={"partition_expr": "color", "primary_key": ["color", "n"]})
    def keyed(context: AssetExecutionContext) -> pd.DataFrame:
        rows = 1 if context.partition_key == "red" and written else 3
        return pd.DataFrame({"color": pd.array([context.partition_key] * rows, dtype="string"), "n": pd.array(range(rows), dtype="Int64")})

    written: list[str] = []
    for color in ("red", "blue", "red"):
        materialize_on(warehouse_url, [keyed], partition_key=color)
        written.append(color)
    assert query(warehouse_url, "SELECT color, count(*) FROM scratch.keyed GROUP BY color ORDER BY color") == [("blue", 3), ("red", 1)]


def test_a_backfill_writes_several_partitions_in_one_run(warehouse_url: str) -> None:
    from dagster import BackfillPolicy

    @asset(key_prefix=["scratch"], name="daily", partitions_def=DailyPartitionsDefinition(start_date="2024-01-01"),
           metadata={"partition_expr": "day"}, backfill_policy=BackfillPolicy.single_run())
    def daily(context: AssetExecutionContext) -> pd.DataFrame:
        days = [_day(key) for key in context.partition_keys]
        return pd.DataFrame(
            {"day": pd.array([d for d in days for _ in range(3)], dtype=DATE),
             "n": pd.array([n for _ in days for n in range(3)], dtype="Int64"),
             "value": pd.array([f"backfill {len(days)}"] * 3 * len(days), dtype="string")}
        )

    materialize_on(warehouse_url, [daily_day_asset({"2024-01-04": "kept", "2024-01-02": "old"})], partition_key="2024-01-04")
    materialize_on(warehouse_url, [daily_day_asset({"2024-01-02": "old"})], partition_key="2024-01-02")
    result = materialize_on(
        warehouse_url, [daily],
        tags={"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"},
    )
    assert result.success
    assert values_by_day(warehouse_url) == {
        "2024-01-01": ["backfill 3"] * 3, "2024-01-02": ["backfill 3"] * 3, "2024-01-03": ["backfill 3"] * 3,
        "2024-01-04": ["kept"] * 3,
    }
    events = result.get_asset_materialization_events()
    assert sorted(event.partition for event in events) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert {event.materialization.metadata["dagster/partition_row_count"] for event in events} == {MetadataValue.int(9)}


# ------------------------------------------------------------------------------- refusals
def partitioned_asset(partitions_def: PartitionsDefinition, metadata: dict, frame: Callable[[str], pd.DataFrame], name: str = "daily"):
    @asset(key_prefix=["scratch"], name=name, partitions_def=partitions_def, metadata=metadata)
    def refused(context: AssetExecutionContext) -> pd.DataFrame:
        return frame(context.partition_key)

    return refused


def day_frame(key: str) -> pd.DataFrame:
    return pd.DataFrame({"day": pd.array([_day(key)] * 3, dtype=DATE), "n": pd.array([0, 1, 2], dtype="Int64"),
                         "value": pd.array(["new"] * 3, dtype="string"), "label": pd.array([key] * 3, dtype="string")})


DAILY = DailyPartitionsDefinition(start_date="2024-01-01")


@pytest.mark.parametrize(
    ("metadata", "frame", "message"),
    [
        ({}, day_frame, "has partitions, but no 'partition_expr'"),
        ({"partition_expr": "now()"}, day_frame, r"partition_expr 'now\(\)' of scratch.daily names no column of the table"),
        ({"partition_expr": "DATE '2024-01-02'"}, day_frame, "names no column of the table, so it would select every row or none"),
        ({"partition_expr": "dya"}, day_frame, r"partition_expr 'dya' is not an expression over the columns of scratch.daily: column \"dya\" does not exist$"),
        ({"partition_expr": "Label"}, day_frame, r"column \"Label\" does not exist HINT:  Perhaps you meant to reference the column \"daily.label\""),
        ({"partition_expr": "label"}, day_frame, r"is of type text; a time-window partition needs a date or timestamp expression .*CAST\(label AS DATE\)"),
        ({"partition_expr": {"day": "day"}}, day_frame, "partition_expr must be a non-empty SQL expression string"),
        ({"partition_expr": "day"}, lambda key: day_frame(key).assign(day=pd.array([_day(key), _day(key), dt.date(2024, 1, 5)], dtype=DATE)),
         r"1 of the 3 rows written to scratch.daily lie outside the run's partitions \(day in \[2024-01-02 00:00:00\+00:00, 2024-01-03"),
        ({"partition_expr": "day"}, lambda key: day_frame(key).assign(n=1.5), "column types of scratch.daily changed"),
    ],
    ids=["no partition_expr", "a function of no column", "a constant", "an unknown column", "a name in the wrong case",
         "a text column for days",
         "a mapping for one dimension", "rows outside the partition", "a changed column type"],
)
def test_refused_partitioned_writes_leave_the_table_as_it_was(warehouse_url: str, metadata: dict, frame, message: str) -> None:
    materialize_on(warehouse_url, [partitioned_asset(DAILY, {"partition_expr": "day"}, day_frame)], partition_key="2024-01-01")
    before = query(warehouse_url, "SELECT day::text, n, value, xmin::text FROM scratch.daily ORDER BY day, n")
    refused = partitioned_asset(DAILY, metadata, frame)
    with pytest.raises(Exception, match=message):
        materialize_on(warehouse_url, [refused], partition_key="2024-01-02")
    assert query(warehouse_url, "SELECT day::text, n, value, xmin::text FROM scratch.daily ORDER BY day, n") == before
    columns = query(warehouse_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'daily' ORDER BY ordinal_position")
    assert columns == [("day",), ("n",), ("value",), ("label",)]


def test_a_column_added_by_one_partition_keeps_the_other_partitions(warehouse_url: str) -> None:
    materialize_on(warehouse_url, [partitioned_asset(DAILY, {"partition_expr": "day"}, day_frame)], partition_key="2024-01-01")
    wider = partitioned_asset(DAILY, {"partition_expr": "day"}, lambda key: day_frame(key).assign(extra=pd.array(["x"] * 3, dtype="string")))
    materialize_on(warehouse_url, [wider], partition_key="2024-01-02")
    assert query(warehouse_url, "SELECT label, extra, count(*) FROM scratch.daily GROUP BY 1, 2 ORDER BY 1") == [
        ("2024-01-01", None, 3), ("2024-01-02", "x", 3)]


def test_a_first_write_refused_creates_no_table(warehouse_url: str) -> None:
    refused = partitioned_asset(DAILY, {"partition_expr": "current_date"}, day_frame)
    with pytest.raises(Exception, match="names no column of the table"):
        materialize_on(warehouse_url, [refused], partition_key="2024-01-02")
    assert query(warehouse_url, "SELECT to_regclass('scratch.daily') IS NULL") == [(True,)]


def test_a_multi_partition_dimension_without_an_expression_is_refused(warehouse_url: str) -> None:
    refused = partitioned_asset(DAY_BY_COLOR, {"partition_expr": {"time": "CAST(time AS DATE)"}}, lambda key: pd.DataFrame({"time": ["2024-01-01"]}))
    with pytest.raises(Exception, match=r"partition_expr has no expression for dimension\(s\) \['color'\]"):
        materialize_on(warehouse_url, [refused], partition_key=MultiPartitionKey({"time": "2024-01-01", "color": "red"}))
    assert query(warehouse_url, "SELECT to_regclass('scratch.daily') IS NULL") == [(True,)]


def test_hourly_partitions_on_a_date_column_are_refused(warehouse_url: str) -> None:
    refused = partitioned_asset(
        HourlyPartitionsDefinition(start_date="2024-01-01-00:00"), {"partition_expr": "day"},
        lambda key: pd.DataFrame({"day": pd.array([dt.date(2024, 1, 1)], dtype=DATE)}),
    )
    with pytest.raises(Exception, match="is a DATE, but the partitions start at 2024-01-01 05:00:00.00:00: sub-day partitions need a timestamp"):
        materialize_on(warehouse_url, [refused], partition_key="2024-01-01-05:00")


# ------------------------------------------------------------------------------- identifiers, indexes
@pytest.mark.parametrize("partition_expr", ["Day", '"Day"'], ids=["bare mixed-case name", "quoted name"])
def test_mixed_case_schema_table_and_partition_column(warehouse_url: str, partition_expr: str) -> None:
    loaded: dict[str, pd.DataFrame] = {}

    @asset(key_prefix=["MySchema"], name="Daily", partitions_def=DAILY, metadata={"partition_expr": partition_expr})
    def daily(context: AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"Day": pd.array([_day(context.partition_key)] * 2, dtype=DATE),
                             "Value": pd.array([context.partition_key] * 2, dtype="string")})

    @asset(partitions_def=DAILY, ins={"Daily": AssetIn(key=AssetKey(["MySchema", "Daily"]), metadata={"columns": ["Value"]})})
    def reader(Daily: pd.DataFrame) -> None:  # noqa: N803 (the asset's name)
        loaded["frame"] = Daily

    for key in ("2024-01-01", "2024-01-02", "2024-01-01"):
        materialize_on(warehouse_url, [daily], partition_key=key)
    materialize_on(warehouse_url, [daily, reader], selection=[reader.key], partition_key="2024-01-02")
    assert query(warehouse_url, 'SELECT "Value", count(*) FROM "MySchema"."Daily" GROUP BY 1 ORDER BY 1') == [
        ("2024-01-01", 2), ("2024-01-02", 2)]
    assert list(loaded["frame"].columns) == ["Value"] and list(loaded["frame"]["Value"]) == ["2024-01-02"] * 2


def test_the_partition_column_gets_an_index_that_the_partition_write_uses(warehouse_url: str) -> None:
    daily = daily_day_asset({})
    materialize_on(warehouse_url, [daily], partition_key="2024-01-01")
    indexes = query(warehouse_url, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'scratch' AND tablename = 'daily'")
    assert len(indexes) == 1 and indexes[0][0].endswith("USING btree (day)")
    query(warehouse_url, "INSERT INTO scratch.daily SELECT DATE '2020-01-01' + i, 0, 'filler' FROM generate_series(1, 20000) i")
    query(warehouse_url, "ANALYZE scratch.daily")
    plan = query(warehouse_url, "EXPLAIN DELETE FROM scratch.daily WHERE day >= '2024-01-01 00:00:00+00:00' AND day < '2024-01-02 00:00:00+00:00'")
    assert "Index" in " ".join(line for (line,) in plan)

    @asset(key_prefix=["scratch"], partitions_def=DAILY, metadata={"partition_expr": "day", "primary_key": ["day", "n"]})
    def keyed(context: AssetExecutionContext) -> pd.DataFrame:
        return day_frame(context.partition_key)

    materialize_on(warehouse_url, [keyed], partition_key="2024-01-01")  # a key leading with the column serves
    assert query(warehouse_url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'scratch' AND tablename = 'keyed'") == [
        ("keyed_pkey",)]


# ------------------------------------------------------------------------------- reads that select nothing, empty frames
def test_self_dependent_asset(warehouse_url: str) -> None:
    """Ported: each day reads the day before from its own table (nothing on the first day, no table yet)."""
    seen: dict[str, list[str]] = {}

    @asset(
        partitions_def=DailyPartitionsDefinition(start_date="2023-01-01"),
        key_prefix=["scratch"],
        ins={"self_dependent": AssetIn(key=AssetKey(["scratch", "self_dependent"]),
                                       partition_mapping=TimeWindowPartitionMapping(start_offset=-1, end_offset=-1))},
        metadata={"partition_expr": "CAST(key AS DATE)"},
    )
    def self_dependent(context: AssetExecutionContext, self_dependent: pd.DataFrame) -> pd.DataFrame:
        seen[context.partition_key] = sorted(self_dependent["key"]) if not self_dependent.empty else []
        return pd.DataFrame({"key": [context.partition_key] * 3, "a": [context.partition_key[-1]] * 3})

    for key in ("2023-01-01", "2023-01-02", "2023-01-03"):
        assert materialize_on(warehouse_url, [self_dependent], partition_key=key).success
    assert seen == {"2023-01-01": [], "2023-01-02": ["2023-01-01"] * 3, "2023-01-03": ["2023-01-02"] * 3}
    assert query(warehouse_url, "SELECT a, count(*) FROM scratch.self_dependent GROUP BY a ORDER BY a") == [("1", 3), ("2", 3), ("3", 3)]


def test_an_empty_frame_empties_its_partition_and_keeps_the_others(warehouse_url: str) -> None:
    """Ported from test_handle_output_empty_dataframe: an empty frame writes no rows (and here
    empties its own partition, as the DbIOManager's delete does for duckdb)."""
    materialize_on(warehouse_url, [daily_day_asset({"2024-01-01": "a"})], partition_key="2024-01-01")
    materialize_on(warehouse_url, [daily_day_asset({"2024-01-02": "b"})], partition_key="2024-01-02")
    for frame in (pd.DataFrame(), pd.DataFrame({"day": pd.array([], dtype=DATE), "n": pd.array([], dtype="Int64")})):
        empty = partitioned_asset(DAILY, {"partition_expr": "day"}, lambda key, frame=frame: frame)
        result = materialize_on(warehouse_url, [empty], partition_key="2024-01-02")
        assert values_by_day(warehouse_url) == {"2024-01-01": ["a"] * 3}
        assert result.get_asset_materialization_events()[0].materialization.metadata["dagster/partition_row_count"] == MetadataValue.int(0)
    columns = query(warehouse_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'daily' ORDER BY ordinal_position")
    assert columns == [("day",), ("n",), ("value",)]


def test_an_empty_frame_empties_an_unpartitioned_table_and_creates_none_without_columns(warehouse_url: str) -> None:
    frames = {"stored": pd.DataFrame({"a": [1, 2, 3]})}

    @asset(key_prefix=["scratch"])
    def stored() -> pd.DataFrame:
        return frames["stored"]

    @asset(key_prefix=["scratch"])
    def never() -> pd.DataFrame:
        return pd.DataFrame()

    materialize_on(warehouse_url, [stored])
    frames["stored"] = pd.DataFrame()
    materialize_on(warehouse_url, [stored, never])
    assert query(warehouse_url, "SELECT count(*) FROM scratch.stored") == [(0,)]
    assert query(warehouse_url, "SELECT to_regclass('scratch.never') IS NULL") == [(True,)]


# ------------------------------------------------------------------------------- parity with dagster-duckdb-pandas
@op(out=Out(metadata={"schema": "a_df"}))
def a_df() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})


@op(out=Out(metadata={"schema": "add_one"}))
def add_one(df: pd.DataFrame) -> pd.DataFrame:
    return df + 1


@graph
def add_one_to_dataframe() -> None:
    add_one(a_df())


def test_ops_store_their_outputs_in_the_schema_of_their_metadata(warehouse_url: str) -> None:
    job = add_one_to_dataframe.to_job(resource_defs=warehouse_resources())
    for _ in range(2):  # twice: the second run replaces the tables
        with deployment(warehouse_url):
            assert job.execute_in_process().success
        assert query(warehouse_url, "SELECT a FROM a_df.result ORDER BY a") == [(1,), (2,), (3,)]
        assert query(warehouse_url, "SELECT a FROM add_one.result ORDER BY a") == [(2,), (3,), (4,)]


@asset(key_prefix=["my_schema"])
def b_df() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})


@asset(key_prefix=["my_schema"])
def b_plus_one(b_df: pd.DataFrame) -> pd.DataFrame:
    return b_df + 1


@asset(key_prefix=["my_schema"], ins={"b_df": AssetIn(key=AssetKey(["my_schema", "b_df"]), metadata={"columns": ["a"]})})
def b_plus_one_columns(b_df: pd.DataFrame) -> pd.DataFrame:
    return b_df + 1


def test_assets_are_replaced_on_every_materialization(warehouse_url: str) -> None:
    for _ in range(2):
        assert materialize_on(warehouse_url, [b_df, b_plus_one]).success
        assert query(warehouse_url, "SELECT a FROM my_schema.b_df ORDER BY a") == [(1,), (2,), (3,)]
        assert query(warehouse_url, "SELECT a FROM my_schema.b_plus_one ORDER BY a") == [(2,), (3,), (4,)]


def test_loading_a_subset_of_columns(warehouse_url: str) -> None:
    for _ in range(2):
        assert materialize_on(warehouse_url, [b_df, b_plus_one_columns]).success
        assert query(warehouse_url, "SELECT * FROM my_schema.b_plus_one_columns ORDER BY a") == [(2,), (3,), (4,)]


def test_the_schema_comes_from_the_io_manager_config_below_asset_metadata(warehouse_url: str) -> None:
    from dagster import materialize

    from covid_assets.storage.warehouse import WarehouseResource

    @asset
    def my_df() -> pd.DataFrame:
        return pd.DataFrame({"a": [1, 2, 3]})

    @asset
    def my_df_plus_one(my_df: pd.DataFrame) -> pd.DataFrame:
        return my_df + 1

    @asset(metadata={"schema": "from_metadata"})
    def placed() -> pd.DataFrame:
        return pd.DataFrame({"a": [7]})

    @asset(key_prefix=["by_prefix"])
    def prefixed() -> pd.DataFrame:
        return pd.DataFrame({"a": [8]})

    io_manager = PostgresPandasIOManager(warehouse=WarehouseResource(), schema="custom_schema")
    for _ in range(2):
        with deployment(warehouse_url):
            assert materialize([my_df, my_df_plus_one, placed, prefixed], resources={"io_manager": io_manager}).success
        assert query(warehouse_url, "SELECT a FROM custom_schema.my_df_plus_one ORDER BY a") == [(2,), (3,), (4,)]
        assert query(warehouse_url, "SELECT a FROM from_metadata.placed") == [(7,)]
        assert query(warehouse_url, "SELECT a FROM by_prefix.prefixed") == [(8,)]


def test_run_config_cannot_move_the_table_of_an_asset_keyed_schema_table(warehouse_url: str) -> None:
    """The UI can set run config: a `schema` there must not redirect the project's tables."""
    run_config = {"resources": {"io_manager": {"config": {"schema": "elsewhere"}}}}
    assert materialize_on(warehouse_url, [b_df], run_config=run_config).success
    assert query(warehouse_url, "SELECT schemaname FROM pg_tables WHERE tablename = 'b_df'") == [("my_schema",)]


def test_materialization_metadata(warehouse_url: str) -> None:
    (event,) = materialize_on(warehouse_url, [b_df]).get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["dagster/table_name"] == MetadataValue.text("my_schema.b_df")
    assert metadata["dagster/storage_kind"] == MetadataValue.text("postgres")
    assert metadata["dagster/row_count"] == MetadataValue.int(3)
    assert [(c.name, c.type) for c in metadata["dagster/column_schema"].schema.columns] == [("a", "BIGINT"), ("b", "BIGINT")]

    (event,) = materialize_on(warehouse_url, [daily_day_asset({})], partition_key="2024-01-01").get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["dagster/partition_row_count"] == MetadataValue.int(3) and "dagster/row_count" not in metadata
    assert metadata["Query"].value.startswith('SELECT * FROM "scratch"."daily" WHERE (day) >= \'2024-01-01 00:00:00+00:00\'')


@op
def non_supported_type() -> int:
    return 1


@graph
def not_supported() -> None:
    non_supported_type()


def test_an_unsupported_output_type_is_a_clear_error(warehouse_url: str) -> None:
    job = not_supported.to_job(resource_defs=warehouse_resources())
    with deployment(warehouse_url), pytest.raises(CheckError, match="PostgresPandasIOManager does not have a handler for type '<class 'int'>'"):
        job.execute_in_process()


def test_select_statements_run_on_postgres(warehouse_url: str) -> None:
    """Ported from dagster_duckdb_tests/test_io_manager.py: there the statements are compared as
    text; here each one runs on Postgres and must return exactly its rows (keys are literals)."""
    from dagster._core.definitions.partitions.utils import TimeWindow
    from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice

    from covid_assets.storage.postgres_io import PostgresClient

    query(warehouse_url, "CREATE SCHEMA schema1")
    query(warehouse_url, "CREATE TABLE schema1.table1 (apple text, banana int, my_timestamp_col timestamp, my_fruit_col text)")
    query(warehouse_url, "INSERT INTO schema1.table1 VALUES ('a', 1, '2020-01-02', 'apple'), ('b', 2, '2020-02-03', 'pear'), "
                         "('c', 3, '2020-01-31 23:59', 'it''s a test'), ('d', 4, '2020-01-01 23:59:59', 'apple')")
    window = TablePartitionDimension(partition_expr="my_timestamp_col", partitions=TimeWindow(
        dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc), dt.datetime(2020, 2, 3, tzinfo=dt.timezone.utc)))
    fruit = TablePartitionDimension(partition_expr="my_fruit_col", partitions=["apple", "it's a test"])

    def rows(**slice_args) -> list[tuple]:
        statement = PostgresClient.get_select_statement(TableSlice(schema="schema1", table="table1", **slice_args))
        return sorted(query(warehouse_url, statement))

    assert [r[0] for r in rows()] == ["a", "b", "c", "d"]
    assert rows(columns=["apple", "banana"]) == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    assert rows(columns=["apple"], partition_dimensions=[window]) == [("a",), ("c",)]
    assert rows(columns=["apple"], partition_dimensions=[fruit]) == [("a",), ("c",), ("d",)]
    assert rows(columns=["apple"], partition_dimensions=[fruit, window]) == [("a",), ("c",)]
    assert rows(columns=["apple"], partition_dimensions=[TablePartitionDimension("my_fruit_col", [])]) == []
