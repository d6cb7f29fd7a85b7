"""Tests for the Socrata client (SODA2 and SODA3) and export reader, against a real local HTTP server."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from covid_assets.sources.socrata import (
    MAX_REDIRECTS,
    REQUIRED_COLUMNS,
    Extract,
    SocrataClient,
    SocrataError,
    SocrataSource,
    SocrataTarget,
    read_export_file,
)
from covid_assets.sources.socrata import paging
from covid_assets.sources.socrata import rows as row_tables
from covid_assets_tests.helpers import SNAPSHOT, environment, from_api, from_file
from covid_assets_tests.support import FakeSocrata, Fault, RecordedRequest

# "thread" so that a hang inside a worker thread still ends the run.
pytestmark = pytest.mark.timeout(60, method="thread")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_JSON = ROOT / "covid_assets_tests" / "fixtures" / "soda_sample_j8mb-icvb_1000rows.json.gz"
SNAPSHOT_CSV = SNAPSHOT
TOKEN = "s3cr3t-App-T0ken-xyz"
STATES = [("AL", "Alabama", "01", "Region 4"), ("AK", "Alaska", "02", "Region 10"), ("CA", "California", "06", "Region 9")]
PROTOCOLS = ["soda2", "soda3"]


def make_rows(n: int) -> list[dict[str, Any]]:
    """Distinct Socrata-like rows (every value a string, leading zeros in fips)."""
    rows = []
    for i in range(n):
        state, name, fips, region = STATES[i % len(STATES)]
        rows.append(
            {
                "state": state,
                "state_name": name,
                "state_fips": fips,
                "fema_region": region,
                "overall_outcome": ("Negative", "Positive", "Inconclusive")[i % 3],
                "date": f"2020-{3 + i // 28 % 9:02d}-{1 + i % 28:02d}T00:00:00.000",
                "new_results_reported": str(i % 97),
                "total_results_reported": str(i),
            }
        )
    return rows


def make_client(server: FakeSocrata, protocol: str = "soda2", **kw: Any) -> SocrataClient:
    """A client with tiny timeouts and backoff so failure tests stay fast.

    SODA3 is spoken with a token (the stand-in serves it); without one the client speaks SODA2.
    `dataset_id` and `app_token` go to the target, everything else to the settings.
    """
    token = kw.pop("app_token", TOKEN if protocol == "soda3" else None)
    target = SocrataTarget(base_url=server.base_url, dataset_id=kw.pop("dataset_id", "j8mb-icvb"), app_token=token)
    options: dict[str, Any] = dict(
        page_size=100,
        max_workers=4,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
        max_retries=3,
        backoff_factor=0.001,
        backoff_max_s=0.05,
    )
    options.update(kw)
    return SocrataClient(target, SocrataSource(**options))


def at(protocol: str, offset: int, size: int = 100) -> str:
    """How an error names the page starting at `offset` (of `size` rows) in `protocol`."""
    return f"$offset={offset}" if protocol == "soda2" else f"[pageNumber={offset // size + 1}, pageSize={size}]"


def count_query(protocol: str) -> str:
    """How an error names the count query in `protocol`."""
    return "$select=count(*)" if protocol == "soda2" else "[SELECT count(*)]"


def endpoint(server: FakeSocrata, protocol: str, dataset_id: str = "j8mb-icvb") -> str:
    if protocol == "soda2":
        return f"{server.base_url}/resource/{dataset_id}.json"
    return f"{server.base_url}/api/v3/views/{dataset_id}/query.json"


def offsets(server: FakeSocrata) -> list[int]:
    """The first row of every page request, in arrival order (either protocol)."""
    return [request.offset for request in server.page_requests()]


def asked_at(server: FakeSocrata, offset: int) -> list[RecordedRequest]:
    return [request for request in server.page_requests() if request.offset == offset]


def records(extract: Extract) -> list[dict[str, Any]]:
    """Frame rows as dicts, leaving out missing values (as Socrata leaves out null fields)."""
    return [{k: v for k, v in row.items() if v is not pd.NA} for row in extract.frame.to_dict("records")]


def assert_all_string(frame: pd.DataFrame) -> None:
    for name, dtype in frame.dtypes.items():
        assert isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA, (name, dtype)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    """The protocol a parametrized test runs over: the client speaks it, the stand-in serves both."""
    return request.param


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return make_rows(450)


@pytest.fixture
def server(rows: list[dict[str, Any]]):
    with FakeSocrata(rows) as fake:
        yield fake


@pytest.fixture(scope="module")
def sample_rows() -> list[dict[str, Any]]:
    with gzip.open(SAMPLE_JSON, "rt", encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------------------------------
# Paging
# ---------------------------------------------------------------------------------------
def test_full_fetch_pages_concurrently_in_order(rows: list[dict[str, Any]], protocol: str) -> None:
    with FakeSocrata(rows, latency_s=0.05) as server:
        extract = make_client(server, protocol, page_size=100, max_workers=4).fetch_all()

    assert records(extract) == rows  # every row exactly once, in :id order
    assert list(extract.frame.columns) == list(REQUIRED_COLUMNS)
    assert isinstance(extract.frame.index, pd.RangeIndex)
    assert_all_string(extract.frame)

    first, *pages = server.requests
    assert first.target == "count" and first.protocol == protocol and all(p.protocol == protocol for p in pages)
    if protocol == "soda2":
        assert first.params == {"$select": "count(*)"}
        assert all(p.params["$order"] == ":id" for p in pages)
    else:
        assert first.method == "POST" and first.body == {"query": "SELECT count(*)", "includeSynthetic": False}
        assert all(p.method == "POST" and p.params == {} for p in pages)
        assert all(p.body["query"] == "SELECT * ORDER BY :id" and p.body["includeSynthetic"] is False for p in pages)
        assert sorted(p.body["page"]["pageNumber"] for p in pages) == [1, 2, 3, 4, 5]
    assert sorted(offsets(server)) == [0, 100, 200, 300, 400]
    assert {p.limit for p in pages} == {100}
    assert server.max_inflight >= 2, "pages were not fetched concurrently"
    assert extract.stats.rows == 450
    assert extract.stats.pages == 5
    assert extract.stats.requests == 6
    assert extract.stats.retries == 0
    assert extract.stats.bytes > 0
    assert extract.source == endpoint(server, protocol)


def test_server_caps_limit_below_page_size(rows: list[dict[str, Any]]) -> None:
    # A SODA2 2.0 endpoint returns at most 70 rows whatever $limit says: the client must not
    # mistake a capped page for the end, nor leave gaps between its chunks.
    with FakeSocrata(rows, max_limit=70) as server:
        extract = make_client(server, page_size=200).fetch_all()
    assert records(extract) == rows
    assert sorted(offsets(server)) == [0, 70, 140, 200, 270, 340, 400]


@pytest.mark.parametrize("count_fails", [False, True], ids=["counted", "count-unusable"])
def test_soda3_pages_smaller_than_asked_are_refused_not_misplaced(rows: list[dict[str, Any]], count_fails: bool) -> None:
    """SODA3 numbers pages in the size the server serves: pages of 70 for pageSize 100 cannot be placed."""
    with FakeSocrata(rows, soda3_page_cap=70) as server:
        if count_fails:
            server.faults.append(Fault.error(400, where="count"))
        with pytest.raises(SocrataError) as info:
            make_client(server, "soda3", page_size=100, max_workers=1).fetch_all()
    message = str(info.value)
    assert "shorter than its pageSize of 100 rows, yet the page after it (from row 100) has 70 rows" in message
    assert "lower page_size" in message


def test_count_exact_multiple_checks_for_more(rows: list[dict[str, Any]], protocol: str) -> None:
    with FakeSocrata(rows[:400]) as server:
        extract = make_client(server, protocol, page_size=100).fetch_all()
    assert records(extract) == rows[:400]
    # four full chunks, then one page past the count to see whether rows were added
    assert sorted(offsets(server)) == [0, 100, 200, 300, 400]


def test_rows_added_after_count_are_fetched(rows: list[dict[str, Any]], protocol: str) -> None:
    extra = make_rows(430)[400:]
    with FakeSocrata(rows[:400]) as server:
        added = []

        def grow(target: str, params: dict[str, str]) -> None:
            if target == "page" and not added:
                added.append(True)
                server.extend_rows(extra)

        server.on_request = grow
        extract = make_client(server, protocol, page_size=100).fetch_all()
    assert records(extract) == rows[:400] + extra


def test_dataset_shrinking_mid_fetch_is_an_error(rows: list[dict[str, Any]], protocol: str) -> None:
    with FakeSocrata(rows) as server:
        server.on_request = lambda target, params: server.truncate_rows(300) if target == "page" else None
        with pytest.raises(SocrataError, match=r"returned 300 rows but count\(\*\) reported 450"):
            make_client(server, protocol, page_size=100, max_workers=1).fetch_all()


@pytest.mark.parametrize(
    "protocol, max_limit, expected",
    [
        ("soda2", 50_000, [0, 100, 200, 300, 400, 450]),  # short page at 400, empty page confirms
        ("soda2", 70, [0, 70, 140, 210, 280, 350, 420]),  # the server's cap learned from a short page
        ("soda3", 50_000, [0, 100, 200, 300, 400, 500]),  # short page 5, empty page 6 confirms
    ],
)
def test_count_failure_falls_back_to_sequential_paging(
    rows: list[dict[str, Any]], protocol: str, max_limit: int, expected: list[int]
) -> None:
    with FakeSocrata(rows, max_limit=max_limit) as server:
        server.faults.append(Fault.error(400, message="count not allowed", where="count"))
        seen: list[tuple[int, int | None]] = []
        extract = make_client(server, protocol, page_size=100).fetch_all(progress=lambda n, total: seen.append((n, total)))
    assert records(extract) == rows
    assert all(total is None for _, total in seen)
    assert offsets(server) == expected


def test_count_returning_html_falls_back(rows: list[dict[str, Any]], server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.html(where="count"))
    assert records(make_client(server, protocol).fetch_all()) == rows


def test_progress_reports_increasing_counts(server: FakeSocrata, rows: list[dict[str, Any]], protocol: str) -> None:
    calls: list[tuple[int, int | None]] = []
    make_client(server, protocol, page_size=100).fetch_all(progress=lambda n, total: calls.append((n, total)))
    counts = [n for n, _ in calls]
    assert len(calls) == 5
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert calls[-1] == (len(rows), len(rows))
    assert {total for _, total in calls} == {len(rows)}


def test_a_page_with_more_rows_than_asked_is_refused(rows: list[dict[str, Any]], server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.json_body(rows[100:250], where="page", offset=100))  # 150 rows for a page of 100
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol, page_size=100).fetch_all()
    message = str(info.value)
    assert at(protocol, 100) in message and "returned 150 rows for a page of 100" in message


# ---------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------
def test_429_with_retry_after_is_honoured(server: FakeSocrata, rows: list[dict[str, Any]], protocol: str) -> None:
    server.faults.append(Fault.error(429, message="Too many requests", retry_after="1", where="page", offset=100))
    started = time.monotonic()
    extract = make_client(server, protocol, backoff_max_s=5.0).fetch_all()
    assert time.monotonic() - started >= 0.9  # waited as told, not the 1 ms backoff
    assert records(extract) == rows
    assert extract.stats.retries == 1
    assert len(asked_at(server, 100)) == 2


def test_huge_retry_after_is_capped_by_backoff_max(server: FakeSocrata, rows: list[dict[str, Any]]) -> None:
    server.faults.append(Fault.error(429, retry_after="20", where="page", offset=0))
    started = time.monotonic()
    extract = make_client(server, backoff_max_s=0.1).fetch_all()
    assert time.monotonic() - started < 5
    assert records(extract) == rows and extract.stats.retries == 1


def test_5xx_burst_then_success(server: FakeSocrata, rows: list[dict[str, Any]], protocol: str) -> None:
    for status in (500, 502, 503):
        server.faults.append(Fault.error(status, where="page", offset=200))
    server.faults.append(Fault.error(504, where="count"))
    server.faults.append(Fault.error(202, body="", where="page", offset=0))
    server.faults.append(Fault.error(429, where="page", offset=400))  # throttled without Retry-After
    extract = make_client(server, protocol).fetch_all()
    assert records(extract) == rows
    assert extract.stats.retries == 6
    assert extract.stats.requests == 6  # logical requests; retries counted separately


def test_connection_reset_then_success(server: FakeSocrata, rows: list[dict[str, Any]], protocol: str) -> None:
    server.faults.append(Fault.reset(where="page", offset=100))
    server.faults.append(Fault.reset(where="count"))
    extract = make_client(server, protocol).fetch_all()
    assert records(extract) == rows
    assert extract.stats.retries == 2


def test_read_timeout_then_success(server: FakeSocrata, rows: list[dict[str, Any]], protocol: str) -> None:
    server.faults.append(Fault.sleep(1.5, where="page", offset=300))
    started = time.monotonic()
    extract = make_client(server, protocol, read_timeout_s=0.3).fetch_all()
    assert records(extract) == rows
    assert extract.stats.retries == 1
    assert time.monotonic() - started < 1.4  # gave up on the slow attempt instead of waiting it out


def test_server_that_never_recovers_fails_after_configured_attempts(server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.error(503, message="Service Unavailable", times=1000))
    started = time.monotonic()
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol, max_retries=3).fetch_all()
    assert time.monotonic() - started < 5
    assert len(server.requests) == 4  # 1 + 3 retries of the count query, then give up (no fallback)
    message = str(info.value)
    assert "503" in message and "4 attempts" in message
    assert f"{endpoint(server, protocol)}{'?' if protocol == 'soda2' else ' '}{count_query(protocol)}" in message
    assert "Service Unavailable" in message
    assert info.value.transient and info.value.status == 503


def test_202_forever_says_still_processing(server: FakeSocrata) -> None:
    server.faults.append(Fault.error(202, body="", where="page", times=1000))
    with pytest.raises(SocrataError, match="still being processed"):
        make_client(server, max_retries=2, max_workers=1).fetch_all()


def test_connection_resets_forever_fail_with_attempts(server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.reset(times=1000))
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol, max_retries=2).fetch_all()
    assert len(server.requests) == 3
    message = str(info.value)
    assert "3 attempt(s)" in message and count_query(protocol) in message
    assert "Connection" in message or "connection" in message


def test_unreachable_server_fails_with_cause() -> None:
    server = FakeSocrata([]).start()
    base_url = server.base_url
    server.stop()  # nothing listens on that port any more
    settings = SocrataSource(max_retries=1, backoff_factor=0.001, connect_timeout_s=0.5)
    client = SocrataClient(SocrataTarget(base_url=base_url), settings)
    with pytest.raises(SocrataError, match=r"failed after 2 attempt\(s\).*(refused|NewConnectionError)"):
        client.fetch_all()


def test_failed_page_stops_the_fetch_without_waiting_for_others(rows: list[dict[str, Any]], protocol: str) -> None:
    with FakeSocrata(rows) as server:
        server.faults.append(Fault.sleep(3.0, where="page", offset=0))
        server.faults.append(Fault.error(400, message="bad page", where="page", offset=100))
        started = time.monotonic()
        with pytest.raises(SocrataError, match="bad page"):
            make_client(server, protocol, page_size=50, max_workers=2, read_timeout_s=10).fetch_all()
        assert time.monotonic() - started < 2.5  # did not wait for the slow page
        time.sleep(0.2)
        assert len(server.page_requests()) < 9  # the remaining chunks were never requested


@pytest.mark.parametrize(
    "fault",
    [Fault.reset_mid_body(where="page", offset=100), Fault.stall_mid_body(1.5, where="page", offset=100)],
    ids=["reset-mid-body", "read-timeout-mid-body"],
)
def test_body_that_breaks_off_is_requested_again(
    server: FakeSocrata, rows: list[dict[str, Any]], fault: Fault, protocol: str
) -> None:
    # The headers arrived, so urllib3's Retry is done; the client itself asks again.
    server.faults.append(fault)
    started = time.monotonic()
    extract = make_client(server, protocol, read_timeout_s=0.3).fetch_all()
    assert records(extract) == rows  # the half body was not taken for a short page
    assert extract.stats.retries == 1
    assert len(asked_at(server, 100)) == 2
    assert time.monotonic() - started < 1.4  # gave up on the stalled body instead of waiting it out


def test_body_that_keeps_breaking_off_fails_after_configured_attempts(server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.reset_mid_body(where="page", offset=100, times=1000))
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol, max_retries=3, max_workers=1).fetch_all()
    message = str(info.value)
    assert at(protocol, 100) in message and "failed after 4 attempt(s)" in message and "body broke off" in message
    assert info.value.transient
    assert len(asked_at(server, 100)) == 4


def test_body_retries_share_the_retry_budget_with_urllib3(server: FakeSocrata, protocol: str) -> None:
    # One 503 (retried by urllib3) then bodies that always break off: 3 retries in all, not 3 + 3.
    server.faults.append(Fault.error(503, where="page", offset=100))
    server.faults.append(Fault.reset_mid_body(where="page", offset=100, times=1000))
    with pytest.raises(SocrataError, match=r"failed after 4 attempt\(s\)"):
        make_client(server, protocol, max_retries=3, max_workers=1).fetch_all()
    assert len(asked_at(server, 100)) == 4


def test_slow_but_live_server_is_not_a_timeout(server: FakeSocrata, rows: list[dict[str, Any]]) -> None:
    # Each page takes ~0.9 s in all, three times the read timeout, but never goes quiet for 0.3 s.
    for offset in (0, 100):
        server.faults.append(Fault.drip(0.1, where="page", offset=offset))
    extract = make_client(server, read_timeout_s=0.3).fetch_all()
    assert records(extract) == rows
    assert extract.stats.retries == 0


# ---------------------------------------------------------------------------------------
# HTTP errors and bad bodies
# ---------------------------------------------------------------------------------------
def test_404_unknown_dataset_is_not_retried(server: FakeSocrata) -> None:
    client = make_client(server, dataset_id="zzzz-0000")
    with pytest.raises(SocrataError) as info:
        client.fetch_all()
    message = str(info.value)
    assert "404" in message
    assert f"{server.base_url}/resource/zzzz-0000.json?$order=:id&$limit=100&$offset=0" in message
    assert "not_found: Not found: /resource/zzzz-0000.json" in message
    assert len(server.requests) == 2  # count (falls back), first page; neither retried
    assert not info.value.transient


def test_400_with_errorcode_body_shape(server: FakeSocrata, protocol: str) -> None:
    body = json.dumps(
        {"errorCode": "query.soql.no-such-column", "message": "No such column: foo", "data": {"column": "foo"}}
    )
    server.faults.append(Fault.error(400, body=body, where="page", offset=0))
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol, max_workers=1).fetch_all()
    message = str(info.value)
    assert "400" in message and at(protocol, 0) in message
    assert "query.soql.no-such-column: No such column: foo" in message
    assert len(asked_at(server, 0)) == 1


def test_400_with_code_error_message_body_shape(server: FakeSocrata) -> None:
    server.faults.append(Fault.error(400, message="Unrecognized arguments [$foo]", where="page", offset=200))
    with pytest.raises(SocrataError, match=r"HTTP 400 .*\$offset=200.*fake\.400: Unrecognized arguments \[\$foo\]"):
        make_client(server).fetch_all()


def test_non_json_error_body_is_quoted_briefly(server: FakeSocrata) -> None:
    server.faults.append(Fault.error(403, body="Forbidden by policy. " * 40, where="page", offset=0))
    with pytest.raises(SocrataError) as info:
        make_client(server, max_workers=1).fetch_all()
    message = str(info.value)
    assert "403" in message and "Forbidden by policy." in message
    assert len(message) < 500


@pytest.mark.parametrize(
    "fault, expected",
    [
        (Fault.html(where="page", offset=100), "HTML page"),
        (Fault.truncated(where="page", offset=100), "not valid JSON"),
        (Fault.json_body({"rows": [], "message": "weird"}, where="page", offset=100), "JSON object"),
        (Fault.json_body([["AL", "01"]], where="page", offset=100), "item 0 is a JSON list"),
        (Fault("respond", status=200, body=b"", where="page", offset=100), "empty"),
    ],
    ids=["html", "truncated", "object", "array-of-arrays", "empty-body"],
)
def test_bad_bodies_are_errors_not_zero_rows(server: FakeSocrata, fault: Fault, expected: str, protocol: str) -> None:
    server.faults.append(fault)
    with pytest.raises(SocrataError, match=expected) as info:
        make_client(server, protocol).fetch_all()
    assert at(protocol, 100) in str(info.value)


def test_repeated_page_is_detected(server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.repeat_previous(where="page", offset=100))
    with pytest.raises(SocrataError, match="same rows as the page at offset 0"):
        make_client(server, protocol, max_workers=1).fetch_all()


def test_empty_source_is_an_error(protocol: str) -> None:
    with FakeSocrata([]) as server:
        with pytest.raises(SocrataError, match="source returned no rows"):
            make_client(server, protocol).fetch_all()
        server.faults.append(Fault.error(400, where="count"))  # no count: still refused
        with pytest.raises(SocrataError, match="source returned no rows"):
            make_client(server, protocol).fetch_all()


def test_empty_first_page_despite_count_is_an_error(server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.empty(where="page", offset=0))
    with pytest.raises(SocrataError, match=r"first page is empty although count\(\*\) reported 450 rows"):
        make_client(server, protocol).fetch_all()


# ---------------------------------------------------------------------------------------
# Token handling
# ---------------------------------------------------------------------------------------
class _Captured(logging.Handler):
    """Every log record's text (works with or without pytest's logging plugin)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def captured_logs():
    handler, root = _Captured(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("soda3", [True, False], ids=["soda3", "domain-without-soda3"])
def test_token_sent_as_header_and_never_shown(rows: list[dict[str, Any]], captured_logs: _Captured, soda3: bool) -> None:
    with FakeSocrata(rows, soda3=soda3) as server:
        client = make_client(server, app_token=TOKEN)
        client.fetch_all()
        assert server.requests and all(r.headers.get("X-App-Token") == TOKEN for r in server.requests)
        assert all(TOKEN not in r.path and TOKEN not in json.dumps(r.params) + json.dumps(r.body) for r in server.requests)

        # An error body echoing the token, a 404, and an exhausted 503: none may show it.
        server.faults.append(Fault.error(401, message=f"Invalid app token {TOKEN}", where="page", offset=0))
        errors = []
        for attempt in (client, make_client(server, app_token=TOKEN, dataset_id="zzzz-0000")):
            with pytest.raises(SocrataError) as info:
                attempt.fetch_all()
            errors.append(info.value)
        server.faults.append(Fault.error(503, times=100))
        with pytest.raises(SocrataError) as info:
            make_client(server, app_token=TOKEN, max_retries=1).fetch_all()
        errors.append(info.value)
        server.faults.clear()
        server.faults.append(Fault.reset_mid_body(times=100))  # the body-retry path logs and raises too
        with pytest.raises(SocrataError) as info:
            make_client(server, app_token=TOKEN, max_retries=1).fetch_all()
        errors.append(info.value)

    assert "Invalid app token ***" in str(errors[0])
    assert "body broke off" in str(errors[-1]) and "asking again" in captured_logs.text
    for error in errors:
        assert TOKEN not in str(error) and TOKEN not in repr(error) and TOKEN not in str(error.url)
    assert captured_logs.lines and TOKEN not in captured_logs.text
    assert TOKEN not in repr(client)
    assert TOKEN not in repr(SocrataTarget(app_token=TOKEN))


# ---------------------------------------------------------------------------------------
# A hostile or broken source: the token stays home
# ---------------------------------------------------------------------------------------
def _page_url(server: FakeSocrata, protocol: str, offset: int, limit: int = 100) -> str:
    """A URL of the page at `offset` (SODA3: its endpoint; the page is in the re-sent body)."""
    if protocol == "soda3":
        return endpoint(server, protocol)
    return f"{server.base_url}/resource/j8mb-icvb.json?$order=:id&$limit={limit}&$offset={offset}"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_followed_only_within_the_configured_origin(
    rows: list[dict[str, Any]], status: int, protocol: str
) -> None:
    # With a token the client speaks SODA3 where the domain has it: for SODA2, a domain without.
    with FakeSocrata(rows, soda3=protocol == "soda3") as server, FakeSocrata(rows) as elsewhere:
        # Within the origin (a relative Location): followed, with the token (and a SODA3 query's
        # method and body), and the data is whole.
        relative = _page_url(server, protocol, 100)[len(server.base_url):]
        server.faults.append(Fault.redirect(relative, status=status, where="page", offset=100))
        assert records(make_client(server, protocol, app_token=TOKEN).fetch_all()) == rows
        hops = asked_at(server, 100)
        assert len(hops) == 2 and all(r.headers.get("X-App-Token") == TOKEN and r.protocol == protocol for r in hops)

        # To another port of the same host: another origin, so not followed at all.
        server.faults.append(Fault.redirect(_page_url(elsewhere, protocol, 100), status=status, where="page", offset=100))
        with pytest.raises(SocrataError) as info:
            make_client(server, protocol, app_token=TOKEN).fetch_all()
        assert elsewhere.requests == []  # the other server was never contacted, so never saw the token
    message = str(info.value)
    assert f"HTTP {status}" in message and elsewhere.base_url in message and f"outside {server.base_url}" in message
    assert at(protocol, 100) in message and "not followed" in message and TOKEN not in message
    assert not info.value.transient


def test_redirect_to_another_scheme_or_host_is_refused_too(server: FakeSocrata) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    for target in (f"https://127.0.0.1:{port}/resource/j8mb-icvb.json", f"http://localhost:{port}/x", "//evil.example/x"):
        server.faults.append(Fault.redirect(target, where="views"))
        with pytest.raises(SocrataError, match="not followed"):
            make_client(server, app_token=TOKEN).signature()
        assert server.requests[-1].path == "/api/views/j8mb-icvb.json"  # no request went to the target


def test_a_redirect_loop_within_the_origin_ends(server: FakeSocrata, protocol: str) -> None:
    server.faults.append(Fault.redirect(_page_url(server, protocol, 0), where="page", offset=0, times=1000))
    with pytest.raises(SocrataError, match=f"more than {MAX_REDIRECTS} redirects"):
        make_client(server, protocol, max_workers=1).fetch_all()
    assert len(server.page_requests()) == MAX_REDIRECTS + 1


def test_a_token_over_plain_http_needs_a_loopback_host() -> None:
    for url in ("http://healthdata.gov", "http://10.0.0.5:8080", "http://127.0.0.1.evil.example"):
        with pytest.raises(SocrataError, match=r"refusing to send the app token over plain http.*https://") as info:
            SocrataTarget(base_url=url, app_token=TOKEN)
        assert TOKEN not in str(info.value)
    for url in ("http://localhost:8080", "http://127.0.0.1:1", "http://127.9.9.9", "http://[::1]:5000", "https://healthdata.gov"):
        SocrataTarget(base_url=url, app_token=TOKEN)
    SocrataTarget(base_url="http://healthdata.gov")  # no token, nothing to protect


# ---------------------------------------------------------------------------------------
# A hostile or broken source: bounded memory and time
# ---------------------------------------------------------------------------------------
def test_a_count_beyond_the_page_cap_is_refused_before_any_page(
    server: FakeSocrata, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    monkeypatch.setattr(paging, "MAX_PAGES", 20)  # 20 pages of 100 rows: 2,000 rows at most
    server.faults.append(Fault.json_body([{"count": "2001"}], where="count"))
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol).fetch_all()
    message = str(info.value)
    assert "count(*) = 2,001 rows" in message and "20 pages of 100 rows = 2,000" in message
    assert server.page_requests() == []


class _CountingPool(ThreadPoolExecutor):
    """Records the most futures submitted but not yet finished at any moment."""

    outstanding = most = 0
    lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        cls = type(self)
        with cls.lock:
            cls.outstanding += 1
            cls.most = max(cls.most, cls.outstanding)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: self._finished())
        return future

    def _finished(self) -> None:
        with type(self).lock:
            type(self).outstanding -= 1


