"""The Postgres IO manager on a real Postgres: dtypes, column subsets, keys, atomic replace."""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from dagster import AssetIn, AssetKey, asset

from covid_assets_tests.helpers import deployment, materialize_on, query

DATE = pd.ArrowDtype(pa.date32())


def every_dtype_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "count": pd.array([1, None, -3], dtype="Int64"),
            "name": pd.array(["a", None, "it's \"quoted\"; \\ tab\t"], dtype="string"),
            "ratio": [1.5, float("nan"), -2.25],
            "flag": pd.array([True, None, False], dtype="boolean"),
            "day": pd.array([dt.date(2020, 3, 1), None, dt.date(2024, 2, 29)], dtype=DATE),
            "at": pd.to_datetime(["2024-01-01T12:00:00.123456Z", None, "2020-03-01T00:00:00.000000Z"], utc=True).as_unit("us"),
        }
    )


def store_and_load(url: str, frame: pd.DataFrame, key_prefix: str = "scratch", **load_metadata) -> pd.DataFrame:
    """Materialize `frame` as <key_prefix>.stored and return what a downstream asset loads."""
    loaded: dict[str, pd.DataFrame] = {}

    @asset(key_prefix=[key_prefix], name="stored")
    def stored() -> pd.DataFrame:
        return frame

    @asset(ins={"stored": AssetIn(key=AssetKey([key_prefix, "stored"]), metadata=load_metadata)})
    def reader(stored: pd.DataFrame) -> None:
        loaded["frame"] = stored

    result = materialize_on(url, [stored, reader])
    assert result.success
    return loaded["frame"]


def test_every_dtype_round_trips_with_its_dtype(warehouse_url: str) -> None:
    frame = every_dtype_frame()
    loaded = store_and_load(warehouse_url, frame)
    pd.testing.assert_frame_equal(loaded, frame)
    assert dict(loaded.dtypes.astype(str)) == dict(frame.dtypes.astype(str))


def test_postgres_column_types_and_nulls(warehouse_url: str) -> None:
    store_and_load(warehouse_url, every_dtype_frame())
    types = query(
        warehouse_url,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'scratch' AND table_name = 'stored' ORDER BY ordinal_position",
    )
    assert types == [
        ("count", "bigint"),
        ("name", "text"),
        ("ratio", "double precision"),
        ("flag", "boolean"),
        ("day", "date"),
        ("at", "timestamp with time zone"),
    ]
    # Missing values are real NULLs (a float NaN must not arrive as the number 'NaN').
    nulls = query(
        warehouse_url,
        'SELECT count(*) FILTER (WHERE "count" IS NULL), count(*) FILTER (WHERE name IS NULL), '
        "count(*) FILTER (WHERE ratio IS NULL), count(*) FILTER (WHERE flag IS NULL), "
        "count(*) FILTER (WHERE day IS NULL), count(*) FILTER (WHERE at IS NULL) FROM scratch.stored",
    )
    assert nulls == [(1, 1, 1, 1, 1, 1)]


def test_loads_a_subset_of_columns(warehouse_url: str) -> None:
    loaded = store_and_load(warehouse_url, every_dtype_frame(), columns=["day", "count"])
    assert list(loaded.columns) == ["day", "count"]
    assert str(loaded["count"].dtype) == "Int64"


def test_object_dates_and_numpy_ints_are_accepted(warehouse_url: str) -> None:
    frame = pd.DataFrame({"n": [1, 2], "day": [dt.date(2021, 1, 1), dt.date(2021, 1, 2)]})
    loaded = store_and_load(warehouse_url, frame)
    assert str(loaded["n"].dtype) == "Int64"
    assert loaded["day"].tolist() == [dt.date(2021, 1, 1), dt.date(2021, 1, 2)]


def keyed_asset(frame: pd.DataFrame):
    @asset(key_prefix=["scratch"], name="keyed", metadata={"primary_key": ["k", "day"]})
    def keyed() -> pd.DataFrame:
        return frame

    return keyed


