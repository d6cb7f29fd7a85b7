"""The zero-setup default: an embedded Postgres that later calls and processes reuse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from covid_assets.storage.embedded import (
    MAX_DATA_DIR_BYTES,
    WAREHOUSE_DATABASE,
    EmbeddedPostgresError,
    start_embedded_postgres,
    stop_embedded_postgres,
)
from covid_assets.storage.warehouse import resolve_database_url


@pytest.fixture
def data_dir(tmp_path: Path):
    directory = tmp_path / "pgdata"
    yield directory
    assert stop_embedded_postgres(directory)
    assert not (directory / "postmaster.pid").exists()


def server_pid(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'").fetchone()[0]


def test_starts_once_and_is_reused_by_other_processes(data_dir: Path) -> None:
    url = start_embedded_postgres(data_dir)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == WAREHOUSE_DATABASE
    code = "import sys; from covid_assets.storage.embedded import start_embedded_postgres as s; from pathlib import Path; print(s(Path(sys.argv[1])))"
    other = subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, capture_output=True, text=True)
    assert other.stdout.strip() == url
    assert server_pid(other.stdout.strip()) == server_pid(url)


def test_covid_db_url_wins_over_the_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVID_DB_URL", "postgresql://analyst@db.example/warehouse")
    monkeypatch.setenv("COVID_PGDATA", str(tmp_path / "never-created"))
    assert resolve_database_url() == "postgresql://analyst@db.example/warehouse"
    assert not (tmp_path / "never-created").exists()


def psql_as_nobody(url: str) -> subprocess.CompletedProcess:
    """psql (pgserver's own, which pgserver makes readable for its server user) as OS user nobody."""
    import pgserver

    psql = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return subprocess.run(
        [str(psql), url, "-tAc", "SELECT current_user"], user="nobody", group="nogroup", extra_groups=[],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another OS user")
@pytest.mark.parametrize("extra_bytes", [0, 1], ids=["longest-allowed", "one-byte-longer"])
def test_another_os_user_never_reaches_the_server(tmp_path: Path, extra_bytes: int) -> None:
    """Trust authentication makes whoever reaches the socket superuser. pgserver moves the socket of
    a data directory too long for a Unix socket path into a shared runtime directory: such a
    directory is refused, and the longest one allowed keeps its socket private."""
    data_dir = tmp_path / "pgdata"
    data_dir = data_dir.with_name("pgdata" + "x" * (MAX_DATA_DIR_BYTES - len(str(data_dir)) + extra_bytes))
    try:
        url = start_embedded_postgres(data_dir)
    except EmbeddedPostgresError as error:
        assert extra_bytes and "COVID_PGDATA is too long" in str(error)
        assert not data_dir.exists()
        return
    try:
        with psycopg.connect(url) as conn:  # root still gets in (the server runs as user pgserver)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        other = psql_as_nobody(url)
        assert other.returncode != 0, f"OS user nobody logged in as {other.stdout.strip()!r}"
        assert "Permission denied" in other.stderr
    finally:
        assert stop_embedded_postgres(data_dir)