def test_pages_are_queued_through_a_bounded_window(
    rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging, "ThreadPoolExecutor", _CountingPool)
    _CountingPool.outstanding = _CountingPool.most = 0
    with FakeSocrata(rows, latency_s=0.005) as server:
        extract = make_client(server, page_size=10, max_workers=2).fetch_all()  # 45 chunks
    assert records(extract) == rows
    assert 2 <= _CountingPool.most <= 4  # 2 x workers, not one future per page


def test_pages_stream_in_order_and_a_slow_first_page_holds_at_most_the_window(
    rows: list[dict[str, Any]], protocol: str
) -> None:
    """`plan().pages()` yields Arrow pages in offset order as they complete; while the first page is
    slow, later ones are held only up to the window (2 x workers), not fetched without bound."""
    with FakeSocrata(rows) as server:
        server.faults.append(Fault.sleep(0.5, where="page", offset=0))
        client = make_client(server, protocol, page_size=10, max_workers=2)  # 45 pages
        with client.plan() as plan:
            pages = plan.pages()
            first = next(pages)
            asked_while_first_was_slow = len(server.page_requests())
            tables = [first, *pages]
            stats = plan.stats(rows=plan.rows, elapsed_s=0.0)
    assert asked_while_first_was_slow <= 4
    assert [row for table in tables for row in table.to_pylist()] == rows
    assert stats.rows == 450 and stats.pages == 46 and plan.source == endpoint(server, protocol)  # 45 + one past the count


