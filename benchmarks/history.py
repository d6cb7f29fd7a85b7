"""Measurement 9: the cost of the revision history (covid_assets/datasets/history.py) on COVID-shaped data.

    ./dev bench --only 9                                   # in the suite's table (benchmarks/run.py)
    python benchmarks/history.py [--rows 243000] [--loads 30] [--reps 3]   # alone, with the as-of plan

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

The warehouse is a throwaway embedded Postgres, or `COVID_BENCH_DB_URL`; the data is the suite's
synthetic dataset (benchmarks/dataset.py).
"""

from __future__ import annotations

import argparse
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
from benchmarks.measure import Timing  # noqa: E402
from benchmarks.pg import Postgres  # noqa: E402
from benchmarks.report import Row, notes, text_table, verdict  # noqa: E402
from covid_assets.datasets import load  # noqa: E402
from covid_assets.datasets.history import HistoryNames  # noqa: E402

PAGE_ROWS = 50_000
REVISED_SHARE = 0.01
LOADS_DEFAULT = 30
MAX_WRITE_GROWTH = 1.2  # history adds at most 20% to the base-table write
MAX_AS_OF = 2.0  # an as-of read at most 2x reading the base table
MAX_SIZE = 1.05  # versions at most (base rows + changed rows) x 1.05
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


# ----------------------------------------------------------------------------- 1. the daily refresh
def daily_refresh(pg: Postgres, frame: pd.DataFrame, reps: int, log) -> dict[bool, dict[str, Timing]]:
    """Per history off/on: Timings of the base-table write and of the whole load."""
    before = yesterday(frame)
    timings = {keep: {"write": Timing(), "load": Timing()} for keep in (False, True)}
    for rep in range(reps):
        for keep_history in (False, True):  # alternated, so drifting load hits both
            with pg.fresh("history_refresh") as url:
                run_load(url, before, keep_history=keep_history)
                vacuum(url)
                phases: dict[str, float] = {}
                counts = run_load(url, frame, keep_history=keep_history, phases=phases)
                for name, seconds in phases.items():
                    timings[keep_history][name].samples.append(seconds)
                log(f"9. daily refresh rep {rep + 1}, history {'on ' if keep_history else 'off'}: write {phases['write']:.3f} s, "
                    f"load {phases['load']:.3f} s; {counts}")
    return timings


def refresh_rows(timings: dict[bool, dict[str, Timing]], rows: int) -> list[Row]:
    off, on = timings[False], timings[True]
    growth = on["write"].median / off["write"].median
    whole = f"whole load (land, gate, publish, merge, commit) {off['load'].median:.3f} s without, {on['load'].median:.3f} s with"
    return [
        Row("9a", "daily refresh (1% revised + latest day): base-table write, no history", off["write"], rows,
            note=f"merge + commit, as a run's step does it, into yesterday's table; {whole}"),
        Row("9b", "the same write, keeping history", on["write"], rows, ratio=f"{growth:.2f}× 9a",
            target=f"≤ {MAX_WRITE_GROWTH:.2f}× 9a", verdict=verdict(growth <= MAX_WRITE_GROWTH)),
    ]


def vacuum(url: str) -> None:
    """VACUUM ANALYZE, then CHECKPOINT: the loads' dirty pages are written before anything is timed,
    not by the checkpointer in the middle of a timed read."""
    with adbc.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")


# ----------------------------------------------------------------------------- 2 and 3. after many loads
def fetch_timings(url: str, statements: dict[str, str], reps: int) -> dict[str, tuple[Timing, int]]:
    """Seconds to fetch each statement's rows into Arrow, `reps` rounds after one warm-up round, and
    the row counts. The statements take turns within a round, so drifting load hits them alike."""
    timings, rows = {name: Timing() for name in statements}, {}
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        for rep in range(reps + 1):
            for name, statement in statements.items():
                started = time.perf_counter()
                cursor.execute(statement)
                rows[name] = cursor.fetch_arrow_table().num_rows
                if rep:
                    timings[name].samples.append(time.perf_counter() - started)
    return {name: (timings[name], rows[name]) for name in statements}


def scalar(url: str, statement: str):
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchall()[0][0] if cursor.description else None


