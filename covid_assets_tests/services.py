"""Dagster's processes, started for real: process groups with a log each, and the webserver's GraphQL API.

Used by the tests that run the platform as a deployment runs it (webserver, daemon, code server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import requests

LOCATION = "covid_assets"
# A local instance: runs launched from the UI start at once (an empty config would queue them
# for a dagster-daemon); no telemetry.
IMMEDIATE_RUNS_INSTANCE = (
    "run_coordinator:\n"
    "  module: dagster._core.run_coordinator\n"
    "  class: DefaultRunCoordinator\n"
    "telemetry:\n"
    "  enabled: false\n"
)
# The code location as a module, under the name the deployment gives it (workspace.yaml, pyproject).
LOCAL_WORKSPACE = (
    "load_from:\n"
    "  - python_module:\n"
    "      module_name: covid_assets.definitions\n"
    f"      location_name: {LOCATION}\n"
)


@dataclass
class Processes:
    """Started in their own process groups, with output in one log file each."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = self.log_dir / f"{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, process, log))
        return process

    def log_of(self, process: subprocess.Popen) -> str:
        return next(log.read_text(errors="replace") for _, p, log in self.started if p is process)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to each process group (run workers are in the code server's), then SIGKILL what is left."""
        members: list[psutil.Process] = []
        for _, process, _ in reversed(self.started):
            try:  # remember the whole tree first: a child that outlives its parent keeps its pid, not its parent
                leader = psutil.Process(process.pid)
                members += [leader, *leader.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
            try:
                os.killpg(process.pid, signal.SIGTERM)  # start_new_session=True: group id = the leader's pid
            except (ProcessLookupError, PermissionError):
                pass
        _, alive = psutil.wait_procs(members, timeout=grace_s)
        for _, process, _ in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for member in alive:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for _, process, _ in self.started:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def dump_logs(self, tail_lines: int = 150) -> None:
        for name, process, log in self.started:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            print(f"\n===== {name} (pid {process.pid}, exit {process.poll()}): last {tail_lines} of {len(lines)} lines, {log}")
            print("\n".join(lines[-tail_lines:]))


def wait_for(what: str, check: Callable[[], object], timeout_s: float, interval_s: float = 1.0, alive: Callable[[], None] = lambda: None):
    """Poll `check` until it returns something truthy; `alive` raises if a process we rely on died."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        alive()
        try:
            if result := check():
                return result
        except (requests.RequestException, psycopg.Error, RuntimeError) as error:
            last_error = error
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last_error!r})")




class Webserver:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, query: str, **variables: object) -> dict:
        response = requests.post(f"{self.base}/graphql", json={"query": query, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]


WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""
ASSET_GRAPH_QUERY = "{ assetNodes { assetKey { path } jobNames } }"
LAUNCH_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) { __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message } } }
"""
RUN_QUERY = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename
    ... on Run { runId status jobName startTime endTime tags { key value } }
    ... on Error { message } } }
"""
SCHEDULE_QUERY = """
query Schedule($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) { __typename
    ... on Schedule { name cronSchedule executionTimezone
        scheduleState { status ticks(limit: 10) { tickId status timestamp runIds skipReason error { message } } } }
    ... on Error { message } } }
"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def loaded_repository(web: Webserver) -> str | None:
    """The repository name once the code location is loaded; raises on a load error."""
    workspace = web.query(WORKSPACE_QUERY)["workspaceOrError"]
    assert workspace["__typename"] == "Workspace", workspace
    entry = next((e for e in workspace["locationEntries"] if e["name"] == LOCATION), None)
    if entry is None or entry["loadStatus"] != "LOADED":
        return None
    location = entry["locationOrLoadError"]
    if location["__typename"] != "RepositoryLocation":
        raise AssertionError(f"code location {LOCATION} failed to load: {location}")
    return location["repositories"][0]["name"]


def run_record(web: Webserver, run_id: str) -> dict:
    run = web.query(RUN_QUERY, runId=run_id)["runOrError"]
    assert run["__typename"] == "Run", run
    return run
