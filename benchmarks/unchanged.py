"""Measurement 6: a scheduled run when the source has not changed since the last load.

A scheduled run is what the daemon launches for a tick of the `daily_refresh` schedule: the
benchmark evaluates the schedule (its RunRequest: job, run config, tags) and runs exactly that
with the CLI, `dagster job execute -m covid_assets.definitions -j <job> -c <run config> --tags <tags>`,
as a subprocess like measurement 5. Per repetition, in one Dagster instance and one database:

  6a. the source has changed (the fake server bumps `rowsUpdatedAt` and revises one row):
      a scheduled run that must fetch everything and write at least the raw and base tables
      (checked, so that the "no write" test below is known to see writes);
  6b. nothing changed since 6a: the same scheduled run again. Target: at most two small requests
      to the source, no table written, wall time <= 40% of 6a.
  6c. Dagster's floor, for scale: a run of one asset that does nothing (benchmarks/floor_location.py),
      with the same CLI, instance and executor. No target.

"Writes no table" is checked in Postgres: no table of the eight, nor the base table's history
and loads, is recreated (same OID) and none holds a row version created after the run started
(xmin newer than a transaction id taken before it), which a DELETE + reload would leave; the
revisions view is not redefined (its rewrite rule is no newer either).

Whether the pipeline *has* change detection is decided from the code, not from the timing: the
raw asset's run config must have a `skip_if_unchanged` field (CHANGE_DETECTION_FIELD). Without
one, 6 prints "n/a (change detection not built yet)" (override with --scheduled on/off).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg

from benchmarks.floor_location import FLOOR_JOB
from benchmarks.measure import Timing
from benchmarks.report import Row, verdict
from benchmarks.sections import Bench, BenchmarkError, table_counts
from covid_assets.assets.tables import ALL_TABLES, BASE
from covid_assets.datasets.history import HistoryNames

CHANGE_DETECTION_FIELD = "skip_if_unchanged"
SCHEDULE_NAME = "daily_refresh"
NOT_BUILT = "n/a (change detection not built yet)"


def change_detection_available() -> bool:
    """True when the raw asset can be told to skip an unchanged source (a run-config field)."""
    from covid_assets.assets.tables import RAW_ASSET_KEY
    from covid_assets.definitions import defs

    assets_def = defs.resolve_assets_def(RAW_ASSET_KEY)
    field = assets_def.op.config_field
    fields = getattr(field.config_type, "fields", {}) if field is not None else {}
    return CHANGE_DETECTION_FIELD in fields


def scheduled_run_request() -> tuple[str, dict, dict[str, str]]:
    """The job, run config and tags of one tick of the daily schedule, as the daemon would launch it."""
    from dagster import DagsterInstance, build_schedule_context

    from covid_assets.definitions import defs

    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    with DagsterInstance.ephemeral() as instance:
        data = schedule.evaluate_tick(build_schedule_context(instance=instance))
    requests = list(data.run_requests or [])
    if len(requests) != 1:
        raise BenchmarkError(f"schedule {SCHEDULE_NAME} produced {len(requests)} run requests, expected 1")
    request = requests[0]
    tags = {**schedule.tags, **(request.tags or {}), "dagster/schedule_name": SCHEDULE_NAME}
    return request.job_name or schedule.job_name, dict(request.run_config or {}), tags


# Every relation a run may write: the eight tables (the revisions a view), the history and the loads.
WATCHED = [*ALL_TABLES, *(f"{schema}.{table}" for schema, table in HistoryNames.of(BASE).tables)]
# Row versions of a table; of a view, its definition (CREATE OR REPLACE VIEW rewrites its pg_rewrite row).
_VERSIONS = {"r": "SELECT count(*) FROM {} WHERE xmin::text::bigint >= %s",
             "v": "SELECT count(*) FROM pg_rewrite WHERE ev_class = '{}'::regclass AND xmin::text::bigint >= %s"}


def _write_marks(url: str) -> tuple[int, dict[str, int]]:
    """A transaction id no earlier write can have, and the OID of each relation."""
    with psycopg.connect(url, autocommit=True) as conn:
        xid = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])
        oids = {t: conn.execute("SELECT %s::regclass::oid", (t,)).fetchone()[0] for t in WATCHED}
    return xid, oids


def _tables_written(url: str, marks: tuple[int, dict[str, int]]) -> list[str]:
    xid, oids = marks
    written = []
    with psycopg.connect(url, autocommit=True) as conn:
        for table in WATCHED:
            oid, kind = conn.execute("SELECT oid, relkind::text FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
            newer = conn.execute(_VERSIONS[kind].format(table), (xid % 2**32,)).fetchone()[0]
            if oid != oids[table] or newer:
                written.append(table.split(".")[-1])
    return written


def job_execute(module: str, job: str, *options: str) -> list[str]:
    """`dagster job execute` of `job` in the code location `module`, as measurements 6a-6c run it."""
    return [sys.executable, "-m", "dagster", "job", "execute", "-m", module, "-j", job, *options]


def scheduled_unchanged(b: Bench, mode: str) -> list[Row]:
    available = change_detection_available()
    if mode == "off" or (mode == "auto" and not available):
        note = NOT_BUILT if not available else "not run (--scheduled off)"
        return [Row("6", "scheduled run, source unchanged", None, target="≤ 2 small requests; no write; ≤ 40% of 6a", note=note)]

    job, run_config, tags = scheduled_run_request()
    deployment = b.deployment()  # the one measurement 5 used, when it ran: its runs are the last load
    config_file = Path(deployment.home, "scheduled_run.yaml")
    config_file.write_text(json.dumps(run_config))  # JSON is YAML
    argv = job_execute("covid_assets.definitions", job, "-c", str(config_file), "--tags", json.dumps(tags))
    floor_argv = job_execute("benchmarks.floor_location", FLOOR_JOB)
    full, unchanged, floor = Timing(), Timing(), Timing()
    info: dict[str, object] = {"requests": [], "written": [], "skipped_message": []}
    if not deployment.loaded:
        b.log("6. scheduled runs: first load (untimed)")
        deployment.run(argv, "first load")
    b.server.served()
    for rep in range(b.reps):
        b.server.bump()
        marks = _write_marks(deployment.url)
        b.log(f"6. scheduled run, source changed, repetition {rep + 1}")
        result = deployment.run(argv, f"changed {rep + 1}")
        full.add(result)
        info["full_requests"] = len(b.server.served())
        written = _tables_written(deployment.url, marks)
        if not {"raw_covid_test_results", "covid_test_results"} <= set(written):  # the detector must see a real refresh
            raise BenchmarkError(f"the scheduled run on a changed source wrote only {written or 'nothing'}")
        marks = _write_marks(deployment.url)
        b.log(f"6. scheduled run, source unchanged, repetition {rep + 1}")
        result = deployment.run(argv, f"unchanged {rep + 1}")
        unchanged.add(result)
        info["requests"].append(b.server.served())
        info["written"].append(_tables_written(deployment.url, marks))
        info["skipped_message"].append("source unchanged" in result.stderr.lower())
        b.log(f"6. Dagster's floor (a run of one asset that does nothing), repetition {rep + 1}")
        floor.add(deployment.run(floor_argv, f"floor {rep + 1}"))
    counts = table_counts(deployment.url, ALL_TABLES)
    if counts["covid_19.covid_test_results"] != b.n:
        raise BenchmarkError(f"unexpected table sizes after the scheduled runs: {counts}")

    worst_requests = max(info["requests"], key=len)
    small = all(len(served) <= 2 and all(s.small for s in served) for served in info["requests"])
    nothing_written = not any(info["written"])
    ratio = unchanged.median / full.median
    described = ", ".join(f"{s.target} {s.bytes:,} B" for s in worst_requests) or "none"
    written = sorted({t for ts in info["written"] for t in ts})
    return [
        Row(
            "6a", "scheduled run, source changed (full refresh)", full, b.n,
            note=f"`dagster job execute -j {job}` with the schedule's run config and tags; "
            f"{info['full_requests']} requests to the source",
        ),
        Row(
            "6b", "scheduled run, source unchanged", unchanged, None,
            ratio=f"{ratio:.2f}× 6a", target="≤ 2 small requests; no write; ≤ 0.4× 6a",
            verdict=verdict(small and nothing_written and ratio <= 0.4),
            note=(
                f"requests: {described}; tables written: {', '.join(written) or 'none'}"
                + ("; the run logged 'source unchanged'" if all(info["skipped_message"]) else "")
                + f"; {unchanged.rss_detail}"
            ),
        ),
        Row(
            "6c", "Dagster's floor: a run of one asset that does nothing", floor, None,
            ratio=f"{floor.median / full.median:.2f}× 6a",
            note=f"`dagster job execute -m benchmarks.floor_location -j {FLOOR_JOB}` in the same instance; "
            f"6b − 6c = {unchanged.median - floor.median:.2f} s is what the unchanged COVID run adds; {floor.rss_detail}",
        ),
    ]
