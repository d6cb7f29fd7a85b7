"""Fault injection through the launch paths: hostile run config from the UI (GraphQL) and the CLI.

Dagster's open-source UI has no login, so anyone who reaches it can launch runs with run config of
their choosing. The deployment here keeps canary secrets in its environment (Dagster's storage
password, the Socrata app token), and every override a security review used to get at them is
tried: the password sent as the app token to a server of the attacker's, `/proc/self/environ` read
as the source file, a variable quoted back by libpq as the warehouse URL, another dataset, the IO
manager's warehouse. Each must be refused before the run does anything, with an error that names
the field; no canary may appear in a response, a run's events, a log file or Dagster's storage, and
no request may reach the attacker's server. A harmless knob (`allow_shrink`) still launches a run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from covid_assets_tests.support import FakeSocrata
from covid_assets_tests.helpers import COVID_SELECTION, SNAPSHOT, TARGET_VARIABLES, free_port, fresh_database
from covid_assets_tests.services import (
    IMMEDIATE_RUNS_INSTANCE,
    LAUNCH_MUTATION,
    LOCAL_WORKSPACE,
    LOCATION,
    TERMINAL,
    Processes,
    Webserver,
    loaded_repository,
    run_record,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).parents[1]
JOB = "refresh_warehouse"
CANARY_PASSWORD = f"canary-password-{secrets.token_hex(8)}"
CANARY_TOKEN = f"canary-token-{secrets.token_hex(8)}"
CANARIES = (CANARY_PASSWORD, CANARY_TOKEN)
STATES = ("AK", "WY")  # a small real delivery: 2,119 rows


def hostile_run_configs(trap_url: str) -> dict[str, tuple[str, dict]]:
    """What each attempt tried: (the field the refusal must name, the run config)."""

    def socrata(**config: object) -> dict:
        return {"resources": {"socrata": {"config": config}}}

    from_password = {"env": "DAGSTER_PG_PASSWORD"}
    return {
        "the password as app token, to another server": ("app_token", socrata(base_url=trap_url, app_token=from_password)),
        "another server": ("base_url", socrata(base_url=trap_url)),
        "the environment as the source file": ("source_file", socrata(source_file="/proc/self/environ")),
        "another dataset": ("dataset_id", socrata(dataset_id="abcd-1234")),
        "a variable as the warehouse URL": (
            "database_url",
            {"resources": {"warehouse": {"config": {"database_url": from_password}}}},
        ),
        "the IO manager's warehouse": (
            "warehouse",
            {"resources": {"io_manager": {"config": {"warehouse": {"config": {"database_url": from_password}}}}}},
        ),
    }


HARMLESS_RUN_CONFIG = {"ops": {"load_covid_pcr_testing": {"config": {"allow_shrink": True}}}}


@dataclass
class Deployment:
    """A deployment's environment, its source, and the attacker's server."""

    home: Path
    env: dict[str, str]
    source: FakeSocrata
    trap: FakeSocrata


@pytest.fixture
def deployment(postgres_server_url: str, tmp_path: Path) -> Iterator[Deployment]:
    snapshot = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False)
    rows = snapshot[snapshot["state"].isin(STATES)].to_dict("records")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(IMMEDIATE_RUNS_INSTANCE)
    with fresh_database(postgres_server_url, "launch") as url, FakeSocrata(rows) as source, FakeSocrata(rows) as trap:
        inherited = {name: value for name, value in os.environ.items() if name not in TARGET_VARIABLES}
        env = {
            **inherited,
            "DAGSTER_HOME": str(home),
            "COVID_DB_URL": url,
            "SOCRATA_BASE_URL": source.base_url,
            "SOCRATA_APP_TOKEN": CANARY_TOKEN,
            "SOCRATA_PAGE_SIZE": "1000",
            "DAGSTER_PG_PASSWORD": CANARY_PASSWORD,  # a secret in the environment that no run may send anywhere
        }
        yield Deployment(home, env, source, trap)


def leaked_canaries(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def files_with_canaries(*roots: Path) -> list[str]:
    """Every file under `roots` (Dagster's SQLite storage, event logs, compute logs, process logs) holding a canary."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and leaked_canaries(path.read_bytes().decode("latin-1")):
                found.append(str(path))
    return found


def assert_nothing_reached_the_trap(deployment: Deployment) -> None:
    assert deployment.trap.requests == [], f"the attacker's server was called: {deployment.trap.requests[:3]}"
    sent_to_source = json.dumps([list(request) for request in deployment.source.requests], default=str)
    assert CANARY_PASSWORD not in sent_to_source


def test_hostile_run_config_through_graphql_is_refused_and_leaks_nothing(deployment: Deployment, tmp_path: Path) -> None:
    processes = Processes(tmp_path / "logs")
    processes.log_dir.mkdir()
    try:
        port = free_port()
        (deployment.home / "workspace.yaml").write_text(LOCAL_WORKSPACE)
        argv = [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w", str(deployment.home / "workspace.yaml")]
        webserver = processes.start("webserver", argv, deployment.env, REPO)

        def alive() -> None:
            if webserver.poll() is not None:
                raise AssertionError(f"the webserver exited with {webserver.returncode}")

        web = Webserver(port)
        repository = wait_for("the code location in the webserver", lambda: loaded_repository(web), 180, alive=alive)

        def launch(run_config: dict) -> dict:
            selector = {"repositoryLocationName": LOCATION, "repositoryName": repository, "jobName": JOB}
            return web.query(LAUNCH_MUTATION, executionParams={"selector": selector, "runConfigData": run_config})["launchRun"]

        for attempt, (field_name, run_config) in hostile_run_configs(deployment.trap.base_url).items():
            answer = launch(run_config)
            assert answer["__typename"] == "RunConfigValidationInvalid", f"{attempt}: {answer}"
            messages = " ".join(error["message"] for error in answer["errors"])
            assert field_name in messages, f"{attempt}: the refusal does not name {field_name}: {messages}"
            assert not leaked_canaries(json.dumps(answer)), attempt

        launched = launch(HARMLESS_RUN_CONFIG)
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        run = wait_for("the harmless run", lambda: (r := run_record(web, run_id))["status"] in TERMINAL and r, 240, alive=alive)
        assert run["status"] == "SUCCESS", processes.dump_logs() or run
        runs = web.query("{ runsOrError { ... on Runs { results { runId } } } }")["runsOrError"]["results"]
        assert [r["runId"] for r in runs] == [run_id], "a refused launch created a run"
        assert not leaked_canaries(json.dumps(run_record(web, run_id)))
    finally:
        processes.stop()
    assert_nothing_reached_the_trap(deployment)
    assert len(deployment.source.page_requests()) > 0  # the harmless run did read the configured source
    assert files_with_canaries(deployment.home, processes.log_dir) == []


def test_hostile_run_config_through_the_cli_is_refused_and_leaks_nothing(deployment: Deployment, tmp_path: Path) -> None:
    attempts = hostile_run_configs(deployment.trap.base_url)
    logs = tmp_path / "cli"
    logs.mkdir()
    started = {}
    for index, (attempt, (_, run_config)) in enumerate(attempts.items()):
        argv = [
            sys.executable, "-m", "dagster", "asset", "materialize", "-m", "covid_assets.definitions",
            "--select", COVID_SELECTION, "--config-json", json.dumps(run_config),
        ]
        home = deployment.home / str(index)  # one instance each: they start at once
        home.mkdir()
        (home / "dagster.yaml").write_text(IMMEDIATE_RUNS_INSTANCE)
        env = {**deployment.env, "DAGSTER_HOME": str(home)}
        with (logs / f"{index}.log").open("wb") as log:
            started[attempt] = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    for index, (attempt, (field_name, _)) in enumerate(attempts.items()):
        returncode = started[attempt].wait(timeout=240)
        output = (logs / f"{index}.log").read_text(errors="replace")
        assert returncode != 0, f"{attempt}: the CLI accepted it:\n{output[-2000:]}"
        assert "Error in config" in output and field_name in output, f"{attempt}:\n{output[-2000:]}"
        assert not leaked_canaries(output), attempt
    assert_nothing_reached_the_trap(deployment)
    assert deployment.source.requests == []  # refused before the run did anything
    assert files_with_canaries(deployment.home, logs) == []
