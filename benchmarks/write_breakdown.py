#!/usr/bin/env python
"""Where the IO manager's write of the base table (benchmark 2a) spends its time.

    python benchmarks/write_breakdown.py [--reps 5] [--rows 243000]

Same scenario as 2a (the table holds yesterday's load, 1 % of it revised; today's frame
replaces it), with each stage of `PandasArrowTypeHandler.handle_output` timed on its own, on a
throwaway embedded Postgres (or $COVID_BENCH_DB_URL). Prints the median of each stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adbc_driver_postgresql.dbapi as adbc  # noqa: E402

from benchmarks.dataset import DEFAULT_ROWS, DEFAULT_SEED, generate, typed_base  # noqa: E402
from benchmarks.pg import Postgres  # noqa: E402
from benchmarks.sections import BASE_SLICE, io_manager_write, previous_load  # noqa: E402
from covid_assets.assets.tables import PRIMARY_KEY  # noqa: E402
from covid_assets.storage import postgres_io  # noqa: E402
from covid_assets.storage.keyed_diff import diff_by_key  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    args = parser.parse_args()
    frame = typed_base(generate(args.rows, DEFAULT_SEED))
    yesterday = previous_load(frame)
    key = list(PRIMARY_KEY)
    stages: dict[str, list[float]] = {}

    def timed(stage: str, work: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = work()
        stages.setdefault(stage, []).append(time.perf_counter() - started)
        return result

    pg = Postgres()
    try:
        for _ in range(args.reps):
            with pg.fresh("breakdown") as url:
                io_manager_write(url, yesterday)
                with adbc.connect(url) as connection:
                    table, _ = timed("DataFrame -> Arrow", lambda: postgres_io.to_postgres_arrow(frame))
                    stored = timed("read the stored rows back", lambda: postgres_io.read_arrow(connection, BASE_SLICE).cast(table.schema))
                    inserts, deletes = timed("plan (keyed_diff.diff_by_key)", lambda: diff_by_key(stored, table, key))
                    timed("merge_rows (read back + plan + writes)", lambda: postgres_io.merge_rows(connection, BASE_SLICE, table, key))
                    timed("COMMIT", connection.commit)
    finally:
        pg.stop()
    print(f"{len(frame):,} rows; {inserts.num_rows:,} to insert, {deletes.num_rows:,} to delete; median of {args.reps}")
    for stage, samples in stages.items():
        print(f"  {stage:42s} {statistics.median(samples):.3f} s")


if __name__ == "__main__":
    main()
