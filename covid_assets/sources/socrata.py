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

The server is not trusted. The app token only ever goes to the configured origin
(scheme, host and port): redirects are never followed by requests; a redirect
within that origin is followed here (at most :data:`MAX_REDIRECTS`), one to
another origin is refused, and a token over plain ``http`` is refused unless the
host is loopback. Each body is streamed with a byte cap that holds after
decompression (``max_body_bytes``), each HTTP exchange has an overall deadline
that a server dripping bytes cannot outrun (``request_deadline_s``), a
``count(*)`` beyond what the client would ever page through is refused, and at
most ``2 x max_workers`` pages are queued at a time. Text the source supplies is
quoted in errors and logs only through :func:`_clip` (about 300 characters), and
an error about an export file never quotes the file's contents.

Both return an :class:`Extract` whose frame holds every source column as
pandas ``"string"`` exactly as delivered (no trimming, no type conversion, so
``state_fips`` keeps its leading zero); parsing and validation happen
downstream. Anything that goes wrong surfaces as :class:`SocrataError` with a
message that names the URL or file, and never the app token.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import socket
import stat
import threading
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Iterable, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

import dagster as dg
import pandas as pd
import pyarrow as pa
import requests
import tenacity
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError, ProtocolError
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
# rows (e.g. one that ignores $offset) cannot keep the client busy forever. It
# also bounds the count(*) the client accepts: MAX_PAGES x page_size rows.
MAX_PAGES = 100_000

# A 50,000-row page of j8mb-icvb is about 11 MB of JSON (223 bytes a row in the
# bundled sample), so 256 MiB leaves over 20x headroom for wider rows or larger
# pages while keeping a hostile body (or a gzip bomb) from taking the host's
# memory: at most max_workers bodies of this size exist at once.
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024

# Per HTTP exchange, from the request being sent to the last body byte. A full
# page arrives in well under a second locally and in seconds from healthdata.gov;
# five minutes also covers a slow link and Socrata taking its time on a big query.
DEFAULT_REQUEST_DEADLINE_S = 300.0

# Redirects followed within the configured origin (one to another origin is refused).
MAX_REDIRECTS = 5

# Source-provided text (messages, values, column names, page starts) quoted in errors and logs.
SOURCE_TEXT_LIMIT = 300

_READ_CHUNK = 1024 * 1024  # bytes per body read: few Python round trips for a 10 MB page
_DEFAULT_PORTS = {"http": 80, "https": 443}

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
# Quoting the source
# --------------------------------------------------------------------------------------
def _clip(text: object, limit: int = SOURCE_TEXT_LIMIT) -> str:
    """Text a source supplied, fit to quote in an error or a log line.

    At most `limit` characters (and how many were cut), on one line, without
    control characters: a hostile server cannot flood a message or forge log lines.
    """
    raw = str(text)
    head = raw[:limit]
    clean = "".join(ch if ch.isprintable() else " " for ch in head)
    clean = " ".join(clean.split())
    return clean if len(raw) <= limit else f"{clean}... [{len(raw) - limit:,} more characters]"


def _clip_body(body: bytes | bytearray, limit: int = SOURCE_TEXT_LIMIT) -> str:
    """The start of a response body as text, clipped like `_clip` (decodes only what it shows)."""
    clean = _clip(bytes(body[:limit]).decode("utf-8", errors="replace"), limit)
    return clean if len(body) <= limit else f"{clean}... [{len(body) - limit:,} more bytes]"


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


def _column_order(present: Iterable[str], source: str, quote: bool = True) -> list[str]:
    """REQUIRED_COLUMNS first, extras in first-seen order; a missing required column is fatal.

    The error lists the columns present (clipped) when `quote`; for a file it only
    counts them, since the header is the file's content.
    """
    seen = list(dict.fromkeys(present))
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        present_text = _clip(", ".join(seen)) if quote else f"{len(seen)} column(s)"
        raise SocrataError(
            f"{source}: required column(s) missing: {', '.join(missing)} "
            f"(columns present: {present_text if seen else 'none'})"
        )
    return list(REQUIRED_COLUMNS) + [c for c in seen if c not in REQUIRED_COLUMNS]


