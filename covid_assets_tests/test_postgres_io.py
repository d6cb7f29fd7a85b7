"""The Postgres IO manager on a real Postgres: dtypes, column subsets, keys, atomic replace."""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from dagster import AssetIn, AssetKey, TableColumn, TableSchema, asset

from covid_assets_tests.helpers import as_role, deployment, materialize_on, query, reader_role

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


def table_columns(url: str, table: str = "keyed") -> list[tuple[str, str]]:
    return query(
        url,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'scratch' "
        "AND table_name = %s ORDER BY ordinal_position",
        (table,),
    )


def primary_key(url: str, table: str = "scratch.keyed") -> list[str]:
    rows = query(
        url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (table,),
    )
    return [name for (name,) in rows]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "unkeyed"])
def test_a_new_column_is_added_in_place_and_views_grants_and_indexes_survive(warehouse_url: str, keyed: bool) -> None:
    """The table is altered, never dropped: what analysts built on it stays."""

    def write(frame: pd.DataFrame) -> None:
        @asset(key_prefix=["scratch"], name="keyed", metadata={"primary_key": ["k", "day"]} if keyed else {})
        def table() -> pd.DataFrame:
            return frame

        materialize_on(warehouse_url, [table])

    write(keyed_frame(["a", "b"]))
    with reader_role(warehouse_url) as reader:
        for statement in (
            "CREATE VIEW scratch.keyed_view AS SELECT k, v FROM scratch.keyed",
            "CREATE INDEX keyed_v ON scratch.keyed (v)",
            f'GRANT USAGE ON SCHEMA scratch TO "{reader}"',
            f'GRANT SELECT ON scratch.keyed, scratch.keyed_view TO "{reader}"',
        ):
            query(warehouse_url, statement)
        oid = query(warehouse_url, "SELECT 'scratch.keyed'::regclass::oid")

        write(keyed_frame(["b", "c", "d"]).assign(extra=pd.array(["x", None, "z"], dtype="string")))

        assert query(warehouse_url, "SELECT 'scratch.keyed'::regclass::oid") == oid
        assert table_columns(warehouse_url) == [("k", "text"), ("day", "date"), ("v", "bigint"), ("extra", "text")]
        assert query(warehouse_url, "SELECT k, v, extra FROM scratch.keyed ORDER BY k") == [("b", 0, "x"), ("c", 1, None), ("d", 2, "z")]
        assert as_role(warehouse_url, reader, "SELECT k FROM scratch.keyed_view ORDER BY k") == [("b",), ("c",), ("d",)]
        assert as_role(warehouse_url, reader, "SELECT count(extra) FROM scratch.keyed") == [(2,)]
        assert query(warehouse_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'keyed' AND indexname = 'keyed_v'") == [("keyed_v",)]
        assert primary_key(warehouse_url) == (["k", "day"] if keyed else [])


def test_a_removed_column_is_kept_and_null_in_the_rows_written_after(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]).assign(extra=pd.array(["x", "y"], dtype="string")))
    query(warehouse_url, "CREATE VIEW scratch.extra_view AS SELECT k, extra FROM scratch.keyed")
    changed = keyed_frame(["a", "b", "c"]).assign(v=pd.array([0, 5, 2], dtype="Int64"))  # a unchanged, b changed, c new
    result = materialize_keyed(warehouse_url, changed)
    assert table_columns(warehouse_url)[-1] == ("extra", "text")
    # Rows the run wrote hold NULL; the unchanged row keeps its value (module docstring).
    assert query(warehouse_url, "SELECT k, v, extra FROM scratch.extra_view JOIN scratch.keyed USING (k, extra) ORDER BY k") == [("a", 0, "x")]
    assert query(warehouse_url, "SELECT k, v, extra FROM scratch.keyed ORDER BY k") == [("a", 0, "x"), ("b", 5, None), ("c", 2, None)]
    metadata = result.asset_materializations_for_node("scratch__keyed")[0].metadata
    assert metadata["columns_no_longer_written"].value == ["extra"]