def test_a_gzip_bomb_is_cut_off_at_the_body_cap(server: FakeSocrata, protocol: str) -> None:
    # 64 MiB of whitespace inside a valid page, sent as ~70 kB of gzip.
    server.faults.append(Fault.gzip_bomb(64, where="page", offset=100))
    tracemalloc.start()
    try:
        with pytest.raises(SocrataError) as info:
            make_client(server, protocol, max_body_bytes=4 * 1024 * 1024).fetch_all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "larger than max_body_bytes = 4,194,304 bytes" in message and "after gzip decoding" in message
    assert at(protocol, 100) in message and not info.value.transient
    assert peak < 24 * 1024 * 1024, f"{peak:,} bytes traced: the body was not streamed"
    assert len(asked_at(server, 100)) == 1  # not retried


def test_a_declared_length_beyond_the_cap_is_refused_unread(server: FakeSocrata, protocol: str) -> None:
    big = b"[" + b" " * (2 << 20) + b"]"  # 2 MiB, over the smallest cap a config may set (1 MiB)
    server.faults.append(Fault("respond", body=big, headers={"Content-Type": "application/json"}, where="page", offset=0))
    with pytest.raises(SocrataError) as info:
        make_client(server, protocol, max_body_bytes=1 << 20, max_workers=1).fetch_all()
    assert re.search(
        rf"{re.escape(at(protocol, 0))} is larger than max_body_bytes = 1,048,576 bytes \(it declares a Content-Length "
        r"of 2,097,154 bytes\)",
        str(info.value),
    ), str(info.value)


