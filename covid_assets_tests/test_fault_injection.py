"""Fault injection: all eight tables against a Socrata look-alike and a real Postgres.

Every case starts from a warehouse that already holds a good load (four jurisdictions of the
real snapshot, 4,213 rows), injects one fault, runs the pipeline again and checks two things:
the outcome (a success with its retries counted, or a clear error), and that nothing stored was
lost (`table_fingerprints` of all eight tables, the history and the loads, before and after).

Failures in the middle of a table write are made deterministic with a lock: the test holds an
uncommitted row whose key the refresh is about to insert (the writer's COPY then waits on the
primary key), or a row lock (the writer's DELETE waits on it). While the writer waits inside its
transaction, the test reads the tables, kills the writing process or restarts the server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from dagster import AssetIn, AssetKey, AssetOut, asset, multi_asset
from psycopg import sql

from covid_assets.sources.socrata import REQUIRED_COLUMNS, SocrataSource
from covid_assets.storage.embedded import stop_embedded_postgres
from covid_assets.storage.warehouse import WarehouseResource
from covid_assets_tests.support import FakeSocrata, Fault
from covid_assets_tests.helpers import (
    COVID_SELECTION,
    HISTORY_TABLES,
    SNAPSHOT,
    TABLES,
    as_role,
    create_database,
    deployment,
    drop_database,
    failure_message,
    fresh_database,
    from_api,
    from_file,
    materialize_all,
    materialize_on,
    materialized,
    query,
    reader_role,
    table_fingerprints,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180, method="thread")]

STATES = ("AK", "AL", "CA", "WY")  # 4,213 rows: five pages of 1,000
GROWTH_STATE = "CO"  # the refresh that adds a jurisdiction (growth passes the shrink guard)
RAW, BASE = TABLES[0], TABLES[1]
SUMMARIES = TABLES[2:]
ALL_ASSETS = {table.split(".")[1] for table in TABLES}
MAX_RETRIES = 3


# ---------------------------------------------------------------------------------------
# Data, sources and warehouses
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def snapshot_frame() -> pd.DataFrame:
    return pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def good_rows(snapshot_frame: pd.DataFrame) -> list[dict[str, str]]:
    """What the warehouse holds before each fault: the real rows of four jurisdictions."""
    return snapshot_frame[snapshot_frame["state"].isin(STATES)].to_dict("records")


@pytest.fixture(scope="module")
def grown_rows(snapshot_frame: pd.DataFrame) -> list[dict[str, str]]:
    """A refresh that adds a fifth jurisdiction."""
    return snapshot_frame[snapshot_frame["state"].isin((*STATES, GROWTH_STATE))].to_dict("records")


def knobs(**overrides) -> SocrataSource:
    """Small pages, two workers, tiny backoff and timeouts: every failure comes quickly."""
    options = dict(
        page_size=1000,
        max_workers=2,
        backoff_factor=0.01,
        max_retries=MAX_RETRIES,
        connect_timeout_s=1.0,
        read_timeout_s=0.5,
    )
    return SocrataSource(**{**options, **overrides})


def create_loaded_database(admin_url: str, prefix: str, rows_: list[dict[str, str]]) -> tuple[str, str]:
    """A new database holding a successful load of `rows_`, served by the fake API: its name and URL."""
    name, url = create_database(admin_url, prefix)
    with FakeSocrata(rows_) as fake:
        result = materialize_all(url, from_api(fake.base_url), knobs(), raise_on_error=False)
    assert result.success, failure_message(result)
    return name, url


@dataclass(frozen=True)
class Loaded:
    url: str
    before: dict[str, tuple]


@pytest.fixture(scope="module")
def loaded_template(postgres_server_url: str, good_rows: list[dict[str, str]]) -> Iterator[tuple[str, dict]]:
    """One good load, copied (CREATE DATABASE ... TEMPLATE) into a fresh database per test."""
    name, url = create_loaded_database(postgres_server_url, "fi_template", good_rows)
    yield name, table_fingerprints(url)
    drop_database(postgres_server_url, name)


@pytest.fixture
def loaded(postgres_server_url: str, loaded_template: tuple[str, dict]) -> Iterator[Loaded]:
    """A fresh database that already holds the good load (all eight tables)."""
    template, fingerprints = loaded_template
    with fresh_database(postgres_server_url, "fi", template=template) as url:
        before = table_fingerprints(url)
        assert before == fingerprints and before[BASE][0] == 4_213
        yield Loaded(url, before)


def run(url: str, fake: FakeSocrata, **knob_overrides):
    started = time.monotonic()
    result = materialize_all(url, from_api(fake.base_url), knobs(**knob_overrides), raise_on_error=False)
    return result, time.monotonic() - started


def asset_metadata(result, table: str) -> dict[str, object]:
    name = table.split(".")[1]
    return next(
        {key: entry.value for key, entry in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key.path[-1] == name
    )


def count(url: str, table: str) -> int:
    return query(url, f"SELECT count(*) FROM {table}")[0][0]


def fetched_at(url: str):
    return query(url, f"SELECT min(fetched_at), max(fetched_at) FROM {RAW}")[0]


# ---------------------------------------------------------------------------------------
# Transport: transient faults are retried, counted, and bounded
# ---------------------------------------------------------------------------------------
def page(offset: int) -> dict[str, object]:
    return {"where": "page", "offset": offset}


TRANSIENT = {
    # id: (faults, FakeSocrata options, retries expected in fetch_retries, least fetch_seconds)
    "429-with-retry-after": (lambda: [Fault.error(429, retry_after="1", **page(1000))], {}, 1, 0.95),
    "500-502-503-burst": (lambda: [Fault.error(status, **page(2000)) for status in (500, 502, 503)], {}, 3, 0),
    "connection-resets": (lambda: [Fault.reset(**page(0)), Fault.reset(**page(3000))], {}, 2, 0),
    "read-timeout": (lambda: [Fault.sleep(3.0, **page(1000))], {}, 1, 0.5),
    "reset-mid-body": (lambda: [Fault.reset_mid_body(**page(2000))], {}, 1, 0),
    "read-timeout-mid-body": (lambda: [Fault.stall_mid_body(3.0, **page(4000))], {}, 1, 0.5),
    # 0.1 s before every answer, and every page body trickling in over ~0.9 s (longer than the
    # 0.5 s read timeout, but never silent for that long): slow is not failed.
    "slow-server": (lambda: [Fault.drip(0.1, where="page", times=5)], {"latency_s": 0.1}, 0, 2.0),
}


@pytest.mark.parametrize("faults, server_options, retries, least_seconds", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_faults_are_retried_counted_and_bounded(
    loaded: Loaded,
    good_rows: list[dict[str, str]],
    faults: Callable[[], list[Fault]],
    server_options: dict,
    retries: int,
    least_seconds: float,
) -> None:
    fetched_before = fetched_at(loaded.url)
    with FakeSocrata(good_rows, **server_options) as fake:
        fake.faults.extend(faults())
        result, elapsed = run(loaded.url, fake)
        unserved = list(fake.faults)
    assert result.success, failure_message(result)
    assert unserved == []  # every injected fault was really served
    assert materialized(result) == ALL_ASSETS
    raw = asset_metadata(result, RAW)
    assert raw["fetch_retries"] == retries
    assert raw["fetch_pages"] == 5 and raw["source_row_count"] == 4_213
    assert least_seconds <= raw["fetch_seconds"] and elapsed < 20  # e.g. waited as Retry-After asked, not 10 ms
    # The same rows were delivered again: every table rewritten (new fetched_at) with the same content.
    assert fetched_at(loaded.url)[0] > fetched_before[1]
    assert table_fingerprints(loaded.url) == loaded.before


NEVER_RECOVERS = {
    "503-forever": (
        lambda: Fault.error(503, message="Service Unavailable", times=100, **page(1000)),
        r"Socrata answered HTTP 503 Service Unavailable to GET .*\$offset=1000 \(still failing after 4 attempts\)",
    ),
    "resets-forever": (lambda: Fault.reset(times=100, **page(1000)), r"\$offset=1000 failed after 4 attempt\(s\): \w+Error"),
    "read-timeouts-forever": (
        lambda: Fault.sleep(3.0, times=100, **page(1000)),
        r"\$offset=1000 failed after 4 attempt\(s\): ReadTimeoutError: .*Read timed out",
    ),
    "body-breaks-off-forever": (
        lambda: Fault.reset_mid_body(times=100, **page(1000)),
        r"\$offset=1000 failed after 4 attempt\(s\): the response body broke off: ChunkedEncodingError",
    ),
}


@pytest.mark.parametrize("fault, expected", NEVER_RECOVERS.values(), ids=NEVER_RECOVERS.keys())
def test_a_server_that_never_recovers_fails_after_the_configured_attempts(
    loaded: Loaded, good_rows: list[dict[str, str]], fault: Callable[[], Fault], expected: str
) -> None:
    with FakeSocrata(good_rows) as fake:
        fake.faults.append(fault())
        result, elapsed = run(loaded.url, fake)
        attempts = [r for r in fake.page_requests() if r.params["$offset"] == "1000"]
    assert not result.success
    message = failure_message(result)
    assert re.search(expected, message), message
    assert len(attempts) == 1 + MAX_RETRIES
    assert elapsed < 20
    assert materialized(result) == set()
    assert table_fingerprints(loaded.url) == loaded.before


# ---------------------------------------------------------------------------------------
# Bad deliveries: each its own clear error, or the documented behaviour
# ---------------------------------------------------------------------------------------
def without(rows_: list[dict[str, str]], column: str) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != column} for row in rows_]


def renamed(rows_: list[dict[str, str]], old: str, new: str) -> list[dict[str, str]]:
    return [{(new if k == old else k): v for k, v in row.items()} for row in rows_]


def vanish_after_first_page(fake: FakeSocrata) -> None:
    def truncate(target: str, params: dict[str, str]) -> None:
        if target == "page":
            fake.truncate_rows(2_000)

    fake.on_request = truncate


BAD_DELIVERIES = {
    # id: (prepare the fake from the good rows, source options, expected message)
    "html-page-with-status-200": (
        lambda fake, good: fake.faults.append(Fault.html(**page(1000))),
        {},
        r"\$offset=1000: the response is an HTML page \(Content-Type text/html\), not JSON",
    ),
    "cut-off-json-body": (
        lambda fake, good: fake.faults.append(Fault.truncated(**page(1000))),
        {},
        r"\$offset=1000: the response is not valid JSON \(.* at byte \d+ of \d+; cut off in transit\?\)",
    ),
    "empty-array-on-the-first-page": (
        lambda fake, good: fake.faults.append(Fault.empty(**page(0))),
        {},
        r"the first page is empty although count\(\*\) reported 4213 rows",
    ),
    "page-repeats-the-previous-one": (
        lambda fake, good: fake.faults.append(Fault.repeat_previous(**page(1000))),
        {"max_workers": 1},
        r"\$offset=1000 returned exactly the same rows as the page at offset 0: the server is not paging consistently",
    ),
    "source-loses-half-its-rows": (
        lambda fake, good: fake.set_rows(good[::2]),
        {},
        r"refusing to replace covid_19.covid_test_results: the source has 2,107 rows, the stored table 4,213 "
        r"\(50.0% fewer; at most 5% allowed\)\. Nothing was written",
    ),
    "rows-vanish-during-the-fetch": (
        lambda fake, good: vanish_after_first_page(fake),
        {},
        r"returned 2000 rows but count\(\*\) reported 4213: the dataset changed during the fetch",
    ),
    "missing-required-column": (
        lambda fake, good: fake.set_rows(without(good, "fema_region")),
        {},
        r"required column\(s\) missing: fema_region \(columns present: state, state_name, state_fips, overall_outcome",
    ),
    "state_fips-absent-from-every-row": (
        lambda fake, good: fake.set_rows(without(good, "state_fips")),
        {},
        r"required column\(s\) missing: state_fips ",
    ),
    "renamed-column": (
        lambda fake, good: fake.set_rows(renamed(good, "new_results_reported", "new_results")),
        {},
        r"required column\(s\) missing: new_results_reported \(columns present: [^)]*, new_results, ",
    ),
    # A hostile or broken server: refused before it can take the run's memory.
    "count-in-the-billions": (
        lambda fake, good: fake.faults.append(Fault.json_body([{"count": "10000000000"}], where="count")),
        {},
        r"reports count\(\*\) = 10,000,000,000 rows, more than this client fetches: 100,000 pages of 1,000 rows "
        r"= 100,000,000; refusing",
    ),
    "a-page-dripping-forever": (  # 20 pieces 0.3 s apart: every read is quick, the whole never arrives in time
        lambda fake, good: fake.faults.append(Fault.drip(0.3, pieces=20, times=100, **page(1000))),
        {"request_deadline_s": 1.0, "max_retries": 1},
        r"\$offset=1000 failed after 2 attempt\(s\): no complete response within the request deadline of 1 s",
    ),
    "gzip-bomb-beyond-the-default-body-cap": (  # ~300 kB on the wire, 300 MiB decoded
        lambda fake, good: fake.faults.append(Fault.gzip_bomb(300, **page(1000))),
        {},
        r"\$offset=1000 is larger than max_body_bytes = 268,435,456 bytes \(more than that arrived after gzip decoding\)",
    ),
}


@pytest.mark.parametrize("prepare, options, expected", BAD_DELIVERIES.values(), ids=BAD_DELIVERIES.keys())
def test_a_bad_delivery_is_a_clear_error_and_changes_nothing(
    loaded: Loaded, good_rows: list[dict[str, str]], prepare: Callable, options: dict, expected: str
) -> None:
    with FakeSocrata(good_rows) as fake:
        prepare(fake, good_rows)
        result, _ = run(loaded.url, fake, **options)
    assert not result.success
    assert re.search(expected, failure_message(result)), failure_message(result)
    assert materialized(result) == set()
    assert table_fingerprints(loaded.url) == loaded.before


def test_a_redirect_to_another_origin_fails_the_run_and_never_carries_the_token(
    loaded: Loaded, good_rows: list[dict[str, str]]
) -> None:
    token = "app-token-that-must-stay-home"
    with FakeSocrata(good_rows) as fake, FakeSocrata(good_rows) as elsewhere:
        target = f"{elsewhere.base_url}/resource/{fake.dataset_id}.json?$order=:id&$limit=1000&$offset=1000"
        fake.faults.append(Fault.redirect(target, **page(1000)))
        result = materialize_all(loaded.url, from_api(fake.base_url, app_token=token), knobs(), raise_on_error=False)
        assert elsewhere.requests == []
        assert fake.requests and all(r.headers.get("X-App-Token") == token for r in fake.requests)
    assert not result.success
    message = failure_message(result)
    assert re.search(
        # With a token the client speaks SODA3: the page is named by its number and size.
        rf"query.json \[pageNumber=2, pageSize=1000\] answered HTTP 302 with a redirect to {re.escape(elsewhere.base_url)}/\S+, outside "
        rf"{re.escape(fake.base_url)}: not followed",
        message,
    ), message
    assert token not in message
    assert materialized(result) == set()
    assert table_fingerprints(loaded.url) == loaded.before


def test_an_extra_column_is_kept_in_raw_and_ignored_downstream(loaded: Loaded, good_rows: list[dict[str, str]]) -> None:
    extra = [{**row, "geocoded_state": f"POINT ({i} 1)"} for i, row in enumerate(good_rows)]
    with FakeSocrata(extra) as fake:
        result, _ = run(loaded.url, fake)
    assert result.success, failure_message(result)
    assert query(loaded.url, f"SELECT count(extra_columns->>'geocoded_state'), max(extra_columns->>'geocoded_state') FROM {RAW}") == [
        (4_213, "POINT (999 1)")
    ]
    after = table_fingerprints(loaded.url)
    assert after[RAW] != loaded.before[RAW]
    assert {t: after[t] for t in TABLES[1:]} == {t: loaded.before[t] for t in TABLES[1:]}


# Source column names and values that Postgres could not take as columns or text: each of these
# once failed every run until the source changed. Row MARKED gets the extra fields; id: (extra
# fields of that row, what its extra_columns must hold, source columns dropped).
MARKED = 7
MANY = {f"c{i:04}": str(i) for i in range(1_601)}
ODD_SOURCE_COLUMNS = {
    "name-over-63-bytes": ({"ä" * 40: "eighty bytes"}, {"ä" * 40: "eighty bytes"}, 0),
    "names-equal-in-their-first-63-bytes": ({"n" * 63 + "a": "1", "n" * 63 + "b": "2"}, {"n" * 63 + "a": "1", "n" * 63 + "b": "2"}, 0),
    "empty-name": ({"": "blank"}, {"": "blank"}, 0),
    "1,601-columns": (MANY, dict(list(MANY.items())[:1_000]), 601),
    "names-of-our-own-columns": ({"fetched_at": "yesterday", "extra_columns": "{"}, {"fetched_at": "yesterday", "extra_columns": "{"}, 0),
    "nul-bytes-in-names-and-values": ({"no\x00te": 'a\x00"b"\\'}, {"note": 'a"b"\\'}, 0),
    "quotes-and-control-characters": ({'say "hi"\n': "tab\there\x01 ✓"}, {'say "hi"\n': "tab\there\x01 ✓"}, 0),
}


@pytest.mark.parametrize("extra, stored, dropped", ODD_SOURCE_COLUMNS.values(), ids=ODD_SOURCE_COLUMNS.keys())
def test_odd_source_columns_land_in_extra_columns_and_change_nothing_else(
    loaded: Loaded, good_rows: list[dict[str, str]], extra: dict[str, str], stored: dict[str, str], dropped: int
) -> None:
    delivered = [dict(row) for row in good_rows]
    delivered[MARKED].update(extra)
    delivered[MARKED + 1]["state_name"] = delivered[MARKED + 1]["state_name"][:2] + "\x00" + delivered[MARKED + 1]["state_name"][2:]
    with FakeSocrata(delivered) as fake:
        result, _ = run(loaded.url, fake)
    assert result.success, failure_message(result)
    columns = query(loaded.url, "SELECT column_name FROM information_schema.columns WHERE table_schema || '.' || table_name = %s", (RAW,))
    assert sorted(name for (name,) in columns) == sorted([*REQUIRED_COLUMNS, "extra_columns", "fetched_at"])  # no source name became a column
    marked = delivered[MARKED]
    rows = query(loaded.url, f"SELECT extra_columns FROM {RAW} WHERE extra_columns IS NOT NULL")
    assert rows == [(stored,)]
    assert query(
        loaded.url, f"SELECT count(*) FROM {RAW} WHERE state = %s AND overall_outcome = %s AND date = %s AND extra_columns IS NOT NULL",
        (marked["state"], marked["overall_outcome"], marked["date"]),
    ) == [(1,)]
    raw = asset_metadata(result, RAW)
    assert raw["nul_values_stripped"] >= 1
    assert ("extra_columns_dropped" in raw) == bool(dropped)
    if dropped:
        assert raw["extra_columns_dropped"].startswith("'c1000', 'c1001'") and raw["extra_columns_dropped"].endswith("(601 in all)")
    # The NUL byte left state_name as it was: base table and summaries are unchanged.
    after = table_fingerprints(loaded.url)
    assert {t: after[t] for t in TABLES[1:]} == {t: loaded.before[t] for t in TABLES[1:]}


def test_a_nul_byte_in_a_count_is_a_bad_row_not_another_number(loaded: Loaded, good_rows: list[dict[str, str]]) -> None:
    delivered = [dict(row) for row in good_rows]
    delivered[MARKED]["new_results_reported"] = "1\x002"
    with FakeSocrata(delivered) as fake:
        result, _ = run(loaded.url, fake)
    assert not result.success
    assert f"source row {MARKED}: non-numeric new_results_reported: " in failure_message(result)
    assert table_fingerprints(loaded.url) == loaded.before


def test_views_and_grants_survive_a_refresh_in_which_the_source_added_a_column(
    loaded: Loaded, good_rows: list[dict[str, str]]
) -> None:
    """Analysts' views on the raw table and a summary, and a reader's grants, outlive the refresh."""
    summary = "covid_19.state_results"
    with reader_role(loaded.url) as reader:
        for statement in (
            f"CREATE VIEW public.raw_by_state AS SELECT state, count(*) AS n FROM {RAW} GROUP BY state",
            f"CREATE VIEW public.positivity AS SELECT state, positivity_rate FROM {summary}",
            f'GRANT USAGE ON SCHEMA covid_19_raw, covid_19 TO "{reader}"',
            f'GRANT SELECT ON {RAW}, {summary}, public.raw_by_state, public.positivity TO "{reader}"',
        ):
            query(loaded.url, statement)
        oids = query(loaded.url, f"SELECT '{RAW}'::regclass::oid, '{summary}'::regclass::oid")
        grown = [{**row, "geocoded_state": f"POINT ({i} 1)"} for i, row in enumerate(good_rows)]
        with FakeSocrata(grown) as fake:
            result, _ = run(loaded.url, fake)
        assert result.success, failure_message(result)
        assert query(loaded.url, f"SELECT '{RAW}'::regclass::oid, '{summary}'::regclass::oid") == oids  # never dropped
        assert as_role(loaded.url, reader, "SELECT sum(n) FROM public.raw_by_state") == [(4_213,)]
        assert as_role(loaded.url, reader, "SELECT count(*) FROM public.positivity") == [(len(STATES),)]
        assert as_role(loaded.url, reader, f"SELECT count(extra_columns->>'geocoded_state') FROM {RAW}") == [(4_213,)]
        assert as_role(loaded.url, reader, f"SELECT count(*) FROM {summary}") == [(len(STATES),)]


def test_a_raw_table_of_the_old_shape_is_upgraded_in_place(loaded: Loaded, good_rows: list[dict[str, str]]) -> None:
    """Before extra_columns, a source column became a raw column: it is kept (NULL from now on), with its views."""
    query(loaded.url, f"ALTER TABLE {RAW} DROP COLUMN IF EXISTS extra_columns, ADD COLUMN geocoded_state TEXT")
    query(loaded.url, f"UPDATE {RAW} SET geocoded_state = 'old'")
    query(loaded.url, f"CREATE VIEW public.geo AS SELECT state, geocoded_state FROM {RAW}")
    grown = [{**row, "geocoded_state": f"POINT ({i} 1)"} for i, row in enumerate(good_rows)]
    with FakeSocrata(grown) as fake:
        result, _ = run(loaded.url, fake)
    assert result.success, failure_message(result)
    assert query(loaded.url, "SELECT count(*), count(geocoded_state) FROM public.geo") == [(4_213, 0)]
    assert query(loaded.url, f"SELECT count(extra_columns->>'geocoded_state') FROM {RAW}") == [(4_213,)]
    raw = asset_metadata(result, RAW)
    assert raw["columns_added"] == ["extra_columns"] and raw["columns_no_longer_written"] == ["geocoded_state"]


# ---------------------------------------------------------------------------------------
# Bad values: rows that cannot be typed are named; nothing is written
# ---------------------------------------------------------------------------------------
BAD_VALUES = {
    # id: (column, bad value, problem the message names)
    "non-numeric-count": ("new_results_reported", "12a", "non-numeric new_results_reported"),
    "count-of-10^15": ("new_results_reported", "1000000000000000", "new_results_reported out of range (|n| >= 10^12)"),
    "bad-date": ("date", "2020-13-01", "bad date"),
    "unknown-outcome": ("overall_outcome", "Maybe", "unknown overall_outcome"),
    "three-letter-state": ("state", "ALA", "state is not a 2-letter code"),
}


@pytest.mark.parametrize("column, value, problem", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_fail_the_run_naming_the_rows(
    loaded: Loaded, good_rows: list[dict[str, str]], column: str, value: str, problem: str
) -> None:
    delivered = [dict(row) for row in good_rows]
    for position in (1234, 3001):
        delivered[position][column] = value
    with FakeSocrata(delivered) as fake:
        result, _ = run(loaded.url, fake)
    assert not result.success
    message = failure_message(result)
    assert f"2 of 4213 source rows cannot be typed ({problem}: 2); first rows:" in message, message
    for position in (1234, 3001):
        assert f"source row {position}: {problem}: " in message
    assert f"'{column}': '{value}'" in message
    assert materialized(result) == set()
    assert table_fingerprints(loaded.url) == loaded.before


def test_a_duplicated_key_keeps_the_last_delivered_row_and_is_counted(loaded: Loaded, good_rows: list[dict[str, str]]) -> None:
    original = good_rows[1234]
    revised = {**original, "new_results_reported": str(int(original["new_results_reported"]) + 1000)}
    with FakeSocrata([*good_rows, revised]) as fake:
        result, _ = run(loaded.url, fake)
    assert result.success, failure_message(result)
    assert asset_metadata(result, BASE)["duplicates_dropped"] == 1
    assert count(loaded.url, RAW) == 4_214 and count(loaded.url, BASE) == 4_213
    with psycopg.connect(loaded.url) as connection:
        stored = connection.execute(
            f"SELECT new_results_reported FROM {BASE} WHERE state = %s AND overall_outcome = %s AND date = %s::date",
            (original["state"], original["overall_outcome"], original["date"]),
        ).fetchall()
    assert stored == [(int(revised["new_results_reported"]),)]


def test_a_missing_state_fips_is_filled_from_the_state_code(loaded: Loaded, good_rows: list[dict[str, str]]) -> None:
    # Socrata leaves out null fields: Alabama's rows arrive without state_fips.
    delivered = [without([row], "state_fips")[0] if row["state"] == "AL" else row for row in good_rows]
    with FakeSocrata(delivered) as fake:
        result, _ = run(loaded.url, fake)
    assert result.success, failure_message(result)
    alabama = query(loaded.url, f"SELECT count(*) FROM {RAW} WHERE state = 'AL' AND state_fips IS NULL")[0][0]
    assert alabama > 1000
    assert query(loaded.url, f"SELECT DISTINCT state_fips FROM {BASE} WHERE state = 'AL'") == [("01",)]
    after = table_fingerprints(loaded.url)
    assert {t: after[t] for t in TABLES[1:]} == {t: loaded.before[t] for t in TABLES[1:]}  # repaired exactly


# ---------------------------------------------------------------------------------------
# Holding a writer in the middle of its transaction
# ---------------------------------------------------------------------------------------
class HeldWrite:
    """Makes the next replace of `table` wait inside its transaction, until `release()`.

    key: an uncommitted row with a primary key the refresh will insert; the writer's DELETE
    does not see it, and its COPY (IO manager) or INSERT (the declared base table's merge) of the
    new and changed rows then waits on that key.
    key=None: a row lock on the table's last row; the writer's DELETE waits on it after
    marking every other row deleted (for tables without a primary key).
    """

    def __init__(self, url: str, table: str, key: dict[str, str] | None = None) -> None:
        self.url, self.table = url, table
        self.statement = "(COPY|INSERT)" if key else "DELETE"
        self.connection = psycopg.connect(url)  # a transaction stays open until release()
        schema, name = table.split(".")
        if key:
            self.connection.execute(
                sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier(schema, name),
                    sql.SQL(", ").join(map(sql.Identifier, key)),
                    sql.SQL(", ").join(sql.Literal(value) for value in key.values()),
                )
            )
        else:
            locked = self.connection.execute(
                sql.SQL("SELECT ctid FROM {} ORDER BY ctid DESC LIMIT 1 FOR KEY SHARE").format(sql.Identifier(schema, name))
            ).fetchall()
            assert locked, f"{table} is empty"

    def wait_for_writer(self, timeout_s: float = 60.0, alive: Callable[[], bool] = lambda: True) -> int:
        """The pid of the backend whose COPY/DELETE on the table waits on this test's lock."""
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.url, autocommit=True) as watcher:
            while time.monotonic() < deadline and alive():
                found = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND query ~* %s AND query LIKE %s",
                    (f"^{self.statement} ", f'%"{self.table.split(".")[1]}"%'),  # COPY "covid_19"."covid_test_results" ...
                ).fetchall()
                if found:
                    return found[0][0]
                time.sleep(0.02)
        raise AssertionError(f"no {self.statement} on {self.table} came to wait on the test's lock")

    def release(self) -> None:
        try:
            self.connection.rollback()
        except psycopg.Error:
            pass  # the server was restarted under it
        finally:
            self.connection.close()


