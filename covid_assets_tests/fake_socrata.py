"""A local stand-in for the Socrata SODA API, for tests and benchmarks.

It serves ``/resource/{dataset_id}.json`` and ``/api/views/{dataset_id}.json``
on 127.0.0.1 only, implements the paging parameters the client relies on
(``$order=:id``, ``$limit``, ``$offset``, ``$select=count(*)``), and lets a test
inject faults (throttling, 5xx bursts, resets, timeouts, broken bodies, and a
hostile server's tricks: redirects, drips, gzip bombs) into the next matching
requests, so retry and error handling are exercised against real sockets
instead of mocks.

Usage::

    with FakeSocrata(rows, max_limit=500) as server:
        server.faults.append(Fault.error(429, retry_after="1"))
        client = SocrataClient(base_url=server.base_url)
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

__all__ = ["Fault", "FakeSocrata", "RecordedRequest"]

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
        "repeat_previous",  # serve the previous page request's body again (ignores $offset)
    }
)


@dataclass
class Fault:
    """One injected misbehaviour; consumed by the next `times` matching requests.

    `where` selects requests: "any", "count" (the ``$select=count(*)`` query),
    "page" (row requests) or "views" (metadata); `offset` narrows page requests.
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
        if self.where not in {"any", "count", "page", "views"}:
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

    def matches(self, target: str, params: Mapping[str, str]) -> bool:
        if self.where != "any" and self.where != target:
            return False
        if self.offset is not None:
            return target == "page" and params.get("$offset", "0") == str(self.offset)
        return True


class RecordedRequest(NamedTuple):
    """What the server saw: path, query parameters (decoded) and headers."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]


class _BadRequest(Exception):
    """A request the fake (like Socrata) rejects with a 400 and an error body."""


class FakeSocrata:
    """A threaded HTTP server on 127.0.0.1 that behaves like Socrata for one dataset."""

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]] = (),
        *,
        max_limit: int = 50_000,
        latency_s: float = 0.0,
        dataset_id: str = "j8mb-icvb",
        compress: bool = False,
    ) -> None:
        self.max_limit = max_limit
        self.latency_s = latency_s
        self.dataset_id = dataset_id
        self.compress = compress  # gzip bodies when the client accepts it, like Socrata
        self.rows_updated_at = 1_700_000_000
        self.faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        # Called with (target, params) before each request is served; lets a test
        # change the dataset mid-fetch (e.g. rows appended after the count query).
        self.on_request: Callable[[str, dict[str, str]], None] | None = None
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
        encoded = [self._encode_row(r) for r in rows]
        with self._lock:
            self._encoded = encoded

    def extend_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        encoded = [self._encode_row(r) for r in rows]
        with self._lock:
            self._encoded = self._encoded + encoded

    def truncate_rows(self, n: int) -> None:
        """Keep only the first `n` rows (simulates a dataset shrinking mid-fetch)."""
        with self._lock:
            self._encoded = self._encoded[:n]

    @property
    def row_count(self) -> int:
        return len(self._encoded)

    @staticmethod
    def _encode_row(row: Mapping[str, Any]) -> bytes:
        kept = {k: v for k, v in row.items() if v is not None}
        return json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    # Lifecycle ----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The server's root URL; still readable after stop() (then nothing listens there)."""
        if self._base_url is None:
            raise RuntimeError("FakeSocrata has not been started")
        return self._base_url

    def handler_base(self) -> type:
        """The request handler to serve with; a subclass may return its own `_Handler` subclass."""
        return _Handler

    def start(self) -> FakeSocrata:
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (self.handler_base(),), {"fake": self})
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

    # Introspection helpers ------------------------------------------------------
    def page_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if _target(self.dataset_id, r.path, r.params) == "page"]

    # Called by the handler --------------------------------------------------------
    def _record(self, path: str, params: dict[str, str], headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(path, params, headers))

    def _take_fault(self, target: str, params: Mapping[str, str]) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.matches(target, params):
                    fault.times -= 1
                    if fault.times <= 0:
                        del self.faults[i]
                    return fault
        return None

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _page_body(self, params: Mapping[str, str]) -> bytes:
        """The JSON array Socrata would return for these paging parameters."""
        limit = _int_param(params, "$limit", 1000)
        offset = _int_param(params, "$offset", 0)
        if limit < 0 or offset < 0:
            raise _BadRequest("$limit and $offset must be non-negative")
        limit = min(limit, self.max_limit)
        order = params.get("$order")
        with self._lock:
            encoded = self._encoded
        if order is None:
            # Socrata gives no order guarantee without $order: each page is drawn
            # from its own deterministic shuffle, so pages overlap and miss rows.
            rng = random.Random(offset * 7919 + limit)
            picked = rng.sample(range(len(encoded)), k=max(0, min(limit, len(encoded) - offset)))
            chosen = [encoded[i] for i in picked]
        elif order.strip() in {":id", ":id ASC", ":id asc"}:
            chosen = encoded[offset : offset + limit]
        else:
            raise _BadRequest(f"the fake server only supports $order=:id, got {order!r}")
        return b"[" + b"\n,".join(chosen) + b"]\n"

    def _count_body(self) -> bytes:
        return json.dumps([{"count": str(self.row_count)}]).encode()


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(f"Invalid value for {name}: {raw!r}") from None


