"""The paging plan: every row of a dataset exactly once, in ``:id`` order, with bounded time and memory.

One plan for both protocols (`soda`):

* **Count once.** ``count(*)`` first (or the one `signature()` just took), then the pages that
  cover it are fetched concurrently: chunks of ``page_size`` rows, at most ``max_workers`` at a
  time and at most ``2 x max_workers`` queued or held, yielded in offset order as they complete.
  A failure anywhere stops the rest at once.
* **Growth and shrinkage.** When the last chunk came back full, pages continue past the count
  until the data ends (rows added since the count are fetched); fewer rows than counted is an
  error, never a partial extract.
* **Open-ended paging** when the count is unusable (an error, HTML, a strange shape): sequential
  pages until one is empty. Without a count a short page is ambiguous, so the next page decides.
* **A server cap on the page size.** SODA2: a page shorter than asked is continued from where it
  ended. SODA3 numbers its pages, so a page shorter than its size must be the last: the next
  page is asked for, and rows there mean the server does not page as asked (refused).
* **Refusals.** A ``count(*)`` above :data:`MAX_PAGES` pages of ``page_size`` rows, more than
  :data:`MAX_PAGES` page requests, a page with more rows than asked, the same page body at two
  offsets (a server ignoring the paging), an empty first page, and no rows at all.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa

from covid_assets.sources.socrata.errors import SocrataError, clip
from covid_assets.sources.socrata.http import Exchange, HttpSettings, Reply, Request, decode_json
from covid_assets.sources.socrata.rows import FetchStats, describe_not_rows, rows_to_table, string_rows_table
from covid_assets.sources.socrata.soda import ProtocolChoice, SodaProtocol

__all__ = ["MAX_PAGES", "PagePlan", "ProgressFn"]

log = logging.getLogger(__name__)

# A bound on page requests per fetch, so a server that keeps answering with
# rows (e.g. one that ignores $offset) cannot keep the client busy forever. It
# also bounds the count(*) the client accepts: MAX_PAGES x page_size rows.
MAX_PAGES = 100_000

ProgressFn = Callable[[int, Optional[int]], None]

_Chunk = tuple[list[pa.Table], bool]  # a chunk's page tables, and whether it came back full


class PagePlan:
    """One fetch: its exchange, counters and paging plan, shared by worker threads.

    Iterate `pages()` for the Arrow tables in offset order; `stats()` and `source` tell what it
    cost and which endpoint answered. Close it (or use it as a context manager) to release the
    connections.
    """

    def __init__(
        self,
        exchange: Exchange,
        protocols: ProtocolChoice,
        settings: HttpSettings,
        progress: ProgressFn | None = None,
    ) -> None:
        self.exchange = exchange
        self.protocols = protocols
        self.settings = settings
        self.progress = progress
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.cancelled = exchange.cancelled
        self.pages_requested = self.rows = 0
        self.total: int | None = None
        self.page_digests: dict[bytes, int] = {}

    def __enter__(self) -> PagePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.exchange.close()

    @property
    def source(self) -> str:
        """The endpoint the rows came from (the protocol spoken last)."""
        return self.protocols.current.resource_url

    @property
    def max_rows(self) -> int:
        """The largest count(*) the plan accepts: what MAX_PAGES full pages hold."""
        return MAX_PAGES * self.settings.page_size

    def stats(self, rows: int | None = None, elapsed_s: float | None = None) -> FetchStats:
        """What the fetch cost so far: by default the rows received and the time since the plan was made."""
        ex = self.exchange
        rows = self.rows if rows is None else rows
        elapsed_s = time.monotonic() - self.started if elapsed_s is None else elapsed_s
        return FetchStats(rows, self.pages_requested, ex.requests, ex.retries, ex.bytes, round(elapsed_s, 3))

    def error(self, message: str, **kw: Any) -> SocrataError:
        return self.exchange.error(message, **kw)

    # Plan ------------------------------------------------------------------------------
    def pages(self, known_count: int | None = None) -> Iterator[pa.Table]:
        """Count, then fetch [0, count) concurrently, then follow any growth sequentially.

        The checks that need the whole fetch (no rows, fewer than counted) run after the last
        page, so a consumer that writes pages as they come must not commit before the end.
        """
        total = self.count() if known_count is None else known_count
        self.total = total
        url = self.source
        if total == 0:
            raise self.error(
                f"source returned no rows: {url} reports count(*) = 0; refusing to replace the warehouse with nothing"
            )
        if total is not None and total > self.max_rows:
            raise self.error(
                f"{url} reports count(*) = {total:,} rows, more than this client fetches: {MAX_PAGES:,} pages "
                f"of {self.settings.page_size:,} rows = {self.max_rows:,}; refusing rather than planning "
                "that many page requests"
            )
        if total is None:
            yield from self.open_ended(0)
        else:
            end = yield from self.concurrent(total)
            if end is not None:  # the last page was full: rows may have been added since the count
                yield from self.open_ended(end)
        if self.rows == 0:
            raise self.error(f"source returned no rows: {self.source} returned an empty first page")
        if total is not None and self.rows < total:
            raise self.error(
                f"{self.source} returned {self.rows} rows but count(*) reported {total}: the dataset changed during "
                "the fetch or the server dropped rows; refusing a partial extract"
            )

    def count(self) -> int | None:
        """Rows in the dataset, or None when the count query is unusable (then page until the end)."""
        try:
            data = self.request_rows(lambda protocol: protocol.count())
            values = list(data[0].values()) if len(data) == 1 and len(data[0]) == 1 else []
            if len(values) != 1:
                raise self.error(f"unexpected count(*) response: {clip(json.dumps(data))}")
            total = int(str(values[0]))
            if total < 0:
                raise self.error(f"negative count(*) response: {clip(total)}")
            return total
        except (SocrataError, ValueError) as exc:
            if isinstance(exc, SocrataError) and exc.transient:
                raise
            log.warning(
                "count(*) query failed (%s); falling back to sequential paging", self.exchange.redact(clip(exc, 600))
            )
            return None

    def concurrent(self, total: int) -> Iterator[pa.Table]:
        """The chunks [k*page_size, (k+1)*page_size) covering the count, in order.

        Returns (as the generator's value) the end offset of the last chunk when it came back
        full (there may be more rows than counted), else None.
        """
        size = self.settings.page_size
        starts = range(0, total, size)
        full = False
        for tables, full in self._chunks_in_order(starts, size):
            yield from tables
        return starts[-1] + size if full else None

    def _chunks_in_order(self, starts: range, size: int) -> Iterator[_Chunk]:
        """Run the chunks on a thread pool and yield them in offset order; the first failure (or an
        interrupt, or the consumer closing the generator) stops the rest.

        At most 2 x workers chunks are queued or held (done, waiting for an earlier one) at a
        time, a window refilled as chunks are yielded, so neither the plan's size nor a slow first
        page turns into that many futures or tables. On failure the pool is not waited for:
        in-flight requests finish in the background (bounded by the deadline and retries) and
        start nothing new, so the error reaches the user without waiting out other pages' retries.
        """
        workers = min(self.settings.max_workers, len(starts))
        if workers == 1:
            for start in starts:
                yield self.chunk(start, start + size)
            return
        window = 2 * workers
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="socrata-page")
        pending: dict[int, Future[_Chunk]] = {}
        queue = iter(enumerate(starts))
        head = 0
        succeeded = False
        try:
            while True:
                for index, start in itertools.islice(queue, window - len(pending)):
                    pending[index] = pool.submit(self.chunk, start, start + size)
                if not pending:
                    break
                if not pending[head].done():
                    wait([f for f in pending.values() if not f.done()], return_when=FIRST_COMPLETED)
                for future in pending.values():
                    if future.done() and future.exception() is not None:
                        future.result()  # a chunk's error is raised here, whichever chunk it was
                while head in pending and pending[head].done():
                    yield pending.pop(head).result()
                    head += 1
            succeeded = True
        finally:
            if not succeeded:
                self.cancelled.set()
            pool.shutdown(wait=succeeded, cancel_futures=True)

    def chunk(self, start: int, end: int) -> _Chunk:
        """Rows [start, end); keeps asking when a SODA2 server caps $limit below what was asked.

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
                        f"{self.source}: the first page is empty although count(*) reported {self.total} rows"
                    )
                break  # fewer rows than counted; pages() reports it
            tables.append(table)
            pos += n
            if n < limit and pos >= self.total:
                break  # the end of the data the count promised
            # Read after the page: a run's first pages may have just fallen back from SODA3 to SODA2.
            if n < limit and self.protocols.current.fixed_pages:
                self.require_end(end)  # SODA3 cannot continue a numbered page in the middle
                break  # fewer rows than counted; pages() reports it
        return tables, pos >= end

    def open_ended(self, start: int) -> Iterator[pa.Table]:
        """Sequential pages from `start` until the data ends, when the row count is unknown.

        Without a count a short page is ambiguous (end of data, or a server cap
        on $limit), so the next page decides: empty = end; otherwise (SODA2) its size
        is the server's cap and from then on a page shorter than it is the end, or
        (SODA3, whose numbered pages cannot be continued) the server is not paging as asked.
        """
        pos, limit, cap_known = start, self.settings.page_size, False
        while not self.cancelled.is_set():
            table = self.page(pos, limit)
            n = table.num_rows
            if n == 0:
                return
            yield table
            if n < limit and self.protocols.current.fixed_pages:
                self.require_end(pos + limit)
                return
            pos += n
            if n < limit:
                if cap_known:
                    return
                limit, cap_known = n, True

    def require_end(self, next_offset: int) -> None:
        """After a short numbered page: the next page must be empty, or the pages cannot be placed."""
        size = self.settings.page_size
        table = self.page(next_offset, size)
        if table.num_rows:
            raise self.error(
                f"{self.source}: a page came back shorter than its pageSize of {size:,} rows, yet the page after "
                f"it (from row {next_offset:,}) has {table.num_rows:,} rows: the server does not serve pages of the "
                "size asked (or rows were added during the fetch), so its page numbers cannot be trusted; refusing "
                "an extract with a gap. If the server caps the page size, lower page_size to that size"
            )

    # Requests --------------------------------------------------------------------------
    def page(self, offset: int, limit: int) -> pa.Table:
        """One page of rows as an Arrow table; progress is reported after it."""
        with self.lock:
            self.pages_requested += 1
            if self.pages_requested > MAX_PAGES:
                raise self.error(f"{self.source}: gave up after {MAX_PAGES} pages; the server keeps sending rows")
        table = self.request_table(lambda protocol: protocol.page(offset, limit), offset, limit)
        with self.lock:
            self.rows += table.num_rows
            if table.num_rows and self.progress is not None:
                total = None if self.total is None else max(self.total, self.rows)
                self.progress(self.rows, total)
        return table

    def request_rows(self, make: Callable[[SodaProtocol], Request]) -> list[dict[str, Any]]:
        """Send a query in the run's protocol and parse its JSON array of row objects (a count, a probe)."""
        request, reply = self._send(make)
        return self._row_objects(request, reply)

    def request_table(self, make: Callable[[SodaProtocol], Request], offset: int, limit: int) -> pa.Table:
        """Send a page query and parse its rows into an all-string table, refusing a page longer
        than asked or one identical to the page at another offset."""
        request, reply = self._send(make)
        table = string_rows_table(reply.body)  # the usual page; anything else takes the general path
        if table is None:
            table = rows_to_table(self._row_objects(request, reply))
        if table.num_rows > limit:
            raise self.error(
                f"{request.label} returned {table.num_rows:,} rows for a page of {limit:,}: the server is not paging as "
                "asked; refusing to duplicate rows"
            )
        if table.num_rows:
            self._check_not_repeated(reply.body, offset, request)
        return table

    def _send(self, make: Callable[[SodaProtocol], Request]) -> tuple[Request, Reply]:
        """The reply in the run's protocol: a domain without SODA3 is asked again in SODA2 (see `ProtocolChoice`)."""
        protocol = self.protocols.current
        request = make(protocol)
        try:
            reply = self.exchange.send(request)
        except SocrataError as exc:
            if self.protocols.fall_back(protocol, exc, request):
                return self._send(make)
            raise
        self.protocols.confirm(protocol)
        return request, reply

    def _row_objects(self, request: Request, reply: Reply) -> list[dict[str, Any]]:
        """The body as a JSON array of row objects; anything else is a SocrataError saying what it is."""
        data = decode_json(reply, request, self.exchange)
        problem = describe_not_rows(data)
        if problem:
            raise self.error(f"bad response from {request.label}: {problem}", url=request.url, status=reply.status)
        return data

    def _check_not_repeated(self, body: bytes | bytearray, offset: int, request: Request) -> None:
        """Identical pages at two offsets mean the server ignored the paging: rows would be duplicated."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        with self.lock:
            seen_at = self.page_digests.setdefault(digest, offset)
        if seen_at != offset:
            raise self.error(
                f"{request.label} returned exactly the same rows as the page at offset {seen_at}: "
                "the server is not paging consistently; refusing to duplicate rows"
            )