@pytest.mark.parametrize("fault", [Fault.drip, Fault.drip_headers], ids=["body", "headers"])
def test_a_dripping_response_is_cut_off_at_the_deadline_and_retried(
    server: FakeSocrata, rows: list[dict[str, Any]], fault: Any, protocol: str
) -> None:
    # 12 pieces 0.25 s apart: never quiet for the 2 s read timeout, but 2.75 s in all.
    server.faults.append(fault(0.25, pieces=12, where="page", offset=100))
    started = time.monotonic()
    extract = make_client(server, protocol, read_timeout_s=2.0, request_deadline_s=0.8).fetch_all()
    assert records(extract) == rows
    assert extract.stats.retries == 1
    assert time.monotonic() - started < 2.0  # cut off at 0.8 s, not waited out


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, cause",
    [(Fault.drip, ""), (Fault.drip_headers, "RequestDeadlineExceeded: ")],
    ids=["body", "headers"],
)
def test_a_server_that_always_drips_fails_naming_the_deadline(server: FakeSocrata, fault: Any, cause: str) -> None:
    server.faults.append(fault(0.25, pieces=40, where="page", offset=100, times=100))  # 10 s a response
    started = time.monotonic()
    with pytest.raises(SocrataError) as info:
        make_client(server, read_timeout_s=2.0, request_deadline_s=0.5, max_retries=2, max_workers=1).fetch_all()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert f"$offset=100 failed after 3 attempt(s): {cause}no complete response within the request deadline of 0.5 s" in message
    assert info.value.transient
    assert len(asked_at(server, 100)) == 3
    assert elapsed < 3.0  # three deadlines and tiny backoffs: the whole request ended


