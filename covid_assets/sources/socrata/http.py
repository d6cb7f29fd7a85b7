"""The HTTP exchange with one Socrata origin: retries, caps, a deadline, and the token kept home.

:class:`Exchange` sends one logical :class:`Request` (GET, or the POST of a SODA3 query) and
returns its :class:`Reply` read whole, or raises :class:`SocrataError` naming the request:

* **Retries.** urllib3's ``Retry`` on a requests session owns the retry loop (transient
  statuses, resets, timeouts; backoff with jitter, ``Retry-After`` capped at ``backoff_max_s``),
  for GET and for POST: a SODA3 query is idempotent, so sending it again is safe. A body that
  breaks off after the headers (urllib3 has returned by then) is asked for again with
  ``tenacity``, from the same budget: a request ends after at most ``max_retries + 1`` exchanges.
* **A deadline per exchange** (``request_deadline_s``), from the request being sent to the last
  body byte: a timer shuts the socket, so a server dripping bytes (which never trips the
  per-read timeout) is cut off, headers or body; a hit is retried like a read timeout.
* **A body cap** (``max_body_bytes``) that holds after gzip decoding: bodies are streamed in
  1 MiB reads and refused beyond it, a declared Content-Length beyond it unread.
* **Redirects within the origin only.** requests never follows a redirect (it would carry the
  ``X-App-Token`` header to any host); a redirect within the configured origin (scheme, host,
  port) is followed here with the same method and body (at most :data:`MAX_REDIRECTS`), one to
  another origin is refused. A token over plain ``http`` is refused unless the host is loopback
  (checked where the target is built, :func:`check_origin`).
* **Errors.** A final non-200 answer is an error with Socrata's own message (either body shape),
  clipped; the token is redacted from every message and log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError, ProtocolError
from urllib3.util.retry import Retry

from covid_assets.network import is_loopback
from covid_assets.sources.socrata.errors import SocrataError, clip, clip_body

if TYPE_CHECKING:
    from covid_assets.sources.socrata.resource import SocrataTarget

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_DEADLINE_S",
    "MAX_REDIRECTS",
    "RETRY_STATUSES",
    "Exchange",
    "HttpSettings",
    "Reply",
    "Request",
    "RequestDeadlineExceeded",
    "check_origin",
    "decode_json",
]

log = logging.getLogger(__name__)

# 202 = "query still being processed"; 429 = throttled; 5xx = transient server
# trouble. 501/505 are permanent ("not implemented"), so retrying is pointless.
RETRY_STATUSES: frozenset[int] = frozenset({202, 429, *range(500, 600)} - {501, 505})

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

_READ_CHUNK = 1024 * 1024  # bytes per body read: few Python round trips for a 10 MB page
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = "covid-assets/0.1 (python-requests; Socrata dataset sync)"

Origin = tuple[str, str, Optional[int]]


class HttpSettings(Protocol):
    """The knobs an exchange reads: `SocrataSource` has them all (and validates them)."""

    page_size: int
    max_workers: int
    connect_timeout_s: float
    read_timeout_s: float
    max_retries: int
    backoff_factor: float
    backoff_max_s: float
    max_body_bytes: int
    request_deadline_s: float


@dataclass(frozen=True)
class Request:
    """One logical request. `detail` completes its name in errors and logs (e.g. the SODA3 page)."""

    method: str
    url: str
    body: bytes | None = None  # the JSON body of a POST
    detail: str = ""
    max_bytes: int | None = None  # a tighter body cap than max_body_bytes (e.g. for view metadata)

    @property
    def label(self) -> str:
        """How errors and logs name it: ``GET <url>`` or ``POST <url> [pageNumber=2, pageSize=100]``."""
        return f"{self.method} {self.url}" + (f" {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Reply:
    """A response read whole (within max_body_bytes and the deadline), its connection released."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes | bytearray
    redirect_to: str | None = None  # the Location of a 3xx (body not read)


# --------------------------------------------------------------------------------------
# The origin the token is bound to
# --------------------------------------------------------------------------------------
def origin_of(url: str) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in: what the token is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS.get(scheme) else f":{port}")