def _frame_from_tables(tables: Sequence[pa.Table], source: str, quote: bool = True) -> pd.DataFrame:
    """Align page tables on the final column order and hand them to pandas as "string"."""
    order = _column_order((name for t in tables for name in t.column_names), source, quote)
    table = pa.concat_tables(tables, promote_options="default").select(order)  # a column a page lacks: nulls
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get, self_destruct=True, split_blocks=True)


# --------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------
def _socrata_message(body: bytes | bytearray) -> str:
    """Socrata's own explanation from either error body shape, else the start of the body (clipped)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        code = data.get("code") or data.get("errorCode")
        return _clip(f"{code}: {data['message']}" if code else data["message"])
    return _clip_body(body)


def _describe_bad_body(body: bytes | bytearray, content_type: str, exc: ValueError) -> str:
    if not body.strip():
        return "the response body was empty"
    if body.lstrip()[:1] == b"<":
        return (
            f"the response is an HTML page (Content-Type {_clip(content_type) or 'not set'}), not JSON "
            f"- a proxy, maintenance or login page? It starts with: {_clip_body(body.lstrip(), 120)!r}"
        )
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"the response is not valid JSON ({exc.msg} at byte {exc.pos} of {len(body)}; "
            "cut off in transit?)"
        )
    return f"the response is not valid JSON ({_clip(exc)})"


def _describe_not_rows(data: Any, quote: bool = True) -> str | None:
    """Why a parsed body is not a JSON array of row objects (None when it is).

    With `quote` an object's keys and message are quoted (clipped); a file's are not.
    """
    if isinstance(data, dict):
        if not quote:
            return f"expected a JSON array of rows but got a JSON object with {len(data)} key(s)"
        hint = f" (message: {_clip(data['message'])})" if data.get("message") else ""
        keys = _clip(", ".join(itertools.islice(map(str, data), 5)))
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
    """Human cause of a connection-level failure, and whether urllib3 exhausted its retries.

    Clipped: a malformed status line or header is quoted in it, and that is the server's text.
    """
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError):
        reason = inner.reason if inner.reason is not None else inner
        return _clip(f"{type(reason).__name__}: {reason}"), True
    return _clip(f"{type(exc).__name__}: {exc}"), False


def _retries_used(response: requests.Response) -> int:
    """Retries urllib3 made before this response (kept on the raw response's Retry)."""
    retry = getattr(response.raw, "retries", None)
    return len(retry.history) if retry is not None else 0


class _BodyBrokeOff(Exception):
    """The headers arrived but the body did not arrive whole (reset, read timeout, cut stream,
    or the request deadline passed while it was arriving).

    urllib3's `Retry` has already returned by then (the body is read afterwards),
    so `_Fetch.get` retries these itself. The message is the whole explanation.
    """


class RequestDeadlineExceeded(ProtocolError):
    """No complete response headers within the request deadline.

    Raised inside urllib3 (from the connection), which retries it like any read
    error, from the same budget; when the budget is spent it is the error's cause.
    """


class _Deadline:
    """The overall time limit of one HTTP exchange: request sent -> last body byte.

    A read timeout applies to each socket read, so a server that drips a byte
    at a time never trips it. Here a timer shuts the socket down when the
    deadline passes, which ends a blocked read of the headers or the body alike;
    the reader then sees `hit` and reports the deadline instead of a broken stream.
    One per attempt; urllib3's retries within it restart the clock (`start`).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.hit = False

    def start(self) -> None:
        self.started, self.hit = time.monotonic(), False

    def message(self) -> str:
        return f"no complete response within the request deadline of {self.seconds:g} s (request_deadline_s)"

    @contextlib.contextmanager
    def enforced(self, shutdown: Callable[[], object]) -> Iterator[None]:
        """While inside, `shutdown()` is called (and `hit` set) once the deadline passes."""

        def expire() -> None:
            self.hit = True
            with contextlib.suppress(Exception):  # e.g. already closed or back in the pool
                shutdown()

        timer = threading.Timer(max(self.seconds - (time.monotonic() - self.started), 0.0), expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()


# The deadline of the attempt running on this thread, for the connection classes below.
_attempt_local = threading.local()


class _DeadlineConnectionMixin:
    """Starts the deadline as the response is awaited and enforces it until the headers are in."""

    sock: socket.socket | None

    def getresponse(self):  # type: ignore[no-untyped-def]
        deadline: _Deadline | None = getattr(_attempt_local, "deadline", None)
        sock = self.sock
        if deadline is None or sock is None:
            return super().getresponse()  # type: ignore[misc]
        deadline.start()
        # socket.socket's own shutdown also for TLS sockets: it ends the blocked read at the OS level.
        with deadline.enforced(lambda: socket.socket.shutdown(sock, socket.SHUT_RDWR)):
            try:
                response = super().getresponse()  # type: ignore[misc]
            except Exception as exc:
                if deadline.hit:
                    raise RequestDeadlineExceeded(deadline.message()) from exc
                raise
        if deadline.hit:  # the headers may have been cut short: do not trust them
            response.close()
            raise RequestDeadlineExceeded(deadline.message())
        return response


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection  # type: ignore[assignment]


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose urllib3 pools use the deadline-enforcing connections (direct or via an HTTP proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS brings its own pool classes
            manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


@dataclass(frozen=True)
class _Reply:
    """A response read whole (within max_body_bytes and the deadline), its connection released."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes | bytearray
    redirect_to: str | None = None  # the Location of a 3xx (body not read)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what the token is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def _origin_text(origin: tuple[str, str, int | None]) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS.get(scheme) else f":{port}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_deadline_s: float = DEFAULT_REQUEST_DEADLINE_S,
    ) -> None:
        """`max_body_bytes` caps each response body after decompression; `request_deadline_s`
        bounds each HTTP exchange from request to last byte, however the server paces it."""
        if not base_url.startswith(("http://", "https://")):
            raise SocrataError(f"base_url must start with http:// or https://, got {base_url!r}")
        try:
            origin = _origin(base_url)
        except ValueError as exc:
            raise SocrataError(f"base_url is not a valid URL ({exc}): {base_url!r}") from None
        if not origin[1]:
            raise SocrataError(f"base_url has no host: {base_url!r}")
        if app_token and origin[0] == "http" and not _is_loopback(origin[1]):
            raise SocrataError(
                f"refusing to send the app token over plain http to {origin[1]}: use an https:// base_url "
                "(plain http with a token is allowed only for a loopback host: localhost, 127.0.0.0/8, ::1)"
            )
        if not dataset_id or "/" in dataset_id or "?" in dataset_id or "#" in dataset_id:
            raise SocrataError(f"dataset_id must be a Socrata four-by-four id like 'j8mb-icvb', got {dataset_id!r}")
        for name, value in (("page_size", page_size), ("max_workers", max_workers), ("max_body_bytes", max_body_bytes)):
            if value < 1:
                raise SocrataError(f"{name} must be at least 1, got {value}")
        if max_retries < 0 or backoff_factor < 0 or backoff_max_s < 0:
            raise SocrataError("max_retries, backoff_factor and backoff_max_s must not be negative")
        if connect_timeout_s <= 0 or read_timeout_s <= 0:
            raise SocrataError("connect_timeout_s and read_timeout_s must be positive")
        if not (request_deadline_s > 0 and math.isfinite(request_deadline_s)):
            raise SocrataError(f"request_deadline_s must be a positive number of seconds, got {request_deadline_s}")
        self.base_url = base_url.rstrip("/")
        self.origin = origin
        self.dataset_id = dataset_id
        self._app_token = app_token or None
        self.page_size = page_size
        self.max_workers = max_workers
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.backoff_max_s = backoff_max_s
        self.max_body_bytes = max_body_bytes
        self.request_deadline_s = request_deadline_s

    @property
    def max_rows(self) -> int:
        """The largest count(*) the client accepts: what MAX_PAGES full pages hold."""
        return MAX_PAGES * self.page_size

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
            reply = run.get(views_url)
            try:
                rows_updated_at = json.loads(reply.body).get("rowsUpdatedAt")
            except (ValueError, AttributeError):
                rows_updated_at = None
            if isinstance(rows_updated_at, bool) or not isinstance(rows_updated_at, int):
                rows_updated_at = None  # only a number is evidence
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
            # Inert: requests calls urllib3 with redirect=False, so a 3xx comes back as a
            # response and `_Fetch.get` decides (requests itself is told not to follow).
            raise_on_redirect=True,
        )

    def _session(self) -> requests.Session:
        """A session for this client's origin; its requests never follow redirects (see `_Fetch.get`)."""
        session = requests.Session()
        adapter = _DeadlineAdapter(max_retries=self._retry(), pool_connections=2, pool_maxsize=self.max_workers)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Only encodings whose decoding urllib3 bounds per read (what Socrata sends anyway).
        session.headers.update({"Accept": "application/json", "Accept-Encoding": "gzip, deflate", "User-Agent": _USER_AGENT})
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
        if total is not None and total > self.client.max_rows:
            raise self.error(
                f"{url} reports count(*) = {total:,} rows, more than this client fetches: {MAX_PAGES:,} pages "
                f"of {self.client.page_size:,} rows = {self.client.max_rows:,}; refusing rather than planning "
                "that many page requests"
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
                raise self.error(f"unexpected count(*) response: {_clip(json.dumps(data))}")
            total = int(str(values[0]))
            if total < 0:
                raise self.error(f"negative count(*) response: {_clip(total)}")
            return total
        except (SocrataError, ValueError) as exc:
            if isinstance(exc, SocrataError) and exc.transient:
                raise
            log.warning(
                "count(*) query failed (%s); falling back to sequential paging", self.client._redact(_clip(exc, 600))
            )
            return None

    def concurrent(self, total: int) -> tuple[list[pa.Table], int | None]:
        """Fetch the chunks [k*page_size, (k+1)*page_size) covering the count, concatenated in order.

        Also returns the end offset of the last chunk when it came back full
        (there may be more rows than counted), else None.
        """
        size = self.client.page_size
        starts = range(0, total, size)
        if len(starts) == 1 or self.client.max_workers == 1:
            results = [self.chunk(start, start + size) for start in starts]
        else:
            results = self._run_parallel(starts, size)
        tables = [t for chunk_tables, _ in results for t in chunk_tables]
        return tables, (starts[-1] + size if results[-1][1] else None)

    def _run_parallel(self, starts: range, size: int) -> list[tuple[list[pa.Table], bool]]:
        """Run the chunks on a thread pool; the first failure (or an interrupt) stops the rest.

        At most 2 x workers chunks are queued at a time (a window refilled as
        chunks finish), so the plan's size never turns into as many futures.
        On failure the pool is not waited for: in-flight requests finish in the
        background (bounded by the deadline and retries) and start nothing new, so
        the error reaches the user without waiting out other pages' retries.
        """
        workers = min(self.client.max_workers, len(starts))
        window = 2 * workers
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="socrata-page")
        results: list[tuple[list[pa.Table], bool]] = [([], False)] * len(starts)
        pending: dict[Future[tuple[list[pa.Table], bool]], int] = {}
        queue = iter(enumerate(starts))
        succeeded = False
        try:
            while True:
                for index, start in itertools.islice(queue, window - len(pending)):
                    pending[pool.submit(self.chunk, start, start + size)] = index
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[pending.pop(future)] = future.result()  # a chunk's error is raised here
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
        reply = self.get(url)
        body = reply.body
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise self.error(
                f"bad response from GET {url}: {_describe_bad_body(body, reply.headers.get('Content-Type', ''), exc)}",
                url=url, status=reply.status,
            ) from None
        problem = _describe_not_rows(data)
        if problem:
            raise self.error(f"bad response from GET {url}: {problem}", url=url, status=reply.status)
        if offset is not None and data:
            self._check_not_repeated(body, offset, url)
        return data

    def _check_not_repeated(self, body: bytes | bytearray, offset: int, url: str) -> None:
        """Identical pages at two offsets mean the server ignored the paging: rows would be duplicated."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        with self.lock:
            seen_at = self.page_digests.setdefault(digest, offset)
        if seen_at != offset:
            raise self.error(
                f"GET {url} returned exactly the same rows as the page at offset {seen_at}: "
                "the server is not paging consistently; refusing to duplicate rows"
            )

    def get(self, url: str) -> _Reply:
        """One logical GET (retried), following redirects only within the client's origin.

        requests never follows a redirect here, so the app token (a session
        header) cannot travel to another host or port: a redirect to another
        origin is an error naming both, one within the origin is followed, at
        most MAX_REDIRECTS times.
        """
        for _ in range(MAX_REDIRECTS + 1):
            reply = self._get_once(url)
            if reply.redirect_to is None:
                return reply
            url = self._follow(url, reply)
        raise self.error(f"GET {url}: more than {MAX_REDIRECTS} redirects; giving up", url=url)

    def _follow(self, url: str, reply: _Reply) -> str:
        """The redirect target, if it is within the configured origin; else a SocrataError."""
        assert reply.redirect_to is not None
        target = urljoin(url, reply.redirect_to)
        origin = self.client.origin
        try:
            same = _origin(target) == origin
        except ValueError:
            same = False
        if not same:
            raise self.error(
                f"GET {url} answered HTTP {reply.status} with a redirect to {_clip(target)}, outside "
                f"{_origin_text(origin)}: not followed, so the app token never leaves the configured origin. "
                "If the dataset moved, point base_url at its new address",
                url=url, status=reply.status,
            )
        log.info("GET %s redirected (HTTP %d) to %s", url, reply.status, self.client._redact(_clip(target)))
        return target

    def _get_once(self, url: str) -> _Reply:
        """One logical GET, retried; a redirect is returned, other non-200 final answers become SocrataError.

        urllib3 retries until a response's headers arrive (transient statuses,
        resets, timeouts, an exchange over its deadline). A body that then breaks
        off (connection dropped, read timeout or the deadline mid-body) is
        requested again here, with the same backoff. Both draw on one budget:
        once `max_retries` retries have been made in total, a broken body is not
        asked for again. So the logical GET ends after at most max_retries + 1
        exchanges, each bounded by request_deadline_s, plus the backoff between.
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
            reply = retrying(self._attempt, url, attempts)
        except _BodyBrokeOff as exc:
            raise self.error(f"GET {url} failed after {attempts.sent} attempt(s): {exc}", url=url, transient=True) from None
        except requests.RequestException as exc:
            cause, _ = _transport_cause(exc)
            raise self.error(f"GET {url} failed after {attempts.sent} attempt(s): {cause}", url=url, transient=True) from None
        finally:
            with self.lock:
                self.requests += 1
                self.retries += max(attempts.sent - 1, 0)
        with self.lock:
            self.bytes += len(reply.body)
        if reply.status != 200 and reply.redirect_to is None:
            raise self._status_error(url, reply, attempts.sent)
        return reply

    def _attempt(self, url: str, attempts: _Attempts) -> _Reply:
        """One requests GET (with urllib3's retries inside), its body read to the end within the limits."""
        if self.cancelled.is_set():
            raise self.error(f"GET {url} cancelled because another page failed")
        timeout = (self.client.connect_timeout_s, self.client.read_timeout_s)
        deadline = _Deadline(self.client.request_deadline_s)
        _attempt_local.deadline = deadline  # the connection starts and enforces it until the headers are in
        try:
            response = self.session.get(url, timeout=timeout, stream=True, allow_redirects=False)
        except requests.RequestException as exc:
            _, exhausted = _transport_cause(exc)
            attempts.sent += self.client.max_retries + 1 if exhausted else 1
            raise
        finally:
            _attempt_local.deadline = None
        attempts.sent += _retries_used(response) + 1
        with response:  # closes the connection on any failure; after a full read it is already pooled
            if response.is_redirect:  # its body is of no use: not read
                return _Reply(response.status_code, response.reason or "", response.headers, b"", response.headers["Location"])
            body = self._read_body(response, url, deadline)
        return _Reply(response.status_code, response.reason or "", response.headers, body)

    def _read_body(self, response: requests.Response, url: str, deadline: _Deadline) -> bytearray:
        """The decoded body in large chunks, refused beyond max_body_bytes (also after decompression)
        and cut off at the exchange's deadline."""
        cap = self.client.max_body_bytes
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > cap:
            raise self._too_big(url, f"it declares a Content-Length of {int(declared):,} bytes")
        body = bytearray()
        with deadline.enforced(response.raw.shutdown):
            try:
                for chunk in response.iter_content(_READ_CHUNK):
                    body += chunk
                    if len(body) > cap:
                        raise self._too_big(url, f"more than that arrived{_decoded_note(response)}")
            except requests.RequestException as exc:
                if deadline.hit:
                    raise _BodyBrokeOff(deadline.message()) from exc
                raise _BodyBrokeOff(f"the response body broke off: {_clip(f'{type(exc).__name__}: {exc}')}") from exc
        if deadline.hit:  # a body without a length just ends when the socket is shut: do not trust it
            raise _BodyBrokeOff(deadline.message())
        return body

    def _too_big(self, url: str, detail: str) -> SocrataError:
        cap = self.client.max_body_bytes
        return self.error(
            f"the response to GET {url} is larger than max_body_bytes = {cap:,} bytes ({detail}); a page of "
            f"{self.client.page_size:,} rows should be far smaller. Refusing it; if it is genuine, raise "
            "max_body_bytes or lower page_size",
            url=url,
        )

    def _status_error(self, url: str, reply: _Reply, attempts: int) -> SocrataError:
        status = reply.status
        transient = status in RETRY_STATUSES
        text = f"Socrata answered HTTP {status} {_clip(reply.reason, 80)}".rstrip() + f" to GET {url}"
        if transient:
            text += f" (still failing after {attempts} attempts)"
        if status == 202:
            text += ": the query was still being processed when the retries ran out; try again later"
        elif status == 429:
            text += ": throttled; set an app token or lower max_workers"
        detail = _socrata_message(reply.body)
        if detail:
            text += f": {detail}"
        return self.error(text, url=url, status=status, transient=transient)


