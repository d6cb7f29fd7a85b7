import datetime as dt

import pyarrow as pa
import pytest

from covid_assets.storage.keyed_diff import diff_by_key, key_codes

DAY = dt.date(2021, 1, 1)


def table(rows: list[tuple]) -> pa.Table:
    return pa.table({
        "k": pa.array([r[0] for r in rows], pa.string()),
        "d": pa.array([r[1] for r in rows], pa.date32()),
        "v": pa.array([r[2] for r in rows], pa.int64()),
    })


def keys(t: pa.Table) -> list[str]:
    return sorted(t.column("k").to_pylist())


def test_finds_exactly_the_rows_to_delete_and_insert() -> None:
    old = table([("same", DAY, 1), ("null-same", DAY, None), ("to-null", DAY, 2), ("from-null", DAY, None),
                  ("changed", DAY, 3), ("gone", DAY, 4)])
    new = table([("added", DAY, 6), ("changed", DAY, 30), ("from-null", DAY, 5), ("to-null", DAY, None),
                 ("null-same", DAY, None), ("same", DAY, 1)])
    inserts, deletes = diff_by_key(old, new, ["k", "d"])
    assert sorted(inserts.to_pylist(), key=str) == sorted(
        [{"k": "to-null", "d": DAY, "v": None}, {"k": "from-null", "d": DAY, "v": 5},
         {"k": "changed", "d": DAY, "v": 30}, {"k": "added", "d": DAY, "v": 6}], key=str)
    assert keys(deletes) == ["changed", "from-null", "gone", "to-null"]
    assert deletes.column_names == ["k", "d"]


def test_every_key_column_counts() -> None:
    old = table([("a", DAY, 1), ("a", DAY + dt.timedelta(days=1), 2)])
    new = table([("a", DAY + dt.timedelta(days=1), 2), ("a", DAY, 1), ("b", DAY, 1)])
    inserts, deletes = diff_by_key(old, new, ["k", "d"])
    assert inserts.to_pylist() == [{"k": "b", "d": DAY, "v": 1}]
    assert deletes.num_rows == 0


def test_empty_sides() -> None:
    rows = table([("a", DAY, 1), ("b", DAY, 2)])
    inserts, deletes = diff_by_key(rows.slice(0, 0), rows, ["k", "d"])
    assert (keys(inserts), deletes.num_rows) == (["a", "b"], 0)
    inserts, deletes = diff_by_key(rows, rows.slice(0, 0), ["k", "d"])
    assert (inserts.num_rows, keys(deletes)) == (0, ["a", "b"])


def test_a_repeated_key_in_the_frame_is_an_error_not_a_silent_dedup() -> None:
    old = table([("a", DAY, 1)])
    new = table([("b", DAY, 1), ("a", DAY, 1), ("c", DAY, 1), ("a", DAY, 1)])
    with pytest.raises(ValueError, match=r"key \{'k': 'a', 'd': datetime.date\(2021, 1, 1\)\} more than once; a table keyed by \['k', 'd'\]"):
        diff_by_key(old, new, ["k", "d"])


def test_codes_stay_exact_for_keys_too_wide_for_one_int64() -> None:
    """Nine key columns: one of 2 values, then eight of 256 (2 x 256^8 = 2^65 combinations), so a
    plain mixed radix would shift the first column out of 64 bits and codes would collide."""
    rows = 512
    columns = {"c0": pa.array([row // 256 for row in range(rows)], pa.int64())}
    columns |= {f"c{i}": pa.array([row % 256 for row in range(rows)], pa.int64()) for i in range(1, 9)}
    old = pa.table(columns)
    new = old.take(list(reversed(range(rows))))
    old_codes, new_codes = key_codes(old, new, list(columns))
    assert len(set(old_codes.tolist())) == rows
    assert new_codes.tolist() == old_codes.tolist()[::-1]


def test_applying_the_plan_turns_old_into_new_and_touches_nothing_else() -> None:
    """Random tables with NULL values, shared, vanished and new keys: delete then insert must give
    exactly `new`, and every deleted or inserted row must really differ."""
    import random

    rng = random.Random(7)
    all_keys = [(state, DAY + dt.timedelta(days=d)) for state in ("AL", "AK", "PR", "VI") for d in range(60)]

    def random_rows(share: float) -> list[tuple]:
        chosen = rng.sample(all_keys, int(len(all_keys) * share))
        return [(k, d, rng.choice([None, 1, 2, 3])) for k, d in chosen]

    for _ in range(20):
        old_rows, new_rows = random_rows(0.8), random_rows(0.8)
        inserts, deletes = diff_by_key(table(old_rows), table(new_rows), ["k", "d"])
        deleted = {(r["k"], r["d"]) for r in deletes.to_pylist()}
        result = {(k, d, v) for k, d, v in old_rows if (k, d) not in deleted}
        result |= {(r["k"], r["d"], r["v"]) for r in inserts.to_pylist()}
        assert result == set(new_rows)
        assert deletes.num_rows + inserts.num_rows == len(set(old_rows) ^ set(new_rows))
