"""A local stand-in for a Socrata domain serving one dataset, for tests and benchmarks.

It listens on 127.0.0.1 only and speaks what the client relies on:

* SODA2: ``GET /resource/{id}.json`` with ``$order=:id``, ``$limit``, ``$offset`` and
  ``$select=count(*)``; ``$limit`` is capped at `max_limit` like a 2.0 endpoint.
* SODA3: ``POST /api/v3/views/{id}/query.json`` with a JSON body ``{"query": "SELECT * ORDER BY
  :id" or "SELECT count(*)", "page": {"pageNumber": n, "pageSize": s}, "includeSynthetic":
  false}``, an ``X-App-Token`` required (403 without). The answer has the SODA2 shape: a JSON
  array of row objects, the count as ``[{"count": "N"}]``. Without ``"includeSynthetic": false``
  rows carry ``:id``. ``soda3=False`` makes it a domain without SODA3 (404 there);
  `soda3_page_cap` a server that serves pages of at most that size, numbered in that size.
* ``GET /api/views/{id}.json``: the view metadata, `view` (columns derived from the rows unless
  a test sets its own, e.g. a real one), with ``rowsUpdatedAt`` = `rows_updated_at`.

A test can inject faults (throttling, 5xx bursts, resets, timeouts, broken bodies, and a hostile
server's tricks: redirects, drips, gzip bombs) into the next matching requests, so retry and
error handling are exercised against real sockets instead of mocks. Faults match either
protocol: ``where="page", offset=100`` is the SODA2 ``$offset=100`` and the SODA3 page that
starts at row 100 alike.

Usage::

    with FakeSocrata(rows, max_limit=500) as server:
        server.faults.append(Fault.error(429, retry_after="1", where="page", offset=500))
        ...  # point SOCRATA_BASE_URL (or a SocrataTarget) at server.base_url
        offsets = [request.offset for request in server.page_requests()]
"""

from __future__ import annotations

import gzip
import io
import json
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping, NamedTuple
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeSocrata", "Fault", "RecordedRequest"]

# Faults a test can inject. Each consumes one matching request per ``times``.
_KINDS = frozenset(
    {
        "respond",  # answer with `status`, `body`, `headers` instead of the real page
        "truncated",  # the real body cut in half (Content-Length matches the cut body)
        "reset",  # close the connection with a TCP RST, no response at all
        "reset_mid_body",  # send headers + half the body, then RST
        "stall_mid_body",  # send headers + half the body, wait `sleep_s`, then the rest (a read timeout mid-body)
        "drip",  # send the body in `pieces` pieces, `sleep_s` apart (a slow but live server)
        "drip_headers",  # send status line, headers and body in `pieces` pieces, `sleep_s` apart
        "gzip_bomb",  # the real body, gzip-encoded, with `padding_mib` MiB of JSON whitespace before its final "]"
        "sleep",  # wait `sleep_s` (longer than the client's read timeout), then answer normally
        "repeat_previous",  # serve the previous page request's body again (ignores the paging)
    }
)
_TARGETS = frozenset({"any", "count", "page", "views"})


class RecordedRequest(NamedTuple):
    """What the server saw, and what it made of it.

    `target` is "count", "page", "views" or "unknown"; `protocol` "soda2", "soda3" or None;
    `offset` and `limit` are a page's first row and size in either protocol (None otherwise).
    """

    method: str
    path: str
    params: dict[str, str]  # the query string, decoded
    headers: dict[str, str]
    body: Any  # the parsed JSON body of a POST (None for a GET, or a body that is not JSON)
    target: str
    protocol: str | None
    offset: int | None
    limit: int | None