def growth_key(grown_rows: list[dict[str, str]]) -> dict[str, str]:
    """The primary key of a row only the grown delivery has."""
    row = next(row for row in grown_rows if row["state"] == GROWTH_STATE)
    return {"state": row["state"], "overall_outcome": row["overall_outcome"], "date": row["date"]}


def sessions_left(url: str) -> list[tuple]:
    """Other sessions on the database, and any lock they still hold."""
    return query(
        url,
        "SELECT a.pid, a.state, a.query, l.locktype, l.mode FROM pg_stat_activity a "
        "LEFT JOIN pg_locks l ON l.pid = a.pid AND l.granted AND l.locktype = 'relation' "
        "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'",
    )


def wait_until_no_other_sessions(url: str, timeout_s: float = 15.0) -> list[tuple]:
    deadline = time.monotonic() + timeout_s
    while (left := sessions_left(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Conductor(threading.Thread):
    """Runs `script` beside the refresh (which keeps the main thread); keeps its error for the test."""

    def __init__(self, script: Callable[[], None], on_error: Callable[[], None]) -> None:
        super().__init__(name="fault-conductor", daemon=True)
        self.script, self.on_error = script, on_error
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.script()
        except BaseException as error:  # noqa: BLE001 - reported by check()
            self.error = error
            self.on_error()  # never leave the refresh waiting on a lock

    def check(self) -> None:
        self.join(timeout=60)
        assert not self.is_alive(), "the conductor did not finish"
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------------------------------
# Readers during a refresh
# ---------------------------------------------------------------------------------------
@dataclass
class Hammer:
    """A reader counting rows of a few tables as fast as it can, from its own connection."""

    url: str
    tables: tuple[str, ...]
    seen: list[tuple[int, ...]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="hammer", daemon=True)

    def _run(self) -> None:
        query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {table})" for table in self.tables)
        try:
            with psycopg.connect(self.url, autocommit=True) as connection:
                while not self.stop.is_set():
                    self.seen.append(connection.execute(query).fetchone())
        except BaseException as error:  # noqa: BLE001
            self.error = error

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_readers_never_see_an_empty_or_partial_table_during_a_refresh(
    loaded: Loaded, grown_rows: list[dict[str, str]]
) -> None:
    """Stored: four jurisdictions. Refresh: five. Readers see old or new counts, never anything between,
    and a run's tables switch together at its commit (mid-run, every table still reads old)."""
    tables = (RAW, BASE, "covid_19.state_results")
    old = tuple(loaded.before[table][0] for table in tables)
    new = (len(grown_rows), len(grown_rows), len(STATES) + 1)
    base_held = HeldWrite(loaded.url, BASE, growth_key(grown_rows))
    summary_held = HeldWrite(loaded.url, "covid_19.state_results", {"state": GROWTH_STATE})
    mid_write: dict[str, tuple] = {}

    def counts() -> tuple[int, ...]:
        return tuple(count(loaded.url, table) for table in tables)

    def script() -> None:
        base_held.wait_for_writer()  # the base merge is copying its new rows (changed rows already deleted)
        time.sleep(0.2)
        mid_write["base"] = counts()
        base_held.release()
        summary_held.wait_for_writer()  # base written (uncommitted); state_results is being replaced
        time.sleep(0.2)
        mid_write["state_results"] = counts()
        summary_held.release()

    conductor = Conductor(script, on_error=lambda: (base_held.release(), summary_held.release()))
    with Hammer(loaded.url, tables) as hammer:
        time.sleep(0.1)
        with FakeSocrata(grown_rows) as fake:
            conductor.start()
            result, _ = run(loaded.url, fake)
        time.sleep(0.1)
    conductor.check()
    assert result.success, failure_message(result)
    assert hammer.error is None
    assert mid_write == {"base": old, "state_results": old}
    assert len(hammer.seen) > 100
    for position, table in enumerate(tables):
        observed = {sample[position] for sample in hammer.seen}
        assert observed == {old[position], new[position]}, (table, observed)
    assert counts() == new


# ---------------------------------------------------------------------------------------
# A run that dies in the middle of a table write
# ---------------------------------------------------------------------------------------
@dataclass
class Died:
    """What a run that died mid-write left behind, captured before anything else touched the database."""

    url: str
    before: dict[str, tuple]
    after: dict[str, tuple]
    sessions_left: list[tuple]
    message: str
    error: object = None  # the step failure's SerializableErrorInfo, for in-process runs


def unchanged(died: Died, tables: list[str]) -> dict[str, bool]:
    return {table: died.after[table] == died.before[table] for table in tables}


@pytest.fixture(scope="module")
def killed_mid_base_write(
    postgres_server_url: str,
    loaded_template: tuple[str, dict],
    grown_rows: list[dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Died]:
    """`dagster asset materialize` (the CLI, as `./dev run` runs it) killed with SIGKILL in its base-table write."""
    template, before = loaded_template
    name, url = create_database(postgres_server_url, "fi_sigkill", template=template)
    home = tmp_path_factory.mktemp("sigkill")
    (home / "dagster.yaml").write_text("")
    grown_csv = home / "grown.csv"
    pd.DataFrame(grown_rows).to_csv(grown_csv, index=False)
    env = {**os.environ, "COVID_DB_URL": url, "SOCRATA_SOURCE_FILE": str(grown_csv), "DAGSTER_HOME": str(home)}
    held = HeldWrite(url, BASE, growth_key(grown_rows))
    with open(home / "cli.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "covid_assets.definitions", "--select", COVID_SELECTION],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            try:
                held.wait_for_writer(timeout_s=120, alive=lambda: process.poll() is None)
            except AssertionError as error:
                raise AssertionError(f"{error}; CLI output ends:\n{(home / 'cli.log').read_text()[-3000:]}") from None
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            held.release()  # the orphaned backend resumes its COPY, finds no client, rolls back
    left = wait_until_no_other_sessions(url)
    message = f"exit code {process.returncode}; CLI output ends:\n" + (home / "cli.log").read_text()[-1500:]
    yield Died(url, before, table_fingerprints(url), left, message)
    drop_database(postgres_server_url, name)


def test_sigkill_in_the_base_write_loses_nothing(killed_mid_base_write: Died, grown_rows: list[dict[str, str]], tmp_path: Path) -> None:
    died = killed_mid_base_write
    assert f"exit code {-signal.SIGKILL};" in died.message, died.message
    assert "RUN_SUCCESS" not in died.message
    assert died.sessions_left == []  # no backend, open transaction or lock outlived the process
    assert unchanged(died, [BASE, *SUMMARIES, *HISTORY_TABLES]) == dict.fromkeys([BASE, *SUMMARIES, *HISTORY_TABLES], True)
    assert count(died.url, BASE) == 4_213

    grown_csv = tmp_path / "grown.csv"
    pd.DataFrame(grown_rows).to_csv(grown_csv, index=False)
    again = materialize_all(died.url, from_file(grown_csv), raise_on_error=False)
    assert again.success, failure_message(again)
    assert count(died.url, BASE) == len(grown_rows) and count(died.url, "covid_19.state_results") == len(STATES) + 1


class RestartablePostgres:
    """A server of this module's own (pgserver in a fresh temp dir), so restarting it disturbs no other test."""

    def __init__(self) -> None:
        import pgserver

        # Not under pytest's basetemp: each new pytest session (as root) chmods /tmp/pytest-of-root to 0700,
        # which locks the server's own user out of its data directory.
        self.data_dir = Path(tempfile.mkdtemp(prefix="covid-fi-pg-"))
        self.server = pgserver.get_server(self.data_dir, cleanup_mode="delete")
        self.admin_url = self.server.get_uri()

    def restart(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "-l", str(self.server.log), "restart"], pgdata=self.server.pgdata,
               user=self.server.system_user, timeout=60)

    def close(self) -> None:
        stop_embedded_postgres(self.server.pgdata)  # the pid pgserver remembers is gone after a restart
        self.server.cleanup()


@pytest.fixture(scope="module")
def restartable_postgres() -> Iterator[RestartablePostgres]:
    postgres = RestartablePostgres()
    yield postgres
    postgres.close()


def restart_during_write(
    postgres: RestartablePostgres, good_rows: list[dict[str, str]], grown_rows: list[dict[str, str]], table: str, key
) -> Died:
    """Load the good rows, then refresh with the grown ones and restart the server while `table` is being replaced."""
    _, url = create_loaded_database(postgres.admin_url, "fi_restart", good_rows)
    before = table_fingerprints(url)
    held = HeldWrite(url, table, key)

    def script() -> None:
        held.wait_for_writer()
        postgres.restart()  # "fast": every session is ended and its transaction rolled back

    conductor = Conductor(script, on_error=held.release)
    with FakeSocrata(grown_rows) as fake:
        conductor.start()
        result, _ = run(url, fake)
    held.release()
    conductor.check()
    assert not result.success
    error = next(e.event_specific_data.error for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return Died(url, before, table_fingerprints(url), wait_until_no_other_sessions(url), failure_message(result), error)


@pytest.fixture(scope="module")
def restarted_mid_base_write(
    restartable_postgres: RestartablePostgres, good_rows: list[dict[str, str]], grown_rows: list[dict[str, str]]
) -> Died:
    return restart_during_write(restartable_postgres, good_rows, grown_rows, BASE, growth_key(grown_rows))


DATABASE_WENT_AWAY = r"terminating connection due to administrator command|server closed the connection unexpectedly"


def test_database_restart_in_the_base_write_fails_clearly_and_loses_nothing(
    restarted_mid_base_write: Died, grown_rows: list[dict[str, str]]
) -> None:
    died = restarted_mid_base_write
    assert re.search(DATABASE_WENT_AWAY, died.message), died.message
    assert "load_covid_pcr_testing" in died.message  # the failing step is named (it writes the raw and base tables)
    assert died.sessions_left == []
    assert unchanged(died, [BASE, *SUMMARIES, *HISTORY_TABLES]) == dict.fromkeys([BASE, *SUMMARIES, *HISTORY_TABLES], True)

    with FakeSocrata(grown_rows) as fake:
        again, _ = run(died.url, fake)
    assert again.success, failure_message(again)
    assert count(died.url, BASE) == len(grown_rows)


@pytest.fixture(scope="module")
def restarted_mid_raw_write(
    restartable_postgres: RestartablePostgres, good_rows: list[dict[str, str]], grown_rows: list[dict[str, str]]
) -> Died:
    return restart_during_write(restartable_postgres, good_rows, grown_rows, RAW, key=None)


def test_database_restart_in_the_raw_write_fails_clearly_and_leaves_every_table(
    restarted_mid_raw_write: Died, grown_rows: list[dict[str, str]]
) -> None:
    died = restarted_mid_raw_write
    assert "load_covid_pcr_testing" in died.message
    assert re.search(DATABASE_WENT_AWAY, died.message), died.message
    assert died.sessions_left == []
    assert unchanged(died, [*TABLES, *HISTORY_TABLES]) == dict.fromkeys([*TABLES, *HISTORY_TABLES], True)

    with FakeSocrata(grown_rows) as fake:
        again, _ = run(died.url, fake)
    assert again.success, failure_message(again)
    assert count(died.url, BASE) == len(grown_rows)


@pytest.mark.parametrize("died", ["killed_mid_base_write", "restarted_mid_base_write"])
def test_a_run_that_dies_in_the_base_write_leaves_the_raw_table_as_it_was(died: str, request: pytest.FixtureRequest) -> None:
    """A failed run leaves *every* table as it was: the raw write of the same run is rolled back too."""
    outcome: Died = request.getfixturevalue(died)
    assert outcome.after[RAW] == outcome.before[RAW]


@pytest.mark.parametrize("died", ["restarted_mid_raw_write", "restarted_mid_base_write"])
def test_the_step_error_is_the_failed_write_not_the_failed_rollback(died: str, request: pytest.FixtureRequest) -> None:
    cause = request.getfixturevalue(died).error.cause
    assert "Failed to rollback" not in cause.message, cause.message
    # the write's own error: a statement that failed, or (the declared base table's merge, which keeps its
    # history in the same statement) the execution error naming the index it was writing
    assert re.search(r"Failed to execute (query '(DELETE|INSERT)|COPY)|Execution error .*while inserting index tuple", cause.message, re.S)


# ---------------------------------------------------------------------------------------
# Hostile names
# ---------------------------------------------------------------------------------------
HOSTILE = 'x"; DROP TABLE public.victim; --'


def test_hostile_asset_names_cannot_be_declared_with_asset() -> None:
    """@asset turns the key into an op name, which must match ^[A-Za-z0-9_]+$: such keys never get that far."""
    from dagster import DagsterInvalidDefinitionError

    with pytest.raises(DagsterInvalidDefinitionError, match="is not a valid name"):

        @asset(key=AssetKey(["covid_19", HOSTILE]))
        def hostile() -> pd.DataFrame:
            return pd.DataFrame()


def test_hostile_table_schema_and_column_names_are_quoted_not_executed(warehouse_url: str) -> None:
    """multi_asset does accept such keys: schema, table and column names reach the IO manager as data.

    (The schema-from-metadata route is covered by test_postgres_io.)
    """
    with psycopg.connect(warehouse_url) as connection:
        connection.execute("CREATE TABLE public.victim (id int)")
        connection.execute("INSERT INTO public.victim VALUES (1)")
    key = AssetKey([f"s{HOSTILE}", f"t{HOSTILE}"])
    column = f"c{HOSTILE}"
    frame = pd.DataFrame({column: pd.array(["a", "b"], dtype="string"), "n": pd.array([1, 2], dtype="Int64")})
    loaded_back: list[pd.DataFrame] = []

    @multi_asset(outs={"out": AssetOut(key=key, metadata={"primary_key": [column]})}, name="hostile_writer")
    def writer() -> pd.DataFrame:
        return frame

    @asset(ins={"stored": AssetIn(key=key, metadata={"columns": [column]})})
    def reader(stored: pd.DataFrame) -> None:
        loaded_back.append(stored)

    for _ in range(2):  # the first run creates the table, the second replaces its rows
        assert materialize_on(warehouse_url, [writer, reader]).success
    assert query(warehouse_url, "SELECT id FROM public.victim") == [(1,)]
    assert query(
        warehouse_url, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE 't%DROP%'"
    ) == [(key.path[0], key.path[1])]
    assert loaded_back[-1][column].tolist() == ["a", "b"] and list(loaded_back[-1].columns) == [column]
    warehouse = WarehouseResource()
    with deployment(warehouse_url):
        assert warehouse.row_count(*key.path) == 2
        assert set(warehouse.count_by(*key.path, [column])) == {("a",), ("b",)}
        assert warehouse.row_count(HOSTILE, HOSTILE) is None  # no such table, and nothing executed
    assert query(warehouse_url, "SELECT id FROM public.victim") == [(1,)]


# ---------------------------------------------------------------------------------------
# An analyst's session that holds a lock: the run gives up in time and says on what it waited
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "limits, expected",
    [
        (dict(lock_timeout_s=1, statement_timeout_s=60), r"waited more than lock_timeout \(1 s\) for a lock"),
        (dict(lock_timeout_s=60, statement_timeout_s=1), r"ran longer than statement_timeout \(1 s\) and was cancelled"),
    ],
    ids=["lock_timeout", "statement_timeout"],
)
def test_a_lock_held_by_an_analyst_times_out_naming_the_statement_and_the_holder(
    loaded: Loaded, grown_rows: list[dict[str, str]], limits: dict, expected: str
) -> None:
    with psycopg.connect(loaded.url, application_name="analyst-report") as analyst:
        analyst.execute("LOCK TABLE covid_19.covid_test_results IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        with FakeSocrata(grown_rows) as fake:
            started = time.monotonic()
            result = materialize_all(
                loaded.url, from_api(fake.base_url), knobs(), raise_on_error=False, warehouse=WarehouseResource(**limits)
            )
            elapsed = time.monotonic() - started
    assert not result.success
    message = failure_message(result)
    assert re.search(expected, message), message
    assert re.search(r'statement `SELECT [^`]*FROM "covid_19"."covid_test_results"', message), message  # the shrink guard's count
    assert re.search(r"pid \d+ \(user \w+, application analyst-report, idle in transaction", message), message
    assert elapsed < 30, f"the run waited {elapsed:.0f} s"
    assert table_fingerprints(loaded.url) == loaded.before
