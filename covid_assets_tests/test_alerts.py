"""Alerts: no secret ever leaves, email uses STARTTLS when offered and never sends a password in clear,
a failing channel is reported (for a retry) instead of raised, and the messages say what happened:
one per failed run (a blocking check named), "recovered" once after a failure, warning checks only
when they newly fail. Real SMTP (aiosmtpd) and HTTP servers on local sockets; real runs on Postgres.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dagster import DagsterInstance

from covid_assets.alert_sensors import failure_alert, success_alerts
from covid_assets.alerts import Alert, ChannelError, Email, Webhook, channels_from_env, deliver, scrub, secret_values
from covid_assets_tests.helpers import SNAPSHOT, environment, free_port, from_file, materialize_all

TOKEN = "tok-3f9a1c77e2"
PASSWORD = "p@ss/w%rd:42"


# --------------------------------------------------------------------------- keeping secrets out
def test_scrub_removes_every_secret_of_the_environment() -> None:
    environ = {
        "SOCRATA_APP_TOKEN": TOKEN,
        "DAGSTER_PG_PASSWORD": PASSWORD,
        "ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XYZsecret",
        "COVID_DB_URL": "postgresql://pipeline:db%2Fsecret%40x@db:5432/covid",
        "SOCRATA_PAGE_SIZE": "1000",
        "SHORT_TOKEN": "ab",
    }
    text = (
        f"GET https://x/y?token={TOKEN} failed; password {PASSWORD} (encoded p%40ss%2Fw%25rd%3A42); "
        "POST /services/T000/B000/XYZsecret answered 404; connecting to postgresql://pipeline:db%2Fsecret%40x@db:5432/covid "
        "or postgresql://other:hunter22@host/db; db/secret@x; 1000 rows; ab"
    )
    cleaned = scrub(text, environ)
    for secret in (TOKEN, PASSWORD, "p%40ss%2Fw%25rd%3A42", "XYZsecret", "db%2Fsecret%40x", "db/secret@x", "hunter22"):
        assert secret not in cleaned, (secret, cleaned)
    assert "1000 rows" in cleaned and cleaned.endswith("; ab")  # not a secret, or too short to be one
    assert "postgresql://other:***@host/db" in cleaned
    assert "1000" not in secret_values(environ)


def test_every_outgoing_field_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCRATA_APP_TOKEN", TOKEN)
    alert = Alert(event="run_failed", summary=f"run failed with {TOKEN}", error=f"HTTP 500: token {TOKEN}", details=(f"see {TOKEN}",))
    payload = alert.payload()
    assert TOKEN not in json.dumps(payload) and payload["error"] == "HTTP 500: token ***"
    assert payload["text"].splitlines()[0] == "run failed with ***"
    assert TOKEN not in Email("h", 25, "from@x", ("to@x",)).message(alert).as_string()


# --------------------------------------------------------------------------- the channels
class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.logins: list[tuple[str, str]] = []
        self.tls: list[bool] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append((envelope.mail_from, envelope.content))
        self.tls.append(session.ssl is not None)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == PASSWORD)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the STARTTLS server")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def smtp_server(box: Mailbox, host: str = "127.0.0.1", **options) -> Controller:
    controller = Controller(box, hostname=host, port=free_port(), authenticator=box.authenticate, **options)
    controller.start()
    return controller


ALERT = Alert(event="run_failed", summary="refresh_warehouse run 1234abcd failed", run_id="1234abcd", error="boom")


def test_email_uses_starttls_when_the_server_offers_it(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    box = Mailbox()
    controller = smtp_server(box, tls_context=server_tls, require_starttls=True)  # no MAIL before STARTTLS
    try:
        email = Email("127.0.0.1", controller.port, "alerts@x", ("oncall@x",), "alerts", PASSWORD,
                      tls_context=ssl.create_default_context(cafile=str(cert)))  # fmt: skip
        email.send(ALERT)
    finally:
        controller.stop()
    assert box.tls == [True] and box.logins == [("alerts", PASSWORD)]
    message = message_from_bytes(box.messages[0][1])
    assert message["Subject"] == "[covid-assets] refresh_warehouse run 1234abcd failed"
    assert "Error: boom" in message.get_payload()


def test_email_without_starttls_sends_no_password_to_a_remote_server() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address to serve SMTP on")
    box = Mailbox()
    controller = smtp_server(box, host=address, auth_require_tls=False)  # it would take a password in clear
    try:
        with pytest.raises(ChannelError, match="offers no STARTTLS: refusing to send the password unencrypted"):
            Email(address, controller.port, "alerts@x", ("oncall@x",), "alerts", PASSWORD).send(ALERT)
        Email(address, controller.port, "alerts@x", ("oncall@x",)).send(ALERT)  # no AUTH configured: plain relay is fine
    finally:
        controller.stop()
    assert box.logins == [] and box.tls == [False] and len(box.messages) == 1


class Receiver:
    def __init__(self, status: int) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T1/B2/secretpath"


@pytest.fixture
def receiver(request) -> Iterator[Receiver]:
    server = Receiver(request.param)
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.mark.parametrize("receiver", [200], indirect=True)
def test_the_webhook_posts_text_for_slack_and_the_fields(receiver: Receiver) -> None:
    Webhook(receiver.url).send(Alert(event="recovered", summary="recovered", job="refresh_warehouse", run_id="r1", url="http://ui/runs/r1"))
    (body,) = receiver.bodies
    assert body["text"] == "recovered\nRun: http://ui/runs/r1"
    assert {key: body[key] for key in ("event", "job", "run_id", "url")} == {
        "event": "recovered", "job": "refresh_warehouse", "run_id": "r1", "url": "http://ui/runs/r1"
    }  # fmt: skip


@pytest.mark.parametrize("receiver", [500], indirect=True)
def test_a_failing_channel_is_reported_not_raised_and_its_secret_url_is_not_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    dead = Email("127.0.0.1", free_port(), "alerts@x", ("oncall@x",), timeout_s=2)
    with environment(ALERT_WEBHOOK_URL=receiver.url), caplog.at_level(logging.INFO):
        failed = deliver(ALERT, [Webhook(receiver.url), dead], logging.getLogger("alerts-test"))
    assert failed == ["webhook", "email"]
    assert "webhook answered HTTP 500" in caplog.text and "ConnectionRefusedError" in caplog.text
    assert "secretpath" not in caplog.text and "T1/B2" not in caplog.text


def test_channels_are_off_until_configured_and_a_broken_setting_is_reported() -> None:
    assert channels_from_env({}) == ([], [])
    channels, problems = channels_from_env({"ALERT_SMTP_HOST": "smtp.example.org", "ALERT_WEBHOOK_URL": "hooks.example.org/x"})
    assert channels == [] and len(problems) == 2
    assert "ALERT_EMAIL_TO is empty" in problems[1] and "not an http(s) URL" in problems[0]
    (email,), [] = channels_from_env({"ALERT_SMTP_HOST": "smtp.example.org", "ALERT_EMAIL_TO": "a@x, b@x", "ALERT_SMTP_USER": "me@x"})
    assert (email.port, email.recipients, email.sender) == (587, ("a@x", "b@x"), "me@x")


# --------------------------------------------------------------------------- what the alerts say, from real runs
@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    snapshot = pd.read_csv(SNAPSHOT, dtype=str, keep_default_na=False)
    path = tmp_path_factory.mktemp("source") / "ak_wy.csv"
    snapshot[snapshot["state"].isin(["AK", "WY"])].to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_failed_runs_recovery_and_newly_failing_warnings(warehouse_url: str, small_source: Path, tmp_path: Path) -> None:
    instance = DagsterInstance.ephemeral()

    def run(source: Path):
        result = materialize_all(warehouse_url, from_file(source), instance=instance, raise_on_error=False)
        return result, instance.get_run_by_id(result.run_id)

    _, missing = run(tmp_path / "missing.csv")
    alert = failure_alert(instance, missing)
    assert (alert.event, alert.failed_step, alert.status) == ("run_failed", "load_covid_pcr_testing", "FAILURE")
    assert alert.error.startswith("export file not found:") and "no table changed" in alert.text()

    first, loaded = run(small_source)
    assert first.success
    events = {a.event: a for a in success_alerts(instance, loaded)}
    assert set(events) == {"recovered", "warning_checks_failed"}
    assert f"after run {missing.run_id[:8]} failed" in events["recovered"].summary
    assert "covid_19/covid_test_results:negative_daily_counts (negative_daily_counts 6)" in events["warning_checks_failed"].text()

    _, again = run(small_source)
    assert success_alerts(instance, again) == []  # no failure before it; the same warnings failed last time

    bad = pd.read_csv(small_source, dtype=str, keep_default_na=False)
    bad.loc[0, "state"] = "ZZ"  # fails the blocking jurisdiction check
    bad.to_csv(tmp_path / "zz.csv", index=False)
    _, blocked = run(tmp_path / "zz.csv")
    alert = failure_alert(instance, blocked)
    assert alert.event == "blocking_check_failed"
    assert "covid_19/covid_test_results:states_are_known_jurisdictions" in alert.text()
