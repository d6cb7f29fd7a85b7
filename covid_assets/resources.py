"""Resources configured from the environment (`.env.example` lists every variable).

Secrets go through `EnvVar`, so Dagster reads them at run time and never shows them in the UI.
"""

from __future__ import annotations

import os

from dagster import EnvVar

from covid_assets.sources.socrata import SocrataSource
from covid_assets.storage.postgres_io import warehouse_resources


def _secret(name: str) -> EnvVar | None:
    return EnvVar(name) if os.getenv(name) else None


def build_resources() -> dict[str, object]:
    socrata_settings = {
        field: convert(os.environ[variable])
        for field, (variable, convert) in {
            "base_url": ("SOCRATA_BASE_URL", str),
            "dataset_id": ("SOCRATA_DATASET_ID", str),
            "page_size": ("SOCRATA_PAGE_SIZE", int),
            "source_file": ("SOCRATA_SOURCE_FILE", str),
        }.items()
        if os.getenv(variable)
    }
    return {
        **warehouse_resources(_secret("COVID_DB_URL") or ""),
        "socrata": SocrataSource(app_token=_secret("SOCRATA_APP_TOKEN"), **socrata_settings),
    }
