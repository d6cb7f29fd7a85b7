"""Operations, proven with the real processes: the platform tells people when it breaks, notices new
data by itself, and never stalls silently.

A code server, a webserver and a daemon run as in a deployment (the instance is the committed
dagster.yaml with its storage swapped for SQLite and its polling made fast), against the local
Socrata stand-in, a local webhook receiver (http.server) and a local SMTP server (aiosmtpd, with
AUTH). Canary secrets sit in the code server's environment (the app token, the SMTP and Dagster
passwords) and the stand-in's error bodies echo the app token. In order:

1. The source sensor observes a new version and launches exactly one refresh; ticks after it
   launch none. The publisher's date is old: the staleness warning shows, and is alerted once. The
   first load's warning checks fail for the first time: one message lists them.
2. The source hangs: the run passes its maximum runtime, run monitoring fails it, it is alerted,
   and the run queued behind it starts, finds the source unchanged and confirms every table
   (a "recovered" message follows).
3. The source answers HTTP 500 forever: the sensor's observation fails visibly and launches
   nothing; a refresh fails on the transient error, Dagster retries it once after the delay, the
   retry fails too, and exactly one webhook POST and one email go out, for the retry, with the run
   link and the first error line, and no canary in either.
4. The tables stay fresh past the first load's window because the unchanged-source run confirmed
   them (the UI's freshness state, through GraphQL); a window later they are stale, alerted once.
5. The source comes back with a new version: one run loads it and one "recovered" message goes
   out, although the webhook refused the first attempt (logged, retried, delivered once).

What it observed is printed with times (pytest -s) and attached as junit properties, which the
conftest prints in the CI log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dagster import DagsterInstance

from covid_assets.assets.tables import SOURCE_ASSET_KEY, TABLE_ASSET_KEYS
from covid_assets.freshness import STALENESS_CHECK, staleness_check_key
from covid_assets.schedules import SCHEDULED_RUN_CONFIG
from covid_assets_tests.support import Fault, FakeSocrata
from covid_assets_tests.helpers import SNAPSHOT, TARGET_VARIABLES, free_port, fresh_database, table_fingerprints
from covid_assets_tests.services import LAUNCH_MUTATION, LOCATION, TERMINAL, Processes, Webserver, loaded_repository, run_record, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
JOB = "refresh_warehouse"
RAW_STEP = "load_covid_pcr_testing"  # the step that loads the raw and base tables
STATES = ("AK", "WY")  # a small real delivery: 2,119 rows, with the snapshot's negative counts (WY)
CANARY_TOKEN = f"canary-token-{secrets.token_hex(8)}"
CANARY_SMTP_PASSWORD = f"canary-smtp-{secrets.token_hex(8)}"
CANARY_PG_PASSWORD = f"canary-pg-{secrets.token_hex(8)}"
CANARIES = (CANARY_TOKEN, CANARY_SMTP_PASSWORD, CANARY_PG_PASSWORD)
SMTP_USER = "alerts"
MAX_RUNTIME_S = 20
RETRY_DELAY_S = 3
FRESHNESS_WINDOW_S = 90  # Dagster's floor is 60 s; the HTTP 500 phase must fit between the first load's window and the confirmation's
OLD_RELEASE = 1_700_000_000  # 2023-11-14: older than the 14-day threshold

RUNS_QUERY = """
{ runsOrError(filter: {pipelineName: "refresh_warehouse"}) { ... on Runs { results {
    runId status startTime endTime parentRunId tags { key value } } } } }
"""
SENSOR_TICKS_QUERY = """
query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { __typename
    ... on Sensor { sensorState { status ticks(limit: 100) { tickId status timestamp runIds skipReason error { message causes { message } } } } }
    ... on Error { message } } }
"""
FRESHNESS_QUERY = """
query Freshness($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path }
    freshnessStatusInfo { freshnessStatus freshnessStatusMetadata { lastMaterializedTimestamp } } } }