def check_origin(base_url: str, has_token: bool, setting: str = "base_url") -> Origin:
    """The origin of `base_url`, refused unless it is an http(s) URL with a host, and (with a
    token) https or loopback: the token must not cross the network in clear text."""
    if not base_url.startswith(("http://", "https://")):
        raise SocrataError(f"{setting} must start with http:// or https://, got {clip(base_url)!r}")
    try:
        origin = origin_of(base_url)
    except ValueError as exc:
        raise SocrataError(f"{setting} is not a valid URL ({exc}): {clip(base_url)!r}") from None
    if not origin[1]:
        raise SocrataError(f"{setting} has no host: {clip(base_url)!r}")
    if has_token and origin[0] == "http" and not is_loopback(origin[1]):
        raise SocrataError(
            f"refusing to send the app token over plain http to {origin[1]}: use an https:// {setting} "
            "(plain http with a token is allowed only for a loopback host: localhost, 127.0.0.0/8, ::1)"
        )
    return origin


# --------------------------------------------------------------------------------------
# Describing what came back
# --------------------------------------------------------------------------------------
def _socrata_message(body: bytes | bytearray) -> str:
    """Socrata's own explanation from either error body shape, else the start of the body (clipped)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        code = data.get("code") or data.get("errorCode")
        return clip(f"{code}: {data['message']}" if code else data["message"])
    return clip_body(body)


def _describe_bad_body(body: bytes | bytearray, content_type: str, exc: ValueError) -> str:
    if not body.strip():
        return "the response body was empty"
    if body.lstrip()[:1] == b"<":
        return (
            f"the response is an HTML page (Content-Type {clip(content_type) or 'not set'}), not JSON "
            f"- a proxy, maintenance or login page? It starts with: {clip_body(body.lstrip(), 120)!r}"
        )
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"the response is not valid JSON ({exc.msg} at byte {exc.pos} of {len(body)}; "
            "cut off in transit?)"
        )
    return f"the response is not valid JSON ({clip(exc)})"


def decode_json(reply: Reply, request: Request, exchange: Exchange) -> Any:
    """The reply's JSON, or an error that says why the body is not JSON (HTML page, cut off, empty)."""
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        problem = _describe_bad_body(reply.body, reply.headers.get("Content-Type", ""), exc)
        raise exchange.error(
            f"bad response from {request.label}: {problem}", url=request.url, status=reply.status
        ) from None


def _transport_cause(exc: requests.RequestException) -> tuple[str, bool]:
    """Human cause of a connection-level failure, and whether urllib3 exhausted its retries.

    Clipped: a malformed status line or header is quoted in it, and that is the server's text.
    """
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError):
        reason = inner.reason if inner.reason is not None else inner
        return clip(f"{type(reason).__name__}: {reason}"), True
    return clip(f"{type(exc).__name__}: {exc}"), False


def _retries_used(response: requests.Response) -> int:
    """Retries urllib3 made before this response (kept on the raw response's Retry)."""
    retry = getattr(response.raw, "retries", None)
    return len(retry.history) if retry is not None else 0


def _decoded_note(response: requests.Response) -> str:
    encoding = response.headers.get("Content-Encoding")
    return f" after {clip(encoding, 40)} decoding" if encoding else ""


# --------------------------------------------------------------------------------------
# The deadline of one exchange
# --------------------------------------------------------------------------------------
class _BodyBrokeOff(Exception):
    """The headers arrived but the body did not arrive whole (reset, read timeout, cut stream,
    or the request deadline passed while it was arriving).

    urllib3's `Retry` has already returned by then (the body is read afterwards),
    so `Exchange` retries these itself. The message is the whole explanation.
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


# --------------------------------------------------------------------------------------
# The exchange
# --------------------------------------------------------------------------------------
class _Attempts:
    """HTTP requests sent for one logical request, over urllib3's retries and ours."""

    def __init__(self) -> None:
        self.sent = 0


