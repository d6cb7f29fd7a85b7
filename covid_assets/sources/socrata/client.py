"""The client of one dataset: a target (where, with which token), the knobs, and the protocol of the run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from covid_assets.sources.socrata.errors import SocrataError
from covid_assets.sources.socrata.http import Exchange, HttpSettings, Request, decode_json
from covid_assets.sources.socrata.metadata import MAX_METADATA_BYTES, ViewMetadata, parse_view, rows_updated_at
from covid_assets.sources.socrata.paging import PagePlan, ProgressFn
from covid_assets.sources.socrata.rows import REQUIRED_COLUMNS, Extract, frame_from_tables
from covid_assets.sources.socrata.soda import ProtocolChoice

if TYPE_CHECKING:
    from covid_assets.sources.socrata.resource import SocrataTarget

__all__ = ["SocrataClient", "SourceSignature"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSignature:
    """Cheap evidence of what the source holds now: if both match the last load, nothing changed."""

    rows_updated_at: int | None
    row_count: int | None


class SocrataClient:
    """Full-table reader for one Socrata dataset over SODA3 (with a token, where the domain has it) or SODA2.

    `settings` is the validated configuration (a `SocrataSource`); `protocols` is shared by the
    clients of one run so a fallback to SODA2 happens once; `required_columns` are the columns
    `fetch_all` insists on (the COVID dataset's by default).
    """

    def __init__(
        self,
        target: SocrataTarget,
        settings: HttpSettings,
        *,
        required_columns: Sequence[str] = REQUIRED_COLUMNS,
        protocols: ProtocolChoice | None = None,
    ) -> None:
        self.target = target
        self.settings = settings
        self.required_columns = tuple(required_columns)
        self.protocols = protocols or ProtocolChoice(target)

    def __repr__(self) -> str:  # the token is not shown (SocrataTarget hides it)
        return f"SocrataClient({self.target!r}, protocol={self.protocols.current.name})"

    @property
    def resource_url(self) -> str:
        """The endpoint of the protocol spoken now; safe to log (the token only travels in a header)."""
        return self.protocols.current.resource_url

    @property
    def views_url(self) -> str:
        return f"{self.target.base_url}/api/views/{self.target.dataset_id}.json"

    def plan(self, progress: ProgressFn | None = None) -> PagePlan:
        """A fetch to run page by page (for a consumer that streams them): ``with client.plan() as plan:
        for table in plan.pages(known_count): ...``; `plan.stats()` and `plan.source` afterwards."""
        return PagePlan(Exchange(self.target, self.settings), self.protocols, self.settings, progress)

    def fetch_all(self, progress: ProgressFn | None = None, known_count: int | None = None) -> Extract:
        """Every row of the dataset, each exactly once, in ``:id`` order, as one all-string frame.

        `progress(rows_so_far, total_or_None)` is called after each page (from
        worker threads, serialised by a lock). `known_count` is a `count(*)` just taken
        (by `signature()`), so it is not asked again; growth since is followed and a
        shortfall is an error, as for a count taken here.
        """
        started = time.monotonic()
        settings = self.settings
        log.info(
            "Fetching %s (%s, page size %d, %d workers)",
            self.resource_url, self.protocols.current.name, settings.page_size, settings.max_workers,
        )
        with self.plan(progress) as plan:
            tables = list(plan.pages(known_count))
            frame = frame_from_tables(tables, plan.source, self.required_columns)
            del tables
            stats = plan.stats(rows=len(frame), elapsed_s=time.monotonic() - started)
        log.info(
            "Fetched %d rows from %s in %.1fs (%d pages, %d requests, %d retries, %d bytes)",
            stats.rows, plan.source, stats.elapsed_s, stats.pages, stats.requests, stats.retries, stats.bytes,
        )
        return Extract(frame=frame, stats=stats, source=plan.source)

    def signature(self) -> SourceSignature:
        """Two small requests: the dataset's `rowsUpdatedAt` (/api/views) and `count(*)`."""
        request = self._views_request()
        with self.plan() as plan:
            reply = plan.exchange.send(request)
            try:
                document = decode_json(reply, request, plan.exchange)
            except SocrataError:  # evidence only: an unreadable document is no evidence, not an error
                document = None
            return SourceSignature(rows_updated_at=rows_updated_at(document), row_count=plan.count())

    def metadata(self) -> ViewMetadata:
        """The view metadata (columns with their types and descriptions), bounded; see `metadata`."""
        request = self._views_request()
        with Exchange(self.target, self.settings) as exchange:
            reply = exchange.send(request)
            return parse_view(decode_json(reply, request, exchange), self.views_url)

    def _views_request(self) -> Request:
        return Request("GET", self.views_url, max_bytes=MAX_METADATA_BYTES)