"""


# --------------------------------------------------------------------------- what the test saw
@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        entry = f"t={time.monotonic() - self.started:6.1f}s  {line}"
        self.lines.append(entry)
        print(f"[operations] {entry}", flush=True)


# --------------------------------------------------------------------------- the receivers
@dataclass
class Post:
    at: float
    body: dict
    accepted: bool


class WebhookReceiver:
    """An incoming-webhook endpoint on 127.0.0.1 that records every POST; it can refuse the next few."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.refuse_next = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    accepted = receiver.refuse_next == 0
                    receiver.refuse_next = max(receiver.refuse_next - 1, 0)
                    receiver.posts.append(Post(time.monotonic(), body, accepted))
                self.send_response(200 if accepted else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/covid"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self, event: str | None = None) -> list[dict]:
        with self.lock:
            return [p.body for p in self.posts if p.accepted and (event is None or p.body["event"] == event)]

    def attempts(self, event: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if p.body["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler: keeps every message, and who logged in."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content)
        self.messages.append({"subject": message["Subject"], "to": envelope.rcpt_tos, "body": message.get_payload(decode=True).decode()})
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER and auth_data.password.decode() == CANARY_SMTP_PASSWORD
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    def about(self, event: str) -> list[dict]:
        return [m for m in self.messages if f'"event": "{event}"' in m["body"]]


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, authenticator=box.authenticate, auth_require_tls=False)
    controller.start()
    yield box, port
    controller.stop()


# --------------------------------------------------------------------------- the deployment
def instance_yaml(home: Path) -> str:
    """The committed dagster.yaml, storage in SQLite, polling fast enough for a test."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"], "dagster.yaml lost monitoring or retries"
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    config["run_monitoring"]["poll_interval_seconds"] = 2
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    return yaml.safe_dump(config)


@dataclass
class Deployment:
    web: Webserver
    repository: str
    home: Path
    warehouse_url: str
    source: FakeSocrata
    processes: Processes
    timeline: Timeline

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.home))

    def runs(self) -> list[dict]:
        return list(reversed(self.web.query(RUNS_QUERY)["runsOrError"]["results"]))  # oldest first

    def launch(self, run_config: dict) -> str:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": self.repository, "jobName": JOB}
        launched = self.web.query(LAUNCH_MUTATION, executionParams={"selector": selector, "runConfigData": run_config})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def finished(self, run_id: str, timeout_s: float = 120) -> dict:
        return wait_for(f"run {run_id} to finish", lambda: (r := run_record(self.web, run_id))["status"] in TERMINAL and r, timeout_s, alive=self.alive)

    def sensor_ticks(self, name: str) -> list[dict]:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": self.repository, "sensorName": name}
        sensor = self.web.query(SENSOR_TICKS_QUERY, selector=selector)["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        return list(reversed(sensor["sensorState"]["ticks"]))

    def freshness(self) -> dict[str, tuple[str, float | None]]:
        keys = [{"path": key.path} for key in TABLE_ASSET_KEYS]
        nodes = self.web.query(FRESHNESS_QUERY, keys=keys)["assetNodes"]
        return {
            "/".join(node["assetKey"]["path"]): (
                node["freshnessStatusInfo"]["freshnessStatus"],
                (node["freshnessStatusInfo"]["freshnessStatusMetadata"] or {}).get("lastMaterializedTimestamp"),
            )
            for node in nodes
        }

    def alive(self) -> None:
        for name, process, log in self.processes.started:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}; see {log}")


@pytest.fixture
def deployment(postgres_server_url: str, tmp_path: Path, webhook: WebhookReceiver, mailbox) -> Iterator[Deployment]:
    box, smtp_port = mailbox
    timeline = Timeline()
    snapshot = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False)
    rows = snapshot[snapshot["state"].isin(STATES)].to_dict("records")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(home))
    (tmp_path / "logs").mkdir()
    processes = Processes(tmp_path / "logs")
    code_port, web_port = free_port(), free_port()
    (home / "workspace.yaml").write_text(
        yaml.safe_dump({"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": code_port, "location_name": LOCATION}}]})
    )
    with fresh_database(postgres_server_url, "operations") as url, FakeSocrata(rows) as source:
        source.rows_updated_at = OLD_RELEASE
        inherited = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES and not k.startswith(("COVID_", "ALERT_", "DAGSTER_"))}
        inherited["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        base_env = {**inherited, "DAGSTER_HOME": str(home), "DAGSTER_PG_PASSWORD": CANARY_PG_PASSWORD}
        code_env = {
            **base_env,
            "COVID_DB_URL": url,
            "SOCRATA_BASE_URL": source.base_url,
            "SOCRATA_APP_TOKEN": CANARY_TOKEN,
            "SOCRATA_PAGE_SIZE": "1000",
            "SOCRATA_MAX_RETRIES": "1",
            "SOCRATA_BACKOFF_S": "0.1",
            "COVID_SCHEDULE_ENABLED": "false",  # runs here come from the sensor and from GraphQL, as the schedule's would
            "COVID_SOURCE_POLL_MINUTES": "0.05",
            "COVID_ALERT_POLL_S": "2",
            "COVID_MAX_RUNTIME_S": str(MAX_RUNTIME_S),
            "COVID_RETRY_DELAY_S": str(RETRY_DELAY_S),
            "COVID_FRESHNESS_HOURS": f"{FRESHNESS_WINDOW_S / 3600:.10f}",
            "COVID_SOURCE_STALE_DAYS": "14",
            "ALERT_WEBHOOK_URL": webhook.url,
            "ALERT_SMTP_HOST": "127.0.0.1",
            "ALERT_SMTP_PORT": str(smtp_port),
            "ALERT_SMTP_USER": SMTP_USER,
            "ALERT_SMTP_PASSWORD": CANARY_SMTP_PASSWORD,
            "ALERT_EMAIL_FROM": "covid-assets@example.org",
            "ALERT_EMAIL_TO": "oncall@example.org, data@example.org",
            "DAGSTER_UI_URL": f"http://127.0.0.1:{web_port}",
        }
        daemon_env = {**base_env, "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2", "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1"}
        try:
            processes.start("code-server", [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(code_port),
                                            "-m", "covid_assets.definitions"], code_env, home)  # fmt: skip
            health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(code_port), "-h", "127.0.0.1"]
            wait_for("the code server", lambda: subprocess.run(health, env=base_env, capture_output=True, timeout=60).returncode == 0,
                     180, alive=lambda: processes.started[0][1].poll() is None or pytest.fail("the code server exited"))  # fmt: skip
            processes.start("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", "workspace.yaml"], base_env, home)
            web = Webserver(web_port)
            deployment = Deployment(web, "", home, url, source, processes, timeline)
            deployment.repository = wait_for("the code location", lambda: loaded_repository(web), 180, alive=deployment.alive)
            processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], daemon_env, home)
            timeline.add(f"code server, webserver (port {web_port}) and daemon up; code location {deployment.repository} loaded")
            yield deployment
        except BaseException:
            processes.dump_logs(80)
            raise
        finally:
            processes.stop()


def assert_no_canary(text: str, what: str) -> None:
    leaked = [canary for canary in CANARIES if canary in text]
    assert not leaked, f"{what} contains a secret: {leaked}"


def only(items: list, what: str):
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}: {items}"
    return items[0]


# --------------------------------------------------------------------------- the test
def test_alerts_freshness_source_sensor_monitoring_and_retries(deployment: Deployment, webhook: WebhookReceiver, mailbox, record_property) -> None:
    box, _ = mailbox
    d, log = deployment, deployment.timeline
    try:
        run_the_phases(d, webhook, box, log)
    finally:
        for line in log.lines:
            record_property("operations", line)


def run_the_phases(d: Deployment, webhook: WebhookReceiver, box: Mailbox, log: Timeline) -> None:
    # 1. A new version: exactly one run from the sensor, none from the ticks after it.
    first = wait_for("a run from the source sensor", lambda: d.runs(), 90, alive=d.alive)[0]
    tags = {t["key"]: t["value"] for t in first["tags"]}
    assert tags.get("dagster/sensor_name") == "socrata_source_sensor", tags
    assert tags["dagster/run_key"] == f"source-version-{OLD_RELEASE}-{d.source.row_count}", tags
    r1 = d.finished(first["runId"])
    assert r1["status"] == "SUCCESS", r1
    log.add(f"source sensor launched run {r1['runId'][:8]} for version {tags['covid/source_version']}: SUCCESS "
            f"({r1['endTime'] - r1['startTime']:.1f} s)")
    later = wait_for("two sensor ticks after the run", lambda: len(t := [x for x in d.sensor_ticks("socrata_source_sensor") if x["timestamp"] > r1["endTime"]]) >= 2 and t, 60, alive=d.alive)
    assert all(not tick["runIds"] for tick in later), later
    assert len(d.runs()) == 1, d.runs()
    log.add(f"{len(later)} later sensor ticks ({', '.join(t['status'] for t in later)}; '{later[-1]['skipReason']}'): no new run")

    staleness = wait_for("the source staleness evaluation", lambda: d.instance().get_latest_asset_check_evaluation_record(staleness_check_key(SOURCE_ASSET_KEY)), 30)
    evaluation = staleness.event.dagster_event.event_specific_data
    assert not evaluation.passed and evaluation.severity.value == "WARN", evaluation
    assert "days ago (more than 14)" in evaluation.metadata["verdict"].value
    log.add(f"source check {STALENESS_CHECK}: WARN, {evaluation.metadata['verdict'].value}")
    stale_source = wait_for("the source_stale alert", lambda: webhook.accepted("source_stale"), 30, alive=d.alive)
    warnings = wait_for("the warning_checks_failed alert", lambda: webhook.accepted("warning_checks_failed"), 30, alive=d.alive)
    assert "negative_daily_counts" in warnings[0]["text"], warnings[0]["text"]
    log.add(f"alerts: source_stale ({stale_source[0]['text'].splitlines()[0][:90]}...), "
            f"warning_checks_failed ({warnings[0]['text'].count('- ')} checks, run {warnings[0]['run_id'][:8]})")
    observations = d.instance().fetch_observations(SOURCE_ASSET_KEY, limit=1).records
    assert observations and observations[0].event_log_entry.tags["dagster/data_version"] == tags["covid/source_version"]

    # 2. The source hangs: monitoring fails the run at its maximum runtime; the queued run then starts.
    before = table_fingerprints(d.warehouse_url)
    d.source.faults.append(Fault.sleep(600, where="page", times=10_000))
    hung_id = d.launch({})  # a manual refresh: fetches every page
    queued_id = d.launch(SCHEDULED_RUN_CONFIG)  # what the daily schedule launches; waits behind it
    hung = d.finished(hung_id, timeout_s=MAX_RUNTIME_S + 60)
    d.source.faults.clear()
    assert hung["status"] in {"FAILURE", "CANCELED"}, hung
    held = hung["endTime"] - hung["startTime"]
    assert MAX_RUNTIME_S <= held < MAX_RUNTIME_S + 20, held
    log.add(f"hung run {hung_id[:8]} failed by run monitoring after {held:.1f} s (max runtime {MAX_RUNTIME_S} s), status {hung['status']}")
    hang_alert = only(wait_for("the hung run's alert", lambda: [p for p in webhook.accepted("run_failed") if p["run_id"] == hung_id], 30, alive=d.alive), "hang alert")
    assert f"Exceeded maximum runtime of {MAX_RUNTIME_S} seconds" in hang_alert["error"], hang_alert
    queued = d.finished(queued_id)
    assert queued["status"] == "SUCCESS" and queued["startTime"] >= hung["endTime"] - 1, (queued, hung)
    queued_tags = {t["key"]: t["value"] for t in run_record(d.web, queued_id)["tags"]}
    assert queued_tags.get("covid/source_unchanged") == "true", queued_tags
    assert table_fingerprints(d.warehouse_url) == before
    confirmations = d.instance().get_latest_materialization_events(TABLE_ASSET_KEYS)
    assert {entry.run_id for entry in confirmations.values()} == {queued_id}
    assert all(entry.asset_materialization.metadata["rows_written"].value == 0 for entry in confirmations.values())
    confirmed_at = min(entry.timestamp for entry in confirmations.values())
    log.add(f"alert run_failed for {hung_id[:8]}: '{hang_alert['error']}'; queued run {queued_id[:8]} started "
            f"{queued['startTime'] - hung['endTime']:.1f} s after, source unchanged: {len(TABLE_ASSET_KEYS)} tables confirmed, 0 rows written")
    wait_for("the recovered alert after the hang", lambda: [p for p in webhook.accepted("recovered") if p["run_id"] == queued_id], 30, alive=d.alive)

    # 3. HTTP 500 forever: the observation fails visibly; a refresh fails, is retried once, one alert.
    failures_before = len(webhook.accepted("run_failed"))
    mails_before = len(box.about("run_failed"))
    runs_before = len(d.runs())
    outage = time.time()
    d.source.faults.append(Fault.error(500, message=f"upstream trouble (request token {CANARY_TOKEN})", times=1_000_000))
    failed_tick = wait_for("a failed sensor tick", lambda: [t for t in d.sensor_ticks("socrata_source_sensor") if t["timestamp"] > outage and t["status"] == "FAILURE"], 30, alive=d.alive)[0]
    cause = " ".join(c["message"] for c in failed_tick["error"]["causes"])  # the tick shows the error and its cause
    assert "SourceUnreachable" in cause and "HTTP 500" in cause and "next tick tries again" in cause, failed_tick
    assert_no_canary(json.dumps(failed_tick), "the failed tick")
    log.add(f"source answering HTTP 500: sensor tick FAILURE, cause: {cause.splitlines()[0][:220]}")
    first_try = d.launch(SCHEDULED_RUN_CONFIG)
    assert d.finished(first_try)["status"] == "FAILURE"
    retry = wait_for("Dagster's retry", lambda: [r for r in d.runs() if r["parentRunId"] == first_try], 60, alive=d.alive)[0]
    retried = d.finished(retry["runId"])
    retry_tags = {t["key"]: t["value"] for t in retried["tags"]}
    assert retried["status"] == "FAILURE" and retry_tags.get("dagster/retry_number") == "1", retry_tags
    first_end = run_record(d.web, first_try)["endTime"]
    assert retried["startTime"] >= first_end and retry_tags.get("covid/retry_reason") == "transient_source_error"
    assert retried["endTime"] - retried["startTime"] >= RETRY_DELAY_S  # it waited before asking the source again
    alert = only(wait_for("the failure alert", lambda: webhook.accepted("run_failed")[failures_before:], 30, alive=d.alive), "failure POST")
    time.sleep(5)  # two more alert-sensor ticks: nothing else may arrive
    assert len(webhook.accepted("run_failed")) == failures_before + 1
    mail = only(box.about("run_failed")[mails_before:], "failure email")
    assert alert["run_id"] == retry["runId"] and alert["status"] == "FAILURE" and alert["job"] == JOB
    assert alert["failed_step"] == RAW_STEP and alert["error"].startswith("Socrata answered HTTP 500"), alert
    assert "***" in alert["error"], alert["error"]  # the echoed token, scrubbed
    link = f"{d.web.base}/runs/{retry['runId']}"
    assert alert["url"] == link and link in alert["text"] and link in mail["body"] and alert["error"] in mail["body"]
    assert requests.get(link, timeout=10).ok
    for text, what in ((json.dumps(alert), "the webhook POST"), (json.dumps(mail), "the email")):
        assert_no_canary(text, what)
    assert len(d.runs()) == runs_before + 2, "the sensor launched runs during the outage"
    log.add(f"run {first_try[:8]} failed on the transient error; Dagster retried it as {retry['runId'][:8]} "
            f"{retried['startTime'] - first_end:.1f} s later, which waited {RETRY_DELAY_S} s before asking the source "
            f"and failed too ({retried['endTime'] - retried['startTime']:.1f} s); no alert for the first attempt")
    log.add(f"one webhook POST + one email ({' '.join(mail['subject'].split())!r}) for {retry['runId'][:8]}: error '{alert['error'][:120]}...', "
            f"link {alert['url']}; no canary in either")

    # 4. Fresh past the first load's window thanks to the confirmation; stale a window after it.
    check_at = max(r1["endTime"] + FRESHNESS_WINDOW_S + 6, time.time())
    time.sleep(max(check_at - time.time(), 0))
    fresh = d.freshness()
    assert time.time() - r1["endTime"] > FRESHNESS_WINDOW_S
    assert {status for status, _ in fresh.values()} == {"HEALTHY"}, fresh
    assert all(abs(at - confirmed_at) < 5 for _, at in fresh.values()), (fresh, confirmed_at)
    log.add(f"{time.time() - r1['endTime']:.0f} s after the load (window {FRESHNESS_WINDOW_S} s): all {len(TABLE_ASSET_KEYS)} tables HEALTHY, "
            f"last confirmed by the unchanged-source run {time.time() - confirmed_at:.0f} s ago")
    stale = wait_for("stale tables", lambda: (f := d.freshness()) and {s for s, _ in f.values()} == {"DEGRADED"} and f, FRESHNESS_WINDOW_S + 30, alive=d.alive)
    stale_alert = only(wait_for("the tables_stale alert", lambda: webhook.accepted("tables_stale"), 30, alive=d.alive), "tables_stale alert")
    assert stale_alert["text"].count("- covid_19") == len(TABLE_ASSET_KEYS), stale_alert["text"]
    log.add(f"{time.time() - confirmed_at:.0f} s after the confirmation: all {len(stale)} tables DEGRADED (stale); "
            f"one tables_stale alert: {stale_alert['text'].splitlines()[0]}")

    # 5. The source is back with a new release: one run, one "recovered" (the webhook refused it once).
    d.source.faults.clear()
    webhook.refuse_next = 1
    revised = d.source.row_count
    d.source.rows_updated_at = int(time.time()) - 3600
    runs_before = len(d.runs())
    new = wait_for("the new version's run", lambda: d.runs()[runs_before:], 60, alive=d.alive)[0]
    recovered_run = d.finished(new["runId"])
    assert recovered_run["status"] == "SUCCESS"
    recovered = only(wait_for("the recovered alert", lambda: [p for p in webhook.accepted("recovered") if p["run_id"] == new["runId"]], 30, alive=d.alive), "recovered POST")
    attempts = [p for p in webhook.attempts("recovered") if p.body["run_id"] == new["runId"]]
    assert [p.accepted for p in attempts] == [False, True], attempts
    only([m for m in box.about("recovered") if new["runId"] in m["body"]], "recovered email")
    assert f"after run {retry['runId'][:8]} failed" in recovered["text"], recovered["text"]
    tags = {t["key"]: t["value"] for t in run_record(d.web, new["runId"])["tags"]}
    assert tags["covid/alert.recovered.webhook"] == "sent" and tags["covid/alert.recovered.email"] == "sent", tags
    time.sleep(4)
    assert len(d.runs()) == runs_before + 1
    assert {s for s, _ in d.freshness().values()} == {"HEALTHY"}
    log.add(f"new release ({revised} rows): sensor run {new['runId'][:8]} SUCCESS; 'recovered' refused once by the webhook "
            f"(HTTP 503), delivered {attempts[1].at - attempts[0].at:.1f} s later, once; one email; tables HEALTHY again")

    # Every alert, every channel: no canary anywhere, and each message once.
    everything = json.dumps([p.body for p in webhook.posts]) + json.dumps(box.messages)
    assert_no_canary(everything, "the alerts")
    assert box.logins and set(box.logins) == {SMTP_USER}
    by_event: dict[str, int] = {}
    for body in webhook.accepted():
        by_event[body["event"]] = by_event.get(body["event"], 0) + 1
    assert by_event == {"source_stale": 1, "warning_checks_failed": 1, "run_failed": 2, "recovered": 2, "tables_stale": 1}, by_event
    assert len(box.messages) == sum(by_event.values()), [m["subject"] for m in box.messages]
    log.add(f"webhook accepted {sum(by_event.values())} alerts {by_event}; {len(box.messages)} emails, SMTP AUTH as {SMTP_USER!r}; "
            f"{len(d.runs())} runs in all")
