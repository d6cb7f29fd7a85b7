"""Where the rows come from (`SocrataTarget`, from the environment) and how to fetch them
(`SocrataSource`, the Dagster resource whose config is the bounded tuning knobs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import dagster as dg
from pydantic import Field, PrivateAttr

from covid_assets.sources.socrata.client import SocrataClient, SourceSignature
from covid_assets.sources.socrata.errors import SocrataError, clip
from covid_assets.sources.socrata.export_files import read_export_file
from covid_assets.sources.socrata.http import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_DEADLINE_S, check_origin
from covid_assets.sources.socrata.metadata import ViewMetadata
from covid_assets.sources.socrata.paging import ProgressFn
from covid_assets.sources.socrata.rows import REQUIRED_COLUMNS, Extract
from covid_assets.sources.socrata.soda import ProtocolChoice

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_DATASET_ID", "SocrataSource", "SocrataTarget"]

DEFAULT_BASE_URL = "https://healthdata.gov"
DEFAULT_DATASET_ID = "j8mb-icvb"


@dataclass(frozen=True)
class SocrataTarget:
    """Where the rows come from and which secret goes with them, checked when built.

    Anyone who reaches the UI can launch runs with their own run config, so none of this is a
    config field: it is read from the deployment's environment when a run starts. The base URL
    must be http(s) with a host, and a token only goes over https (or to a loopback host).
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

    def __post_init__(self) -> None:
        check_origin(self.base_url, bool(self.app_token), f"base_url ({self.ENVIRONMENT['base_url']})")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        dataset_id = self.dataset_id
        if not dataset_id or any(ch in dataset_id for ch in "/?#") or not dataset_id.isprintable():
            raise SocrataError(
                f"dataset_id ({self.ENVIRONMENT['dataset_id']}) must be a Socrata four-by-four id like 'j8mb-icvb', "
                f"got {clip(dataset_id, 80)!r}"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, variables: Mapping[str, str | None] | None = None, **defaults: str
    ) -> SocrataTarget:
        """The target the environment names. `variables` renames fields' variables of `ENVIRONMENT`
        (None: the field is not read); `defaults` are the values of fields whose variable is unset."""
        environ = os.environ if environ is None else environ
        names = {**cls.ENVIRONMENT, **(variables or {})}
        return cls(**{**defaults, **{name: environ[variable] for name, variable in names.items() if variable and environ.get(variable)}})


class SocrataSource(dg.ConfigurableResource):
    """The source of the raw rows: the Socrata API, or a local export when `SOCRATA_SOURCE_FILE` is set.

    Its config holds only bounded tuning knobs, validated (by pydantic) when Dagster loads the
    config; where it connects and the app token come from the environment (`SocrataTarget`), so
    run config cannot send the token, or anything, elsewhere. The config object itself is what
    the client reads: no second class repeats these fields.
    """

    page_size: int = Field(
        default=10_000,
        ge=1,
        le=50_000,
        description=(
            "Rows per page request ($limit, or SODA3 pageSize). Small pages keep a run's memory flat (a page's body "
            "and decoding exist max_workers at a time); the loader joins them into larger COPYs."
        ),
    )
    max_workers: int = Field(default=4, ge=1, le=16, description="Concurrent page requests")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300, description="TCP connect timeout per attempt")
    read_timeout_s: float = Field(default=120.0, gt=0, le=600, description="Read timeout per attempt")
    max_retries: int = Field(default=6, ge=0, le=20, description="Retries per request for 202/429/5xx, resets and timeouts")
    backoff_factor: float = Field(default=0.5, ge=0, le=60, description="Exponential backoff base in seconds (with jitter)")
    backoff_max_s: float = Field(
        default=60.0, ge=0, le=600, description="Longest wait between retries; also caps a server's Retry-After"
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1 << 20, le=2 << 30, description="Largest response body, after decompression"
    )
    request_deadline_s: float = Field(
        default=DEFAULT_REQUEST_DEADLINE_S, gt=0, le=3600, description="Longest time one HTTP exchange may take, body included"
    )
    _protocols: ProtocolChoice | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._protocols = None  # each run decides SODA3 or SODA2 afresh

    @property
    def target(self) -> SocrataTarget:
        """The environment's target, read when asked (a declared dataset passes its own instead)."""
        return SocrataTarget.from_env()

    def protocol_choice(self, target: SocrataTarget) -> ProtocolChoice:
        """The protocol choice of the run (one per target outside a run): a fallback happens once."""
        if self._protocols is None or self._protocols.target != target:
            self._protocols = ProtocolChoice(target)
        return self._protocols

    def client(
        self, required_columns: Sequence[str] = REQUIRED_COLUMNS, target: SocrataTarget | None = None, **overrides: Any
    ) -> SocrataClient:
        """A client of `target` (default: the environment's); `overrides` (knob = value) are validated like the config itself."""
        settings = type(self).model_validate({**self.model_dump(), **overrides}) if overrides else self
        target = target or self.target
        return SocrataClient(target, settings, required_columns=required_columns, protocols=self.protocol_choice(target))

    def signature(
        self, deadline_s: float | None = None, target: SocrataTarget | None = None, required_columns: Sequence[str] = REQUIRED_COLUMNS
    ) -> SourceSignature | None:
        """What the API says about the data now (None for a local file: its content is the evidence).

        `deadline_s` bounds each attempt of the two requests (its connect, then its exchange): a
        sensor has to answer within a minute.
        """
        target = target or self.target
        if target.source_file:
            return None
        # Cheap evidence only: on trouble, fail fast and let the full fetch (with all its retries) decide.
        overrides: dict[str, Any] = {"max_retries": min(self.max_retries, 1)}
        if deadline_s is not None:
            overrides["request_deadline_s"] = min(self.request_deadline_s, deadline_s)
            overrides["connect_timeout_s"] = min(self.connect_timeout_s, deadline_s / 2)
        return self.client(required_columns, target, **overrides).signature()

    def metadata(self) -> ViewMetadata:
        """The dataset's view metadata from the API (its columns, their types and descriptions), also
        when the rows come from an export file: it describes the dataset, not the delivery."""
        return self.client().metadata()

    def extract(self, progress: ProgressFn | None = None, known_count: int | None = None) -> Extract:
        """The full raw table; progress is reported for API fetches only (see `fetch_all` for `known_count`)."""
        if source_file := self.target.source_file:
            return read_export_file(source_file)
        return self.client().fetch_all(progress, known_count)