def test_a_changed_column_type_is_a_clear_error_and_keeps_the_table(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a"]))
    retyped = keyed_frame(["b"]).assign(v=pd.array(["seven"], dtype="string"))
    with pytest.raises(Exception, match=r"column types of scratch.keyed changed \('v' is BIGINT in the table, TEXT in the frame\)"):
        materialize_keyed(warehouse_url, retyped)
    assert table_columns(warehouse_url) == [("k", "text"), ("day", "date"), ("v", "bigint")]
    assert query(warehouse_url, "SELECT k, v FROM scratch.keyed") == [("a", 0)]


def test_a_changed_primary_key_is_swapped_in_place(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]))
    query(warehouse_url, "CREATE VIEW scratch.keyed_view AS SELECT k, day FROM scratch.keyed")

    @asset(key_prefix=["scratch"], name="keyed", metadata={"primary_key": ["v"]})
    def rekeyed() -> pd.DataFrame:
        return keyed_frame(["a", "b", "c"]).assign(day=pd.array([None] * 3, dtype=DATE))  # day leaves the key: NULL allowed

    materialize_on(warehouse_url, [rekeyed])
    assert primary_key(warehouse_url) == ["v"]
    assert query(warehouse_url, "SELECT k, day, v FROM scratch.keyed ORDER BY v") == [("a", None, 0), ("b", None, 1), ("c", None, 2)]
    assert query(warehouse_url, "SELECT count(*) FROM scratch.keyed_view") == [(3,)]
    materialize_keyed(warehouse_url, keyed_frame(["a"]))  # and back, merging afterwards as usual
    assert primary_key(warehouse_url) == ["k", "day"]
    assert query(warehouse_url, "SELECT k, v FROM scratch.keyed") == [("a", 0)]


@pytest.mark.parametrize(
    "name, problem",
    [
        ("x" * 64, "at most 63 bytes"),
        ("ä" * 32, "at most 63 bytes"),  # 64 bytes in UTF-8
        ("", "non-empty"),
    ],
    ids=["64-ascii-bytes", "64-utf8-bytes", "empty"],
)
def test_column_names_postgres_would_truncate_or_refuse_are_a_clear_error(warehouse_url: str, name: str, problem: str) -> None:
    with pytest.raises(Exception, match=f"column names must be {problem}|{problem}"):
        store_and_load(warehouse_url, pd.DataFrame({name: pd.array(["a"], dtype="string")}))


def test_json_columns_are_jsonb_and_round_trip(warehouse_url: str) -> None:
    json_dtype = pd.ArrowDtype(pa.json_())
    frame = keyed_frame(["a", "b"]).assign(doc=pd.array(['{"x": "1"}', None], dtype=json_dtype))
    loaded = store_and_load(warehouse_url, frame)
    assert str(loaded["doc"].dtype) == str(json_dtype)
    assert loaded["doc"].tolist()[0] == '{"x": "1"}' and loaded["doc"].isna().tolist() == [False, True]
    assert query(warehouse_url, "SELECT data_type FROM information_schema.columns WHERE column_name = 'doc'") == [("jsonb",)]
    assert query(warehouse_url, "SELECT doc->>'x' FROM scratch.stored WHERE k = 'a'") == [("1",)]
    materialize_keyed(warehouse_url, frame)  # a keyed table merges them too, written twice
    materialize_keyed(warehouse_url, frame.assign(doc=pd.array(['{"x": "2"}', '{}'], dtype=json_dtype)))
    assert query(warehouse_url, "SELECT k, doc->>'x' FROM scratch.keyed ORDER BY k") == [("a", "2"), ("b", None)]


@pytest.mark.slow
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


def test_reordered_columns_are_written_by_name_without_rebuilding(warehouse_url: str) -> None:
    materialize_keyed(warehouse_url, keyed_frame(["a", "b"]))
    oid = query(warehouse_url, "SELECT 'scratch.keyed'::regclass::oid")
    materialize_keyed(warehouse_url, keyed_frame(["c"])[["v", "day", "k"]])
    assert query(warehouse_url, "SELECT * FROM scratch.keyed") == [("c", dt.date(2021, 1, 1), 0)]
    assert query(warehouse_url, "SELECT 'scratch.keyed'::regclass::oid") == oid


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


