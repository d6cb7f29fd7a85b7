"""Extract the HHS PCR testing time series (healthdata.gov ``j8mb-icvb``).

Two ways in, one shape out:

* :class:`SocrataClient` pages through the SODA JSON API. It asks for the row
  count first so it can fetch pages concurrently, orders by ``:id`` because
  Socrata pages are only stable with ``$order``, and leaves retrying to urllib3's
  ``Retry`` (backoff with jitter, ``Retry-After``) mounted on a requests session;
  a body that breaks off after the headers (urllib3 has returned by then) is
  asked for again with ``tenacity``, from the same retry budget.
* :func:`read_export_file` reads a downloaded export (the JSON array, or a CSV in
  the old 8-column or the newer 9-column layout) for offline runs.

Both return an :class:`Extract` whose frame holds every source column as
pandas ``"string"`` exactly as delivered (no trimming, no type conversion, so
``state_fips`` keeps its leading zero); parsing and validation happen
downstream. Anything that goes wrong surfaces as :class:`SocrataError` with a
message that names the URL or file, and never the app token.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlencode

import dagster as dg
import pandas as pd
import pyarrow as pa
import requests
import tenacity
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

__all__ = [
    "REQUIRED_COLUMNS",
    "Extract",
    "FetchStats",
    "SocrataClient",
    "SocrataError",
    "SocrataSource",
    "SocrataTarget",
    "SourceSignature",
    "read_export_file",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "state",
    "state_name",
    "state_fips",
    "fema_region",
    "overall_outcome",
    "date",
    "new_results_reported",
    "total_results_reported",
)

# 202 = "query still being processed"; 429 = throttled; 5xx = transient server
# trouble. 501/505 are permanent ("not implemented"), so retrying is pointless.
RETRY_STATUSES: frozenset[int] = frozenset({202, 429, *range(500, 600)} - {501, 505})

# A bound on page requests per fetch, so a server that keeps answering with
# rows (e.g. one that ignores $offset) cannot keep the client busy forever.
MAX_PAGES = 100_000

_USER_AGENT = "covid-assets/0.1 (python-requests; Socrata dataset sync)"
_GZIP_MAGIC = b"\x1f\x8b"

ProgressFn = Callable[[int, Optional[int]], None]


class SocrataError(Exception):
    """Any extraction failure shown to the user; the message says what, where and why.

    `url` (never containing the app token) and `status` are set when the
    failure was an HTTP request; `transient` is True when retries ran out on a
    problem that could go away by itself (throttling, 5xx, timeouts, resets).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class FetchStats:
    """What an extract cost: for logs, asset metadata and benchmarks.

    `requests` counts logical GETs (count query + pages); `retries` the extra
    attempts made for them (urllib3's, and re-requests of a body that broke
    off); `pages` the page requests (including a
    final empty page when one was needed to find the end); `bytes` the
    decoded response bodies (or the file size for a file).
    """

    rows: int
    pages: int
    requests: int
    retries: int
    bytes: int
    elapsed_s: float


@dataclass(frozen=True, eq=False)
class Extract:
    """A raw extract: all-string frame, how it was obtained, and from where (URL or path)."""

    frame: pd.DataFrame
    stats: FetchStats
    source: str


@dataclass(frozen=True)
class SourceSignature:
    """Cheap evidence of what the source holds now: if both match the last load, nothing changed."""

    rows_updated_at: int | None
    row_count: int | None


