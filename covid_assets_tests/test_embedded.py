"""The zero-setup default: an embedded Postgres that later calls and processes reuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from covid_assets.storage.embedded import WAREHOUSE_DATABASE, start_embedded_postgres, stop_embedded_postgres, warehouse_url


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
    assert warehouse_url() == "postgresql://analyst@db.example/warehouse"
    assert not (tmp_path / "never-created").exists()