def _target(dataset_id: str, path: str, params: Mapping[str, str]) -> str:
    if path == f"/resource/{dataset_id}.json":
        return "count" if "$select" in params else "page"
    if path == f"/api/views/{dataset_id}.json":
        return "views"
    return "unknown"


_SUPPORTED_PARAMS = frozenset({"$order", "$limit", "$offset", "$select"})


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
        fake = self.fake
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        fake._record(split.path, params, {k: v for k, v in self.headers.items()})
        target = _target(fake.dataset_id, split.path, params)
        is_page = target == "page"
        if is_page:
            with fake._lock:
                fake._inflight += 1
                fake.max_inflight = max(fake.max_inflight, fake._inflight)
        try:
            self._serve(fake, target, split.path, params)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its read timeout)
        finally:
            if is_page:
                with fake._lock:
                    fake._inflight -= 1

    def _serve(self, fake: FakeSocrata, target: str, path: str, params: dict[str, str]) -> None:
        if fake.on_request is not None:
            fake.on_request(target, params)
        fake._wait(fake.latency_s)
        fault = fake._take_fault(target, params)
        if fault is not None and fault.kind == "sleep":
            fake._wait(fault.sleep_s)
            fault = None
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "respond":
            body = fault.body.encode() if isinstance(fault.body, str) else (fault.body or b"")
            self._send(fault.status, body, dict(fault.headers))
            return

        status, body = self._real_response(fake, target, path, params)
        if status == 200 and target == "page":
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
        self._send(status, body, {"Content-Type": "application/json; charset=utf-8"})

    def _real_response(
        self, fake: FakeSocrata, target: str, path: str, params: dict[str, str]
    ) -> tuple[int, bytes]:
        if target == "unknown":
            return 404, _error_body("not_found", f"Not found: {path}")
        if target == "views":
            return 200, json.dumps({"id": fake.dataset_id, "rowsUpdatedAt": fake.rows_updated_at}).encode()
        unsupported = sorted(k for k in params if k.startswith("$") and k not in _SUPPORTED_PARAMS)
        try:
            if unsupported:
                raise _BadRequest(f"the fake server does not support {', '.join(unsupported)}")
            if target == "count":
                select = params["$select"].replace(" ", "").lower()
                if select != "count(*)":
                    raise _BadRequest(f"the fake server only supports $select=count(*), got {params['$select']!r}")
                return 200, fake._count_body()
            return 200, fake._page_body(params)
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

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self.fake.compress and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers = {**headers, "Content-Encoding": "gzip"}
        self._send_headers(status, len(body), headers)
        self.wfile.write(body)

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
