"""The result table (printed and written to docs/BENCHMARKS.md) and the machine description."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata

import psutil

from benchmarks.measure import Timing


@dataclass
class Row:
    """One line of the table. `timing` None = not measured (then `note` says why)."""

    key: str
    name: str
    timing: Timing | None
    rows: int | None = None  # rows processed, for rows/s
    ratio: str = ""  # e.g. "1.35× ADBC"
    target: str = ""
    verdict: str = ""  # PASS / MISS / "" (informational)
    note: str = ""

    @property
    def median(self) -> str:
        return f"{self.timing.median:.3f}" if self.timing else "n/a"

    @property
    def spread(self) -> str:
        return self.timing.spread if self.timing else ""

    @property
    def rows_per_s(self) -> str:
        if not self.timing or not self.rows or self.timing.median <= 0:
            return ""
        return f"{self.rows / self.timing.median:,.0f}"

    @property
    def rss(self) -> str:
        mb = self.timing.peak_rss_mb if self.timing else None
        return f"{mb:,.0f}" if mb is not None else ""


HEADERS = ("#", "measurement", "median s", "min–max s", "rows/s", "peak RSS MB", "ratio", "target", "result")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.key, row.name, row.median, row.spread, row.rows_per_s, row.rss, row.ratio, row.target, row.verdict)


def text_table(rows: list[Row]) -> str:
    cells = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    right = {2, 3, 4, 5}
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS) + " |", "| " + " | ".join(["---"] * len(HEADERS)) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def notes(rows: list[Row]) -> list[str]:
    return [f"{r.key}: {r.note}" for r in rows if r.note]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    load = os.getloadavg()
    return {
        "cpus": f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'})",
        "cpu model": _cpu_model(),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }


def code_version(root) -> str:
    """The commit measured, and whether the pipeline's files differed from it (read-only git)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "covid_assets")
    return f"{commit}" + (" + uncommitted changes in covid_assets/" if dirty else "")


def versions(postgres: str) -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "dagster": _version("dagster"),
        "pandas": _version("pandas"),
        "pyarrow": _version("pyarrow"),
        "adbc-driver-postgresql": _version("adbc-driver-postgresql"),
        "psycopg / psycopg2": f"{_version('psycopg')} / {_version('psycopg2-binary')}",
        "SQLAlchemy": _version("SQLAlchemy"),
        "requests": _version("requests"),
        "postgres": postgres,
    }
