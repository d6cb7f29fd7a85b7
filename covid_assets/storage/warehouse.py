"""The warehouse connection of a run: one transaction for every read and write of the run.

Dagster builds resources once per run with the in-process executor, so this resource opens a
single ADBC connection the first time a step needs the warehouse, and every step of the run
(the IO manager's writes and reads, the guards, the checks) works inside that one transaction.
When the run ends it commits if no step failed and no blocking check failed, and rolls back
otherwise. So a run either replaces all the tables it wrote at once, or changes nothing, even
if it is killed (the server rolls back a transaction whose connection drops).

Where the warehouse is, and its password, come from the deployment's environment only (read at
run start): anyone who reaches the UI can set run config, and must not choose where a run connects.
"""

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache

import adbc_driver_postgresql.dbapi as adbc
import psycopg
from dagster import ConfigurableResource, DagsterEventType, DagsterRunStatus, InitResourceContext
from psycopg import sql
from pydantic import Field, PrivateAttr

from covid_assets.storage.embedded import start_embedded_postgres

COMMIT_FAILED_TAG = "covid/commit_failed"
DATABASE_URL_ENV = "COVID_DB_URL"
# The warehouse by parts, for deployments that keep the password in its own variable (Compose):
# the connection string is built here, quoted, so "%", "@" or "/" in a password cannot break it.
DATABASE_PART_ENV = {
    "host": "COVID_DB_HOST",
    "port": "COVID_DB_PORT",
    "dbname": "COVID_DB_NAME",
    "user": "COVID_DB_USER",
    "password": "COVID_DB_PASSWORD",
}
EXAMPLE_PASSWORD = "change-me"  # .env.example's placeholder: refused, so nobody runs with it
# SQLSTATEs of the session timeouts: lock_not_available (lock_timeout), query_canceled (statement_timeout).
LOCK_TIMEOUT, STATEMENT_TIMEOUT = "55P03", "57014"


class RunAlreadyFailedError(RuntimeError):
    """A write was attempted after an earlier write of the same run failed (it will not be committed)."""


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+psycopg://`) as well as plain libpq ones."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def configured_database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """`COVID_DB_URL`, else a URL built from `COVID_DB_HOST` and its siblings, else None (embedded)."""
    environ = os.environ if environ is None else environ
    if url := environ.get(DATABASE_URL_ENV):
        return libpq_url(url)
    parts = {part: environ.get(variable, "") for part, variable in DATABASE_PART_ENV.items()}
    if not parts["host"]:
        return None
    if parts["password"] == EXAMPLE_PASSWORD:
        raise ValueError(f"{DATABASE_PART_ENV['password']} is still the example password {EXAMPLE_PASSWORD!r}: set a real one")
    # libpq's keyword/value form, quoted by psycopg: any character is safe in any part.
    return psycopg.conninfo.make_conninfo(**{part: value for part, value in parts.items() if value})


def resolve_database_url(environ: Mapping[str, str] | None = None) -> str:
    """The warehouse of this deployment: the configured one, or the embedded server's."""
    return configured_database_url(environ) or _embedded_url()


@lru_cache(maxsize=None)
def _embedded_url() -> str:
    return start_embedded_postgres()


@dataclass(frozen=True)
class SessionLimits:
    """How long one statement may wait for a lock, and run at all, before the run gives up."""

    lock_timeout_s: float
    statement_timeout_s: float

    def apply(self, connection: adbc.Connection) -> None:
        with connection.cursor() as cursor:
            for setting, seconds in (("lock_timeout", self.lock_timeout_s), ("statement_timeout", self.statement_timeout_s)):
                cursor.execute(f"SET {setting} = {int(seconds * 1000)}")  # milliseconds; numbers, not text
        connection.commit()


class WarehouseConnectError(RuntimeError):
    """The warehouse could not be reached; the message never carries the password or a piece of it."""