def keyed_frame(keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "k": pd.array(keys, dtype="string"),
            "day": pd.array([dt.date(2021, 1, 1)] * len(keys), dtype=DATE),
            "v": pd.array(range(len(keys)), dtype="Int64"),
        }
    )


def materialize_keyed(url: str, frame: pd.DataFrame, raise_on_error: bool = True):
    return materialize_on(url, [keyed_asset(frame)], raise_on_error=raise_on_error)


def test_declared_primary_key_is_created(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]))
    key = query(
        warehouse_url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey) WHERE i.indrelid = 'scratch.keyed'::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    assert key == [("k",), ("day",)]


def test_failed_write_keeps_the_old_table(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b", "c"]))
    result = materialize_keyed(warehouse_url, keyed_frame(["x", "x"]), raise_on_error=False)
    assert not result.success
    assert query(warehouse_url, "SELECT k FROM scratch.keyed ORDER BY k") == [("a",), ("b",), ("c",)]


def test_a_repeated_key_equal_to_a_stored_row_is_an_error_not_a_silent_dedup(warehouse_url: str) -> None:
    """The merge would find both copies unchanged and write neither; it must refuse instead."""
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]))
    repeated = keyed_frame(["a", "b", "a"]).assign(v=pd.array([0, 1, 0], dtype="Int64"))
    with pytest.raises(Exception, match=r"key \{'k': 'a', 'day': datetime.date\(2021, 1, 1\)\} more than once"):
        materialize_keyed(warehouse_url, repeated)
    assert query(warehouse_url, "SELECT k, v FROM scratch.keyed ORDER BY k") == [("a", 0), ("b", 1)]


def test_unsupported_dtype_is_a_clear_error_and_keeps_the_table(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a"]))
    frame = keyed_frame(["b"]).assign(v=[[1, 2]])
    with pytest.raises(Exception, match="column 'v' has type list<item: int64>"):
        materialize_keyed(warehouse_url, frame)
    assert query(warehouse_url, "SELECT k FROM scratch.keyed") == [("a",)]


def test_replace_keeps_dependent_views_when_columns_are_unchanged(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]))
    query(warehouse_url, "CREATE VIEW scratch.keyed_view AS SELECT k FROM scratch.keyed")
    materialize_keyed(warehouse_url, keyed_frame(["c", "d", "e"]))
    assert query(warehouse_url, "SELECT count(*) FROM scratch.keyed_view") == [(3,)]