def declared_asset(frame: pd.DataFrame, columns: dict[str, str], key: list[str] | None = None):
    """An asset declaring its column types (`dagster/column_schema`), as the pipeline's tables do."""
    schema = TableSchema(columns=[TableColumn(name, type_) for name, type_ in columns.items()])
    metadata = {"dagster/column_schema": schema, **({"primary_key": key} if key else {})}

    @asset(key_prefix=["scratch"], name="declared", metadata=metadata)
    def declared() -> pd.DataFrame:
        return frame

    return declared


def test_declared_column_types_are_the_tables_not_the_frames(warehouse_url: str) -> None:
    """NUMERIC for floats, BIGINT and DATE for columns that hold only NULLs: the frame alone would say
    DOUBLE PRECISION and TEXT. A keyed rewrite merges exactly, and a read gives the frame dtypes back."""
    declared = {"k": "text", "amount": "numeric", "n": "bigint", "day": "date"}
    frame = pd.DataFrame({"k": ["a", "b", "c"], "amount": [0.1, 3.125, None], "n": [None] * 3, "day": [None] * 3})
    materialize_on(warehouse_url, [declared_asset(frame, declared, key=["k"])])
    assert table_columns(warehouse_url, "declared") == [("k", "text"), ("amount", "numeric"), ("n", "bigint"), ("day", "date")]
    assert query(warehouse_url, "SELECT k, amount::text FROM scratch.declared ORDER BY k") == [("a", "0.1"), ("b", "3.125"), ("c", None)]

    revised = frame.assign(amount=[0.1, 2.5, 7.0])
    materialize_on(warehouse_url, [declared_asset(revised, declared, key=["k"])])
    assert query(warehouse_url, "SELECT k, amount::text FROM scratch.declared ORDER BY k") == [("a", "0.1"), ("b", "2.5"), ("c", "7")]
    (xmin_a,) = query(warehouse_url, "SELECT xmin::text FROM scratch.declared WHERE k = 'a'")[0]
    materialize_on(warehouse_url, [declared_asset(revised, declared, key=["k"])])
    assert query(warehouse_url, "SELECT xmin::text FROM scratch.declared WHERE k = 'a'") == [(xmin_a,)]  # unchanged row kept

    loaded: dict[str, pd.DataFrame] = {}

    @asset(ins={"declared": AssetIn(key=AssetKey(["scratch", "declared"]))})
    def reader(declared: pd.DataFrame) -> None:
        loaded["frame"] = declared

    materialize_on(warehouse_url, [declared_asset(revised, declared, key=["k"]), reader])
    assert loaded["frame"]["amount"].tolist() == [0.1, 2.5, 7.0] and str(loaded["frame"]["amount"].dtype) == "float64"
    assert str(loaded["frame"]["n"].dtype) == "Int64" and str(loaded["frame"]["day"].dtype) == "date32[day][pyarrow]"


def test_a_frame_that_differs_from_its_declared_columns_is_a_clear_error(warehouse_url: str) -> None:
    frame = pd.DataFrame({"k": ["a"], "extra": [1]})
    with pytest.raises(Exception, match=r"not declared \['extra'\], declared but missing \['n'\]"):
        materialize_on(warehouse_url, [declared_asset(frame, {"k": "text", "n": "bigint"})])
    with pytest.raises(Exception, match=r"column 'k' holds (large_)?string, which cannot be written as BIGINT"):
        materialize_on(warehouse_url, [declared_asset(pd.DataFrame({"k": ["x"]}), {"k": "bigint"})])
    with pytest.raises(Exception, match=r"declared column types with no Postgres mapping: \['k money'\]"):
        materialize_on(warehouse_url, [declared_asset(pd.DataFrame({"k": ["x"]}), {"k": "money"})])