@dataclass
class Fault:
    """One injected misbehaviour; consumed by the next `times` matching requests.

    `where` selects requests: "any", "count" (the count query), "page" (row requests) or
    "views" (metadata); `offset` narrows page requests to the one starting at that row.
    """

    kind: str
    status: int = 200
    body: bytes | str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    sleep_s: float = 0.0
    where: str = "any"
    offset: int | None = None
    times: int = 1
    pieces: int = 10
    padding_mib: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(_KINDS)}")
        if self.where not in _TARGETS:
            raise ValueError(f"unknown fault target {self.where!r}")

    # Convenience constructors -------------------------------------------------
    @classmethod
    def error(
        cls,
        status: int,
        *,
        message: str = "simulated failure",
        body: bytes | str | None = None,
        retry_after: str | None = None,
        **kw: Any,
    ) -> Fault:
        """An HTTP error with a Socrata-shaped JSON body (or the given body)."""
        if body is None:
            body = json.dumps({"code": f"fake.{status}", "error": True, "message": message})
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return cls("respond", status=status, body=body, headers=headers, **kw)

    @classmethod
    def html(cls, status: int = 200, **kw: Any) -> Fault:
        """A proxy/maintenance HTML page, as captive portals and CDNs serve."""
        body = "<!DOCTYPE html><html><head><title>Maintenance</title></head><body>Back soon</body></html>"
        return cls("respond", status=status, body=body, headers={"Content-Type": "text/html"}, **kw)

    @classmethod
    def json_body(cls, value: Any, status: int = 200, **kw: Any) -> Fault:
        """A 200 (by default) whose JSON body is `value` instead of the page."""
        headers = {"Content-Type": "application/json; charset=utf-8"}
        return cls("respond", status=status, body=json.dumps(value), headers=headers, **kw)

    @classmethod
    def empty(cls, **kw: Any) -> Fault:
        return cls.json_body([], **kw)

    @classmethod
    def truncated(cls, **kw: Any) -> Fault:
        return cls("truncated", **kw)

    @classmethod
    def reset(cls, **kw: Any) -> Fault:
        return cls("reset", **kw)

    @classmethod
    def reset_mid_body(cls, **kw: Any) -> Fault:
        return cls("reset_mid_body", **kw)

    @classmethod
    def sleep(cls, seconds: float, **kw: Any) -> Fault:
        return cls("sleep", sleep_s=seconds, **kw)

    @classmethod
    def stall_mid_body(cls, seconds: float, **kw: Any) -> Fault:
        return cls("stall_mid_body", sleep_s=seconds, **kw)

    @classmethod
    def drip(cls, seconds_between_pieces: float, **kw: Any) -> Fault:
        return cls("drip", sleep_s=seconds_between_pieces, **kw)

    @classmethod
    def drip_headers(cls, seconds_between_pieces: float, **kw: Any) -> Fault:
        """The whole response, status line and headers included, trickling in: a read timeout never fires."""
        return cls("drip_headers", sleep_s=seconds_between_pieces, **kw)

    @classmethod
    def redirect(cls, location: str, status: int = 302, **kw: Any) -> Fault:
        return cls("respond", status=status, body=b"", headers={"Location": location}, **kw)

    @classmethod
    def gzip_bomb(cls, padding_mib: int, **kw: Any) -> Fault:
        """A small gzip body that decodes to the real page plus `padding_mib` MiB of whitespace (still valid JSON)."""
        return cls("gzip_bomb", padding_mib=padding_mib, **kw)

    @classmethod
    def repeat_previous(cls, **kw: Any) -> Fault:
        return cls("repeat_previous", **kw)

    def matches(self, request: RecordedRequest) -> bool:
        if self.where != "any" and self.where != request.target:
            return False
        if self.offset is not None:
            return request.target == "page" and request.offset == self.offset
        return True


class _BadRequest(Exception):
    """A request the stand-in (like Socrata) rejects with a 400 and an error body."""