@pytest.mark.parametrize(
    "bad",
    [
        dict(page_size=0), dict(page_size=50_001), dict(max_workers=0), dict(max_retries=-1), dict(backoff_max_s=-1),
        dict(connect_timeout_s=0), dict(max_body_bytes=0), dict(request_deadline_s=0), dict(request_deadline_s=float("inf")),
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_settings_are_validated_by_the_config_itself(bad: dict[str, Any]) -> None:
    """The knobs are checked by pydantic (so by Dagster as it loads run config), and an override is too."""
    with pytest.raises(ValidationError, match=next(iter(bad))):
        SocrataSource(**bad)
    with pytest.raises(ValidationError, match=next(iter(bad))):
        SocrataSource().client(**bad)


def test_source_text_in_errors_and_logs_is_clipped(server: FakeSocrata, rows: list[dict[str, Any]], captured_logs: _Captured) -> None:
    long = "X" * 20_000
    cases = [
        lambda: server.faults.append(Fault.error(400, message=long, where="page", offset=0)),  # Socrata's message
        lambda: server.faults.append(Fault.json_body({long: 1, "message": long}, where="page", offset=0)),  # keys, message
        lambda: server.faults.append(
            Fault("respond", body="<html>" + long, headers={"Content-Type": "text/html"}, where="page", offset=0)
        ),
        lambda: server.set_rows([{**row, "fema_region": None, long: "1"} for row in rows]),  # the columns present
    ]
    for prepare in cases:
        prepare()
        with pytest.raises(SocrataError) as info:
            make_client(server, max_workers=1).fetch_all()
        message = str(info.value)
        assert "XXXX" in message and len(message) < 1_000, len(message)
        assert re.search(r"\.\.\. \[[\d,]+ more (characters|bytes)\]", message), message[-200:]
    server.set_rows(rows)
    server.faults.append(Fault.json_body([{"count": long}, {"n": long}], where="count"))
    make_client(server).fetch_all()  # an unusable count is logged, then paging goes on
    warning = next(line for line in captured_logs.lines if "count(*) query failed" in line)
    assert "XXXX" in warning and len(warning) < 1_000


# ---------------------------------------------------------------------------------------
# Columns and values
# ---------------------------------------------------------------------------------------
def test_missing_required_column_is_named(rows: list[dict[str, Any]]) -> None:
    stripped = [{k: v for k, v in r.items() if k not in ("fema_region", "date")} for r in rows]
    with FakeSocrata(stripped) as server:
        with pytest.raises(SocrataError) as info:
            make_client(server).fetch_all()
    message = str(info.value)
    assert "fema_region" in message and "date" in message and "/resource/j8mb-icvb.json" in message


def test_extra_columns_kept_in_first_seen_order(rows: list[dict[str, Any]]) -> None:
    rows = [dict(r) for r in rows]
    rows[5]["zz_note"] = "late"
    for r in rows[150:]:
        r["geocoded_state"] = "POINT (-86.8 32.7)"
    # key order inside a row must not matter either
    rows[0] = dict(reversed(list(rows[0].items())))
    with FakeSocrata(rows) as server:
        frame = make_client(server).fetch_all().frame
    assert list(frame.columns) == [*REQUIRED_COLUMNS, "zz_note", "geocoded_state"]
    assert frame.loc[5, "zz_note"] == "late" and frame["zz_note"].isna().sum() == len(rows) - 1
    assert frame["geocoded_state"].isna().sum() == 150
    assert frame.loc[200, "geocoded_state"] == "POINT (-86.8 32.7)"
    assert_all_string(frame)


def test_values_kept_exactly_as_delivered(rows: list[dict[str, Any]]) -> None:
    rows = [dict(r) for r in rows]
    rows[0].update(state_fips="01", state_name=" Alabama ", new_results_reported=None)
    rows[1].update(fema_region="NA", total_results_reported="0012")
    rows[2].update(new_results_reported=None, total_results_reported=None)
    with FakeSocrata(rows) as server:
        frame = make_client(server).fetch_all().frame
    assert frame.loc[0, "state_fips"] == "01"
    assert frame.loc[0, "state_name"] == " Alabama "
    assert frame.loc[0, "new_results_reported"] is pd.NA
    assert frame.loc[1, "fema_region"] == "NA"
    assert frame.loc[1, "total_results_reported"] == "0012"
    assert frame.loc[2, ["new_results_reported", "total_results_reported"]].isna().all()
    assert frame.loc[3, "date"] == rows[3]["date"]
    assert frame["new_results_reported"].isna().sum() == 2
    assert_all_string(frame)


def test_non_string_json_values_are_kept_as_json_text() -> None:
    rows = make_rows(3)
    rows[0]["geocoded_state"] = {"type": "Point", "coordinates": [-86.8, 32.7]}  # type: ignore[assignment]
    rows[1]["new_results_reported"] = 5  # type: ignore[assignment]
    with FakeSocrata(rows) as server:
        frame = make_client(server).fetch_all().frame
    assert frame.loc[0, "geocoded_state"] == '{"type":"Point","coordinates":[-86.8,32.7]}'
    assert frame.loc[1, "new_results_reported"] == "5"
    assert_all_string(frame)


def test_real_sample_round_trips_exactly(sample_rows: list[dict[str, Any]], protocol: str) -> None:
    # SODA2: pages capped at 250 for a page size of 300. SODA3: no system fields (:id) in the rows.
    with FakeSocrata(sample_rows, max_limit=250, compress=True) as server:
        extract = make_client(server, protocol, page_size=300).fetch_all()
    assert len(sample_rows) == 1000
    assert extract.frame.to_dict("records") == sample_rows
    assert list(extract.frame.columns) == list(REQUIRED_COLUMNS)
    assert extract.frame.loc[0, "state_fips"] == "01"
    assert extract.frame.loc[0, "date"] == "2020-03-01T00:00:00.000"
    assert_all_string(extract.frame)


# ---------------------------------------------------------------------------------------
# Export files
# ---------------------------------------------------------------------------------------
def test_read_real_csv_snapshot() -> None:
    extract = read_export_file(SNAPSHOT_CSV)
    frame = extract.frame
    assert len(frame) == 57_459
    assert list(frame.columns) == list(REQUIRED_COLUMNS)
    assert frame.iloc[0].tolist() == ["AL", "Alabama", "01", "Region 4", "Negative", "2020-03-06", "5", "5"]
    assert_all_string(frame)
    assert not frame["total_results_reported"].str.endswith("\r").any()  # CRLF handled
    assert extract.stats.rows == 57_459 and extract.stats.pages == 1
    assert extract.stats.requests == 0 and extract.stats.retries == 0
    assert extract.stats.bytes == SNAPSHOT_CSV.stat().st_size
    assert extract.source == str(SNAPSHOT_CSV)


def _nine_column_csv(n: int = 30) -> tuple[bytes, list[list[str]]]:
    """A newer-layout export built from real rows: geocoded_state + YYYY/MM/DD dates, CRLF."""
    with gzip.open(SNAPSHOT_CSV, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        real = [next(reader) for _ in range(n)]
    out_rows = []
    for row in real:
        row = list(row)
        row[5] = row[5].replace("-", "/")
        out_rows.append(row + ["POINT (-86.8 32.7)"])
    out_rows[1][3] = "NA"  # a literal "NA" must survive
    out_rows[2][6] = ""  # a blank cell is missing
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header + ["geocoded_state"])
    writer.writerows(out_rows)
    return buffer.getvalue().encode("utf-8"), out_rows


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_read_nine_column_csv(tmp_path: Path, compressed: bool) -> None:
    data, expected = _nine_column_csv()
    path = tmp_path / "export.csv"  # gzip content under a .csv name: detected by magic bytes
    path.write_bytes(gzip.compress(data) if compressed else data)
    extract = read_export_file(path)
    frame = extract.frame
    assert list(frame.columns) == [*REQUIRED_COLUMNS, "geocoded_state"]
    assert len(frame) == len(expected)
    assert frame.loc[0, "date"] == "2020/03/06"
    assert frame.loc[0, "state_fips"] == "01"
    assert frame.loc[1, "fema_region"] == "NA"
    assert frame.loc[2, "new_results_reported"] is pd.NA
    assert frame.loc[0, "geocoded_state"] == "POINT (-86.8 32.7)"
    got = frame.astype(object).where(frame.notna(), "").values.tolist()
    assert got == expected
    assert_all_string(frame)
    assert extract.stats.bytes == path.stat().st_size


def test_csv_columns_reordered_required_first(tmp_path: Path) -> None:
    header = ["geocoded_state", *reversed(REQUIRED_COLUMNS)]
    line = ["POINT (1 2)", "7", "3", "2021/01/02", "Positive", "Region 4", "01", "Alabama", "AL"]
    path = tmp_path / "x.csv"
    path.write_text(",".join(header) + "\n" + ",".join(line) + "\n")
    frame = read_export_file(path).frame
    assert list(frame.columns) == [*REQUIRED_COLUMNS, "geocoded_state"]
    assert frame.iloc[0].tolist() == ["AL", "Alabama", "01", "Region 4", "Positive", "2021/01/02", "3", "7", "POINT (1 2)"]


def test_read_json_array_files(tmp_path: Path, sample_rows: list[dict[str, Any]]) -> None:
    extract = read_export_file(SAMPLE_JSON)
    assert extract.frame.to_dict("records") == sample_rows
    assert_all_string(extract.frame)

    partial = [dict(r) for r in sample_rows[:3]]
    del partial[1]["new_results_reported"]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(partial))
    frame = read_export_file(path).frame
    assert frame.loc[1, "new_results_reported"] is pd.NA
    assert frame.loc[0, "state_fips"] == "01"


def test_export_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SocrataError, match="export file not found: .*nope.csv"):
        read_export_file(tmp_path / "nope.csv")

    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(os.urandom(2000).replace(b"\x1f", b"x"))
    with pytest.raises(SocrataError, match="garbage.csv"):
        read_export_file(garbage)

    broken_gzip = tmp_path / "broken.csv.gz"
    broken_gzip.write_bytes(gzip.compress(b"state,state_name\n" * 1000)[:60])
    with pytest.raises(SocrataError, match="cannot read export file .*broken.csv.gz"):
        read_export_file(broken_gzip)

    missing = tmp_path / "missing.csv"
    missing.write_text("state,state_name,state_fips,date\nAL,Alabama,01,2020-03-06\n")
    with pytest.raises(SocrataError) as info:
        read_export_file(missing)
    message = str(info.value)
    assert "missing.csv" in message
    for column in ("fema_region", "overall_outcome", "new_results_reported", "total_results_reported"):
        assert column in message

    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"message": "not rows"}))
    with pytest.raises(SocrataError, match="JSON object"):
        read_export_file(obj)

    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(make_rows(5))[:300])
    with pytest.raises(SocrataError, match="cut.json"):
        read_export_file(cut)

    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(REQUIRED_COLUMNS) + "\r\n")
    with pytest.raises(SocrataError, match="no rows"):
        read_export_file(header_only)