def _without_password(message: str, url: str) -> str:
    """libpq may quote a malformed URL's pieces back ("invalid percent-encoded token: ..."): drop any
    quoted piece of the password, and the password itself."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        match = re.match(r"^[\w+.-]+://[^:/@]*:(.*)@[^@]*$", url)
        password = match.group(1) if match else None
    if not password:
        return message
    for quoted in re.findall(r'"([^"]*)"', message):
        if quoted and quoted in password:
            message = message.replace(f'"{quoted}"', '"***"')
    return message.replace(password, "***")


class WarehouseTimeoutError(RuntimeError):
    """A statement waited on a lock, or ran, longer than the session allows; says which and on what."""


@dataclass
class _RunTransaction:
    """One connection and transaction shared by every resource instance of one run."""

    url: str = field(repr=False)  # may hold a password
    limits: SessionLimits
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
            self.connection = connect(self.url, self.limits)
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


def connect(url: str, limits: SessionLimits) -> adbc.Connection:
    try:
        connection = adbc.connect(url)
    except adbc.Error as error:
        raise WarehouseConnectError(f"cannot connect to the warehouse: {_without_password(str(error), url)}") from None
    try:
        limits.apply(connection)
    except BaseException:
        connection.close()
        raise
    return connection


# Dagster may build the warehouse more than once per run (top level, and nested in the IO
# manager); keyed by run, they all share one transaction. Steps of a run share a process
# with the in-process executor; with a multiprocess executor each step commits its own.
_RUNS: dict[tuple[str, str], _RunTransaction] = {}
_RUNS_LOCK = threading.Lock()


class WarehouseResource(ConfigurableResource):
    """The run's warehouse transaction.

    Where it connects is not config (see the module docstring): `COVID_DB_URL`, or `COVID_DB_HOST`
    and its siblings, else the embedded Postgres. The config holds the session's time limits only.
    """

    lock_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait for a lock (e.g. an analyst's open transaction) per statement."
    )
    statement_timeout_s: float = Field(default=1800.0, gt=0, le=86_400, description="Longest time one statement may run.")
    _run_key: tuple[str, str] | None = PrivateAttr(default=None)

    @property
    def limits(self) -> SessionLimits:
        return SessionLimits(self.lock_timeout_s, self.statement_timeout_s)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        key = (context.run_id or "", resolve_database_url())
        with _RUNS_LOCK:
            _RUNS.setdefault(key, _RunTransaction(url=key[1], limits=self.limits)).users += 1
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
            url = resolve_database_url()
            with connect(url, self.limits) as connection, explain_timeouts(url, self.limits):
                yield connection
                connection.commit()
            return
        run = _RUNS[self._run_key]
        connection = run.open()
        try:
            with explain_timeouts(run.url, self.limits):
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
        return self.count_rows(schema, table)

    def count_rows(self, schema: str, table: str) -> int:
        """Rows in `schema.table`, known to exist (the caller has asked the catalog)."""
        return self.query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))[0][0]

    def count_by(self, schema: str, table: str, columns: list[str]) -> dict[tuple, int] | None:
        """Rows per distinct combination of `columns` (one scan), or None when the table does not exist yet."""
        if not self.table_exists(schema, table):
            return None
        group = sql.SQL(", ").join(map(sql.Identifier, columns))
        statement = sql.SQL("SELECT {}, count(*) FROM {} GROUP BY {}").format(group, sql.Identifier(schema, table), group)
        return {tuple(key): count for *key, count in self.query(statement)}

    def table_exists(self, schema: str, table: str) -> bool:
        return not self.missing_tables([(schema, table)])

    def missing_tables(self, tables: Sequence[tuple[str, str]]) -> list[str]:
        """Which of the (schema, table) pairs do not exist, asked in one statement."""
        names = sql.SQL(", ").join(sql.SQL("({})").format(sql.Literal(sql.Identifier(*pair).as_string())) for pair in tables)
        statement = sql.SQL("SELECT name FROM (VALUES {}) AS t(name) WHERE to_regclass(name) IS NULL").format(names)
        return [name for (name,) in self.query(statement)]


@contextmanager
def explain_timeouts(url: str, limits: SessionLimits) -> Iterator[None]:
    """Turn a lock or statement timeout into an error that names the statement and what it waited on."""
    try:
        yield
    except adbc.Error as error:
        state = getattr(error, "sqlstate", None)
        if state not in (LOCK_TIMEOUT, STATEMENT_TIMEOUT):
            raise
        statement = _failed_statement(str(error))
        if state == LOCK_TIMEOUT:
            message = (
                f"the warehouse statement `{statement}` waited more than lock_timeout ({limits.lock_timeout_s:g} s) "
                f"for a lock; {_lock_holders(url)}. Nothing of this run was committed; end that session "
                "(or raise lock_timeout_s) and run again."
            )
        else:
            message = (
                f"the warehouse statement `{statement}` ran longer than statement_timeout "
                f"({limits.statement_timeout_s:g} s) and was cancelled (if it was waiting for a lock: "
                f"{_lock_holders(url)}). Nothing of this run was committed."
            )
        raise WarehouseTimeoutError(message) from error


def _failed_statement(error_text: str, limit: int = 200) -> str:
    """The statement ADBC quotes after "Query was:" (our own SQL, shortened)."""
    statement = error_text.rsplit("Query was: ", 1)[-1].rsplit(". SQLSTATE", 1)[0] if "Query was: " in error_text else "?"
    statement = " ".join(statement.split())
    return statement if len(statement) <= limit else statement[: limit - 1] + "…"


_LOCK_HOLDERS_QUERY = """
SELECT a.pid, a.usename, coalesce(nullif(a.application_name, ''), '?'), coalesce(a.state, '?'),
       string_agg(DISTINCT coalesce(l.relation::regclass::text, l.locktype) || ' (' || l.mode || ')', ', '),
       round(extract(epoch FROM now() - a.xact_start))
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid() AND a.datname = current_database()
  AND (l.locktype = 'advisory' OR l.relation IN (
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'))
GROUP BY 1, 2, 3, 4, 6 ORDER BY 6 DESC NULLS LAST LIMIT 5
"""


def _lock_holders(url: str) -> str:
    """Who holds locks in the warehouse now: the likely blockers, for the operator to end."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            rows = conn.execute(_LOCK_HOLDERS_QUERY).fetchall()
    except psycopg.Error as error:
        return f"could not list the sessions holding locks ({type(error).__name__})"
    if not rows:
        return "no other session holds a lock now"
    holders = "; ".join(
        f"pid {pid} (user {user}, application {app}, {state}, transaction open {age or 0:.0f} s) holds {locks}"
        for pid, user, app, state, locks, age in rows
    )
    return f"sessions holding locks: {holders}"


# A run in one of these was failed or cancelled from outside (run monitoring's maximum runtime, the
# UI): whatever it wrote must not be committed, even if its process goes on for a while.
STOPPED_FROM_OUTSIDE = frozenset({DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE})


def run_has_failed(context: InitResourceContext) -> bool:
    """True when a step of this run failed, a blocking check did not pass, or the run was stopped."""
    if context.instance is None or context.dagster_run is None:
        return False
    current = context.instance.get_run_by_id(context.dagster_run.run_id)
    if current is not None and current.status in STOPPED_FROM_OUTSIDE:
        return True
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