class FakeSocrata:
    """A threaded HTTP server on 127.0.0.1 that behaves like a Socrata domain with one dataset."""

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]] = (),
        *,
        max_limit: int = 50_000,
        latency_s: float = 0.0,
        dataset_id: str = "j8mb-icvb",
        compress: bool = False,
        soda3: bool = True,
        soda3_page_cap: int | None = None,
        view: Mapping[str, Any] | None = None,
    ) -> None:
        self.max_limit = max_limit
        self.latency_s = latency_s
        self.dataset_id = dataset_id
        self.compress = compress  # gzip bodies when the client accepts it, like Socrata
        self.soda3 = soda3
        self.soda3_page_cap = soda3_page_cap
        self.view: dict[str, Any] | None = dict(view) if view is not None else None  # None: derived from the rows
        self.rows_updated_at = 1_700_000_000
        self.faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        # Called with (target, params) before each request is served; lets a test
        # change the dataset mid-fetch (e.g. rows appended after the count query).
        self.on_request: Callable[[str, dict[str, str]], None] | None = None
        # Called with (request, status, body bytes before compression) after each answer: for measurements.
        self.on_response: Callable[[RecordedRequest, int, int], None] | None = None
        self.max_inflight = 0  # highest number of concurrent page requests seen
        self._inflight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._previous_page: bytes | None = None
        self._encoded: list[bytes] = []
        self.set_rows(rows)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # Dataset ------------------------------------------------------------------
    def set_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the dataset. Rows are encoded once, dropping None values as Socrata does."""
        encoded = [_encode_row(r) for r in rows]
        with self._lock:
            self._encoded = encoded

    def extend_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        encoded = [_encode_row(r) for r in rows]
        with self._lock:
            self._encoded = self._encoded + encoded

    def truncate_rows(self, n: int) -> None:
        """Keep only the first `n` rows (simulates a dataset shrinking mid-fetch)."""
        with self._lock:
            self._encoded = self._encoded[:n]

    def row(self, index: int) -> dict[str, Any]:
        """Row `index` as served (None values left out)."""
        with self._lock:
            return json.loads(self._encoded[index])

    def set_row(self, index: int, row: Mapping[str, Any]) -> None:
        """Revise one row in place (a correction, as a publisher makes one)."""
        encoded = _encode_row(row)
        with self._lock:
            rows = list(self._encoded)
            rows[index] = encoded
            self._encoded = rows

    @property
    def row_count(self) -> int:
        return len(self._encoded)

    def view_document(self) -> dict[str, Any]:
        """What ``/api/views/{id}.json`` returns: `view`, or columns derived from the rows (all text)."""
        with self._lock:
            view, encoded = self.view, self._encoded
        if view is None:
            names = dict.fromkeys(key for row in encoded[:1000] for key in json.loads(row))
            system = [{"fieldName": ":id", "name": "id", "dataTypeName": "meta_data", "flags": ["hidden"]}]
            columns = [{"fieldName": name, "name": name, "dataTypeName": "text", "description": None} for name in names]
            view = {"id": self.dataset_id, "name": f"Dataset {self.dataset_id}", "columns": system + columns}
        return {**view, "rowsUpdatedAt": self.rows_updated_at}

    # Lifecycle ----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The server's root URL; still readable after stop() (then nothing listens there)."""
        if self._base_url is None:
            raise RuntimeError("FakeSocrata has not been started")
        return self._base_url

    def start(self) -> FakeSocrata:
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._stopping.clear()
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self._base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-socrata", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping for latency/timeouts
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeSocrata:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Introspection ------------------------------------------------------------
    def page_requests(self) -> list[RecordedRequest]:
        """The row requests, in either protocol, in the order they arrived."""
        return [r for r in self.requests if r.target == "page"]

    # Serving (called by the handler) ------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_fault(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.matches(request):
                    fault.times -= 1
                    if fault.times <= 0:
                        del self.faults[i]
                    return fault
        return None

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _rows_body(self, offset: int, limit: int, ordered: bool, synthetic: bool = False) -> bytes:
        """The JSON array of rows [offset, offset + limit) (a random pick when not `ordered`)."""
        if limit < 0 or offset < 0:
            raise _BadRequest("the page's limit and offset must be non-negative")
        with self._lock:
            encoded = self._encoded
        if ordered:
            picked: Iterable[int] = range(offset, min(offset + limit, len(encoded)))
            chosen = encoded[offset : offset + limit]
        else:
            # Socrata gives no order guarantee without an order: each page is drawn
            # from its own deterministic shuffle, so pages overlap and miss rows.
            rng = random.Random(offset * 7919 + limit)
            picked = rng.sample(range(len(encoded)), k=max(0, min(limit, len(encoded) - offset)))
            chosen = [encoded[i] for i in picked]
        if synthetic:  # system fields, as Socrata adds them unless includeSynthetic is false
            chosen = [_with_id(row, i) for i, row in zip(picked, chosen)]
        return b"[" + b"\n,".join(chosen) + b"]\n"

    def _count_body(self) -> bytes:
        return json.dumps([{"count": str(self.row_count)}]).encode()

    def _soda2(self, request: RecordedRequest) -> bytes:
        params = request.params
        unsupported = sorted(k for k in params if k.startswith("$") and k not in _SODA2_PARAMS)
        if unsupported:
            raise _BadRequest(f"the stand-in does not support {', '.join(unsupported)}")
        if request.target == "count":
            if params["$select"].replace(" ", "").lower() != "count(*)":
                raise _BadRequest(f"the stand-in only supports $select=count(*), got {params['$select']!r}")
            return self._count_body()
        order = params.get("$order")
        if order is not None and order.strip() not in {":id", ":id ASC", ":id asc"}:
            raise _BadRequest(f"the stand-in only supports $order=:id, got {order!r}")
        limit = min(_int_param(params, "$limit", 1000), self.max_limit)
        return self._rows_body(_int_param(params, "$offset", 0), limit, ordered=order is not None)

    def _soda3(self, request: RecordedRequest) -> bytes:
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise _BadRequest('the body must be a JSON object with a "query"')
        unknown = sorted(set(body) - {"query", "page", "includeSynthetic"})
        if unknown:
            raise _BadRequest(f"the stand-in does not support the request option(s) {', '.join(unknown)}")
        if request.target == "count":
            return self._count_body()
        if _normal_query(body["query"]) != _normal_query(_SODA3_ROWS):
            raise _BadRequest(f"the stand-in only supports the queries {_SODA3_ROWS!r} and {_SODA3_COUNT!r}")
        if request.offset is None or request.limit is None:
            raise _BadRequest('"page" must be {"pageNumber": n >= 1, "pageSize": s >= 1}')
        size = min(request.limit, self.soda3_page_cap or request.limit)
        number = request.offset // request.limit  # 0-based page number
        return self._rows_body(number * size, size, ordered=True, synthetic=body.get("includeSynthetic") is not False)