# --------------------------------------------------------------------------------------
# Rows -> columnar
# --------------------------------------------------------------------------------------
def _as_text(value: Any) -> str | None:
    """Socrata sends strings; anything else (numbers, geo objects) is kept as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """One page of row objects as an all-string Arrow table (absent keys -> null).

    Done per page as it arrives so the full extract never exists as Python dicts.
    """
    names = dict.fromkeys(itertools.chain.from_iterable(rows))
    try:
        return pa.Table.from_struct_array(pa.array(rows, type=pa.struct([(name, pa.string()) for name in names])))
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a value that is not a string: keep its JSON text
        return pa.table({name: pa.array([_as_text(row.get(name)) for row in rows], pa.string()) for name in names})


def _column_order(present: Iterable[str], source: str) -> list[str]:
    """REQUIRED_COLUMNS first, extras in first-seen order; a missing required column is fatal."""
    seen = list(dict.fromkeys(present))
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        raise SocrataError(
            f"{source}: required column(s) missing: {', '.join(missing)} "
            f"(columns present: {', '.join(seen) or 'none'})"
        )
    return list(REQUIRED_COLUMNS) + [c for c in seen if c not in REQUIRED_COLUMNS]


def _frame_from_tables(tables: Sequence[pa.Table], source: str) -> pd.DataFrame:
    """Align page tables on the final column order and hand them to pandas as "string"."""
    order = _column_order((name for t in tables for name in t.column_names), source)
    table = pa.concat_tables(tables, promote_options="default").select(order)  # a column a page lacks: nulls
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get, self_destruct=True, split_blocks=True)


# --------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------
def _socrata_message(body: bytes) -> str:
    """Socrata's own explanation from either error body shape, else the start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        code = data.get("code") or data.get("errorCode")
        message = str(data["message"])[:300]
        return f"{code}: {message}" if code else message
    text = " ".join(body[:200].decode("utf-8", errors="replace").split())
    return text


def _describe_bad_body(body: bytes, content_type: str, exc: ValueError) -> str:
    if not body.strip():
        return "the response body was empty"
    if body.lstrip()[:1] == b"<":
        return (
            f"the response is an HTML page (Content-Type {content_type or 'not set'}), not JSON "
            f"- a proxy, maintenance or login page? It starts with: {_socrata_message(body)[:120]!r}"
        )
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"the response is not valid JSON ({exc.msg} at byte {exc.pos} of {len(body)}; "
            "cut off in transit?)"
        )
    return f"the response is not valid JSON ({exc})"


def _describe_not_rows(data: Any) -> str | None:
    """Why a parsed body is not a JSON array of row objects (None when it is)."""
    if isinstance(data, dict):
        hint = f" (message: {data['message']})" if data.get("message") else ""
        keys = ", ".join(list(map(str, data))[:5])
        return f"expected a JSON array of rows but got a JSON object with keys [{keys}]{hint}"
    if not isinstance(data, list):
        return f"expected a JSON array of rows but got a JSON {type(data).__name__}"
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            return f"expected a JSON array of row objects but item {i} is a JSON {type(item).__name__}"
    if data and not any(data):
        return f"all {len(data)} row objects are empty (no fields at all)"
    return None


def _transport_cause(exc: requests.RequestException) -> tuple[str, bool]:
    """Human cause of a connection-level failure, and whether urllib3 exhausted its retries."""
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError):
        reason = inner.reason if inner.reason is not None else inner
        return f"{type(reason).__name__}: {reason}", True
    return f"{type(exc).__name__}: {exc}", False


def _retries_used(response: requests.Response) -> int:
    """Retries urllib3 made before this response (kept on the raw response's Retry)."""
    retry = getattr(response.raw, "retries", None)
    return len(retry.history) if retry is not None else 0


