"""The COVID job's revision history, end to end: three versions through the local Socrata stand-in.

v1 is the bundled snapshot, v2 revises the counts of a few hundred rows and adds the next days,
v3 withdraws one jurisdiction's series (accepted with allow_shrink). After each run the base
table's fingerprint is kept; `covid_test_results_as_of(committed_at)` and `_at_load(n)` must give
it back exactly, then and after the later loads. `covid_19.loads` and `covid_19.revisions` must
carry the counts computed here from the versions themselves.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator

import pandas as pd
import pytest
from dagster import DagsterInstance

from covid_assets.assets.revisions import revisions, revisions_query
from covid_assets.sources.socrata import SocrataSource
from covid_assets_tests.helpers import SNAPSHOT, failure_message, from_api, materialize_all, materialize_on, query
from covid_assets_tests.support import FakeSocrata
from covid_assets_tests.test_history import fingerprint

BASE = "covid_19.covid_test_results"
LOAD_OP = "load_covid_pcr_testing"
REVISED = 300  # rows whose counts v2 revises
NEW_DAYS = 2  # days after the data's last day v2 adds to every series
WITHDRAWN_STATE = "VI"  # the jurisdiction whose series v3 withdraws
Key = tuple[str, str, str]  # state, outcome, date
Row = dict[str, str]


# ----------------------------------------------------------------------------- the three versions
def version_1() -> list[Row]:
    return pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False).to_dict("records")


def version_2(v1: list[Row]) -> list[Row]:
    """REVISED rows spread over the table with new daily counts, and NEW_DAYS more days of every series."""
    rows = [dict(row) for row in v1]
    for row in rows[:: len(rows) // REVISED][:REVISED]:
        row["new_results_reported"] = str(int(row["new_results_reported"]) + 7)
    last_day = dt.date.fromisoformat(max(row["date"] for row in v1)[:10])
    latest: dict[tuple[str, str], Row] = {}
    for row in v1:
        latest[row["state"], row["overall_outcome"]] = row  # the snapshot is in date order within a series
    for series in latest.values():
        for ahead in range(1, NEW_DAYS + 1):
            total = int(series["total_results_reported"]) + 10 * ahead
            rows.append({**series, "date": (last_day + dt.timedelta(days=ahead)).isoformat(),
                         "new_results_reported": "10", "total_results_reported": str(total)})
    return rows


def version_3(v2: list[Row]) -> list[Row]:
    return [row for row in v2 if row["state"] != WITHDRAWN_STATE]


# ----------------------------------------------------------------------------- what each load should record
def keyed(rows: list[Row]) -> dict[Key, Row]:
    by_key = {(row["state"], row["overall_outcome"], row["date"]): row for row in rows}
    assert len(by_key) == len(rows)
    return by_key


def expected_load(before: list[Row], after: list[Row]) -> tuple[tuple[int, int, int, int], list[tuple]]:
    """(rows_total, added, revised, withdrawn) and the revisions rows (state, added, revised, withdrawn,
    positive change, total change, earliest date) of a load from `before` to `after`."""
    old, new = keyed(before), keyed(after)
    per_state: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0, 0, None])
    for key in old.keys() | new.keys():
        if old.get(key) == new.get(key):
            continue
        state, outcome, date = key
        figures = per_state[state]
        figures[0 if key not in old else 2 if key not in new else 1] += 1
        change = int(new[key]["new_results_reported"]) if key in new else 0
        change -= int(old[key]["new_results_reported"]) if key in old else 0
        figures[3] += change if outcome == "Positive" else 0
        figures[4] += change
        day = dt.date.fromisoformat(date[:10])
        figures[5] = day if figures[5] is None else min(figures[5], day)
    revisions = [(state, *figures) for state, figures in sorted(per_state.items())]
    totals = tuple(sum(row[i] for row in revisions) for i in (1, 2, 3))
    return (len(new), *totals), revisions


# ----------------------------------------------------------------------------- reading the warehouse
def revisions_rows(url: str) -> list[tuple]:
    return query(
        url,
        "SELECT load_id, state, rows_added, rows_revised, rows_withdrawn, positive_results_change, total_results_change, "
        "earliest_date_touched FROM covid_19.revisions ORDER BY load_id, state",
    )


def loads_rows(url: str) -> list[tuple]:
    return query(url, "SELECT load_id, rows_total, rows_added, rows_revised, rows_withdrawn FROM covid_19.loads "
                      "WHERE table_name = 'covid_test_results' ORDER BY load_id")


def committed_at(url: str, load_id: int) -> dt.datetime:
    return query(url, "SELECT committed_at FROM covid_19.loads WHERE table_name = 'covid_test_results' AND load_id = %s",
                 (load_id,))[0][0]


def as_of(url: str, ts: dt.datetime) -> tuple[int, str]:
    return fingerprint(url, "covid_19.covid_test_results_as_of(%s)", (ts,))


def at_load(url: str, load_id: int) -> tuple[int, str]:
    return fingerprint(url, "covid_19.covid_test_results_at_load(%s)", (load_id,))


def revisions_metadata(result) -> dict[str, object]:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["covid_19", "revisions"])
    return {name: value.value for name, value in event.materialization.metadata.items()}


@pytest.fixture
def server() -> Iterator[FakeSocrata]:
    with FakeSocrata([]) as fake:
        yield fake


# ----------------------------------------------------------------------------- the three versions, end to end
@pytest.mark.slow  # three materializations of the whole COVID job from the stand-in
def test_three_published_versions_are_each_readable_as_of_their_load_with_their_loads_and_revisions(
    warehouse_url: str, server: FakeSocrata
) -> None:
    v1 = version_1()
    v2 = version_2(v1)
    versions = [(v1, {}), (v2, {}), (version_3(v2), {"allow_shrink": True})]
    instance = DagsterInstance.ephemeral()
    expected_loads, expected_revisions, seen = [], [], []
    previous: list[Row] = []
    for load_id, (rows, config) in enumerate(versions, start=1):
        server.set_rows(rows)
        server.rows_updated_at += 86_400
        result = materialize_all(warehouse_url, from_api(server.base_url), SocrataSource(page_size=20_000), raise_on_error=False,
                                 instance=instance, run_config={"ops": {LOAD_OP: {"config": config}}} if config else None)
        assert result.success, failure_message(result)
        failed = [(e.asset_key.path[-1], e.check_name) for e in result.get_asset_check_evaluations() if not e.passed]
        assert not any(name.startswith(("history", "loads")) or table == "revisions" for table, name in failed), failed

        (total, added, revised, withdrawn), by_state = expected_load(previous, rows)
        expected_loads.append((load_id, total, added, revised, withdrawn))
        expected_revisions += [(load_id, *row) for row in by_state]
        seen.append(fingerprint(warehouse_url, BASE))
        assert seen[-1][0] == len(rows)
        assert as_of(warehouse_url, committed_at(warehouse_url, load_id)) == at_load(warehouse_url, load_id) == seen[-1]
        assert loads_rows(warehouse_url) == expected_loads
        assert revisions_rows(warehouse_url) == expected_revisions
        metadata = revisions_metadata(result)  # the latest load's figures, plotted run over run in the UI
        assert (metadata["latest_load_id"], metadata["rows_total"], metadata["rows_added"], metadata["rows_revised"],
                metadata["rows_withdrawn"]) == (load_id, total, added, revised, withdrawn)
        assert metadata["view"] == ("created" if load_id == 1 else "unchanged")
        previous = rows

    # What the versions are: all of v1 added; REVISED revised and 2 days of each series added; one state withdrawn.
    series = len({(row["state"], row["overall_outcome"]) for row in v1})
    withdrawn = sum(row["state"] == WITHDRAWN_STATE for row in v2)
    assert [row[2:] for row in expected_loads] == [(len(v1), 0, 0), (NEW_DAYS * series, REVISED, 0), (0, 0, withdrawn)]
    assert {row[1] for row in expected_revisions if row[0] == 3} == {WITHDRAWN_STATE}
    # Every version is still there, exactly, after the later loads; between two commits, the earlier one.
    assert len(set(seen)) == 3
    for load_id, expected in enumerate(seen, start=1):
        ts = committed_at(warehouse_url, load_id)
        assert as_of(warehouse_url, ts) == at_load(warehouse_url, load_id) == expected
        assert as_of(warehouse_url, ts - dt.timedelta(microseconds=1)) == (seen[load_id - 2] if load_id > 1 else (0, ""))
    # The revisions carry each load's commit time, as covid_19.loads does.
    assert query(warehouse_url, "SELECT count(*) FROM covid_19.revisions r JOIN covid_19.loads l USING (load_id) "
                                "WHERE r.committed_at IS DISTINCT FROM l.committed_at") == [(0,)]


# ----------------------------------------------------------------------------- the view
def materialize_revisions(url: str):
    return materialize_on(url, [revisions], raise_on_error=False)


def test_the_view_is_replaced_only_when_its_definition_changed(snapshot_warehouse: str) -> None:
    url = snapshot_warehouse
    rows = revisions_rows(url)
    assert [row[0] for row in rows] == [1] * len(rows) and rows
    relation = "SELECT oid, xmin::text FROM pg_class WHERE oid = 'covid_19.revisions'::regclass"
    stored = query(url, relation)

    unchanged = materialize_revisions(url)
    assert unchanged.success and revisions_metadata(unchanged)["view"] == "unchanged"
    assert query(url, relation) == stored  # not rewritten: readers were never locked out

    stale = revisions_query("covid_19", "covid_test_results").as_string().replace("ORDER BY k.load_id, k.state", "LIMIT 0")
    query(url, f"CREATE OR REPLACE VIEW covid_19.revisions AS {stale}")
    assert revisions_rows(url) == []
    replaced = materialize_revisions(url)
    assert replaced.success and revisions_metadata(replaced)["view"] == "replaced"
    assert revisions_rows(url) == rows


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("DROP VIEW covid_19.revisions; CREATE TABLE covid_19.revisions (x int)",
         "covid_19.revisions exists and is not a view (relkind 'r')"),
        ("DROP VIEW covid_19.revisions; DROP TABLE covid_19.covid_test_results_history",
         "covid_19.covid_test_results_history missing: materialize covid_19.covid_test_results first"),
    ],
    ids=["a-table-in-its-place", "no-history-yet"],
)
def test_the_asset_refuses_what_it_cannot_define_a_view_over(snapshot_warehouse: str, setup: str, message: str) -> None:
    for statement in setup.split("; "):
        query(snapshot_warehouse, statement)
    result = materialize_revisions(snapshot_warehouse)
    assert not result.success
    assert message in failure_message(result)
