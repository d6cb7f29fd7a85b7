"""Alert messages and the channels they go out on: a webhook (Slack, Teams, anything that takes JSON)
and email over SMTP. Both are configured from the environment and off when unset.

Dagster's `make_email_on_run_failure_sensor` is not used for email: it connects either with implicit
TLS or with STARTTLS demanded up front (a relay that offers no STARTTLS fails), always logs in (a
relay without AUTH fails), puts `failure_event.message` into an HTML body unshortened and unscrubbed,
sends once (its run-failure sensor advances past a run even when sending raised) and knows only
failures. So the sending is here, on smtplib, and the sensors in alert_sensors.py decide what to send.

Nothing secret may leave: every outgoing string goes through `scrub`, which removes the value of
every environment variable whose name says it is secret (…PASSWORD, …TOKEN, …SECRET, …KEY, the
webhook URL) and the password of any URL. Error text is cut to its first line, 300 characters.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import requests
from covid_assets.network import is_loopback

WEBHOOK_ENV = "ALERT_WEBHOOK_URL"
SMTP_ENV = {
    "host": "ALERT_SMTP_HOST",
    "port": "ALERT_SMTP_PORT",
    "user": "ALERT_SMTP_USER",
    "password": "ALERT_SMTP_PASSWORD",
    "sender": "ALERT_EMAIL_FROM",
    "recipients": "ALERT_EMAIL_TO",
}
UI_URL_ENV = "DAGSTER_UI_URL"
DEFAULT_SMTP_PORT = 587  # submission, with STARTTLS
IMPLICIT_TLS_PORT = 465
TIMEOUT_S = 10.0
ERROR_LINE_LIMIT = 300
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|(^|_)KEY($|_)|WEBHOOK", re.IGNORECASE)
MIN_SECRET_LENGTH = 4  # shorter values are not secrets worth the name, and would garble the text
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*):([^\s/@]+)@")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- keeping secrets out
def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment that must never appear in an alert, longest first."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        value = value.strip()
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH:
            found.update({value, quote(value, safe="")})
            if path := urlsplit(value).path if "://" in value else "":
                found.add(path)  # a webhook's secret is its path, which HTTP errors quote alone
        for match in URL_PASSWORD.finditer(value):
            found.update({match.group(2), unquote(match.group(2))})
    return sorted((value for value in found if len(value) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    for value in secret_values(environ):
        text = text.replace(value, "***")
    return URL_PASSWORD.sub(r"\1:***@", text)


def first_line(text: str | None, limit: int = ERROR_LINE_LIMIT) -> str | None:
    """The first non-empty line, printable, at most `limit` characters."""
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
    line = "".join(ch if ch.isprintable() else " " for ch in line)
    if not line:
        return None
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_url(run_id: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    base = (os.environ if environ is None else environ).get(UI_URL_ENV, "").strip().rstrip("/")
    return f"{base}/runs/{run_id}" if base and run_id else None


# ------------------------------------------------------------------------------- the message
@dataclass(frozen=True)
class Alert:
    """One message; `event` says what happened (run_failed, blocking_check_failed, run_rolled_back,
    recovered, warning_checks_failed, tables_stale, source_stale)."""

    event: str
    summary: str
    job: str | None = None
    run_id: str | None = None
    status: str | None = None
    failed_step: str | None = None
    error: str | None = None
    details: tuple[str, ...] = ()
    url: str | None = None

    def text(self) -> str:
        lines = [self.summary]
        if self.failed_step:
            lines.append(f"Failed step: {self.failed_step}")
        if self.error:
            lines.append(f"Error: {self.error}")
        lines += self.details
        if self.url:
            lines.append(f"Run: {self.url}")
        return "\n".join(lines)

    def payload(self, environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
        """The webhook body: `text` for Slack and Teams, and the fields for anything else; all scrubbed."""
        fields = {
            "text": self.text(),
            "event": self.event,
            "job": self.job,
            "run_id": self.run_id,
            "status": self.status,
            "failed_step": self.failed_step,
            "error": self.error,
            "url": self.url,
        }
        return {name: None if value is None else scrub(value, environ) for name, value in fields.items()}

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Alert:
        return cls(**{**data, "details": tuple(data.get("details") or ())})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- channels
class ChannelError(RuntimeError):
    """A channel did not take an alert; the message names the channel, never its secrets."""


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...


@dataclass(frozen=True)
class Webhook:
    url: str = field(repr=False)  # a Slack or Teams webhook URL is itself the secret
    timeout_s: float = TIMEOUT_S
    name: str = "webhook"

    def send(self, alert: Alert) -> None:
        try:
            response = requests.post(self.url, json=alert.payload(), timeout=self.timeout_s, allow_redirects=False)
        except requests.RequestException as error:
            raise ChannelError(f"webhook POST failed: {type(error).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise ChannelError(f"webhook answered HTTP {response.status_code}")


@dataclass(frozen=True)
class Email:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = TIMEOUT_S
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)  # default: system CAs
    name: str = "email"

    def message(self, alert: Alert) -> EmailMessage:
        fields = alert.payload()
        message = EmailMessage()
        message["Subject"] = f"[covid-assets] {first_line(fields['text'], 150)}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(str(fields["text"]) + "\n\n" + json.dumps({k: v for k, v in fields.items() if k != "text"}, indent=2))
        return message

    def send(self, alert: Alert) -> None:
        message = self.message(alert)
        context = self.tls_context or ssl.create_default_context()
        try:
            if self.port == IMPLICIT_TLS_PORT:
                with smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context) as smtp:
                    self._deliver(smtp, message, encrypted=True)
            else:
                with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                    smtp.ehlo()
                    encrypted = smtp.has_extn("starttls")
                    if encrypted:  # STARTTLS whenever the server offers it
                        smtp.starttls(context=context)
                        smtp.ehlo()
                    self._deliver(smtp, message, encrypted)
        except (smtplib.SMTPException, OSError) as error:
            raise ChannelError(f"SMTP {self.host}:{self.port}: {type(error).__name__}: {first_line(str(error), 200)}") from None

    def _deliver(self, smtp: smtplib.SMTP, message: EmailMessage, encrypted: bool) -> None:
        if self.user:
            if not encrypted and not is_loopback(self.host):
                raise ChannelError(
                    f"SMTP {self.host}:{self.port} offers no STARTTLS: refusing to send the password unencrypted"
                )
            smtp.login(self.user, self.password or "")
        smtp.send_message(message)


def channels_from_env(environ: Mapping[str, str] | None = None) -> tuple[list[Channel], list[str]]:
    """The configured channels, and what is wrong with the configuration (a channel left out)."""
    environ = os.environ if environ is None else environ
    value = {name: environ.get(variable, "").strip() for name, variable in SMTP_ENV.items()}
    channels: list[Channel] = []
    problems: list[str] = []
    if url := environ.get(WEBHOOK_ENV, "").strip():
        if url.startswith(("https://", "http://")):
            channels.append(Webhook(url))
        else:
            problems.append(f"{WEBHOOK_ENV} is not an http(s) URL: webhook alerts are off")
    if value["host"]:
        recipients = tuple(address.strip() for address in value["recipients"].split(",") if address.strip())
        try:
            port = int(value["port"] or DEFAULT_SMTP_PORT)
        except ValueError:
            port = 0
        if not recipients:
            problems.append(f"{SMTP_ENV['host']} is set but {SMTP_ENV['recipients']} is empty: email alerts are off")
        elif not 0 < port < 65536:
            problems.append(f"{SMTP_ENV['port']}={value['port']!r} is not a port: email alerts are off")
        else:
            sender = value["sender"] or value["user"] or f"covid-assets@{socket.getfqdn()}"
            channels.append(Email(value["host"], port, sender, recipients, value["user"] or None, value["password"] or None))
    return channels, problems


def deliver(alert: Alert, channels: Sequence[Channel], logger: logging.Logger | None = None) -> list[str]:
    """Send on every channel; returns the names of those that failed (logged, for a later retry)."""
    logger = logger or log
    failed = []
    for channel in channels:
        try:
            channel.send(alert)
        except Exception as error:  # a channel's failure is logged and retried, never raised
            logger.warning(f"alert {alert.event} ({alert.run_id or 'no run'}): {channel.name} failed: {scrub(str(error))}")
            failed.append(channel.name)
        else:
            logger.info(f"alert {alert.event} ({alert.run_id or 'no run'}) sent by {channel.name}")
    return failed