def plan(url: str, statement: str) -> str:
    """EXPLAIN ANALYZE of a read (psycopg: ADBC sends a query as COPY, which EXPLAIN cannot be)."""
    with psycopg.connect(url) as connection:
        lines = connection.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement).fetchall()
    return "\n".join(f"      {line}" for (line,) in lines)


def history_after_loads(pg: Postgres, frame: pd.DataFrame, loads: int, reps: int, log) -> list[Row]:
    """Load the table, revise it `loads` times; time as-of reads of a past load against the base table, size the history."""
    with pg.fresh("history_loads") as url:
        current = frame
        run_load(url, current, keep_history=True)
        loading = Timing()
        started = time.perf_counter()
        for n in range(loads):
            current = revised(current, seed=100 + n)
            run_load(url, current, keep_history=True)
        loading.samples.append(time.perf_counter() - started)
        log(f"9. {loads} loads of {REVISED_SHARE:.0%} revisions in {loading.median:.1f} s")
        vacuum(url)
        past = 1 + loads // 2
        committed_at = scalar(url, f"SELECT committed_at::text FROM {LOADS} WHERE load_id = {past}")
        fetched = fetch_timings(url, {
            "base": f"SELECT * FROM {BASE}",
            "as_of": f"SELECT * FROM {AS_OF}('{committed_at}')",
            "at_load": f"SELECT * FROM {AT_LOAD}({past})",
        }, reps)
        (base, base_rows), (as_of, as_of_rows), (at_load, at_load_rows) = fetched["base"], fetched["as_of"], fetched["at_load"]
        log("9. plan of the _as_of read:\n" + plan(url, f"SELECT * FROM {AS_OF}('{committed_at}')"))
        versions = scalar(url, f"SELECT count(*) FROM {HISTORY}")
        changed = int(scalar(url, f"SELECT sum(rows_added + rows_revised)::bigint FROM {LOADS} WHERE load_id > 1"))
        sizes = {name: [scalar(url, f"SELECT pg_{kind}_size('{name}')") / 2**20 for kind in ("table", "indexes")] for name in (BASE, HISTORY)}
    size = versions / (base_rows + changed)
    after = f"after {loads} loads of {REVISED_SHARE:.0%} revisions"
    return [
        Row("9c", f"base table fetched (ADBC → Arrow), {after}", base, base_rows),
        Row("9d", f"_as_of(a past load's commit) fetched (load {past} of {loads + 1})", as_of, as_of_rows,
            ratio=f"{as_of.median / base.median:.2f}× 9c", target=f"≤ {MAX_AS_OF:g}× 9c",
            verdict=verdict(as_of.median <= MAX_AS_OF * base.median)),
        Row("9e", f"_at_load({past}) fetched", at_load, at_load_rows, ratio=f"{at_load.median / base.median:.2f}× 9c",
            target=f"≤ {MAX_AS_OF:g}× 9c", verdict=verdict(at_load.median <= MAX_AS_OF * base.median)),
        Row("9f", f"history size {after} (time: the {loads} loads)", loading, None,
            ratio=f"{versions:,} versions = {size:.3f}× base + changed", target=f"≤ {MAX_SIZE:g}× base + changed rows",
            verdict=verdict(size <= MAX_SIZE),
            note=f"{base_rows:,} base rows + {changed:,} changed = {base_rows + changed:,}; "
            + "; ".join(f"{name} table {heap:.1f} MB, indexes {index:.1f} MB" for name, (heap, index) in sizes.items())),
    ]


# ----------------------------------------------------------------------------- the measurement
def history(pg: Postgres, frame: pd.DataFrame, reps: int, log, loads: int = LOADS_DEFAULT) -> list[Row]:
    """Measurement 9: rows 9a-9f."""
    log(f"9. daily refresh, {len(frame):,} rows, {REVISED_SHARE:.0%} revised + the latest day, with and without history")
    rows = refresh_rows(daily_refresh(pg, frame, reps, log), len(frame))
    log(f"9. {loads} loads, then as-of reads and the history's size")
    return rows + history_after_loads(pg, frame, loads, reps + 2, log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=243_000)
    parser.add_argument("--loads", type=int, default=LOADS_DEFAULT)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    pg = Postgres()
    try:
        print(pg.describe())
        rows = history(pg, generate(args.rows), args.reps, lambda line: print(line, flush=True), args.loads)
    finally:
        pg.stop()
    print(text_table(rows))
    print("\n".join(notes(rows)))


if __name__ == "__main__":
    main()
