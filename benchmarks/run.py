#!/usr/bin/env python
"""The benchmark suite: `./dev bench` (= `python benchmarks/run.py`). Not part of the test suite.

Builds a full-size synthetic dataset (benchmarks/dataset.py), serves it from the test suite's
Socrata look-alike in a separate process with per-request latency, starts a throwaway embedded
Postgres (or uses $COVID_BENCH_DB_URL), and measures, each as the median of --reps repetitions
with its reference in the same run:

  1. extraction: the project's client vs sequential 1,000-row pages without $order
  2. writing the base table: IO manager vs bare ADBC append vs execute_values vs to_sql
  3. reading it back: IO manager vs ADBC fetch_arrow_table -> pandas
  4. the five summaries (pandas, and the same in SQL)
  5. end to end: `dagster asset materialize` of the eight COVID tables (subprocess) vs the usual approach as
     one script (benchmarks/naive.py), wall time and peak RSS of the process tree
  6. a scheduled run when the source is unchanged (n/a until change detection exists)
  7. rewriting one daily partition of the base table vs a full write
  8. a declared dataset (benchmarks/scale/defs.yaml) at --rows and at --scale-rows: wall time and peak RSS
  9. the revision history: a daily refresh's base-table write with and without it, as-of reads of a past
     load after 30 loads vs the base table, and the history's size (benchmarks/history.py)

Prints a table and writes it, with machine, versions and the command, into docs/BENCHMARKS.md
(between the markers, keeping the hand-written text around them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- benchmark results: begin (written by benchmarks/run.py) -->", "<!-- benchmark results: end -->"


def parse_args(argv: list[str]) -> argparse.Namespace:
    from benchmarks.dataset import DEFAULT_ROWS, DEFAULT_SEED
    from benchmarks.scale import SCALE_ROWS

    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement; the median is reported (default 3)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="per-request latency of the fake Socrata server (default 50)")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows in the synthetic dataset (default {DEFAULT_ROWS:,})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic dataset")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30,000 rows (300,000 for 8), 1 repetition, docs not written")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="comma-separated measurements to run, e.g. 1,5 (3 includes 4)")
    parser.add_argument(
        "--scale-rows", type=int, default=SCALE_ROWS, help=f"measurement 8's large size (default {SCALE_ROWS:,}, ~10x the data)"
    )
    parser.add_argument("--gzip", action="store_true", help="serve gzip-compressed bodies (as Socrata does); default off")
    parser.add_argument(
        "--scheduled", choices=("auto", "on", "off"), default="auto",
        help="measurement 6: auto = only when the pipeline has change detection; on = run it anyway",
    )
    parser.add_argument("--no-write-docs", action="store_true", help=f"print only; do not update {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.quick:
        args.no_write_docs = True
        if "--rows" not in argv:
            args.rows = 30_000
        if "--reps" not in argv:
            args.reps = 1
        if "--scale-rows" not in argv:
            args.scale_rows = 300_000
    if args.reps < 1 or args.rows < 1000:
        parser.error("--reps must be >= 1 and --rows >= 1000")
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    return args


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    args = parse_args(argv)
    command = "./dev bench" + "".join(" " + shlex.quote(a) for a in argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    from benchmarks.server import ServerProcess

    log(f"generating {args.rows:,} rows and starting the fake Socrata server ({args.latency_ms:.0f} ms latency)")
    server = ServerProcess(args.rows, args.seed, args.latency_ms / 1000, compress=args.gzip)
    try:
        from benchmarks import history, report, scale, sections, unchanged
        from benchmarks.dataset import describe, generate, typed_base
        from benchmarks.pg import Postgres

        machine = report.machine()
        raw = generate(args.rows, args.seed)
        base = typed_base(raw)
        pg = Postgres()
        bench = None
        try:
            log(f"dataset: {describe(raw)}; {pg.describe()}")
            bench = sections.Bench(args.reps, args.latency_ms / 1000, server, pg, raw, base, log)
            rows: list[report.Row] = []
            if "1" in args.only:
                rows += sections.extraction(bench)
            if "2" in args.only:
                rows += sections.writes(bench)
            if "3" in args.only or "4" in args.only:
                rows += sections.reads_and_summaries(bench)
            if "5" in args.only:
                rows += sections.end_to_end(bench)
            if "6" in args.only:
                rows += unchanged.scheduled_unchanged(bench, args.scheduled)
            if "7" in args.only:
                rows += sections.partition_rewrite(bench)
            if "8" in args.only:
                rows += scale.scale(bench, args.scale_rows, args.seed)
            if "9" in args.only:
                rows += history.history(pg, raw, args.reps, log)
            versions = {"covid_assets": report.code_version(ROOT), **report.versions(pg.describe())}
        finally:
            if bench is not None:
                bench.close()
            pg.stop()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    load_after = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    table = report.text_table(rows)
    print()
    print(f"covid_assets benchmark: {describe(raw)}; {args.reps} repetition(s), median reported; "
          f"{args.latency_ms:.0f} ms per request{'; gzip' if args.gzip else ''}")
    print(table)
    print()
    for line in report.notes(rows):
        print(line)
    print()
    print(f"machine: {machine}; load average at the end: {load_after}; total {elapsed:.0f} s")
    print(f"versions: {versions}")
    if not args.no_write_docs:
        write_docs(args, command, machine, versions, rows, describe(raw), elapsed, load_after)
        print(f"wrote {DOCS.relative_to(ROOT)}")
    return 0 if all(r.verdict != "MISS" for r in rows) else 1


def write_docs(args, command, machine, versions, rows, dataset, elapsed, load_after) -> None:
    from benchmarks import report

    lines = [
        BEGIN,
        "",
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Dataset: {dataset} (seed {args.seed}); fake Socrata server with {args.latency_ms:.0f} ms per request"
        f"{', gzip bodies' if args.gzip else ', uncompressed bodies'}; {args.reps} repetition(s) per measurement, "
        f"the median is reported; total run time {elapsed:.0f} s.",
        "",
        report.markdown_table(rows),
        "",
        *[f"* **{row.key}**: {row.note}" for row in rows if row.note],
        "",
        "**Machine.** " + "; ".join(f"{k}: {v}" for k, v in machine.items()) + f"; load average at the end: {load_after}.",
        "",
        "**Versions.** " + "; ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        END,
    ]
    generated = "\n".join(lines)
    if DOCS.exists() and BEGIN in (text := DOCS.read_text()) and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOCS.write_text(head + generated + tail)
    else:
        DOCS.write_text("# Benchmarks\n\n" + generated + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