_SODA2_PARAMS = frozenset({"$order", "$limit", "$offset", "$select"})
_SODA3_ROWS = "SELECT * ORDER BY :id"
_SODA3_COUNT = "SELECT count(*)"


def _encode_row(row: Mapping[str, Any]) -> bytes:
    kept = {k: v for k, v in row.items() if v is not None}
    return json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _with_id(encoded_row: bytes, index: int) -> bytes:
    field_ = f'":id":"row-{index:08x}"'.encode()
    return b"{" + field_ + (b"," + encoded_row[1:] if encoded_row != b"{}" else b"}")


def _normal_query(query: str) -> str:
    return " ".join(query.split()).lower()


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(f"Invalid value for {name}: {raw!r}") from None


def _describe(fake: FakeSocrata, method: str, path: str, params: dict[str, str], headers: dict[str, str], raw: bytes) -> RecordedRequest:
    """What a request is: its target, protocol and, for a page, its first row and size."""
    target, protocol, offset, limit, body = "unknown", None, None, None, None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    if method == "GET" and path == f"/resource/{fake.dataset_id}.json":
        protocol, target = "soda2", "count" if "$select" in params else "page"
        if target == "page":
            try:
                offset, limit = int(params.get("$offset", "0")), int(params.get("$limit", "1000"))
            except ValueError:
                pass
    elif method == "POST" and path == f"/api/v3/views/{fake.dataset_id}/query.json":
        protocol = "soda3"
        query = body.get("query") if isinstance(body, dict) else None
        target = "count" if isinstance(query, str) and _normal_query(query) == _normal_query(_SODA3_COUNT) else "page"
        page = body.get("page") if isinstance(body, dict) else None
        if isinstance(page, dict):
            number, size = page.get("pageNumber"), page.get("pageSize")
            if isinstance(number, int) and isinstance(size, int) and number >= 1 and size >= 1:
                offset, limit = (number - 1) * size, size
    elif method == "GET" and path == f"/api/views/{fake.dataset_id}.json":
        target = "views"
    return RecordedRequest(method, path, params, headers, body, target, protocol, offset, limit)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSocrata  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised
    server_version = "FakeSocrata/1.0"
    # Headers and body go out in separate writes; with Nagle on, each keep-alive
    # request would stall ~40 ms on the client's delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("POST")

    def _handle(self, method: str) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        request = _describe(fake, method, split.path, params, dict(self.headers.items()), raw)
        fake._record(request)
        is_page = request.target == "page"
        if is_page:
            with fake._lock:
                fake._inflight += 1
                fake.max_inflight = max(fake.max_inflight, fake._inflight)
        try:
            self._serve(fake, request)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its read timeout)
        finally:
            if is_page:
                with fake._lock:
                    fake._inflight -= 1

    def _serve(self, fake: FakeSocrata, request: RecordedRequest) -> None:
        if fake.on_request is not None:
            fake.on_request(request.target, request.params)
        fake._wait(fake.latency_s)
        fault = fake._take_fault(request)
        if fault is not None and fault.kind == "sleep":
            fake._wait(fault.sleep_s)
            fault = None
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "respond":
            body = fault.body.encode() if isinstance(fault.body, str) else (fault.body or b"")
            self._send(request, fault.status, body, dict(fault.headers))
            return

        status, body = self._real_response(fake, request)
        if status == 200 and request.target == "page":
            with fake._lock:
                previous, fake._previous_page = fake._previous_page, body
            if fault is not None and fault.kind == "repeat_previous" and previous is not None:
                body = previous
        if fault is not None and fault.kind == "truncated":
            body = body[: max(1, len(body) // 2)]
        if fault is not None and fault.kind == "reset_mid_body":
            self._send_headers(status, len(body), {"Content-Type": "application/json"})
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._reset()
            return
        if fault is not None and fault.kind in {"stall_mid_body", "drip"}:
            self._send_headers(status, len(body), {"Content-Type": "application/json"})
            self._trickle(_split(body, 2 if fault.kind == "stall_mid_body" else fault.pieces), fault.sleep_s)
            return
        if fault is not None and fault.kind == "drip_headers":
            head = (
                f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            # The headers are complete only with the last piece, which carries the body too.
            pieces = _split(head, fault.pieces)
            self._trickle([*pieces[:-1], pieces[-1] + body], fault.sleep_s)
            return
        if fault is not None and fault.kind == "gzip_bomb":
            self._send_headers(
                status, len(bomb := _gzip_bomb(body, fault.padding_mib)),
                {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
            self.wfile.write(bomb)
            return
        self._send(request, status, body, {"Content-Type": "application/json; charset=utf-8"})

    def _real_response(self, fake: FakeSocrata, request: RecordedRequest) -> tuple[int, bytes]:
        if request.target == "views":
            return 200, json.dumps(fake.view_document()).encode()
        if request.protocol == "soda3" and not fake.soda3:
            return 404, _error_body("not_found", f"Not found: {request.path}")
        if request.protocol == "soda3" and not request.headers.get("X-App-Token"):
            return 403, _error_body("authentication_required", "SODA3 requests need an app token or authentication")
        if request.protocol is None:
            return 404, _error_body("not_found", f"Not found: {request.path}")
        try:
            return 200, fake._soda2(request) if request.protocol == "soda2" else fake._soda3(request)
        except _BadRequest as exc:
            return 400, _error_body("query.compiler.malformed", str(exc))

    def _trickle(self, chunks: list[bytes], sleep_s: float) -> None:
        """Write each chunk, `sleep_s` apart."""
        for i, chunk in enumerate(chunks):
            if i:
                self.fake._wait(sleep_s)
            self.wfile.write(chunk)
            self.wfile.flush()

    def _send_headers(self, status: int, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, request: RecordedRequest, status: int, body: bytes, headers: dict[str, str]) -> None:
        size = len(body)
        if self.fake.compress and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers = {**headers, "Content-Encoding": "gzip"}
        self._send_headers(status, len(body), headers)
        self.wfile.write(body)
        if self.fake.on_response is not None:
            self.fake.on_response(request, status, size)

    def _reset(self) -> None:
        """Abort the connection with RST (SO_LINGER 0), like a dropped load balancer."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Close every file object on the socket so the fd really closes now
            # (an orderly shutdown would send FIN instead of RST).
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass
        # The stdlib handler flushes wfile after each request; give it something harmless to flush.
        self.rfile, self.wfile = io.BytesIO(), io.BytesIO()


def _split(data: bytes, pieces: int) -> list[bytes]:
    """`data` in `pieces` nearly equal parts (fewer when it is shorter)."""
    size = max(-(-len(data) // pieces), 1)
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _gzip_bomb(body: bytes, padding_mib: int) -> bytes:
    """`body` (a JSON array) with MiBs of whitespace before its closing bracket, as multi-member gzip.

    Each MiB of spaces compresses to about 1 kB, so the wire size stays tiny.
    """
    close = body.rstrip().rfind(b"]")
    spaces = gzip.compress(b" " * (1 << 20), compresslevel=9)
    return gzip.compress(body[:close]) + spaces * padding_mib + gzip.compress(body[close:])


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "error": True, "message": message}).encode()
