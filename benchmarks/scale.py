"""Measurement 8: a declared dataset at the COVID size and at ten times it, wall time and peak RSS.

The synthetic PCR series (benchmarks/dataset.py) is declared like any Socrata dataset
(benchmarks/scale/defs.yaml), served by the local stand-in in its own process, and loaded by
`dagster job execute` of its job in a subprocess: the streaming path (pages COPYed into
staging, typed, guarded and merged in SQL), so memory should not grow with the rows.

Each size gets a fresh database and Dagster home; a first, untimed run creates the tables, and
each timed repetition is a forced full refresh (`skip_if_unchanged: false`) into them, the daily
case. Targets (issue: "any size"): peak RSS at the large size at most 400 MB and at most 1.3x
the small one's; wall time at most 12x the small one's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from benchmarks.measure import Timing, clean_env, run_process
from benchmarks.report import Row, verdict
from benchmarks.sections import REPO, Bench, BenchmarkError, table_counts
from benchmarks.scale_location import spec
from benchmarks.server import ServerProcess
from covid_assets.datasets.component import base_url_env, job_name, load_step_name

JOB = job_name(spec)
BASE_URL_ENV = base_url_env(spec.name)
TABLES = [spec.raw.qualified_name, spec.base.qualified_name]
RUN_CONFIG = {"ops": {load_step_name(spec): {"config": {"skip_if_unchanged": False}}}}
SCALE_ROWS = 2_500_000
MAX_RSS_MB = 400
MAX_RSS_GROWTH = 1.3
MAX_TIME_GROWTH = 12


def load_at_size(b: Bench, server: ServerProcess, rows: int) -> Timing:
    """Repetitions of a full refresh of the declared dataset served by `server` (`rows` rows)."""
    timing = Timing()
    with b.pg.fresh("scale") as url, tempfile.TemporaryDirectory(prefix="covid-bench-scale-home-") as home:
        Path(home, "dagster.yaml").write_text("")
        config = Path(home, "run_config.json")
        config.write_text(json.dumps(RUN_CONFIG))
        env = clean_env(COVID_DB_URL=url, DAGSTER_HOME=home, **{BASE_URL_ENV: server.base_url})
        argv = [sys.executable, "-m", "dagster", "job", "execute", "-m", "benchmarks.scale_location", "-j", JOB, "-c", str(config)]
        for label in ["first load (untimed)", *(f"repetition {rep + 1}" for rep in range(b.reps))]:
            b.log(f"8. declared dataset, {rows:,} rows: {label}")
            result = run_process(argv, env, cwd=str(REPO), timeout_s=3600)
            if result.returncode != 0 or "RUN_SUCCESS" not in result.stderr:
                raise BenchmarkError(f"the load of {rows:,} rows failed ({label}):\n{result.stderr[-4000:]}")
            if label.startswith("repetition"):
                timing.add(result)
        counts = table_counts(url, TABLES)
        if set(counts.values()) != {rows}:
            raise BenchmarkError(f"unexpected table sizes after loading {rows:,} rows: {counts}")
    return timing


def scale(b: Bench, large_rows: int, seed: int) -> list[Row]:
    small = load_at_size(b, b.server, b.n)
    b.log(f"8. generating {large_rows:,} rows and serving them")
    large_server = ServerProcess(large_rows, seed, b.latency_s)
    try:
        large = load_at_size(b, large_server, large_rows)
    finally:
        large_server.stop()
    small_rss, large_rss = small.peak_rss_mb or 0, large.peak_rss_mb or 0
    time_growth, rss_growth = large.median / small.median, large_rss / small_rss if small_rss else float("inf")
    ok = large_rss <= MAX_RSS_MB and rss_growth <= MAX_RSS_GROWTH and time_growth <= MAX_TIME_GROWTH
    how = f"`dagster job execute -j {JOB}` (subprocess), forced full refresh into existing tables; memory = the process tree"
    return [
        Row("8a", f"declared dataset, {b.n:,} rows: load (stream, type, merge in SQL)", small, b.n,
            note=f"{how}; peak RSS {small_rss:,.0f} MB ({small.rss_detail})"),
        Row(
            "8b", f"declared dataset, {large_rows:,} rows: load", large, large_rows,
            ratio=f"{time_growth:.1f}× 8a time, {rss_growth:.2f}× 8a RSS",
            target=f"RSS ≤ {MAX_RSS_MB} MB and ≤ {MAX_RSS_GROWTH}× 8a; time ≤ {MAX_TIME_GROWTH}× 8a",
            verdict=verdict(ok),
            note=f"peak RSS {large_rss:,.0f} MB ({large.rss_detail})",
        ),
    ]
