"""The Socrata stand-in of the test suite (`covid_assets_tests.support.FakeSocrata`), in its own process.

Serving from a separate process keeps the server's Python work (and its GIL) out of the
measurements of in-process clients, as a real server would be. The benchmark drives it
through a pipe: change the per-request latency, read what was requested (with response
sizes), and "publish" a change to the dataset (for the unchanged-source measurement).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from dataclasses import dataclass
from typing import Any

from covid_assets_tests.support import FakeSocrata, RecordedRequest


@dataclass(frozen=True)
class Served:
    """One answered request: what was asked and how big the (uncompressed) body was."""

    target: str  # "count", "page", "views" or "unknown"
    params: dict[str, str]
    status: int
    bytes: int

    @property
    def small(self) -> bool:
        """A metadata or count query, or a page of at most 10 rows, under 64 kB: not a data transfer."""
        return self.bytes <= 65_536 and (self.target != "page" or int(self.params.get("$limit", "1000")) <= 10)


class _Log:
    """Each answered request, with its size (the stand-in's `on_response` hook)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served: list[Served] = []

    def __call__(self, request: RecordedRequest, status: int, size: int) -> None:
        with self.lock:
            self.served.append(Served(request.target, request.params, status, size))

    def take(self) -> list[Served]:
        with self.lock:
            served, self.served = self.served, []
        return served


def _serve(conn: Any, rows: int, seed: int, latency_s: float, compress: bool) -> None:
    from benchmarks.dataset import generate, iter_rows

    frame = generate(rows, seed)
    fake = FakeSocrata(iter_rows(frame), latency_s=latency_s, compress=compress)
    del frame
    served = _Log()
    fake.on_response = served
    fake.start()
    conn.send(("ready", fake.base_url))
    bumps = 0
    original_last: dict[str, Any] | None = None
    while True:
        try:
            command, argument = conn.recv()
        except EOFError:
            break
        if command == "stop":
            break
        if command == "served":
            conn.send(served.take())
        elif command == "bump":
            # A new version of the source: the metadata's rowsUpdatedAt moves on and the last
            # row's counts are revised (same row count, as when a state corrects a day).
            bumps += 1
            if original_last is None:
                original_last = fake.row(-1)
            fake.set_row(-1, original_last if bumps % 2 == 0 else _revised(original_last))
            fake.rows_updated_at += 3600
            conn.send(fake.rows_updated_at)
        else:
            conn.send(ValueError(f"unknown command {command!r}"))
    fake.stop()


def _revised(row: dict[str, Any]) -> dict[str, Any]:
    """The row with one more result that day (daily and cumulative count both +1)."""
    return {
        name: str(int(value) + 1) if name in ("new_results_reported", "total_results_reported") else value
        for name, value in row.items()
    }


class ServerProcess:
    """Start with `ServerProcess(rows, seed, latency_s)`; `base_url` is the Socrata domain to use."""

    def __init__(self, rows: int, seed: int, latency_s: float, compress: bool = False) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, rows, seed, latency_s, compress), name="fake-socrata", daemon=True
        )
        self._process.start()
        child.close()
        status, self.base_url = self._conn.recv()
        assert status == "ready"

    def _ask(self, command: str, argument: Any = None) -> Any:
        self._conn.send((command, argument))
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def served(self) -> list[Served]:
        """The requests answered since the last call (and clears the list)."""
        return self._ask("served")

    def bump(self) -> int:
        """Publish a new version of the dataset (one row revised); returns the new rowsUpdatedAt."""
        return self._ask("bump")

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
