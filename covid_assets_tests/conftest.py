"""A real Postgres for every test of the data path: the embedded server, or `COVID_TEST_DB_URL`."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from covid_assets.storage.warehouse import libpq_url

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL: the server named by COVID_TEST_DB_URL, or a throwaway embedded one."""
    if url := os.environ.get("COVID_TEST_DB_URL"):
        yield libpq_url(url)
        return
    import pgserver

    # Not under tmp_path_factory: a later pytest run as root resets /tmp/pytest-of-root to 0700,
    # locking out the unprivileged user pgserver runs the server as.
    server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="covid-test-pg-")), cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def warehouse_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database per test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_database(postgres_server_url, name)
    yield url
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _with_database(url: str, database: str) -> str:
    """Swap the database name in a libpq URL (keeping ?host=... and other parameters)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


def pytest_terminal_summary(terminalreporter) -> None:
    """Show what tests recorded with `record_property` (run ids, ticks, row counts) in the CI log."""
    recorded = [
        (report.nodeid, value)
        for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
        if report.when == "call"
        for _, value in report.user_properties
    ]
    if recorded:
        terminalreporter.section("recorded by tests")
        for nodeid, value in recorded:
            terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {value}")
