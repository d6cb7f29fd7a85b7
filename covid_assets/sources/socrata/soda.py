"""The two query protocols, as requests, and which one a run speaks.

* **SODA2** (``GET /resource/{id}.json``): a page is ``$order=:id&$limit=L&$offset=O``, the row
  count ``$select=count(*)``. Any offset can be asked for; a server may cap ``$limit`` (2.0
  endpoints at 50,000), and then a page is just shorter.
* **SODA3** (``POST /api/v3/views/{id}/query.json``, an app token required): the body is
  ``{"query": "SELECT * ORDER BY :id", "page": {"pageNumber": N, "pageSize": S},
  "includeSynthetic": false}``; the count is the query ``SELECT count(*)``. The answer is the
  same JSON array of row objects as SODA2 (the count: one row with one field). A page is a
  number and a size, so it starts at a multiple of its size: the paging plan only asks for such
  pages, and a page shorter than its size must be the last one (see `paging`).
  Sources: https://dev.socrata.com/docs/queries and https://dev.socrata.com/docs/queries/page.

:class:`ProtocolChoice` picks SODA3 when a token is configured, and falls back to SODA2 for the
rest of the run (logged once) when the domain answers a SODA3 query with 404 or 405 before it
ever answered one with 200: that domain has no SODA3.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlencode

from covid_assets.sources.socrata.errors import SocrataError, clip
from covid_assets.sources.socrata.http import Request

if TYPE_CHECKING:
    from covid_assets.sources.socrata.resource import SocrataTarget

__all__ = ["ProtocolChoice", "Soda2", "Soda3", "SodaProtocol"]

log = logging.getLogger(__name__)


class SodaProtocol:
    """How to ask one dataset for its row count and for a page of rows in `:id` order."""

    name: ClassVar[str]
    # True when a page is (number, size): it must start at a multiple of its size, and a page
    # shorter than its size must be the last one (the page numbers mean nothing otherwise).
    fixed_pages: ClassVar[bool]
    resource_url: str  # the endpoint, safe to log (the token only travels in a header)

    def count(self) -> Request:
        raise NotImplementedError

    def page(self, offset: int, limit: int) -> Request:
        raise NotImplementedError


class Soda2(SodaProtocol):
    name = "SODA2"
    fixed_pages = False

    def __init__(self, base_url: str, dataset_id: str) -> None:
        self.resource_url = f"{base_url}/resource/{dataset_id}.json"

    def _get(self, params: dict[str, str]) -> Request:
        # `$`, `:`, `(`, `)` and `*` stay readable; they are legal in a query string.
        return Request("GET", f"{self.resource_url}?{urlencode(params, safe='$:()*')}")

    def count(self) -> Request:
        return self._get({"$select": "count(*)"})

    def page(self, offset: int, limit: int) -> Request:
        return self._get({"$order": ":id", "$limit": str(limit), "$offset": str(offset)})


class Soda3(SodaProtocol):
    name = "SODA3"
    fixed_pages = True
    ROWS_QUERY = "SELECT * ORDER BY :id"  # pages are only stable in an order; :id is unique
    COUNT_QUERY = "SELECT count(*)"

    def __init__(self, base_url: str, dataset_id: str) -> None:
        self.resource_url = f"{base_url}/api/v3/views/{dataset_id}/query.json"

    def _post(self, body: dict[str, object], detail: str) -> Request:
        # includeSynthetic false: no system fields (:id, :created_at, ...), like SODA2's default.
        payload = json.dumps({**body, "includeSynthetic": False}, separators=(",", ":")).encode()
        return Request("POST", self.resource_url, payload, detail)

    def count(self) -> Request:
        return self._post({"query": self.COUNT_QUERY}, f"[{self.COUNT_QUERY}]")

    def page(self, offset: int, limit: int) -> Request:
        if limit < 1 or offset % limit:
            raise ValueError(f"a SODA3 page starts at a multiple of its size, not at {offset} with size {limit}")
        number = offset // limit + 1
        body = {"query": self.ROWS_QUERY, "page": {"pageNumber": number, "pageSize": limit}}
        return self._post(body, f"[pageNumber={number}, pageSize={limit}]")


# Answers of a domain without SODA3 to its query endpoint.
SODA3_UNSUPPORTED: frozenset[int] = frozenset({404, 405})


class ProtocolChoice:
    """Which protocol a run speaks: SODA3 when the target has a token, until the domain shows it has none.

    Shared by every request of a run (and its worker threads), so the fallback happens, and is
    logged, once. A 404/405 after SODA3 has answered a query is an ordinary error.
    """

    def __init__(self, target: SocrataTarget) -> None:
        base_url = target.base_url.rstrip("/")
        self.target = target
        self.soda2 = Soda2(base_url, target.dataset_id)
        self.soda3 = Soda3(base_url, target.dataset_id) if target.app_token else None
        self.current: SodaProtocol = self.soda3 or self.soda2
        self._confirmed = False
        self._lock = threading.Lock()

    def confirm(self, protocol: SodaProtocol) -> None:
        """`protocol` answered a query with 200: it is there."""
        if protocol is self.soda3 and not self._confirmed:
            self._confirmed = True

    def fall_back(self, protocol: SodaProtocol, error: SocrataError, request: Request) -> bool:
        """After `error` from `protocol`: True when the request is to be asked again in SODA2.

        `error` is the exchange's (its message is already free of the token).
        """
        if protocol is not self.soda3 or error.status not in SODA3_UNSUPPORTED:
            return False
        with self._lock:
            if self._confirmed:
                return False
            if self.current is self.soda3:
                self.current = self.soda2
                log.warning(
                    "%s answered HTTP %d: this domain has no SODA3 query endpoint; using SODA2 (%s) for the rest "
                    "of the run (%s)",
                    request.label, error.status, self.soda2.resource_url, clip(error, 200),
                )
        return True