def _retry(settings: HttpSettings) -> Retry:
    """urllib3 owns the retry loop: transient statuses, resets and timeouts, GET and the SODA3 POST."""
    return Retry(
        total=settings.max_retries,
        connect=None,
        read=None,
        status=None,
        other=None,
        # A SODA3 query is a POST that reads: idempotent, so it is retried like a GET.
        allowed_methods=frozenset({"GET", "POST"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.backoff_max_s,
        backoff_jitter=settings.backoff_factor,
        respect_retry_after_header=True,
        # A Retry-After of an hour would stall the run; wait at most backoff_max_s.
        retry_after_max=settings.backoff_max_s,  # type: ignore[arg-type]
        raise_on_status=False,
        # Inert: requests calls urllib3 with redirect=False, so a 3xx comes back as a
        # response and `Exchange.send` decides (requests itself is told not to follow).
        raise_on_redirect=True,
    )


class Exchange:
    """The HTTP exchanges of one fetch with the target's origin: a session, its counters, its errors.

    Thread-safe: worker threads share one. `cancelled` (set when another page failed) stops new
    attempts and cuts backoff waits short. Close it (or use it as a context manager).
    """

    def __init__(
        self, target: SocrataTarget, settings: HttpSettings, cancelled: threading.Event | None = None
    ) -> None:
        self.settings = settings
        self.origin = check_origin(target.base_url, bool(target.app_token))
        self._token = target.app_token or None
        self.cancelled = cancelled or threading.Event()
        self.lock = threading.Lock()
        self.requests = self.retries = self.bytes = 0
        self.session = self._session()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def error(self, message: str, **kw: Any) -> SocrataError:
        """A SocrataError whose message never shows the token."""
        return SocrataError(self.redact(message), **kw)

    def _session(self) -> requests.Session:
        """A session for this origin; its requests never follow redirects (see `send`)."""
        session = requests.Session()
        adapter = _DeadlineAdapter(max_retries=_retry(self.settings), pool_connections=2, pool_maxsize=self.settings.max_workers)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Only encodings whose decoding urllib3 bounds per read (what Socrata sends anyway).
        session.headers.update({"Accept": "application/json", "Accept-Encoding": "gzip, deflate", "User-Agent": _USER_AGENT})
        if self._token:
            session.headers["X-App-Token"] = self._token
        return session

    # Redirects ----------------------------------------------------------------------------
    def send(self, request: Request) -> Reply:
        """One logical request (retried), following redirects only within the origin.

        requests never follows a redirect here, so the app token (a session
        header) cannot travel to another host or port: a redirect to another
        origin is an error naming both, one within the origin is followed (same
        method and body: a moved query is still the same query), at most
        MAX_REDIRECTS times. Any other final answer but 200 is a SocrataError.
        """
        for _ in range(MAX_REDIRECTS + 1):
            reply = self._send_once(request)
            if reply.redirect_to is None:
                return reply
            request = dataclasses.replace(request, url=self._follow(request, reply))
        raise self.error(f"{request.label}: more than {MAX_REDIRECTS} redirects; giving up", url=request.url)

    def _follow(self, request: Request, reply: Reply) -> str:
        """The redirect target, if it is within the configured origin; else a SocrataError."""
        assert reply.redirect_to is not None
        target = urljoin(request.url, reply.redirect_to)
        try:
            same = origin_of(target) == self.origin
        except ValueError:
            same = False
        if not same:
            raise self.error(
                f"{request.label} answered HTTP {reply.status} with a redirect to {clip(target)}, outside "
                f"{origin_text(self.origin)}: not followed, so the app token never leaves the configured origin. "
                "If the dataset moved, point base_url at its new address",
                url=request.url, status=reply.status,
            )
        log.info("%s redirected (HTTP %d) to %s", request.label, reply.status, self.redact(clip(target)))
        return target

    # Retries ------------------------------------------------------------------------------
    def _send_once(self, request: Request) -> Reply:
        """One logical request, retried; a redirect is returned, other non-200 final answers become SocrataError.

        urllib3 retries until a response's headers arrive (transient statuses,
        resets, timeouts, an exchange over its deadline). A body that then breaks
        off (connection dropped, read timeout or the deadline mid-body) is
        requested again here, with the same backoff. Both draw on one budget:
        once `max_retries` retries have been made in total, a broken body is not
        asked for again. So the logical request ends after at most max_retries + 1
        exchanges, each bounded by request_deadline_s, plus the backoff between.
        """
        if self.cancelled.is_set():
            raise self.error(f"{request.label} cancelled because another page failed")
        settings = self.settings
        attempts = _Attempts()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_BodyBrokeOff),
            stop=lambda state: attempts.sent - 1 >= settings.max_retries or self.cancelled.is_set(),
            wait=tenacity.wait_exponential_jitter(
                multiplier=settings.backoff_factor, max=settings.backoff_max_s, jitter=settings.backoff_factor
            ),
            sleep=self.cancelled.wait,  # a failure elsewhere cuts the wait short
            before_sleep=lambda state: log.warning(
                "%s: %s; asking again (%d of %d retries used)",
                request.label, self.redact(str(state.outcome.exception())), attempts.sent - 1, settings.max_retries,
            ),
            reraise=True,
        )
        try:
            reply = retrying(self._attempt, request, attempts)
        except _BodyBrokeOff as exc:
            raise self.error(f"{request.label} failed after {attempts.sent} attempt(s): {exc}", url=request.url, transient=True) from None
        except requests.RequestException as exc:
            cause, _ = _transport_cause(exc)
            raise self.error(f"{request.label} failed after {attempts.sent} attempt(s): {cause}", url=request.url, transient=True) from None
        finally:
            with self.lock:
                self.requests += 1
                self.retries += max(attempts.sent - 1, 0)
        with self.lock:
            self.bytes += len(reply.body)
        if reply.status != 200 and reply.redirect_to is None:
            raise self._status_error(request, reply, attempts.sent)
        return reply

    def _attempt(self, request: Request, attempts: _Attempts) -> Reply:
        """One requests call (with urllib3's retries inside), its body read to the end within the limits."""
        if self.cancelled.is_set():
            raise self.error(f"{request.label} cancelled because another page failed")
        settings = self.settings
        timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        deadline = _Deadline(settings.request_deadline_s)
        headers = {"Content-Type": "application/json"} if request.body is not None else None
        _attempt_local.deadline = deadline  # the connection starts and enforces it until the headers are in
        try:
            response = self.session.request(
                request.method, request.url, data=request.body, headers=headers,
                timeout=timeout, stream=True, allow_redirects=False,
            )
        except requests.RequestException as exc:
            _, exhausted = _transport_cause(exc)
            attempts.sent += settings.max_retries + 1 if exhausted else 1
            raise
        finally:
            _attempt_local.deadline = None
        attempts.sent += _retries_used(response) + 1
        with response:  # closes the connection on any failure; after a full read it is already pooled
            if response.is_redirect:  # its body is of no use: not read
                return Reply(response.status_code, response.reason or "", response.headers, b"", response.headers["Location"])
            body = self._read_body(response, request, deadline)
        return Reply(response.status_code, response.reason or "", response.headers, body)

    # Bodies and statuses ----------------------------------------------------------------
    def _read_body(self, response: requests.Response, request: Request, deadline: _Deadline) -> bytes:
        """The decoded body in large chunks, refused beyond max_body_bytes (also after decompression)
        and cut off at the exchange's deadline."""
        cap = self._cap(request)
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > cap:
            raise self._too_big(request, f"it declares a Content-Length of {int(declared):,} bytes")
        chunks: list[bytes] = []  # joined once at the end: a growing bytearray reallocates (and fragments) as it goes
        size = 0
        with deadline.enforced(response.raw.shutdown):
            try:
                for chunk in response.iter_content(_READ_CHUNK):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        raise self._too_big(request, f"more than that arrived{_decoded_note(response)}")
            except requests.RequestException as exc:
                if deadline.hit:
                    raise _BodyBrokeOff(deadline.message()) from exc
                raise _BodyBrokeOff(f"the response body broke off: {clip(f'{type(exc).__name__}: {exc}')}") from exc
        if deadline.hit:  # a body without a length just ends when the socket is shut: do not trust it
            raise _BodyBrokeOff(deadline.message())
        return b"".join(chunks)

    def _cap(self, request: Request) -> int:
        cap = self.settings.max_body_bytes
        return cap if request.max_bytes is None else min(cap, request.max_bytes)

    def _too_big(self, request: Request, detail: str) -> SocrataError:
        cap = self._cap(request)
        if cap < self.settings.max_body_bytes:
            return self.error(
                f"the response to {request.label} is larger than {cap:,} bytes, the most this request may return "
                f"({detail}); refusing it",
                url=request.url,
            )
        return self.error(
            f"the response to {request.label} is larger than max_body_bytes = {cap:,} bytes ({detail}); a page of "
            f"{self.settings.page_size:,} rows should be far smaller. Refusing it; if it is genuine, raise "
            "max_body_bytes or lower page_size",
            url=request.url,
        )

    def _status_error(self, request: Request, reply: Reply, attempts: int) -> SocrataError:
        status = reply.status
        transient = status in RETRY_STATUSES
        text = f"Socrata answered HTTP {status} {clip(reply.reason, 80)}".rstrip() + f" to {request.label}"
        if transient:
            text += f" (still failing after {attempts} attempts)"
        if status == 202:
            text += ": the query was still being processed when the retries ran out; try again later"
        elif status == 429:
            text += ": throttled; set an app token or lower max_workers"
        detail = _socrata_message(reply.body)
        if detail:
            text += f": {detail}"
        return self.error(text, url=request.url, status=status, transient=transient)
