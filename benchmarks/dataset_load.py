"""Scale of the declared-dataset load: wall time and peak RSS of land + gate + publish + merge.

A synthetic dataset built like the COVID data (`benchmarks/dataset.py`) at 243k and 2.5M rows is
written to a gzipped CSV export first (not measured), then a fresh Python process streams it
into Postgres with `covid_assets.datasets.load` (measured: wall time, the peak RSS of the process,
and each phase's seconds), twice: the first load into an empty warehouse, then the same delivery
again (every row compared, none rewritten).

    python benchmarks/dataset_load.py [ROWS ...]     # default: 243000 2500000

The warehouse is a throwaway embedded Postgres, or `COVID_BENCH_DB_URL`.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = (243_000, 2_500_000)


def covid_shaped_spec():
    """The COVID base table declared as a dataset: key (state, date, overall_outcome), series (state, outcome)."""
    from covid_assets.datasets.dataset_spec import DatasetSpec, raw_table_spec
    from covid_assets.datasets.table_spec import ColumnSpec, TableSpec

    base = TableSpec.build(
        "synthetic",
        "test_results",
        [
            ColumnSpec("state", "TEXT"),
            ColumnSpec("state_name", "TEXT"),
            ColumnSpec("state_fips", "TEXT"),
            ColumnSpec("fema_region", "TEXT"),
            ColumnSpec("overall_outcome", "TEXT"),
            ColumnSpec("date", "DATE"),
            ColumnSpec("new_results_reported", "BIGINT"),
            ColumnSpec("total_results_reported", "BIGINT"),
        ],
        key=["state", "date", "overall_outcome"],
    )
    return DatasetSpec(
        name="synthetic_test_results",
        domain="example.org",
        dataset_id="synt-hetc",
        base=base,
        raw=raw_table_spec("synthetic_raw", "test_results", base),
        required=("state", "date", "overall_outcome"),
        series_key=("state", "overall_outcome"),
    )


def write_export(rows: int, path: Path) -> None:
    """The synthetic delivery as a Socrata CSV export (gzipped), with a ninth column kept as an extra."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from benchmarks.dataset import generate

    frame = generate(rows)
    frame["geocoded_state"] = "POINT (" + frame["state_fips"] + " 1)"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    del frame
    with pa.CompressedOutputStream(str(path), "gzip") as sink:
        pa_csv.write_csv(table, sink)


def timed_load(url: str, spec, pages, *, allow_shrink: bool = False, keep_history: bool = True, phases: dict[str, float]):
    """land, gate, publish raw, merge, commit on one ADBC connection, as a run's step does; `phases`
    gets each one's seconds (land with the connect). Returns the landing and the merge's counts."""
    import adbc_driver_postgresql.dbapi as adbc

    from covid_assets.datasets import load

    started = time.perf_counter()

    def done(phase: str) -> None:
        phases[phase] = time.perf_counter() - started - sum(phases.values())

    with adbc.connect(url) as connection:
        landing = load.land(connection, spec, pages, dt.datetime.now(dt.timezone.utc))
        done("land")
        checked = load.gate(connection, spec, landing, allow_shrink=allow_shrink, max_shrink_fraction=0.05)
        done("gate")
        load.publish_raw(connection, spec, landing)
        done("publish_raw")
        counts = load.merge_base(connection, spec, checked, keep_history=keep_history)
        done("merge_base")
        connection.commit()
        done("commit")
    return landing, counts


def child(url: str, export: str) -> None:
    """One load, as a run does it (one transaction on one ADBC connection); prints its phases as JSON."""
    from covid_assets.datasets.pages import export_pages

    phases: dict[str, float] = {}
    landing, counts = timed_load(url, covid_shaped_spec(), export_pages(export), phases=phases)
    print(json.dumps({
        "rows": landing.rows,
        "counts": counts.__dict__,
        "phases": {name: round(seconds, 2) for name, seconds in phases.items()},
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main(sizes: list[int]) -> None:
    from benchmarks.measure import clean_env, run_process
    from benchmarks.pg import Postgres

    postgres = Postgres()
    print(f"PostgreSQL {postgres.version}")
    env = clean_env(PYTHONPATH=str(ROOT))
    results = {}
    with tempfile.TemporaryDirectory(prefix="dataset-load-") as scratch:
        for rows in sizes:
            export = Path(scratch) / f"synthetic_{rows}.csv.gz"
            write_export(rows, export)
            with postgres.fresh("dataset_load") as url:
                for attempt in ("first load", "same again"):
                    result = run_process([sys.executable, __file__, "--child", url, str(export)], env, timeout_s=3600)
                    if result.returncode:
                        raise SystemExit(result.stderr[-3000:])
                    report = json.loads(result.stdout.strip().splitlines()[-1])
                    results[(rows, attempt)] = (result.seconds, result.peak_rss / 2**20)
                    print(
                        f"{rows:>9,} rows, {attempt:<10}: {result.seconds:6.1f} s wall, peak RSS {result.peak_rss / 2**20:5.0f} MB "
                        f"(export {export.stat().st_size / 2**20:.0f} MB gz); phases {report['phases']}; {report['counts']}",
                        flush=True,
                    )
    if len(sizes) == 2:
        small, large = sizes
        for attempt in ("first load", "same again"):
            (t_small, m_small), (t_large, m_large) = results[(small, attempt)], results[(large, attempt)]
            print(f"{attempt}: {large:,} / {small:,} rows: wall x{t_large / t_small:.1f}, peak RSS x{m_large / m_small:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main([int(arg) for arg in sys.argv[1:]] or list(DEFAULT_SIZES))