def _decoded_note(response: requests.Response) -> str:
    encoding = response.headers.get("Content-Encoding")
    return f" after {_clip(encoding, 40)} decoding" if encoding else ""


# --------------------------------------------------------------------------------------
# Export files
# --------------------------------------------------------------------------------------
EXPORT_SUFFIXES: tuple[str, ...] = (".json", ".csv", ".json.gz", ".csv.gz")
_EXPORT_RULE = "an export must be a regular file named *.json, *.csv, *.json.gz or *.csv.gz"
_PSEUDO_FILESYSTEMS = frozenset({"proc", "sys", "dev"})


def _refuse(source: str, why: str) -> SocrataError:
    return SocrataError(f"refusing export file {source}: {why}; {_EXPORT_RULE}")


def _open_export(path: Path) -> tuple[IO[bytes], int]:
    """The export opened for reading, and its size; only a regular file with a data suffix.

    The path and (for a symlink) its resolved target must both be named like an
    export, and the target must not live in /proc, /sys or /dev. The file is
    opened non-blocking (a FIFO would otherwise hang the open) and checked with
    fstat on the open descriptor, so what is read is what was checked.
    """
    source = str(path)
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise SocrataError(f"export file not found: {source}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise SocrataError(f"cannot read export file {source}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    for name in dict.fromkeys((path.name, target.name)):
        if not name.lower().endswith(EXPORT_SUFFIXES):
            raise _refuse(source, f"{_clip(name, 120)!r} does not end in a data suffix")
    if target.parts[1:2] and target.parts[1] in _PSEUDO_FILESYSTEMS:
        raise _refuse(source, f"it resolves into /{target.parts[1]}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise SocrataError(f"cannot read export file {source}: {exc.strerror or type(exc).__name__}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refuse(source, "it is not a regular file (a directory, FIFO, socket or device)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), info.st_size


def _decompressed(fh: IO[bytes]) -> IO[bytes]:
    """Plain or gzip-compressed by the magic bytes, whatever the file is called; peekable."""
    magic = fh.read(2)
    fh.seek(0)
    if magic == _GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=fh, mode="rb"))  # type: ignore[arg-type]
    return fh


def _file_problem(exc: BaseException) -> str:
    """What is wrong with an export file, with a position where one is known, never its contents.

    Parser messages can quote the bytes they choke on; only fixed phrases and numbers pass.
    """
    if isinstance(exc, json.JSONDecodeError):  # exc.msg is one of the json module's fixed phrases
        return f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (character {exc.pos:,})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 text ({exc.reason})"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error, EOFError)):
        return "corrupt or truncated gzip data"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "no CSV header (the file is empty)"
    if isinstance(exc, pd.errors.ParserError):
        where = re.search(r"\b(line|row) (\d+)", str(exc))
        return "malformed CSV" + (f" near {where[1]} {where[2]}" if where else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"unreadable content ({type(exc).__name__})"


def _read_json_export(fh: IO[bytes], source: str) -> pd.DataFrame:
    data = json.load(fh)
    problem = _describe_not_rows(data, quote=False)
    if problem:
        raise SocrataError(f"cannot read export file {source}: {problem}")
    table = _rows_to_table(data)
    del data
    if table.num_rows == 0:
        return pd.DataFrame()
    return _frame_from_tables([table], source, quote=False)


def _read_csv_export(fh: IO[bytes], source: str) -> pd.DataFrame:
    """All cells as strings; only a blank cell is missing (so a literal "NA" stays "NA")."""
    frame = pd.read_csv(
        fh,
        dtype=pd.StringDtype(),
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8-sig",
    )
    order = _column_order(map(str, frame.columns), source, quote=False)
    return frame[order].reset_index(drop=True)


def read_export_file(path: str | Path) -> Extract:
    """Load a downloaded export (JSON array or CSV, optionally gzipped) for offline runs.

    Accepts the API's JSON array, the old 8-column CSV with ISO dates and the
    newer 9-column CSV with ``geocoded_state`` and ``YYYY/MM/DD`` dates; values
    are returned as delivered, like the API path. Only a regular file named
    ``*.json``, ``*.csv``, ``*.json.gz`` or ``*.csv.gz`` is read (see
    `_open_export`), and an error names the file and the kind of problem,
    never the file's contents.
    """
    started = time.monotonic()
    p = Path(path)
    source = str(p)
    opened, size = _open_export(p)
    try:
        with opened, _decompressed(opened) as fh:
            head = fh.peek(64)[:64].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
            if head[:1] == b"[" or head[:1] == b"{":
                frame = _read_json_export(fh, source)
            else:
                frame = _read_csv_export(fh, source)
    except (ValueError, OSError, EOFError, zlib.error) as exc:  # pandas' ParserError is a ValueError
        raise SocrataError(f"cannot read export file {source}: {_file_problem(exc)}") from None
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
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1 << 20, le=2 << 30, description="Largest response body, after decompression"
    )
    request_deadline_s: float = Field(
        default=DEFAULT_REQUEST_DEADLINE_S, gt=0, le=3600, description="Longest time one HTTP exchange may take, body included"
    )
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
            max_body_bytes=self.max_body_bytes,
            request_deadline_s=self.request_deadline_s,
        )
        return SocrataClient(**{**settings, **overrides})

    def signature(self, deadline_s: float | None = None) -> SourceSignature | None:
        """What the API says about the data now (None for a local file: its content is the evidence).

        `deadline_s` bounds each attempt of the two requests (its connect, then its exchange): a
        sensor has to answer within a minute.
        """
        if self.target.source_file:
            return None
        # Cheap evidence only: on trouble, fail fast and let the full fetch (with all its retries) decide.
        overrides: dict[str, Any] = {"max_retries": min(self.max_retries, 1)}
        if deadline_s is not None:
            overrides["request_deadline_s"] = min(self.request_deadline_s, deadline_s)
            overrides["connect_timeout_s"] = min(self.connect_timeout_s, deadline_s / 2)
        return self.client(**overrides).signature()

    def extract(self, progress: ProgressFn | None = None, known_count: int | None = None) -> Extract:
        """The full raw table; progress is reported for API fetches only (see `fetch_all` for `known_count`)."""
        if source_file := self.target.source_file:
            return read_export_file(source_file)
        return self.client().fetch_all(progress, known_count)
