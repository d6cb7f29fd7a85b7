"""The cost of the revision history (covid_assets/datasets/history.py) on COVID-shaped data.

    python benchmarks/history.py [--rows 243000] [--loads 30] [--reps 3]

Three figures, each against its target:

1. **A daily refresh with and without history.** The base table holds yesterday's load (written
   untimed into a fresh database, with or without history: without the latest day, 1% of the
   rows' counts different, as benchmark 2a), then today's full delivery is loaded as a run does
   (land, gate, publish raw, merge, commit on one connection). Timed: the base-table write, i.e.
   the merge and the commit (the staging steps before it are the same with or without history),
   and the whole load. Target: history adds at most 20% to the base-table write.
2. **As-of reads.** The table is loaded once and then revised `--loads` times, 1% of the rows'
   counts each time (through the loader, with history). Timed: fetching (ADBC, into Arrow) the
   table as of a past load's commit (`_as_of`, the middle load) and by load id (`_at_load`), vs
   fetching the base table. Target: at most 2x the base table.
3. **History size** after those loads: versions vs base rows + rows changed since the first load.
   Target: at most (base rows + changed rows) x 1.05 versions. The bytes of the base table and
   the history (table, indexes) are shown beside it: a version carries two load ids more than a
   row, and the history has two indexes more than the base table (the load ids).

The warehouse is a throwaway embedded Postgres, or `COVID_BENCH_DB_URL`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import adbc_driver_postgresql.dbapi as adbc  # noqa: E402
import pandas as pd  # noqa: E402
import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks.dataset import generate  # noqa: E402
from benchmarks.dataset_load import covid_shaped_spec, timed_load  # noqa: E402
from benchmarks.pg import Postgres  # noqa: E402
from covid_assets.datasets import load  # noqa: E402
from covid_assets.datasets.history import HistoryNames  # noqa: E402

PAGE_ROWS = 50_000
REVISED_SHARE = 0.01
COUNTS = ("new_results_reported", "total_results_reported")
SPEC = covid_shaped_spec()
NAMES = HistoryNames.of(SPEC.base)
BASE, HISTORY, LOADS, AS_OF, AT_LOAD = (name.as_string() for name in (NAMES.base, NAMES.history, NAMES.loads, NAMES.as_of, NAMES.at_load))


# ----------------------------------------------------------------------------- deliveries
def pages(frame: pd.DataFrame) -> Iterator[pa.Table]:
    """The delivery as the loader takes it: all-string Arrow pages of PAGE_ROWS rows."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for start in range(0, table.num_rows, PAGE_ROWS):
        yield table.slice(start, PAGE_ROWS)


def revised(frame: pd.DataFrame, seed: int, share: float = REVISED_SHARE) -> pd.DataFrame:
    """`share` of the rows with both counts one higher (rows whose counts are blank left alone)."""
    out = frame.copy()
    rows = out.sample(frac=share, random_state=seed).index
    for column in COUNTS:
        values = out.loc[rows, column]
        given = values.notna()
        out.loc[values[given].index, column] = (values[given].astype("int64") + 1).astype(str)
    return out


def yesterday(frame: pd.DataFrame) -> pd.DataFrame:
    """As benchmark 2a's previous load: without the latest day, 1% of the rows revised."""
    dates = frame["date"].str.slice(0, 10)
    return revised(frame[dates < dates.max()].reset_index(drop=True), seed=1)


# ----------------------------------------------------------------------------- one load
def run_load(url: str, frame: pd.DataFrame, *, keep_history: bool, phases: dict[str, float] | None = None) -> load.MergeCounts:
    """land, gate, publish, merge, commit on one connection, as a run's step does; `phases` gets the
    base-table write (merge + commit) and the whole load's seconds."""
    each: dict[str, float] = {}
    _, counts = timed_load(url, SPEC, pages(frame), allow_shrink=True, keep_history=keep_history, phases=each)
    if phases is not None:
        phases["write"] = each["merge_base"] + each["commit"]
        phases["load"] = sum(each.values())
    return counts


def median(values: list[float]) -> float:
    return statistics.median(values)


def daily_refresh(pg: Postgres, frame: pd.DataFrame, reps: int) -> dict[bool, dict[str, list[float]]]:
    before = yesterday(frame)
    timings: dict[bool, dict[str, list[float]]] = {True: {"write": [], "load": []}, False: {"write": [], "load": []}}
    for rep in range(reps):
        for keep_history in (False, True):  # alternated, so drifting load hits both
            with pg.fresh("history_refresh") as url:
                run_load(url, before, keep_history=keep_history)
                vacuum(url)
                phases: dict[str, float] = {}
                counts = run_load(url, frame, keep_history=keep_history, phases=phases)
                for name, seconds in phases.items():
                    timings[keep_history][name].append(seconds)
                print(f"  refresh rep {rep + 1}, history {'on ' if keep_history else 'off'}: write {phases['write']:.3f} s, "
                      f"load {phases['load']:.3f} s; {counts}", flush=True)
    return timings


