"""A real Postgres for every test of the data path: the embedded server, or `COVID_TEST_DB_URL`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from covid_assets.storage.warehouse import libpq_url
from covid_assets_tests.helpers import SNAPSHOT, create_database, drop_database, fresh_database, from_file, materialize_all


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
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def snapshot_load(postgres_server_url: str):
    """One materialization of all eight tables from the bundled snapshot, kept as a template
    database: (its name, the run's result). Tests get copies (`snapshot_warehouse`)."""
    name, url = create_database(postgres_server_url, "snapshot_template")
    result = materialize_all(url, from_file(SNAPSHOT))
    assert result.success
    yield name, result
    drop_database(postgres_server_url, name)


@pytest.fixture
def snapshot_warehouse(postgres_server_url: str, snapshot_load) -> Iterator[str]:
    """A fresh database holding the snapshot load (a copy of the template), dropped afterwards."""
    with fresh_database(postgres_server_url, "snapshot", template=snapshot_load[0]) as url:
        yield url


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
