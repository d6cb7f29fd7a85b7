"""The one error type of the package, and how text a source supplied is quoted in it.

The server and an export file are not trusted: text from them reaches an error or a log line
only through :func:`clip` (about :data:`SOURCE_TEXT_LIMIT` characters, one line, no control
characters), so a hostile source can neither flood a message nor forge log lines.
"""

from __future__ import annotations

__all__ = ["SOURCE_TEXT_LIMIT", "SocrataError", "clip", "clip_body"]

# Source-provided text (messages, values, column names, page starts) quoted in errors and logs.
SOURCE_TEXT_LIMIT = 300


class SocrataError(Exception):
    """Any extraction failure shown to the user; the message says what, where and why.

    `url` (never containing the app token) and `status` are set when the
    failure was an HTTP request; `transient` is True when retries ran out on a
    problem that could go away by itself (throttling, 5xx, timeouts, resets).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.transient = transient


def clip(text: object, limit: int = SOURCE_TEXT_LIMIT) -> str:
    """Text a source supplied, fit to quote in an error or a log line.

    At most `limit` characters (and how many were cut), on one line, without
    control characters: a hostile server cannot flood a message or forge log lines.
    """
    raw = str(text)
    head = raw[:limit]
    clean = "".join(ch if ch.isprintable() else " " for ch in head)
    clean = " ".join(clean.split())
    return clean if len(raw) <= limit else f"{clean}... [{len(raw) - limit:,} more characters]"


def clip_body(body: bytes | bytearray, limit: int = SOURCE_TEXT_LIMIT) -> str:
    """The start of a response body as text, clipped like `clip` (decodes only what it shows)."""
    clean = clip(bytes(body[:limit]).decode("utf-8", errors="replace"), limit)
    return clean if len(body) <= limit else f"{clean}... [{len(body) - limit:,} more bytes]"
