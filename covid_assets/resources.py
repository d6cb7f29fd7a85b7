"""Resources configured from the environment (`.env.example` lists every variable).

Where the platform connects and the secrets it sends are not resource config at all: the
resources read them from the environment when a run starts (`SocrataTarget`,
`configured_database_url`), so run config, which anyone who reaches the UI can set, cannot change
them. What is config here are bounded tuning knobs, with defaults a deployment can set below.
"""

from __future__ import annotations

from collections.abc import Callable

from covid_assets.settings import env_knobs
from covid_assets.sources.socrata import SocrataSource
from covid_assets.storage.postgres_io import warehouse_resources
from covid_assets.storage.warehouse import WarehouseResource

# Tuning knob -> (environment variable, conversion); unset variables keep the resource's default.
SOCRATA_KNOBS: dict[str, tuple[str, Callable[[str], object]]] = {
    "page_size": ("SOCRATA_PAGE_SIZE", int),
    "max_body_bytes": ("SOCRATA_MAX_BODY_BYTES", int),
    "request_deadline_s": ("SOCRATA_REQUEST_DEADLINE_S", float),
    "max_retries": ("SOCRATA_MAX_RETRIES", int),
    "backoff_factor": ("SOCRATA_BACKOFF_S", float),
}
WAREHOUSE_KNOBS: dict[str, tuple[str, Callable[[str], object]]] = {
    "lock_timeout_s": ("COVID_DB_LOCK_TIMEOUT_S", float),
    "statement_timeout_s": ("COVID_DB_STATEMENT_TIMEOUT_S", float),
}


def build_resources() -> dict[str, object]:
    return {
        **warehouse_resources(WarehouseResource(**env_knobs(WAREHOUSE_KNOBS))),
        "socrata": SocrataSource(**env_knobs(SOCRATA_KNOBS)),
    }