def test_changed_columns_rebuild_the_table(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a"]))
    materialize_keyed(warehouse_url, keyed_frame(["b"]).assign(extra=pd.array(["x"], dtype="string")))
    columns = query(
        warehouse_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'scratch' "
        "AND table_name = 'keyed' ORDER BY ordinal_position",
    )
    assert columns == [("k",), ("day",), ("v",), ("extra",)]
    assert query(warehouse_url, "SELECT k, extra FROM scratch.keyed") == [("b", "x")]


def test_readers_see_old_or_new_rows_never_partial(warehouse_url: str) -> None:
    sizes = [20_000, 50_000]
    materialize_keyed(warehouse_url, keyed_frame([f"k{i}" for i in range(sizes[0])]))
    seen: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        with psycopg.connect(warehouse_url, autocommit=True) as conn:
            while not stop.is_set():
                seen.add(conn.execute("SELECT count(*) FROM scratch.keyed").fetchone()[0])

    reader = threading.Thread(target=hammer)
    reader.start()
    try:
        for round_ in range(6):
            size = sizes[(round_ + 1) % 2]
            materialize_keyed(warehouse_url, keyed_frame([f"k{i}" for i in range(size)]))
    finally:
        stop.set()
        reader.join()
    assert seen <= set(sizes), f"a reader saw a partial table: {sorted(seen - set(sizes))}"
    assert seen == set(sizes)


def test_keyed_replace_touches_only_changed_rows_and_ends_equal_to_the_frame(warehouse_url: str) -> None:
    old = keyed_frame(["same", "same-null", "changed", "gone"])
    old.loc[1, "v"] = pd.NA
    materialize_keyed(warehouse_url, old)
    before = dict(query(warehouse_url, "SELECT k, xmin::text FROM scratch.keyed"))

    new = keyed_frame(["same", "same-null", "changed", "added"])
    new["v"] = pd.array([0, None, 99, 7], dtype="Int64")
    materialize_keyed(warehouse_url, new)

    stored = query(warehouse_url, "SELECT k, v FROM scratch.keyed ORDER BY k")
    assert stored == [("added", 7), ("changed", 99), ("same", 0), ("same-null", None)]
    after = dict(query(warehouse_url, "SELECT k, xmin::text FROM scratch.keyed"))
    assert after["same"] == before["same"] and after["same-null"] == before["same-null"]  # not rewritten
    assert after["changed"] != before["changed"]
    assert query(warehouse_url, "SELECT count(*) FROM pg_tables WHERE starts_with(tablename, 'stage_')") == [(0,)]


def test_concurrent_writers_take_turns(warehouse_url: str) -> None:
    """Two runs writing the same table at once: the table ends up as one of them, whole."""
    materialize_keyed(warehouse_url, keyed_frame(["seed"]))
    frames = {size: keyed_frame([f"w{size}-{i}" for i in range(size)]) for size in (30_000, 45_000)}
    results: dict[int, bool] = {}

    def write(size: int) -> None:
        results[size] = materialize_keyed(warehouse_url, frames[size], raise_on_error=False).success

    writers = [threading.Thread(target=write, args=(size,)) for size in frames]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert results == {30_000: True, 45_000: True}
    (count, prefixes) = query(warehouse_url, "SELECT count(*), count(DISTINCT split_part(k, '-', 1)) FROM scratch.keyed")[0]
    assert (count, prefixes) in {(30_000, 1), (45_000, 1)}


def test_hostile_configured_schema_name_is_quoted_not_executed(warehouse_url: str) -> None:
    hostile = 'x"; DROP TABLE victim; --'
    query(warehouse_url, "CREATE TABLE public.victim (id int)")

    @asset(name="stored", metadata={"schema": hostile})
    def stored() -> pd.DataFrame:
        return keyed_frame(["a"])

    materialize_on(warehouse_url, [stored])
    assert query(warehouse_url, "SELECT count(*) FROM public.victim") == [(0,)]
    assert query(warehouse_url, "SELECT schemaname FROM pg_tables WHERE tablename = 'stored'") == [(hostile,)]


def test_none_output_is_rejected(warehouse_url: str) -> None:
    @asset(key_prefix=["scratch"])
    def nothing() -> pd.DataFrame:
        return None  # type: ignore[return-value]

    with pytest.raises(Exception, match="None"):
        materialize_on(warehouse_url, [nothing])


def test_reordered_columns_rebuild_the_table(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]))
    materialize_keyed(warehouse_url, keyed_frame(["c"])[["v", "day", "k"]])
    assert query(warehouse_url, "SELECT * FROM scratch.keyed") == [(0, dt.date(2021, 1, 1), "c")]


def test_the_warehouse_used_outside_a_run_leaves_no_open_transaction(warehouse_url: str) -> None:
    from covid_assets.storage.warehouse import WarehouseResource

    materialize_keyed(warehouse_url, keyed_frame(["a"]))
    warehouse = WarehouseResource()
    with deployment(warehouse_url):
        assert warehouse.row_count("scratch", "keyed") == 1
        assert warehouse.row_count("scratch", "missing") is None
    idle = query(
        warehouse_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND starts_with(state, 'idle in transaction')",
    )
    assert idle == [(0,)]
