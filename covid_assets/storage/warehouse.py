"""The warehouse connection of a run: one transaction for every read and write of the run.

Dagster builds resources once per run with the in-process executor, so this resource opens a
single ADBC connection the first time a step needs the warehouse, and every step of the run
(the IO manager's writes and reads, the guards, the checks) works inside that one transaction.
When the run ends it commits if no step failed and no blocking check failed, and rolls back
otherwise. So a run either replaces all the tables it wrote at once, or changes nothing, even
if it is killed (the server rolls back a transaction whose connection drops).
"""

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache

import adbc_driver_postgresql.dbapi as adbc
from dagster import ConfigurableResource, DagsterEventType, InitResourceContext
from psycopg import sql
from pydantic import Field, PrivateAttr

from covid_assets.storage.embedded import start_embedded_postgres

COMMIT_FAILED_TAG = "covid/commit_failed"


class RunAlreadyFailedError(RuntimeError):
    """A write was attempted after an earlier write of the same run failed (it will not be committed)."""


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+psycopg://`) as well as plain libpq ones."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def resolve_database_url(configured: str | None) -> str:
    """The configured warehouse URL, or the embedded server's when none is configured."""
    return libpq_url(configured) if configured else _embedded_url()


@lru_cache(maxsize=None)
def _embedded_url() -> str:
    return start_embedded_postgres()


@dataclass
class _RunTransaction:
    """One connection and transaction shared by every resource instance of one run."""

    url: str = field(repr=False)  # may hold a password
    users: int = 0
    connection: adbc.Connection | None = None
    failed: BaseException | None = None

    def open(self) -> adbc.Connection:
        if self.failed is not None:
            raise RunAlreadyFailedError(
                f"an earlier warehouse statement of this run failed ({self.failed}); "
                "nothing of this run will be committed"
            )
        if self.connection is None:
            self.connection = adbc.connect(self.url)
        return self.connection

    def abort(self, error: BaseException) -> None:
        self.failed = error
        with suppress(adbc.Error):  # a lost connection cannot roll back (the server already did)
            self.connection.rollback()

    def finish(self, commit: bool) -> None:
        if self.connection is None:
            return
        try:
            if commit and self.failed is None:
                self.connection.commit()
            else:
                with suppress(adbc.Error):
                    self.connection.rollback()
        finally:
            with suppress(adbc.Error):
                self.connection.close()
            self.connection = None


# Dagster may build the warehouse more than once per run (top level, and nested in the IO
# manager); keyed by run, they all share one transaction. Steps of a run share a process
# with the in-process executor; with a multiprocess executor each step commits its own.
_RUNS: dict[tuple[str, str], _RunTransaction] = {}
_RUNS_LOCK = threading.Lock()


class WarehouseResource(ConfigurableResource):
    """The run's warehouse transaction; `database_url` empty = the embedded Postgres."""

    database_url: str = Field(default="", description="libpq URL of the warehouse; empty = embedded Postgres.")
    _run_key: tuple[str, str] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        key = (context.run_id or "", resolve_database_url(self.database_url))
        with _RUNS_LOCK:
            _RUNS.setdefault(key, _RunTransaction(url=key[1])).users += 1
        self._run_key = key

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        with _RUNS_LOCK:
            run = _RUNS[self._run_key]
            run.users -= 1
            if run.users:
                return
            del _RUNS[self._run_key]
        if run.connection is None:
            return
        try:
            commit = run.failed is None and not run_has_failed(context)
        except Exception:
            run.finish(False)
            raise
        try:
            run.finish(commit)  # closes the connection whatever happens
        except Exception as error:
            if context.instance is not None and context.dagster_run is not None:
                context.instance.add_run_tags(context.dagster_run.run_id, {COMMIT_FAILED_TAG: "true"})
            raise RuntimeError(f"committing the run's warehouse transaction failed, nothing was written: {error}") from error
        if not commit and context.log is not None:
            context.log.error("The run failed: none of its warehouse writes were committed; every table is as it was.")

    @contextmanager
    def transaction(self) -> Iterator[adbc.Connection]:
        """The run's connection; an error inside aborts the whole run's transaction."""
        if self._run_key is None:  # used outside a run (scripts, tests): one short transaction
            with adbc.connect(resolve_database_url(self.database_url)) as connection:
                yield connection
                connection.commit()
            return
        run = _RUNS[self._run_key]
        connection = run.open()
        try:
            yield connection
        except BaseException as error:
            run.abort(error)
            raise

    def query(self, statement: sql.Composable | str, params: Sequence[object] = ()) -> list[tuple]:
        text = statement if isinstance(statement, str) else statement.as_string()
        with self.transaction() as connection, connection.cursor() as cursor:
            cursor.execute(text, params or None)
            return cursor.fetchall() if cursor.description else []

    def row_count(self, schema: str, table: str) -> int | None:
        """Rows in `schema.table`, or None when the table does not exist yet."""
        if not self.table_exists(schema, table):
            return None
        return self.query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))[0][0]

    def count_by(self, schema: str, table: str, columns: list[str]) -> dict[tuple, int] | None:
        """Rows per distinct combination of `columns` (one scan), or None when the table does not exist yet."""
        if not self.table_exists(schema, table):
            return None
        group = sql.SQL(", ").join(map(sql.Identifier, columns))
        statement = sql.SQL("SELECT {}, count(*) FROM {} GROUP BY {}").format(group, sql.Identifier(schema, table), group)
        return {tuple(key): count for *key, count in self.query(statement)}

    def table_exists(self, schema: str, table: str) -> bool:
        name = sql.Identifier(schema, table).as_string()
        return bool(self.query("SELECT to_regclass($1) IS NOT NULL", (name,))[0][0])


def run_has_failed(context: InitResourceContext) -> bool:
    """True when a step of this run failed or a blocking check did not pass."""
    if context.instance is None or context.dagster_run is None:
        return False
    records = context.instance.get_records_for_run(
        context.dagster_run.run_id,
        of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.ASSET_CHECK_EVALUATION},
        limit=10_000,
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event.event_type == DagsterEventType.STEP_FAILURE:
            return True
        evaluation = event.event_specific_data
        if not evaluation.passed and evaluation.blocking and evaluation.severity.value == "ERROR":
            return True
    return False
