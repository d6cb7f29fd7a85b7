"""Extract a Socrata dataset (by default healthdata.gov ``j8mb-icvb``), whole, with bounded time and memory.

Two ways in, one shape out: the SODA API (:class:`SocrataClient`) or a downloaded export
(:func:`read_export_file`), both as an :class:`Extract` whose frame holds every source column as
pandas ``"string"`` exactly as delivered; typing happens downstream. Anything that goes wrong is
a :class:`SocrataError` whose message names the URL or file and never the app token; text the
source supplied is quoted only clipped (about 300 characters, one line).

Modules, by concern:

``resource``
    :class:`SocrataTarget` (base URL, dataset id, app token, export file: read from the
    environment, ``SOCRATA_*``, never from config, and checked when built) and
    :class:`SocrataSource`, the Dagster resource: its config is the bounded knobs (page size,
    workers, timeouts, retries, body cap, deadline), validated by pydantic when Dagster loads it,
    and it is itself the settings object the client reads. ``extract()``, ``signature()``,
    ``metadata()``, ``client()``.
``client``
    :class:`SocrataClient` (target + settings + the run's protocol): ``fetch_all()`` (one
    frame), ``plan()`` (a :class:`PagePlan` to stream Arrow pages in order: ``with client.plan()
    as plan: for table in plan.pages(): ...``), ``signature()`` (:class:`SourceSignature`:
    ``rowsUpdatedAt`` and ``count(*)``, the change-detection evidence), ``metadata()``.
``soda``
    The two protocols as requests: SODA2 ``GET /resource/{id}.json?$order=:id&$limit&$offset`` and
    SODA3 ``POST /api/v3/views/{id}/query.json`` with ``{"query": "SELECT * ORDER BY :id",
    "page": {"pageNumber", "pageSize"}, "includeSynthetic": false}``; :class:`ProtocolChoice`
    speaks SODA3 when a token is configured and falls back to SODA2 (once per run, logged) when
    the domain answers 404/405 there.
``paging``
    The plan: count once, a bounded window of concurrent chunks, open-ended paging when the
    count is unusable, growth followed and shrinkage refused, repeated pages and oversized counts
    refused (:data:`MAX_PAGES`).
``http``
    One exchange with the origin: urllib3 ``Retry`` (GET and the SODA3 POST) plus ``tenacity`` for
    bodies that break off, a deadline per exchange, a body cap that holds after decompression,
    redirects only within the origin, the token only to it.
``metadata``
    ``/api/views/{id}.json`` as :class:`ViewMetadata` (bounded: hostile names and counts are
    refused or clipped) and the warehouse type of each column (:func:`column_types`:
    ``dataTypeName`` -> TEXT, NUMERIC, DATE, TIMESTAMP, BOOLEAN, JSONB, ..., with overrides).
``export_files``
    :func:`read_export_file`: a regular ``*.json``/``*.csv`` (``.gz``) file only; errors never
    quote its contents.
``rows``
    Rows -> all-string Arrow tables and frames, :data:`REQUIRED_COLUMNS` (the COVID dataset's;
    every reader takes its own ``required`` columns), :class:`Extract`, :class:`FetchStats`.
``errors``
    :class:`SocrataError` and :func:`clip`.
"""

from covid_assets.sources.socrata.client import SocrataClient, SourceSignature
from covid_assets.sources.socrata.errors import SocrataError
from covid_assets.sources.socrata.export_files import read_export_file
from covid_assets.sources.socrata.http import MAX_REDIRECTS
from covid_assets.sources.socrata.metadata import ColumnType, column_types, parse_view, warehouse_type
from covid_assets.sources.socrata.resource import SocrataSource, SocrataTarget
from covid_assets.sources.socrata.rows import REQUIRED_COLUMNS, Extract, FetchStats

__all__ = [
    "MAX_REDIRECTS",
    "REQUIRED_COLUMNS",
    "ColumnType",
    "Extract",
    "FetchStats",
    "SocrataClient",
    "SocrataError",
    "SocrataSource",
    "SocrataTarget",
    "SourceSignature",
    "column_types",
    "parse_view",
    "read_export_file",
    "warehouse_type",
]
