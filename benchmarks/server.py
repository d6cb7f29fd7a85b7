"""The Socrata look-alike of the test suite (`covid_assets_tests/fake_socrata.py`), in its own process.

Serving from a separate process keeps the server's Python work (and its GIL) out of the
measurements of in-process clients, as a real server would be. The benchmark drives it
through a pipe: change the per-request latency, read what was requested (with response
sizes), and "publish" a change to the dataset (for the unchanged-source measurement).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from covid_assets_tests.fake_socrata import FakeSocrata, _Handler, _target


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


class _MeasuringHandler(_Handler):
    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super()._send(status, body, headers)
        fake: _MeasuringFake = self.fake  # type: ignore[assignment]
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        with fake._lock:
            fake.served.append(Served(_target(fake.dataset_id, path, params), params, status, len(body)))


class _MeasuringFake(FakeSocrata):
    """FakeSocrata whose handler also records each response's size."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served: list[Served] = []

    def handler_base(self) -> type:
        return _MeasuringHandler


def _serve(conn: Any, rows: int, seed: int, latency_s: float, compress: bool) -> None:
    from benchmarks.dataset import generate, iter_rows

    frame = generate(rows, seed)
    fake = _MeasuringFake(iter_rows(frame), latency_s=latency_s, compress=compress)
    del frame
    fake.start()
    conn.send(("ready", fake.base_url))
    bumps = 0
    original_last: bytes | None = None
    while True:
        try:
            command, argument = conn.recv()
        except EOFError:
            break
        if command == "stop":
            break
        if command == "served":
            with fake._lock:
                served, fake.served = fake.served, []
            conn.send(served)
        elif command == "bump":
            # A new version of the source: the metadata's rowsUpdatedAt moves on and the last
            # row's counts are revised (same row count, as when a state corrects a day).
            bumps += 1
            with fake._lock:
                encoded = list(fake._encoded)
                if original_last is None:
                    original_last = encoded[-1]
                encoded[-1] = original_last if bumps % 2 == 0 else _revised(original_last)
                fake._encoded = encoded
                fake.rows_updated_at += 3600
            conn.send(fake.rows_updated_at)
        else:
            conn.send(ValueError(f"unknown command {command!r}"))
    fake.stop()


def _revised(encoded_row: bytes) -> bytes:
    """The row with one more result that day (daily and cumulative count both +1)."""
    row = json.loads(encoded_row)
    for field in ("new_results_reported", "total_results_reported"):
        if field in row:
            row[field] = str(int(row[field]) + 1)
    return json.dumps(row, separators=(",", ":")).encode()


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
