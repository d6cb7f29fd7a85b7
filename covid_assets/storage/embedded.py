"""The zero-setup warehouse: a Postgres server started from the `pgserver` wheel.

When `COVID_DB_URL` is unset, every process of a run (and `dagster dev`) calls
`storage.warehouse.resolve_database_url()`; the first one starts the server, the others find it running in the
same data directory and reuse it. The server outlives the process so that the next run,
`dagster dev` and psql all see the same tables.

pgserver sets up trust authentication: whoever reaches the Unix socket is superuser. The socket
therefore stays in the data directory, which Postgres keeps private to the user the server runs
as (mode 0700; as root, pgserver runs it as its own user `pgserver`, and root still gets in).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from pathlib import Path

import psycopg
from psycopg import errors, sql

DATA_DIR_ENV = "COVID_PGDATA"
DEFAULT_DATA_DIR = Path.home() / ".covid_assets" / "pgdata"
WAREHOUSE_DATABASE = "covid"
# Longest data directory whose socket path (+ "/.s.PGSQL.5432"; pgserver keeps port 5432) Postgres
# accepts: sizeof(sun_path) - 1 bytes.
MAX_DATA_DIR_BYTES = (103 if sys.platform == "darwin" else 107) - len("/.s.PGSQL.5432")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server cannot be used safely with this data directory."""


def embedded_data_dir() -> Path:
    """Where the embedded server keeps its files (`COVID_PGDATA`, else ~/.covid_assets/pgdata)."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().resolve()


def start_embedded_postgres(data_dir: Path | None = None, database: str = WAREHOUSE_DATABASE) -> str:
    """Start (or reuse) the embedded server and return a libpq URL for `database`."""
    data_dir = (data_dir or embedded_data_dir()).expanduser().resolve()
    _refuse_a_shared_socket(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains when XDG_RUNTIME_DIR is unset; harmless
        import pgserver  # imported lazily: deployments with COVID_DB_URL never need it

        server = pgserver.get_server(data_dir, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir != data_dir:
        raise EmbeddedPostgresError(
            f"the embedded Postgres of {data_dir} listens in {socket_dir}, not in its private data directory; "
            "stop it (python -m covid_assets.storage.embedded stop)"
        )
    _create_database_if_missing(server.get_uri(), database)
    return server.get_uri(database)


def _refuse_a_shared_socket(data_dir: Path) -> None:
    """When the socket path would be too long, pgserver moves the socket to a shared runtime
    directory (world-writable when run as root), where any local OS user would log in as superuser."""
    length = len(os.fsencode(data_dir))
    if length > MAX_DATA_DIR_BYTES:
        raise EmbeddedPostgresError(
            f"{DATA_DIR_ENV} is too long for the embedded Postgres: {str(data_dir)[:300]!r} has {length} bytes; at most "
            f"{MAX_DATA_DIR_BYTES} keep its Unix socket in the data directory, out of other OS users' reach. Choose a shorter {DATA_DIR_ENV}"
        )




def _create_database_if_missing(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except errors.DuplicateDatabase:
            pass  # another process of the same run created it first


def stop_embedded_postgres(data_dir: Path | None = None, timeout_s: float = 30.0) -> bool:
    """Fast-shutdown the server of `data_dir`; False when none was running."""
    pid_file = (data_dir or embedded_data_dir()) / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGINT)  # SIGINT = Postgres "fast" shutdown
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def main(argv: list[str]) -> int:
    """`python -m covid_assets.storage.embedded [url|stop|dir]`: for psql and for tidying up."""
    command = argv[0] if argv else "url"
    if command == "url":
        from covid_assets.storage.warehouse import resolve_database_url  # that module imports this one

        print(resolve_database_url())
    elif command == "stop":
        print("stopped" if stop_embedded_postgres() else "not running")
    elif command == "dir":
        print(embedded_data_dir())
    else:
        print(f"unknown command {command!r}; use url, stop or dir", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
