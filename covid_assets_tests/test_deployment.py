"""The deployment, proven with the real processes: no Docker, but everything else as Compose runs it.

A Postgres on TCP (the deployment's storage takes host/port/user/password, so a Unix socket will
not do), the instance the image installs (the committed dagster.yaml with docker/dagster-storage.yaml
appended, its DAGSTER_PG_* pointing at a fresh database),
the committed workspace.yaml with the code server's host and port swapped for a free local port, and
the three commands of docker-compose.yml (`dagster code-server start`, `dagster-webserver`,
`dagster-daemon run`) with the environment Compose gives each of them. Then:

(a) a materialization of all eight tables is launched through the webserver's GraphQL API, queued,
    started by the daemon on the code server, and succeeds;
(b) the run, its events and the eight tables are in Postgres;
(c) the daemon evaluates `daily_refresh` (cron `* * * * *` here, so it ticks at the next minute),
    records the tick, and the run it requested succeeds too.

The run id, the tick and the row counts are printed (pytest -s), written to
`<tmp>/deployment-summary.txt` and attached as junit properties. Process logs are printed when
anything fails; every process group is stopped at the end, whatever happened.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import requests
import yaml
from psycopg import sql

from covid_assets.assets.tables import SOURCE_ASSET_KEY, TABLE_ASSET_KEYS
from covid_assets.storage.warehouse import libpq_url
from covid_assets_tests.helpers import SNAPSHOT, deployment_instance, free_port, query
from covid_assets_tests.services import (
    ASSET_GRAPH_QUERY,
    LAUNCH_MUTATION,
    LOCATION,
    SCHEDULE_QUERY,
    TERMINAL,
    Processes,
    Webserver,
    loaded_repository,
    run_record,
    wait_for,
)

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent  # dagster, dagster-webserver, dagster-daemon of this environment
JOB = "refresh_warehouse"
SCHEDULE = "daily_refresh"
EXPECTED_ROWS = {
    "covid_19_raw.raw_covid_test_results": 57_459,
    "covid_19.covid_test_results": 57_459,
    "covid_19.outcome_results": 3,
    "covid_19.state_results": 56,
    "covid_19.smoothed_results": 364,
    "covid_19.total_results": 56,
    "covid_19.recent_positivity_results": 10,
    "covid_19.revisions": 56,  # the first load: every jurisdiction's rows added
}
PORT_IN_USE = re.compile(r"address already in use|failed to bind|errno 98", re.IGNORECASE)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


# --------------------------------------------------------------------------- a Postgres on TCP


@dataclass(frozen=True)
class TcpPostgres:
    host: str
    port: int
    user: str
    password: str
    admin_db: str

    def url(self, database: str) -> str:
        userinfo = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{database}"


class LocalTcpPostgres:
    """PostgreSQL from the pgserver wheel, listening on 127.0.0.1 with password (SCRAM) authentication.

    The session's embedded server listens on a Unix socket only, which dagster.yaml's
    hostname/port fields cannot express; this one is what a Compose or RDS Postgres looks like.
    """

    def __init__(self) -> None:
        import pgserver

        self.bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
        self.root = Path(tempfile.mkdtemp(prefix="covid-deploy-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.user = "dagster"
        self.password = secrets.token_hex(12)
        self.run_as: str | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # postgres refuses to run as root
            self._prepare_for_system_user("pgserver")

    def _prepare_for_system_user(self, user: str) -> None:
        import pwd

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(user)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(self.bin)
        ensure_folder_permissions(self.bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", readable)
        entry = pwd.getpwnam(user)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.run_as = user

    def _run(self, *args: str) -> None:
        completed = subprocess.run(
            [str(self.bin / args[0]), *args[1:]], user=self.run_as, capture_output=True, text=True, timeout=120
        )
        if completed.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}\n{log}")

    def start(self) -> TcpPostgres:
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self.run_as:
            shutil.chown(password_file, self.run_as)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}", "--auth-local=trust",
            "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        for attempt in range(3):
            port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root} -c fsync=off -c max_connections=200"
            try:
                self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log), "-o", options, "start")
                return TcpPostgres("127.0.0.1", port, self.user, self.password, "postgres")
            except RuntimeError:
                if attempt == 2 or not PORT_IN_USE.search(self.log.read_text()):
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError as error:
                print(f"stopping the test Postgres: {error}")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def tcp_postgres() -> Iterator[TcpPostgres]:
    """COVID_TEST_DB_URL when it names a TCP server, else a throwaway one from the pgserver wheel."""
    if url := os.environ.get("COVID_TEST_DB_URL"):
        info = psycopg.conninfo.conninfo_to_dict(libpq_url(url))
        host = str(info.get("host") or "")
        if host and not host.startswith("/") and "," not in host:
            yield TcpPostgres(
                host=host,
                port=int(info.get("port") or 5432),
                user=str(info.get("user") or os.environ.get("PGUSER") or "postgres"),
                password=str(info.get("password") or os.environ.get("PGPASSWORD") or ""),
                admin_db=str(info.get("dbname") or "postgres"),
            )
            return
    server = LocalTcpPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


# --------------------------------------------------------------------------- docker-compose.yml


def compose_service(name: str) -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"][name]


def with_options(argv: list[str], **options: str) -> list[str]:
    """A Compose command with some option values swapped (e.g. `-p 4000` -> `-p <free port>`)."""
    argv = list(argv)
    for flag, value in options.items():
        flag = "-" + flag
        assert flag in argv, f"{argv} has no {flag} option"
        argv[argv.index(flag) + 1] = value
    return [str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0], *argv[1:]]


# --------------------------------------------------------------------------- Postgres checks


def failure_details(dagster_url: str, run_id: str) -> str:
    rows = query(
        dagster_url,
        "SELECT dagster_event_type, left(event, 3000) FROM event_logs WHERE run_id = %s "
        "AND dagster_event_type IN ('STEP_FAILURE', 'PIPELINE_FAILURE', 'ENGINE_EVENT') ORDER BY id",
        (run_id,),
    )
    return "\n".join(f"{kind}: {event}" for kind, event in rows)


def table_counts(warehouse_url: str) -> dict[str, int]:
    return {table: query(warehouse_url, f"SELECT count(*) FROM {table}")[0][0] for table in EXPECTED_ROWS}


# --------------------------------------------------------------------------- the test


@dataclass
class Summary:
    path: Path
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        print(f"[deployment] {line}", flush=True)
        self.path.write_text("\n".join(self.lines) + "\n")

    def __str__(self) -> str:
        return "\n".join(self.lines)


def test_real_processes_materialize_and_schedule(tcp_postgres: TcpPostgres, tmp_path: Path, record_property) -> None:
    started_at = time.monotonic()
    summary = Summary(tmp_path / "deployment-summary.txt")
    suffix = uuid.uuid4().hex[:10]
    dagster_db, warehouse_db = f"dagster_{suffix}", f"warehouse_{suffix}"
    admin_url = tcp_postgres.url(tcp_postgres.admin_db)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for database in (dagster_db, warehouse_db):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    dagster_url, warehouse_url = tcp_postgres.url(dagster_db), tcp_postgres.url(warehouse_db)

    # DAGSTER_HOME as in the image: dagster.yaml with the deployment's storage, and workspace.yaml beside it.
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(deployment_instance())
    (tmp_path / "logs").mkdir()
    processes = Processes(tmp_path / "logs")

    # The environment Compose gives the services (docker-compose.yml), with this test's values.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "COVID_", "SOCRATA_"))}
    # The image has the package installed; here it may only be importable from the checkout.
    inherited["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    storage_env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": tcp_postgres.host,
        "DAGSTER_PG_PORT": str(tcp_postgres.port),
        "DAGSTER_PG_USER": tcp_postgres.user,
        "DAGSTER_PG_PASSWORD": tcp_postgres.password,
        "DAGSTER_PG_DB": dagster_db,
    }
    code_env = {
        **storage_env,
        # The warehouse by parts, as Compose passes it (the code builds the URL).
        "COVID_DB_HOST": tcp_postgres.host,
        "COVID_DB_PORT": str(tcp_postgres.port),
        "COVID_DB_NAME": warehouse_db,
        "COVID_DB_USER": tcp_postgres.user,
        "COVID_DB_PASSWORD": tcp_postgres.password,
        "SOCRATA_SOURCE_FILE": str(SNAPSHOT),  # the bundled snapshot: never the internet
        "COVID_SCHEDULE_CRON": "* * * * *",  # ticks at the next minute instead of 06:00
        "COVID_SCHEDULE_TIMEZONE": "UTC",
        "COVID_SCHEDULE_ENABLED": "true",
        "COVID_PGDATA": str(tmp_path / "unused-embedded-pgdata"),
        # Only the schedule starts runs here; test_operations.py proves the sensor, alerts, freshness.
        "COVID_SOURCE_SENSOR_ENABLED": "false",
    }
    for service, env in (("code-server", code_env), ("webserver", storage_env), ("daemon", storage_env)):
        compose_names = set(compose_service(service)["environment"])
        # Left unset on purpose: SOCRATA_SOURCE_FILE replaces the API and its knobs here, no alert channel
        # is configured, and the operational knobs keep their defaults.
        unset = {name for name in compose_names if name.startswith(("SOCRATA_", "ALERT_", "COVID_SOURCE_", "COVID_FRESHNESS_"))}
        unset |= {"COVID_MAX_RUNTIME_S", "COVID_RETRY_DELAY_S", "COVID_ALERT_POLL_S", "DAGSTER_UI_URL"}
        assert compose_names <= set(env) | unset, (
            f"docker-compose.yml gives {service} {sorted(compose_names - set(env) - unset)}, which this test does not set"
        )

    def alive(*names: str) -> Callable[[], None]:
        def check() -> None:
            for name, process, log in processes.started:
                if name in names and process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode}; see {log}")

        return check

    try:
        # Code server, as `code-server` runs it (same command, a free port on loopback).
        for attempt in range(3):
            code_port = free_port()
            code_server = processes.start(
                "code-server",
                with_options(compose_service("code-server")["command"], h="127.0.0.1", p=str(code_port)),
                {**inherited, **code_env},
                home,
            )
            health = with_options(compose_service("code-server")["healthcheck"]["test"][1:], p=str(code_port))

            def healthy() -> bool:
                if code_server.poll() is not None:
                    return True  # exited: stop waiting, decide below
                return subprocess.run(health + ["-h", "127.0.0.1"], env={**inherited, **storage_env}, capture_output=True, timeout=60).returncode == 0

            wait_for("the code server's health check", healthy, timeout_s=180, interval_s=1)
            if code_server.poll() is None:
                break
            if attempt == 2 or not PORT_IN_USE.search(processes.log_of(code_server)):
                raise AssertionError(f"the code server exited with {code_server.returncode}")
        summary.add(f"code server healthy on 127.0.0.1:{code_port} after {time.monotonic() - started_at:.0f} s")

        # The committed workspace.yaml, pointed at that port.
        workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
        (grpc,) = [entry["grpc_server"] for entry in workspace["load_from"]]
        assert grpc["location_name"] == LOCATION
        grpc.update(host="127.0.0.1", port=code_port)
        (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))

        # Webserver and daemon, as Compose starts them once the code server is healthy.
        for attempt in range(3):
            web_port = free_port()
            webserver = processes.start(
                "webserver",
                with_options(compose_service("webserver")["command"], h="127.0.0.1", p=str(web_port)),
                {**inherited, **storage_env},
                home,
            )
            web = Webserver(web_port)

            def answers() -> bool:
                return webserver.poll() is not None or requests.get(f"{web.base}/server_info", timeout=5).ok

            wait_for("the webserver", answers, timeout_s=180)
            if webserver.poll() is None:
                break
            if attempt == 2 or not PORT_IN_USE.search(processes.log_of(webserver)):
                raise AssertionError(f"the webserver exited with {webserver.returncode}")
        processes.start("daemon", with_options(compose_service("daemon")["command"]), {**inherited, **storage_env}, home)
        everyone = alive("code-server", "webserver", "daemon")

        repository = wait_for("the code location in the webserver", lambda: loaded_repository(web), 120, alive=everyone)
        graph = {".".join(node["assetKey"]["path"]) for node in web.query(ASSET_GRAPH_QUERY)["assetNodes"]}
        # The code location's assets: the COVID pipeline's and the other declared datasets' (covid_assets/defs/).
        from covid_assets.definitions import defs as code_location

        assert graph == {".".join(key.path) for key in code_location.resolve_asset_graph().get_all_asset_keys()}, sorted(graph)
        assert set(EXPECTED_ROWS) | {".".join(SOURCE_ASSET_KEY.path)} <= graph, f"asset graph: {sorted(graph)}"
        summary.add(f"webserver on 127.0.0.1:{web_port} shows the asset graph: {len(graph)} assets, repository {repository}")

        # (a) Materialize all assets through GraphQL; the daemon dequeues the run, the code server runs it.
        launched = web.query(
            LAUNCH_MUTATION,
            executionParams={
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": repository,
                    "jobName": JOB,
                    "assetSelection": [{"path": table.split(".")} for table in EXPECTED_ROWS],
                },
                "runConfigData": {},
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        summary.add(f"launched run {run_id} through GraphQL (status {launched['run']['status']})")
        run = wait_for(
            f"run {run_id} to finish",
            lambda: (r := run_record(web, run_id))["status"] in TERMINAL and r,
            timeout_s=300,
            alive=everyone,
        )
        assert run["status"] == "SUCCESS", f"run {run_id}: {run['status']}\n{failure_details(dagster_url, run_id)}\n{summary}"
        summary.add(f"run {run_id}: {run['status']} in {run['endTime'] - run['startTime']:.1f} s")

        # (b) The run and its events are in Dagster's Postgres database, the tables in the warehouse.
        assert query(dagster_url, "SELECT status, pipeline_name FROM runs WHERE run_id = %s", (run_id,)) == [("SUCCESS", JOB)]
        events = dict(
            query(dagster_url, "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY 1", (run_id,))
        )
        # Dagster stores RUN_SUCCESS under its historical name, PIPELINE_SUCCESS.
        assert events.get("ASSET_MATERIALIZATION") == len(TABLE_ASSET_KEYS) and events.get("PIPELINE_SUCCESS") == 1, events
        assert not events.get("STEP_FAILURE"), events
        summary.add(
            f"Postgres {dagster_db}: runs has {run_id} SUCCESS; event_logs has {sum(events.values())} events for it "
            f"(ASSET_MATERIALIZATION {events['ASSET_MATERIALIZATION']}, STEP_SUCCESS {events.get('STEP_SUCCESS')}, "
            f"ASSET_CHECK_EVALUATION {events.get('ASSET_CHECK_EVALUATION', 0)}, PIPELINE_SUCCESS 1)"
        )
        counts = table_counts(warehouse_url)
        assert counts == EXPECTED_ROWS, f"{counts}\n{summary}"
        summary.add(f"Postgres {warehouse_db} row counts: " + ", ".join(f"{t} {n}" for t, n in counts.items()))

        # (c) The daemon evaluates the schedule: a tick is recorded, and the run it asked for succeeds.
        selector = {"repositoryLocationName": LOCATION, "repositoryName": repository, "scheduleName": SCHEDULE}

        def first_tick() -> dict | None:
            schedule = web.query(SCHEDULE_QUERY, selector=selector)["scheduleOrError"]
            assert schedule["__typename"] == "Schedule", schedule
            ticks = schedule["scheduleState"]["ticks"]
            return next((tick for tick in reversed(ticks) if tick["status"] != "STARTED"), None)

        tick = wait_for(f"a tick of {SCHEDULE}", first_tick, timeout_s=150, interval_s=2, alive=everyone)
        tick_time = dt.datetime.fromtimestamp(tick["timestamp"], dt.UTC).isoformat(timespec="seconds")
        assert tick["status"] == "SUCCESS" and tick["runIds"], f"tick: {tick}\n{summary}"
        stored_ticks = query(
            dagster_url,
            "SELECT status, type FROM job_ticks WHERE id = %s AND tick_body LIKE %s",
            (int(tick["tickId"]), f'%"{SCHEDULE}"%'),
        )
        assert stored_ticks == [("SUCCESS", "SCHEDULE")], stored_ticks
        (scheduled_run_id,) = tick["runIds"]
        summary.add(f"daemon ticked {SCHEDULE}: tick {tick['tickId']} at {tick_time} {tick['status']}, run {scheduled_run_id}")
        scheduled = wait_for(
            f"scheduled run {scheduled_run_id} to finish",
            lambda: (r := run_record(web, scheduled_run_id))["status"] in TERMINAL and r,
            timeout_s=300,
            alive=everyone,
        )
        assert scheduled["status"] == "SUCCESS", (
            f"scheduled run {scheduled_run_id}: {scheduled['status']}\n{failure_details(dagster_url, scheduled_run_id)}\n{summary}"
        )
        tags = {tag["key"]: tag["value"] for tag in scheduled["tags"]}
        assert tags.get("dagster/schedule_name") == SCHEDULE, tags
        assert table_counts(warehouse_url) == EXPECTED_ROWS
        unchanged = "source unchanged, nothing rewritten" if tags.get("covid/source_unchanged") == "true" else "tables replaced"
        summary.add(f"scheduled run {scheduled_run_id}: {scheduled['status']} ({unchanged}); row counts as above")

        # The daemon's Compose health check passes too.
        liveness = compose_service("daemon")["healthcheck"]["test"][1:]
        checked = subprocess.run(with_options(liveness), env={**inherited, **storage_env}, capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        summary.add(f"done in {time.monotonic() - started_at:.0f} s")
    except BaseException:
        print(f"\n[deployment] FAILED after {time.monotonic() - started_at:.0f} s; summary so far:\n{summary}")
        processes.dump_logs()
        raise
    finally:
        processes.stop()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            for database in (dagster_db, warehouse_db):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        for line in summary.lines:
            record_property("deployment", line)
