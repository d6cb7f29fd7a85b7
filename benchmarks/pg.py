"""The benchmark's Postgres: a throwaway embedded server, or the one named by `COVID_BENCH_DB_URL`.

Each measurement that writes gets its own fresh database (`fresh()`), dropped afterwards,
so no run inherits another's dead tuples or table definitions.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from collections.abc import Iterator

import psycopg
from psycopg import sql

from covid_assets.storage.warehouse import libpq_url

BENCH_DB_URL_ENV = "COVID_BENCH_DB_URL"


class Postgres:
    """An admin connection URL and fresh databases on it."""

    def __init__(self) -> None:
        self._server = None
        self._data_dir: tempfile.TemporaryDirectory[str] | None = None
        if url := os.environ.get(BENCH_DB_URL_ENV):
            self.admin_url = libpq_url(url)
            self.embedded = False
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
                import pgserver

                self._data_dir = tempfile.TemporaryDirectory(prefix="covid-bench-pg-")
                self._server = pgserver.get_server(self._data_dir.name, cleanup_mode="delete")
            self.admin_url = self._server.get_uri()
            self.embedded = True
        with psycopg.connect(self.admin_url) as conn:
            self.version = conn.execute("SHOW server_version").fetchone()[0]

    def url(self, database: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.admin_url)
        info["dbname"] = database
        return psycopg.conninfo.make_conninfo(**info)

    def create(self, prefix: str = "bench") -> tuple[str, str]:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name, self.url(name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextmanager
    def fresh(self, prefix: str = "bench") -> Iterator[str]:
        """A new empty database for the block; its URL."""
        name, url = self.create(prefix)
        try:
            yield url
        finally:
            self.drop(name)

    def describe(self) -> str:
        where = "embedded pgserver, temporary data directory" if self.embedded else f"${BENCH_DB_URL_ENV}"
        return f"PostgreSQL {self.version} ({where})"

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._data_dir is not None:
            self._data_dir.cleanup()
            self._data_dir = None
