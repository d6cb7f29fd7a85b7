"""Helpers shared by the test modules (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from covid_assets.assets.tables import ALL_TABLES as TABLES
from covid_assets.assets.tables import BASE, COVID_SELECTION
from covid_assets.datasets.history import HistoryNames
from covid_assets.sources.socrata import SocrataSource, SocrataTarget
from covid_assets.storage.warehouse import DATABASE_PART_ENV

# The bundled real snapshot (provenance in covid_assets/data/README.md).
SNAPSHOT = Path(__file__).parents[1] / "covid_assets" / "data" / "hhs_pcr_testing_20210228.csv.gz"
SNAPSHOT_ROWS = 57_459

# The base table's revision history and its loads: a run that fails or dies leaves them as they were, too.
HISTORY_TABLES = [f"{schema}.{table}" for schema, table in HistoryNames.of(BASE).tables]

__all__ = ["COVID_SELECTION", "HISTORY_TABLES", "SNAPSHOT", "SNAPSHOT_ROWS", "TABLES"]

REPO = Path(__file__).parents[1]


def deployment_instance(dagster_yaml: Path = REPO / "dagster.yaml", storage: Path = REPO / "docker" / "dagster-storage.yaml") -> str:
    """dagster.yaml as the image installs it in DAGSTER_HOME: the instance policy with the deployment's
    Postgres storage appended (the Dockerfile's `cat ... >>`)."""
    return dagster_yaml.read_text() + storage.read_text()


# ------------------------------------------------------------------------------- Postgres
def query(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """The statement's rows ([] for a statement that returns none)."""
    with psycopg.connect(url) as conn:
        cursor = conn.execute(statement, params or None)  # no params: a literal % stays as it is
        return cursor.fetchall() if cursor.description else []


def with_database(url: str, database: str) -> str:
    """Swap the database name in a libpq URL (keeping ?host=... and other parameters)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


def create_database(admin_url: str, prefix: str, template: str | None = None) -> tuple[str, str]:
    """A new database (a copy of `template` when given): its name and URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(statement)
    return name, with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def fresh_database(admin_url: str, prefix: str = "test", template: str | None = None) -> Iterator[str]:
    """A new database for the block (a copy of `template` when given), dropped afterwards."""
    name, url = create_database(admin_url, prefix, template)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


@contextmanager
def reader_role(url: str) -> Iterator[str]:
    """A login-less role for the block (roles are cluster-wide: a unique name, dropped afterwards)."""
    role = f"reader_{uuid.uuid4().hex[:12]}"
    query(url, sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)).as_string())
    try:
        yield role
    finally:
        query(url, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)).as_string())  # its grants in this database
        query(url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string())


def as_role(url: str, role: str, statement: str) -> list[tuple]:
    """The statement's rows, run with the privileges of `role`."""
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        return conn.execute(statement).fetchall()


def table_fingerprints(url: str) -> dict[str, tuple]:
    """Row count and an order-independent checksum of every table, the history and the loads (fetched_at excluded)."""
    fingerprints = {}
    with psycopg.connect(url) as conn:
        for table in [*TABLES, *HISTORY_TABLES]:
            columns = [
                name
                for (name,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema || '.' || table_name = %s "
                    "AND column_name <> 'fetched_at' ORDER BY ordinal_position",
                    (table,),
                ).fetchall()
            ]
            row = ", ".join(f't."{c}"' for c in columns)
            fingerprints[table] = conn.execute(
                f"SELECT count(*), sum(hashtext(ROW({row})::text)::bigint) FROM {table} t"
            ).fetchone()
    return fingerprints


# ------------------------------------------------------------------------------- Dagster
# Every variable that says where a run connects: a test sets the ones it needs, the rest are unset.
TARGET_VARIABLES = ("COVID_DB_URL", *DATABASE_PART_ENV.values(), *SocrataTarget.ENVIRONMENT.values())


@contextmanager
def environment(**variables: str | None) -> Iterator[None]:
    """Set the variables for the block (None: unset), as a deployment's environment would."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        _set_environment(variables)
        yield
    finally:
        _set_environment(saved)


def _set_environment(variables: dict[str, str | None]) -> None:
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def deployment(url: str, **source: str) -> Iterator[None]:
    """The environment of a deployment whose warehouse is `url` and whose source is `source`."""
    with environment(**{**dict.fromkeys(TARGET_VARIABLES), "COVID_DB_URL": url, **source}):
        yield


def from_file(path: str | Path) -> dict[str, str]:
    """The source variables of a deployment that reads a local export."""
    return {"SOCRATA_SOURCE_FILE": str(path)}


def from_api(base_url: str, app_token: str | None = None) -> dict[str, str]:
    """The source variables of a deployment that reads the API at `base_url`."""
    return {"SOCRATA_BASE_URL": base_url, **({"SOCRATA_APP_TOKEN": app_token} if app_token else {})}


def materialize_all(
    url: str, source: dict[str, str], socrata=None, raise_on_error: bool = True, instance=None, run_config=None, warehouse=None,
    selection=None,
):
    """All eight tables and their checks (or `selection` of them), in process, on the warehouse at `url`,
    reading `source` (`from_file(...)` or `from_api(...)`); `socrata` and `warehouse` set the resources'
    tuning knobs."""
    from dagster import materialize

    from covid_assets.definitions import covid_definitions
    from covid_assets.storage.postgres_io import warehouse_resources

    defs = covid_definitions()
    with deployment(url, **source):
        return materialize(
            [*defs.assets, *defs.asset_checks],
            resources={**warehouse_resources(warehouse), "socrata": socrata or SocrataSource()},
            raise_on_error=raise_on_error,
            instance=instance,
            run_config=run_config,
            selection=selection,
        )


def materialize_on(url: str, assets: list, **kwargs):
    """`materialize(assets)` with the project's IO manager, on the warehouse at `url`."""
    from dagster import materialize

    from covid_assets.storage.postgres_io import warehouse_resources

    with deployment(url):
        return materialize(assets, resources=warehouse_resources(), **kwargs)


def failure_message(result) -> str:
    return "\n".join(str(event.event_specific_data.error) for event in result.all_events if event.event_type_value == "STEP_FAILURE")


def materialized(result) -> set[str]:
    """Tables the run wrote (not those it only confirmed as unchanged)."""
    return {
        event.asset_key.path[-1]
        for event in result.get_asset_materialization_events()
        if "source_unchanged" not in event.materialization.metadata
    }


def confirmed(result) -> set[str]:
    """Tables the run confirmed as matching an unchanged source, without writing them."""
    return {
        event.asset_key.path[-1]
        for event in result.get_asset_materialization_events()
        if "source_unchanged" in event.materialization.metadata
    }


# ------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