class _BodyBrokeOff(Exception):
    """The headers arrived but the body did not arrive whole (reset, read timeout, cut stream).

    urllib3's `Retry` has already returned by then (requests reads the body afterwards),
    so `_Fetch.get` retries these itself.
    """

    def __init__(self, cause: requests.RequestException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class _Attempts:
    """HTTP requests sent for one logical GET, over urllib3's retries and ours."""

    def __init__(self) -> None:
        self.sent = 0


class SocrataClient:
    """Full-table reader for one Socrata dataset over the SODA JSON API."""

    def __init__(
        self,
        base_url: str = "https://healthdata.gov",
        dataset_id: str = "j8mb-icvb",
        app_token: str | None = None,
        page_size: int = 50_000,
        max_workers: int = 4,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_factor: float = 0.5,
        backoff_max_s: float = 60.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise SocrataError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not dataset_id or "/" in dataset_id or "?" in dataset_id or "#" in dataset_id:
            raise SocrataError(f"dataset_id must be a Socrata four-by-four id like 'j8mb-icvb', got {dataset_id!r}")
        for name, value in (("page_size", page_size), ("max_workers", max_workers)):
            if value < 1:
                raise SocrataError(f"{name} must be at least 1, got {value}")
        if max_retries < 0 or backoff_factor < 0 or backoff_max_s < 0:
            raise SocrataError("max_retries, backoff_factor and backoff_max_s must not be negative")
        if connect_timeout_s <= 0 or read_timeout_s <= 0:
            raise SocrataError("connect_timeout_s and read_timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.dataset_id = dataset_id
        self._app_token = app_token or None
        self.page_size = page_size
        self.max_workers = max_workers
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.backoff_max_s = backoff_max_s

    def __repr__(self) -> str:
        token = "***" if self._app_token else None
        return (
            f"SocrataClient(base_url={self.base_url!r}, dataset_id={self.dataset_id!r}, "
            f"app_token={token!r}, page_size={self.page_size}, max_workers={self.max_workers})"
        )

    @property
    def resource_url(self) -> str:
        """The dataset's JSON endpoint; safe to log (the token only travels in a header)."""
        return f"{self.base_url}/resource/{self.dataset_id}.json"

    def fetch_all(self, progress: ProgressFn | None = None, known_count: int | None = None) -> Extract:
        """Every row of the dataset, each exactly once, in ``:id`` order.

        `progress(rows_so_far, total_or_None)` is called after each page (from
        worker threads, serialised by a lock). `known_count` is a `count(*)` just taken
        (by `signature()`), so it is not asked again; growth since is followed and a
        shortfall is an error, as for a count taken here.
        """
        started = time.monotonic()
        log.info("Fetching %s (page size %d, %d workers)", self.resource_url, self.page_size, self.max_workers)
        with _Fetch(self, progress) as run:
            tables = run.all_pages(known_count)
            frame = _frame_from_tables(tables, self.resource_url)
            del tables
            stats = run.stats(rows=len(frame), elapsed_s=time.monotonic() - started)
        log.info(
            "Fetched %d rows from %s in %.1fs (%d pages, %d requests, %d retries, %d bytes)",
            stats.rows, self.resource_url, stats.elapsed_s, stats.pages, stats.requests, stats.retries, stats.bytes,
        )
        return Extract(frame=frame, stats=stats, source=self.resource_url)

    def signature(self) -> SourceSignature:
        """Two small requests: the dataset's `rowsUpdatedAt` (/api/views) and `count(*)`."""
        views_url = f"{self.base_url}/api/views/{self.dataset_id}.json"
        with _Fetch(self, None) as run:
            response = run.get(views_url)
            try:
                rows_updated_at = response.json().get("rowsUpdatedAt")
            except (ValueError, AttributeError):
                rows_updated_at = None
            return SourceSignature(rows_updated_at=rows_updated_at, row_count=run.count())

    # Used by _Fetch -------------------------------------------------------------------
    def _retry(self) -> Retry:
        """urllib3 owns the retry loop: transient statuses, resets and timeouts, GET only."""
        return Retry(
            total=self.max_retries,
            connect=None,
            read=None,
            status=None,
            other=None,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max_s,
            backoff_jitter=self.backoff_factor,
            respect_retry_after_header=True,
            # A Retry-After of an hour would stall the run; wait at most backoff_max_s.
            retry_after_max=self.backoff_max_s,  # type: ignore[arg-type]
            raise_on_status=False,
            raise_on_redirect=True,
        )

    def _session(self) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=self._retry(), pool_connections=2, pool_maxsize=self.max_workers)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"Accept": "application/json", "User-Agent": _USER_AGENT})
        if self._app_token:
            session.headers["X-App-Token"] = self._app_token
        return session

    def _redact(self, text: str) -> str:
        return text.replace(self._app_token, "***") if self._app_token else text