def test_only_regular_files_with_a_data_suffix_are_read(tmp_path: Path) -> None:
    good = tmp_path / "export.csv"
    good.write_bytes(gzip.decompress(SNAPSHOT_CSV.read_bytes())[:5000].rsplit(b"\n", 1)[0] + b"\n")
    assert len(read_export_file(good).frame) > 0
    link = tmp_path / "latest.csv"
    link.symlink_to(good)
    assert len(read_export_file(link).frame) > 0  # a symlink to an export is fine

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    directory = tmp_path / "folder.json"
    directory.mkdir()
    environ_link = tmp_path / "environ.csv"
    environ_link.symlink_to("/proc/self/environ")
    null_link = tmp_path / "null.json"
    null_link.symlink_to("/dev/null")
    text = tmp_path / "export.txt"
    text.write_bytes(good.read_bytes())
    disguised = tmp_path / "disguised.csv"
    disguised.symlink_to(text)
    refused = {
        "/proc/self/environ": "does not end in a data suffix",
        fifo: "not a regular file",  # and the open does not hang waiting for a writer
        directory: "not a regular file",
        environ_link: "does not end in a data suffix",
        null_link: "does not end in a data suffix",
        text: "does not end in a data suffix",
        disguised: "does not end in a data suffix",
    }
    for path, why in refused.items():
        with pytest.raises(SocrataError) as info:
            read_export_file(path)
        message = str(info.value)
        assert message.startswith(f"refusing export file {path}: ") and why in message, message
        assert "regular file named *.json, *.csv, *.json.gz or *.csv.gz" in message
        assert "PATH=" not in message