def vacuum(url: str) -> None:
    with adbc.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


# ----------------------------------------------------------------------------- as-of reads
def fetch_seconds(url: str, statement: str, reps: int) -> tuple[float, int]:
    """Median seconds to fetch the statement's rows into Arrow (after one warm-up), and the row count."""
    samples, rows = [], 0
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        for rep in range(reps + 1):
            started = time.perf_counter()
            cursor.execute(statement)
            rows = cursor.fetch_arrow_table().num_rows
            if rep:
                samples.append(time.perf_counter() - started)
    return median(samples), rows


def scalar(url: str, statement: str):
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchall()[0][0] if cursor.description else None


def plan(url: str, statement: str) -> str:
    """EXPLAIN ANALYZE of a read (psycopg: ADBC sends a query as COPY, which EXPLAIN cannot be)."""
    with psycopg.connect(url) as connection:
        lines = connection.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement).fetchall()
    return "\n".join(f"      {line}" for (line,) in lines)


def history_after_loads(pg: Postgres, frame: pd.DataFrame, loads: int, reps: int) -> None:
    with pg.fresh("history_loads") as url:
        current = frame
        run_load(url, current, keep_history=True)
        started = time.perf_counter()
        for n in range(loads):
            current = revised(current, seed=100 + n)
            run_load(url, current, keep_history=True)
        print(f"  {loads} loads of {REVISED_SHARE:.0%} revisions in {time.perf_counter() - started:.1f} s", flush=True)
        vacuum(url)
        past = 1 + loads // 2
        committed_at = scalar(url, f"SELECT committed_at::text FROM {LOADS} WHERE load_id = {past}")
        base_s, base_rows = fetch_seconds(url, f"SELECT * FROM {BASE}", reps)
        as_of_s, as_of_rows = fetch_seconds(url, f"SELECT * FROM {AS_OF}('{committed_at}')", reps)
        at_load_s, at_load_rows = fetch_seconds(url, f"SELECT * FROM {AT_LOAD}({past})", reps)
        print(f"\n2. as-of reads after {loads} loads (the table as of load {past} of {loads + 1})")
        print(f"   base table          {base_s:.3f} s ({base_rows:,} rows)")
        print(f"   _as_of(committed)   {as_of_s:.3f} s ({as_of_rows:,} rows) = {as_of_s / base_s:.2f}x base   target <= 2x  "
              f"{'PASS' if as_of_s <= 2 * base_s else 'MISS'}")
        print(f"   _at_load({past})       {at_load_s:.3f} s ({at_load_rows:,} rows) = {at_load_s / base_s:.2f}x base   target <= 2x  "
              f"{'PASS' if at_load_s <= 2 * base_s else 'MISS'}")
        print("   plan of the _as_of read:\n" + plan(url, f"SELECT * FROM {AS_OF}('{committed_at}')"))

        versions = scalar(url, f"SELECT count(*) FROM {HISTORY}")
        changed = int(scalar(url, f"SELECT sum(rows_added + rows_revised)::bigint FROM {LOADS} WHERE load_id > 1"))
        bound_rows = (base_rows + changed) * 1.05
        print(f"\n3. history size after {loads} loads")
        print(f"   versions {versions:,} = base {base_rows:,} + changed {changed:,} ({versions / (base_rows + changed):.3f}x)   "
              f"target <= {bound_rows:,.0f}  {'PASS' if versions <= bound_rows else 'MISS'}")
        for name in (BASE, HISTORY):
            heap, indexes = (scalar(url, f"SELECT pg_{kind}_size('{name}')") for kind in ("table", "indexes"))
            print(f"   {name:<36} table {heap / 2**20:5.1f} MB, indexes {indexes / 2**20:5.1f} MB "
                  f"({heap / (versions if name == HISTORY else base_rows):.0f} bytes a row)")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=243_000)
    parser.add_argument("--loads", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    pg = Postgres()
    try:
        print(pg.describe())
        frame = generate(args.rows)
        print(f"\n1. daily refresh, {args.rows:,} rows, {REVISED_SHARE:.0%} revised + the latest day (median of {args.reps})")
        timings = daily_refresh(pg, frame, args.reps)
        for name, what in (("write", "base-table write (merge + commit)"), ("load", "whole load (land, gate, publish, merge, commit)")):
            off, on = median(timings[False][name]), median(timings[True][name])
            target = f"   target <= 1.20x  {'PASS' if on <= 1.2 * off else 'MISS'}" if name == "write" else ""
            print(f"   {what:<48} without history {off:.3f} s, with {on:.3f} s = {on / off:.2f}x{target}")
        history_after_loads(pg, frame, args.loads, args.reps + 2)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