class _Fetch:
    """One fetch_all run: its session, counters and paging plan, shared by worker threads."""

    def __init__(self, client: SocrataClient, progress: ProgressFn | None) -> None:
        self.client = client
        self.progress = progress
        self.session = client._session()
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.requests = self.retries = self.pages = self.bytes = self.rows = 0
        self.total: int | None = None
        self.page_digests: dict[bytes, int] = {}

    def __enter__(self) -> _Fetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def stats(self, rows: int, elapsed_s: float) -> FetchStats:
        return FetchStats(rows, self.pages, self.requests, self.retries, self.bytes, round(elapsed_s, 3))

    def error(self, message: str, **kw: Any) -> SocrataError:
        return SocrataError(self.client._redact(message), **kw)

    # Plan ------------------------------------------------------------------------------
    def all_pages(self, known_count: int | None = None) -> list[pa.Table]:
        """Count, then fetch [0, count) concurrently, then follow any growth sequentially."""
        total = self.count() if known_count is None else known_count
        self.total = total
        url = self.client.resource_url
        if total == 0:
            raise self.error(
                f"source returned no rows: {url} reports count(*) = 0; refusing to replace the warehouse with nothing"
            )
        if total is None:
            tables = self.open_ended(0)
        else:
            tables, end = self.concurrent(total)
            if end is not None:  # the last page was full: rows may have been added since the count
                tables += self.open_ended(end)
        if self.rows == 0:
            raise self.error(f"source returned no rows: {url} returned an empty first page")
        if total is not None and self.rows < total:
            raise self.error(
                f"{url} returned {self.rows} rows but count(*) reported {total}: the dataset changed during "
                "the fetch or the server dropped rows; refusing a partial extract"
            )
        return tables

    def count(self) -> int | None:
        """Rows in the dataset, or None when the count query is unusable (then page until the end)."""
        params = {"$select": "count(*)"}
        try:
            data = self.get_rows(params)
            values = list(data[0].values()) if len(data) == 1 and len(data[0]) == 1 else []
            if len(values) != 1:
                raise self.error(f"unexpected count(*) response: {json.dumps(data)[:200]}")
            total = int(str(values[0]))
            if total < 0:
                raise self.error(f"negative count(*) response: {total}")
            return total
        except (SocrataError, ValueError) as exc:
            if isinstance(exc, SocrataError) and exc.transient:
                raise
            log.warning("count(*) query failed (%s); falling back to sequential paging", self.client._redact(str(exc)))
            return None

    def concurrent(self, total: int) -> tuple[list[pa.Table], int | None]:
        """Fetch the chunks [k*page_size, (k+1)*page_size) covering the count, concatenated in order.

        Also returns the end offset of the last chunk when it came back full
        (there may be more rows than counted), else None.
        """
        size = self.client.page_size
        starts = list(range(0, total, size))
        if len(starts) == 1 or self.client.max_workers == 1:
            results = [self.chunk(start, start + size) for start in starts]
        else:
            results = self._run_parallel(starts, size)
        tables = [t for chunk_tables, _ in results for t in chunk_tables]
        return tables, (starts[-1] + size if results[-1][1] else None)

    def _run_parallel(self, starts: list[int], size: int) -> list[tuple[list[pa.Table], bool]]:
        """Run the chunks on a thread pool; the first failure (or an interrupt) stops the rest.

        On failure the pool is not waited for: in-flight requests finish in the
        background (bounded by timeouts and retries) and start nothing new, so
        the error reaches the user without waiting out other pages' retries.
        """
        workers = min(self.client.max_workers, len(starts))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="socrata-page")
        succeeded = False
        try:
            futures: list[Future[tuple[list[pa.Table], bool]]] = [
                pool.submit(self.chunk, start, start + size) for start in starts
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            results = [f.result() for f in futures]
            succeeded = True
            return results
        finally:
            if not succeeded:
                self.cancelled.set()
            pool.shutdown(wait=succeeded, cancel_futures=True)

    def chunk(self, start: int, end: int) -> tuple[list[pa.Table], bool]:
        """Rows [start, end); keeps asking when the server caps $limit below what was asked.

        Returns the page tables and whether `end` was reached (a full chunk).
        A short page only ends the chunk early when it reaches the count.
        """
        assert self.total is not None
        tables: list[pa.Table] = []
        pos = start
        while pos < end and not self.cancelled.is_set():
            limit = end - pos
            table = self.page(pos, limit)
            n = table.num_rows
            if n == 0:
                if pos == 0:
                    raise self.error(
                        f"{self.client.resource_url}: the first page is empty although count(*) "
                        f"reported {self.total} rows"
                    )
                break  # fewer rows than counted; all_pages reports it
            tables.append(table)
            pos += n
            if n < limit and pos >= self.total:
                break  # the end of the data the count promised
        return tables, pos >= end

    def open_ended(self, start: int) -> list[pa.Table]:
        """Sequential pages from `start` until the data ends, when the row count is unknown.

        Without a count a short page is ambiguous (end of data, or a server cap
        on $limit), so the next page decides: empty = end; otherwise its size
        is the server's cap and from then on a page shorter than it is the end.
        """
        tables: list[pa.Table] = []
        pos, limit, cap_known = start, self.client.page_size, False
        while not self.cancelled.is_set():
            table = self.page(pos, limit)
            n = table.num_rows
            if n == 0:
                break
            tables.append(table)
            pos += n
            if n < limit:
                if cap_known:
                    break
                limit, cap_known = n, True
        return tables

    # Requests --------------------------------------------------------------------------
    def page(self, offset: int, limit: int) -> pa.Table:
        """One page of rows as an Arrow table; progress is reported after it."""
        with self.lock:
            self.pages += 1
            if self.pages > MAX_PAGES:
                raise self.error(f"{self.client.resource_url}: gave up after {MAX_PAGES} pages; the server keeps sending rows")
        params = {"$order": ":id", "$limit": str(limit), "$offset": str(offset)}
        rows = self.get_rows(params, offset=offset)
        table = _rows_to_table(rows)
        del rows
        with self.lock:
            self.rows += table.num_rows
            if table.num_rows and self.progress is not None:
                total = None if self.total is None else max(self.total, self.rows)
                self.progress(self.rows, total)
        return table

    def url(self, params: dict[str, str]) -> str:
        # `$`, `:`, `(`, `)` and `*` stay readable; they are legal in a query string.
        return f"{self.client.resource_url}?{urlencode(params, safe='$:()*')}"

    def get_rows(self, params: dict[str, str], offset: int | None = None) -> list[dict[str, Any]]:
        """GET and parse a JSON array of row objects; anything else is a SocrataError."""
        url = self.url(params)
        response = self.get(url)
        body = response.content
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise self.error(
                f"bad response from GET {url}: {_describe_bad_body(body, response.headers.get('Content-Type', ''), exc)}",
                url=url, status=response.status_code,
            ) from None
        problem = _describe_not_rows(data)
        if problem:
            raise self.error(f"bad response from GET {url}: {problem}", url=url, status=response.status_code)
        if offset is not None and data:
            self._check_not_repeated(body, offset, url)
        return data

    def _check_not_repeated(self, body: bytes, offset: int, url: str) -> None:
        """Identical pages at two offsets mean the server ignored the paging: rows would be duplicated."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        with self.lock:
            seen_at = self.page_digests.setdefault(digest, offset)
        if seen_at != offset:
            raise self.error(
                f"GET {url} returned exactly the same rows as the page at offset {seen_at}: "
                "the server is not paging consistently; refusing to duplicate rows"
            )

    def get(self, url: str) -> requests.Response:
        """One logical GET, retried; non-200 final answers become SocrataError.

        urllib3 retries until a response's headers arrive (transient statuses,
        resets, timeouts). A body that then breaks off (connection dropped or read
        timeout mid-body) is requested again here, with the same backoff. Both
        draw on one budget: once `max_retries` retries have been made in total,
        a broken body is not asked for again.
        """
        if self.cancelled.is_set():
            raise self.error(f"GET {url} cancelled because another page failed")
        client = self.client
        attempts = _Attempts()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_BodyBrokeOff),
            stop=lambda state: attempts.sent - 1 >= client.max_retries or self.cancelled.is_set(),
            wait=tenacity.wait_exponential_jitter(
                multiplier=client.backoff_factor, max=client.backoff_max_s, jitter=client.backoff_factor
            ),
            sleep=self.cancelled.wait,  # a failure elsewhere cuts the wait short
            before_sleep=lambda state: log.warning(
                "GET %s: %s; asking again (%d of %d retries used)",
                url, client._redact(str(state.outcome.exception())), attempts.sent - 1, client.max_retries,
            ),
            reraise=True,
        )
        try:
            response = retrying(self._attempt, url, attempts)
        except _BodyBrokeOff as exc:
            raise self.error(
                f"GET {url} failed after {attempts.sent} attempt(s): the response body broke off: {exc}",
                url=url, transient=True,
            ) from None
        except requests.RequestException as exc:
            cause, _ = _transport_cause(exc)
            raise self.error(f"GET {url} failed after {attempts.sent} attempt(s): {cause}", url=url, transient=True) from None
        finally:
            with self.lock:
                self.requests += 1
                self.retries += max(attempts.sent - 1, 0)
        with self.lock:
            self.bytes += len(response.content)
        if response.status_code != 200:
            raise self._status_error(url, response, attempts.sent)
        return response

    def _attempt(self, url: str, attempts: _Attempts) -> requests.Response:
        """One requests GET (with urllib3's retries inside), its body read to the end."""
        if self.cancelled.is_set():
            raise self.error(f"GET {url} cancelled because another page failed")
        timeout = (self.client.connect_timeout_s, self.client.read_timeout_s)
        try:
            response = self.session.get(url, timeout=timeout, stream=True)
        except requests.RequestException as exc:
            _, exhausted = _transport_cause(exc)
            attempts.sent += self.client.max_retries + 1 if exhausted else 1
            raise
        attempts.sent += _retries_used(response) + 1
        try:
            response.content  # noqa: B018 - reads and keeps the whole body
        except requests.RequestException as exc:
            response.close()
            raise _BodyBrokeOff(exc) from exc
        return response

    def _status_error(self, url: str, response: requests.Response, attempts: int) -> SocrataError:
        status = response.status_code
        transient = status in RETRY_STATUSES
        text = f"Socrata answered HTTP {status} {response.reason or ''}".rstrip() + f" to GET {url}"
        if transient:
            text += f" (still failing after {attempts} attempts)"
        if status == 202:
            text += ": the query was still being processed when the retries ran out; try again later"
        elif status == 429:
            text += ": throttled; set an app token or lower max_workers"
        detail = _socrata_message(response.content)
        if detail:
            text += f": {detail}"
        return self.error(text, url=url, status=status, transient=transient)


# --------------------------------------------------------------------------------------
# Export files
# --------------------------------------------------------------------------------------
def _open_binary(path: Path) -> IO[bytes]:
    """Open plain or gzip-compressed by the magic bytes, whatever the file is called."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return io.BufferedReader(gzip.open(path, "rb"))  # type: ignore[arg-type]
    return path.open("rb")


def _read_json_export(fh: IO[bytes], source: str) -> pd.DataFrame:
    data = json.load(fh)
    problem = _describe_not_rows(data)
    if problem:
        raise SocrataError(f"cannot read export file {source}: {problem}")
    table = _rows_to_table(data)
    del data
    if table.num_rows == 0:
        return pd.DataFrame()
    return _frame_from_tables([table], source)


def _read_csv_export(fh: IO[bytes], source: str) -> pd.DataFrame:
    """All cells as strings; only a blank cell is missing (so a literal "NA" stays "NA")."""
    frame = pd.read_csv(
        fh,
        dtype=pd.StringDtype(),
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8-sig",
    )
    order = _column_order(map(str, frame.columns), source)
    return frame[order].reset_index(drop=True)


def read_export_file(path: str | Path) -> Extract:
    """Load a downloaded export (JSON array or CSV, optionally gzipped) for offline runs.

    Accepts the API's JSON array, the old 8-column CSV with ISO dates and the
    newer 9-column CSV with ``geocoded_state`` and ``YYYY/MM/DD`` dates; values
    are returned as delivered, like the API path.
    """
    started = time.monotonic()
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise SocrataError(f"export file not found: {source}")
    size = p.stat().st_size
    try:
        with _open_binary(p) as fh:
            head = fh.peek(64)[:64].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
            if head[:1] == b"[" or head[:1] == b"{":
                frame = _read_json_export(fh, source)
            else:
                frame = _read_csv_export(fh, source)
    except (ValueError, OSError, EOFError) as exc:  # pandas' ParserError is a ValueError
        raise SocrataError(f"cannot read export file {source}: {type(exc).__name__}: {exc}") from exc
    if len(frame) == 0:
        raise SocrataError(f"source returned no rows: export file {source} has no data rows")
    stats = FetchStats(
        rows=len(frame), pages=1, requests=0, retries=0, bytes=size, elapsed_s=round(time.monotonic() - started, 3)
    )
    log.info("Read %d rows from export file %s", len(frame), source)
    return Extract(frame=frame, stats=stats, source=source)


# --------------------------------------------------------------------------------------
# Dagster resource
# --------------------------------------------------------------------------------------
DEFAULT_BASE_URL = "https://healthdata.gov"
DEFAULT_DATASET_ID = "j8mb-icvb"


@dataclass(frozen=True)
class SocrataTarget:
    """Where the rows come from and which secret goes with them.

    Anyone who reaches the UI can launch runs with their own run config, so none of this is a
    config field: it is read from the deployment's environment when a run starts.
    """

    base_url: str = DEFAULT_BASE_URL
    dataset_id: str = DEFAULT_DATASET_ID
    app_token: str | None = field(default=None, repr=False)
    source_file: str | None = None

    ENVIRONMENT: ClassVar[dict[str, str]] = {
        "base_url": "SOCRATA_BASE_URL",
        "dataset_id": "SOCRATA_DATASET_ID",
        "app_token": "SOCRATA_APP_TOKEN",
        "source_file": "SOCRATA_SOURCE_FILE",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SocrataTarget:
        environ = os.environ if environ is None else environ
        return cls(**{name: environ[variable] for name, variable in cls.ENVIRONMENT.items() if environ.get(variable)})


class SocrataSource(dg.ConfigurableResource):
    """The source of the raw rows: the Socrata API, or a local export when `SOCRATA_SOURCE_FILE` is set.

    Its config holds only bounded tuning knobs; where it connects and the app token come from the
    environment (`SocrataTarget`), so run config cannot send the token, or anything, elsewhere.
    """

    page_size: int = Field(default=50_000, ge=1, le=50_000, description="Rows per page request ($limit)")
    max_workers: int = Field(default=4, ge=1, le=16, description="Concurrent page requests")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300, description="TCP connect timeout per attempt")
    read_timeout_s: float = Field(default=120.0, gt=0, le=600, description="Read timeout per attempt")
    max_retries: int = Field(default=6, ge=0, le=20, description="Retries per request for 202/429/5xx, resets and timeouts")
    backoff_factor: float = Field(default=0.5, ge=0, le=60, description="Exponential backoff base in seconds (with jitter)")
    _target: SocrataTarget | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._target = SocrataTarget.from_env()

    @property
    def target(self) -> SocrataTarget:
        """The run's target (read at run start); outside a run, the environment as it is now."""
        return self._target or SocrataTarget.from_env()

    def client(self, **overrides: Any) -> SocrataClient:
        target = self.target
        settings = dict(
            base_url=target.base_url,
            dataset_id=target.dataset_id,
            app_token=target.app_token,
            page_size=self.page_size,
            max_workers=self.max_workers,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            max_retries=self.max_retries,
            backoff_factor=self.backoff_factor,
        )
        return SocrataClient(**{**settings, **overrides})

    def signature(self) -> SourceSignature | None:
        """What the API says about the data now (None for a local file: its content is the evidence)."""
        if self.target.source_file:
            return None
        # Cheap evidence only: on trouble, fail fast and let the full fetch (with all its retries) decide.
        return self.client(max_retries=min(self.max_retries, 1)).signature()

    def extract(self, progress: ProgressFn | None = None, known_count: int | None = None) -> Extract:
        """The full raw table; progress is reported for API fetches only (see `fetch_all` for `known_count`)."""
        if source_file := self.target.source_file:
            return read_export_file(source_file)
        return self.client().fetch_all(progress, known_count)