CANARY = "CANARY-7f3a9c"


@pytest.mark.parametrize(
    "name, content",
    [
        ("cut.json", f'[{{"state": "{CANARY}", '.encode()),
        ("object.json", json.dumps({CANARY: "x", "message": CANARY}).encode()),
        ("header.csv", f"{CANARY},SECRET={CANARY}\n1,2\n".encode()),
        ("ragged.csv", (",".join(REQUIRED_COLUMNS) + f'\n"{CANARY}\n').encode()),
        ("binary.csv", f"{CANARY}=\xff\xfe\x00".encode("latin-1") + os.urandom(64)),
        ("env.csv.gz", gzip.compress(f"HOME=/root\x00TOKEN={CANARY}\x00".encode())),
        ("broken.json.gz", gzip.compress(f'[{{"{CANARY}": '.encode())[:-9]),
    ],
)
def test_errors_about_a_file_never_quote_its_contents(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SocrataError) as info:
        read_export_file(path)
    message = str(info.value)
    assert str(path) in message
    assert CANARY not in message and "SECRET" not in message and "HOME=" not in message, message
    error = info.value  # and no chained parser message that could quote it either
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


# ---------------------------------------------------------------------------------------
# The stand-in itself (benchmarks rely on it behaving like Socrata)
# ---------------------------------------------------------------------------------------
def test_stand_in_behaves_like_socrata_soda2() -> None:
    import requests

    rows = make_rows(1500)
    rows[0]["new_results_reported"] = None
    with FakeSocrata(rows, max_limit=1200) as server:
        base = f"{server.base_url}/resource/j8mb-icvb.json"
        assert requests.get(base, params={"$select": "count(*)"}, timeout=5).json() == [{"count": "1500"}]
        default_page = requests.get(base, params={"$order": ":id"}, timeout=5).json()
        assert len(default_page) == 1000 and default_page[1] == rows[1]
        assert "new_results_reported" not in default_page[0]  # null fields are left out
        capped = requests.get(base, params={"$order": ":id", "$limit": "5000", "$offset": "100"}, timeout=5).json()
        assert capped == rows[100:1300]
        unordered = requests.get(base, params={"$limit": "50", "$offset": "50"}, timeout=5).json()
        assert len(unordered) == 50 and unordered != rows[50:100]  # unstable without $order
        bad = requests.get(base, params={"$order": ":id", "$limit": "x"}, timeout=5)
        assert bad.status_code == 400 and bad.json()["message"]
        missing = requests.get(f"{server.base_url}/resource/zzzz-0000.json", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"] is True
        server.rows_updated_at = 1_234_567
        views = requests.get(f"{server.base_url}/api/views/j8mb-icvb.json", timeout=5).json()
        assert views["rowsUpdatedAt"] == 1_234_567
        assert sorted(c["fieldName"] for c in views["columns"]) == sorted([":id", *REQUIRED_COLUMNS])  # from the rows
        recorded = server.requests[1]
        assert (recorded.method, recorded.path, recorded.params) == ("GET", "/resource/j8mb-icvb.json", {"$order": ":id"})
        assert "Host" in recorded.headers and (recorded.target, recorded.offset, recorded.limit) == ("page", 0, 1000)


def _soda3_query(server: FakeSocrata, body: dict[str, Any], token: str | None = TOKEN) -> Any:
    import requests

    url = f"{server.base_url}/api/v3/views/j8mb-icvb/query.json"
    return requests.post(url, json=body, headers={"X-App-Token": token} if token else {}, timeout=5)


def test_stand_in_behaves_like_socrata_soda3() -> None:
    import requests

    rows = make_rows(250)
    page = {"pageNumber": 2, "pageSize": 100}
    with FakeSocrata(rows) as server:
        assert _soda3_query(server, {"query": "SELECT count(*)", "includeSynthetic": False}).json() == [{"count": "250"}]
        ordered = _soda3_query(server, {"query": "select *  order by :id", "page": page, "includeSynthetic": False})
        assert ordered.json() == rows[100:200]
        synthetic = _soda3_query(server, {"query": "SELECT * ORDER BY :id", "page": page}).json()  # system fields unless told not to
        assert synthetic[0][":id"] and {k: v for k, v in synthetic[0].items() if k != ":id"} == rows[100]
        assert _soda3_query(server, {"query": "SELECT * ORDER BY :id", "page": page}, token=None).status_code == 403
        assert _soda3_query(server, {"query": "SELECT * ORDER BY state", "page": page}).status_code == 400
        assert _soda3_query(server, {"query": "SELECT * ORDER BY :id"}).status_code == 400  # the stand-in wants a page
        assert requests.get(f"{server.base_url}/api/v3/views/j8mb-icvb/query.json", timeout=5).status_code == 404
        recorded = server.requests[1]
        assert (recorded.method, recorded.protocol, recorded.target, recorded.offset, recorded.limit) == ("POST", "soda3", "page", 100, 100)
    with FakeSocrata(rows, soda3=False) as server:  # a domain without SODA3
        assert _soda3_query(server, {"query": "SELECT count(*)"}).status_code == 404
    with FakeSocrata(rows, soda3_page_cap=70) as server:  # a server that serves (and numbers) pages of 70
        assert _soda3_query(server, {"query": "SELECT * ORDER BY :id", "page": page, "includeSynthetic": False}).json() == rows[70:140]


def test_empty_row_objects_are_not_mistaken_for_rows(server: FakeSocrata) -> None:
    server.faults.append(Fault.json_body([{}, {}], where="page", offset=100))
    with pytest.raises(SocrataError, match="row objects are empty"):
        make_client(server).fetch_all()


# ---------------------------------------------------------------------------------------
# Dagster resource
# ---------------------------------------------------------------------------------------
def test_resource_reads_file_when_source_file_set(server: FakeSocrata) -> None:
    with environment(**from_api(server.base_url), **from_file(SAMPLE_JSON)):
        extract = SocrataSource().extract()
    assert len(extract.frame) == 1000 and extract.source == str(SAMPLE_JSON)
    assert server.requests == []  # the API was not touched


def test_resource_fetches_from_api(server: FakeSocrata, rows: list[dict[str, Any]]) -> None:
    source = SocrataSource(page_size=200, max_workers=2, max_retries=1)
    seen: list[int] = []
    with environment(**from_api(server.base_url, app_token=TOKEN)):
        extract = source.extract(progress=lambda n, total: seen.append(n))
    assert records(extract) == rows
    assert seen[-1] == len(rows)
    assert all(r.headers.get("X-App-Token") == TOKEN for r in server.requests)
    assert {(r.method, r.protocol) for r in server.requests} == {("POST", "soda3")}  # a token: SODA3


def test_invalid_configuration_is_reported() -> None:
    with pytest.raises(ValidationError, match="page_size"):
        SocrataSource(page_size=0)
    with pytest.raises(SocrataError, match=r"base_url \(SOCRATA_BASE_URL\) must start with http:// or https://"):
        SocrataTarget(base_url="healthdata.gov")
    with pytest.raises(SocrataError, match=r"base_url \(SOCRATA_BASE_URL\) must start with"):
        SocrataTarget.from_env({"SOCRATA_BASE_URL": "ftp://healthdata.gov"})
    with pytest.raises(SocrataError, match=r"dataset_id \(SOCRATA_DATASET_ID\) must be a Socrata four-by-four id"):
        SocrataTarget(dataset_id="j8mb-icvb/../../x")


def test_a_run_asks_for_the_count_once(server: FakeSocrata, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    """The signature's count(*) is reused by the fetch; growth since then is still followed."""
    monkeypatch.setenv("SOCRATA_BASE_URL", server.base_url)
    if protocol == "soda3":
        monkeypatch.setenv("SOCRATA_APP_TOKEN", TOKEN)
    source = SocrataSource(page_size=200, max_workers=2)
    signature = source.signature()
    server.extend_rows(make_rows(460)[450:])  # ten rows arrive between the signature and the fetch
    extract = source.extract(known_count=signature.row_count)
    counts = [r for r in server.requests if r.target == "count"]
    assert (signature.row_count, len(counts)) == (450, 1)
    assert {r.protocol for r in server.requests if r.target in ("count", "page")} == {protocol}
    assert len(extract.frame) == 460


# ---------------------------------------------------------------------------------------
# SODA3 or SODA2
# ---------------------------------------------------------------------------------------
def test_without_a_token_the_client_speaks_soda2_even_where_soda3_exists(server: FakeSocrata, rows: list[dict[str, Any]]) -> None:
    extract = make_client(server, app_token=None).fetch_all()
    assert records(extract) == rows and extract.source == endpoint(server, "soda2")
    assert {(r.method, r.protocol) for r in server.requests} == {("GET", "soda2")}


def test_soda3_queries_are_json_posts_with_the_token(server: FakeSocrata) -> None:
    make_client(server, "soda3").fetch_all()
    assert server.requests and all(r.method == "POST" and r.path == "/api/v3/views/j8mb-icvb/query.json" for r in server.requests)
    for request in server.requests:
        assert request.headers["Content-Type"] == "application/json" and request.headers["X-App-Token"] == TOKEN
        assert request.body["includeSynthetic"] is False and set(request.body) <= {"query", "page", "includeSynthetic"}


@pytest.mark.parametrize("status", [404, 405])
def test_a_domain_without_soda3_falls_back_to_soda2_once_per_run(
    rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, captured_logs: _Captured, status: int
) -> None:
    with FakeSocrata(rows, soda3=status != 404) as server:
        if status == 405:
            server.faults.append(Fault.error(405, message="Method Not Allowed", where="count"))
        monkeypatch.setenv("SOCRATA_BASE_URL", server.base_url)
        monkeypatch.setenv("SOCRATA_APP_TOKEN", TOKEN)
        source = SocrataSource(page_size=100, max_workers=4)
        signature = source.signature()  # the run's first query finds no SODA3 ...
        extract = source.extract(known_count=signature.row_count)  # ... and its fetch does not ask again
    assert records(extract) == rows and extract.source == endpoint(server, "soda2")
    assert [(r.method, r.protocol) for r in server.requests if r.protocol == "soda3"] == [("POST", "soda3")]
    assert all(r.headers.get("X-App-Token") == TOKEN for r in server.requests)
    fallbacks = [line for line in captured_logs.lines if "no SODA3 query endpoint" in line]
    assert len(fallbacks) == 1 and f"HTTP {status}" in fallbacks[0] and TOKEN not in captured_logs.text


def test_concurrent_pages_fall_back_together_and_log_it_once(rows: list[dict[str, Any]], captured_logs: _Captured) -> None:
    """With the count known, the first queries are concurrent pages: they fall back together, and
    then page as SODA2 does (here continuing pages a 2.0 endpoint capped at 70 rows)."""
    with FakeSocrata(rows, soda3=False, latency_s=0.05, max_limit=70) as server:
        extract = make_client(server, "soda3", page_size=100, max_workers=4).fetch_all(known_count=450)
    assert records(extract) == rows
    assert 1 <= len([r for r in server.requests if r.protocol == "soda3"]) <= 4  # the first window at most
    assert len([line for line in captured_logs.lines if "no SODA3 query endpoint" in line]) == 1


def test_a_404_after_soda3_answered_is_an_error_not_a_fallback(server: FakeSocrata) -> None:
    server.faults.append(Fault.error(404, message="no such page", where="page", offset=100))
    with pytest.raises(SocrataError) as info:
        make_client(server, "soda3", max_workers=1).fetch_all()
    message = str(info.value)
    assert "HTTP 404" in message and at("soda3", 100) in message and "no such page" in message
    assert {r.protocol for r in server.requests} == {"soda3"}


def test_a_refused_token_is_an_error_not_a_fallback(server: FakeSocrata) -> None:
    server.faults.append(Fault.error(403, message="invalid app token", times=100))
    with pytest.raises(SocrataError, match=r"HTTP 403 .*invalid app token"):
        make_client(server, "soda3").fetch_all()
    assert {r.protocol for r in server.requests} == {"soda3"}


# ----------------------------------------------------------------------------- the Arrow decoding of pages
@pytest.mark.parametrize(
    "body, arrow_decodes",
    [
        ('[{"state":"AL","date":"2020-03-01T00:00:00.000"},{"state":"AK","fips":"02"}]', True),  # a key some rows lack
        ('[{"a":"x","b":null},{"b":"\\u00e9\\n\\"q\\"","a":"\\u0000"}]', True),  # null, escapes, NUL, key order
        ('[{"a":"1"},{"a":2}]', False),  # a number among strings: kept as its JSON text by the general path
        ('[{"a":{"type":"Point","coordinates":[1,2]}}]', False),  # a geo object, likewise
        ('[{"a":"1","a":"2"}]', False),  # a repeated key: the last wins, as in json.loads
        ('[{"a":"1"}, null]', False),  # not row objects: the general path says so
        ('["x"]', False),
        ("[]", False),
        ("[{}]", False),
        ('{"message":"slow down"}', False),
        ('[{"a":"x"}] trailing', False),  # not JSON
    ],
)
def test_a_page_decodes_to_the_same_table_by_either_path(body: str, arrow_decodes: bool) -> None:
    """Arrow's JSON reader (the usual, all-string page) gives exactly the table `json.loads` +
    `rows_to_table` gives, or declines, and the general path decides (and explains a bad body)."""
    fast = row_tables.string_rows_table(body.encode())
    assert (fast is not None) == arrow_decodes
    if fast is not None:
        general = row_tables.rows_to_table(json.loads(body))
        assert fast.equals(general), (fast.to_pylist(), general.to_pylist())


def test_a_real_page_takes_the_arrow_path() -> None:
    """The bundled 1,000 real rows, as Socrata sent them, decode without a Python object per value."""
    body = gzip.decompress(SAMPLE_JSON.read_bytes())
    fast = row_tables.string_rows_table(body)
    assert fast is not None and fast.num_rows == 1000 and fast.equals(row_tables.rows_to_table(json.loads(body)))
