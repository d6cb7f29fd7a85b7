"""Read-only questions to the warehouse that assets and checks ask before or after a write.

The IO manager owns writing; this resource answers "what is stored now?" with small SQL
queries, so guards and checks never have to load a whole table into memory.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource
from psycopg import sql
from pydantic import Field

from covid_assets.storage.postgres_io import resolve_database_url


class WarehouseResource(ConfigurableResource):
    """Connections to the warehouse; `database_url` empty = the embedded Postgres."""

    database_url: str = Field(default="", description="libpq URL of the warehouse; empty = embedded Postgres.")

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(resolve_database_url(self.database_url), autocommit=True) as connection:
            yield connection

    def row_count(self, schema: str, table: str) -> int | None:
        """Rows in `schema.table`, or None when the table does not exist yet."""
        with self.connect() as connection:
            if not table_exists(connection, schema, table):
                return None
            statement = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            return connection.execute(statement).fetchone()[0]

    def distinct_values(self, schema: str, table: str, columns: list[str]) -> set[tuple] | None:
        """The distinct combinations of `columns`, or None when the table does not exist yet."""
        with self.connect() as connection:
            if not table_exists(connection, schema, table):
                return None
            statement = sql.SQL("SELECT DISTINCT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema, table)
            )
            return set(connection.execute(statement).fetchall())


def table_exists(connection: psycopg.Connection, schema: str, table: str) -> bool:
    name = sql.Identifier(schema, table).as_string(connection)
    return connection.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
