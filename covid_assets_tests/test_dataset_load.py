"""The streaming load of declared datasets (datasets/pages.py, sql_typing.py, load.py) on a real Postgres.

Each test loads real exports (CDC 9mfq-cb36 as CSV, xt86-xqxz as rows.json) or deliveries made
from them, inside one transaction on one ADBC connection, as a run does.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pytest

from covid_assets.datasets import load, sql_typing
from covid_assets.datasets.dataset_spec import DatasetSpec, raw_table_spec
from covid_assets.datasets.pages import export_pages
from covid_assets.datasets.table_spec import ColumnRules, ColumnSpec, TableSpec
from covid_assets.sources.socrata import SocrataError
from covid_assets_tests.helpers import query

FIXTURES = Path(__file__).parent / "fixtures"
CDC_CSV = FIXTURES / "cdc_9mfq-cb36_5_jurisdictions.csv.gz"
XT86_JSON = FIXTURES / "cdc_xt86-xqxz_rows.json.gz"
FETCHED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
CDC_KEY = ("submission_date", "state")


def cdc_spec(**changes) -> DatasetSpec:
    base = TableSpec.build(
        "cdc",
        "cases_deaths",
        [
            ColumnSpec("submission_date", "DATE"),
            ColumnSpec("state", "TEXT"),
            ColumnSpec("tot_cases", "BIGINT"),
            ColumnSpec("new_case", "NUMERIC"),
            ColumnSpec("pnew_death", "DOUBLE PRECISION"),
            ColumnSpec("created_at", "TIMESTAMP"),
            ColumnSpec("consent_cases", "TEXT"),
        ],
        key=CDC_KEY,
    )
    fields = dict(
        name="cdc_cases_deaths",
        domain="data.cdc.gov",
        dataset_id="9mfq-cb36",
        base=base,
        raw=raw_table_spec("cdc_raw", "cases_deaths", base),
        required=("submission_date", "state", "tot_cases"),
        series_key=("state",),
    )
    return DatasetSpec(**{**fields, **changes})


def cdc_rows() -> list[dict[str, str]]:
    """The fixture as Python's csv module reads it: the independent reference."""
    with gzip.open(CDC_CSV, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def pages_of(rows: list[dict[str, str | None]], size: int = 1_000) -> Iterator[pa.Table]:
    names = list(dict.fromkeys(name for row in rows for name in row))
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        yield pa.table({name: pa.array([row.get(name) or None for row in chunk], pa.string()) for name in names})


def load_all(connection, spec: DatasetSpec, pages, allow_shrink: bool = False) -> tuple[load.Landing, load.Gate, load.MergeCounts]:
    landing = load.land(connection, spec, pages, FETCHED_AT)
    checked = load.gate(connection, spec, landing, allow_shrink=allow_shrink, max_shrink_fraction=0.05)
    load.publish_raw(connection, spec, landing)
    counts = load.merge_base(connection, spec, checked)
    connection.commit()
    return landing, checked, counts


def us_date(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%m/%d/%Y").date()


def base_rows(url: str, spec: DatasetSpec) -> dict[tuple, tuple]:
    columns = ", ".join(f'"{c}"' for c in spec.base.column_names)
    rows = query(url, f"SELECT {columns} FROM {spec.base.schema}.{spec.base.name}")
    key = [spec.base.column_names.index(c) for c in spec.base.key]
    return {tuple(row[i] for i in key): row for row in rows}


def snapshot(url: str, spec: DatasetSpec) -> tuple:
    """Everything stored of the dataset, and any staging table left in the database."""
    tables = []
    for table in (spec.raw, spec.base):
        exists = query(url, "SELECT to_regclass(%s) IS NOT NULL", (table.qualified_name,))[0][0]
        tables.append(sorted(map(repr, query(url, f"SELECT * FROM {table.qualified_name}"))) if exists else None)
    leftovers = query(url, "SELECT count(*) FROM pg_class WHERE relname LIKE 'stage\\_%%' ESCAPE '\\'")[0][0]
    return tuple(tables), leftovers


@pytest.fixture
def connection(warehouse_url: str) -> Iterator[adbc.Connection]:
    with adbc.connect(warehouse_url) as conn:
        yield conn


# ----------------------------------------------------------------------------- real exports
def test_cdc_csv_export_lands_types_and_merges(connection, warehouse_url: str) -> None:
    spec = cdc_spec()
    landing, checked, counts = load_all(connection, spec, export_pages(CDC_CSV))
    reference = cdc_rows()

    assert (landing.rows, checked.rows, checked.duplicates_dropped) == (len(reference), len(reference), 0)
    assert counts == load.MergeCounts(total=len(reference), added=len(reference), revised=0, withdrawn=0)
    stored = base_rows(warehouse_url, spec)
    assert len(stored) == len(reference)
    for row in reference[:: len(reference) // 50]:
        typed = stored[(us_date(row["submission_date"]), row["state"])]
        assert typed[2] == int(row["tot_cases"])
        assert typed[3] == (None if row["new_case"] == "" else pytest.approx(float(row["new_case"])))
        assert typed[4] == (None if row["pnew_death"] == "" else float(row["pnew_death"]))
        assert typed[5] == dt.datetime.strptime(row["created_at"], "%m/%d/%Y %I:%M:%S %p")
        assert typed[6] == (row["consent_cases"] or None)
    types = dict(query(warehouse_url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'cdc'"))
    assert types["submission_date"] == "date" and types["tot_cases"] == "bigint" and types["created_at"].startswith("timestamp without")
    # The raw table: the columns as delivered, every other column in extra_columns, one fetched_at.
    raw = query(warehouse_url, "SELECT submission_date, state, tot_cases, extra_columns, fetched_at FROM cdc_raw.cases_deaths")
    assert len(raw) == len(reference)
    by_key = {(r[0], r[1]): r for r in raw}
    extras = [name for name in reference[0] if name not in spec.raw.column_names]
    assert list(landing.extras) == extras
    for row in reference[:: len(reference) // 50]:
        _, _, tot_cases, extra, fetched_at = by_key[(row["submission_date"], row["state"])]
        assert tot_cases == row["tot_cases"] and fetched_at == FETCHED_AT
        assert extra == {name: row[name] for name in extras if row[name] != ""}


def test_rows_json_export_lands_without_system_columns(connection, warehouse_url: str) -> None:
    base = TableSpec.build(
        "nchs",
        "visits",
        [
            ColumnSpec("panel", "TEXT"),
            ColumnSpec("unit", "TEXT"),
            ColumnSpec("stub_label", "TEXT"),
            ColumnSpec("year", "TEXT"),
            ColumnSpec("year_num", "BIGINT"),
            ColumnSpec("estimate", "NUMERIC"),
            ColumnSpec("se", "DOUBLE PRECISION"),
        ],
        key=["panel", "unit", "stub_label", "year"],
    )
    spec = DatasetSpec(
        name="nchs_visits", domain="data.cdc.gov", dataset_id="xt86-xqxz", base=base,
        raw=raw_table_spec("nchs_raw", "visits", base), required=("panel", "year"),
    )
    landing, checked, counts = load_all(connection, spec, export_pages(XT86_JSON, page_rows=1_000))

    with gzip.open(XT86_JSON, "rt") as fh:
        document = json.load(fh)
    fields = [c["fieldName"] for c in document["meta"]["view"]["columns"]]
    reference = [dict(zip(fields, row)) for row in document["data"]]
    assert (landing.rows, landing.pages, checked.rows, counts.added) == (len(reference), 4, len(reference), len(reference))
    assert not any(name.startswith(":") for name in landing.columns)
    assert set(landing.extras) == {f for f in fields if not f.startswith(":")} - set(spec.raw.column_names)
    stored = base_rows(warehouse_url, spec)
    for row in reference[::97]:
        typed = stored[(row["panel"], row["unit"], row["stub_label"], row["year"])]
        assert typed[4] == int(row["year_num"])
        assert (typed[5], typed[6]) == (None if row["estimate"] is None else Decimal(row["estimate"]), None if row["se"] is None else float(row["se"]))


# ----------------------------------------------------------------------------- a second load
def test_second_load_counts_revised_added_and_withdrawn_rows(connection, warehouse_url: str) -> None:
    spec = cdc_spec()
    first = cdc_rows()
    load_all(connection, spec, pages_of(first))

    second = [dict(row) for row in first]
    for row in second[10:13]:  # three revisions
        row["tot_cases"] = str(int(row["tot_cases"]) + 1)
    second[20]["consent_cases"] = "revised text"  # a fourth, in a text column
    withdrawn = {(r["submission_date"], r["state"]) for r in (second.pop(30), second.pop(40))}
    second += [{**first[0], "state": f"Z{i}"} for i in range(5)]  # five new keys
    _, checked, counts = load_all(connection, spec, pages_of(second, 700))

    assert counts == load.MergeCounts(total=len(first) - 2 + 5, added=5, revised=4, withdrawn=2)
    stored = base_rows(warehouse_url, spec)
    assert len(stored) == checked.rows == len(first) + 3
    assert not any((us_date(d), s) in stored for d, s in withdrawn)
    assert stored[(us_date(second[10]["submission_date"]), second[10]["state"])][2] == int(second[10]["tot_cases"])
    # The same delivery again changes nothing.
    assert load_all(connection, spec, pages_of(second))[2] == load.MergeCounts(len(second), 0, 0, 0)


def test_duplicate_keys_keep_the_last_delivered(connection, warehouse_url: str) -> None:
    spec = cdc_spec()
    rows = cdc_rows()[:300]
    repeats = [{**rows[i], "tot_cases": str(1_000_000 + i)} for i in (5, 6, 7)]
    last = {**rows[5], "tot_cases": "42"}
    _, checked, counts = load_all(connection, spec, pages_of(rows + repeats + [last], 100))
    assert (checked.rows, checked.duplicates_dropped, counts.added) == (300, 4, 300)
    stored = base_rows(warehouse_url, spec)
    assert stored[(us_date(rows[5]["submission_date"]), rows[5]["state"])][2] == 42
    assert stored[(us_date(rows[6]["submission_date"]), rows[6]["state"])][2] == 1_000_006


# ----------------------------------------------------------------------------- typing
ALL_TYPES = TableSpec.build(
    "typed",
    "values",
    [
        ColumnSpec("id", "BIGINT"),
        ColumnSpec("text", "TEXT"),
        ColumnSpec("numeric", "NUMERIC"),
        ColumnSpec("double", "DOUBLE PRECISION"),
        ColumnSpec("day", "DATE"),
        ColumnSpec("moment", "TIMESTAMP"),
        ColumnSpec("instant", "TIMESTAMPTZ"),
        ColumnSpec("flag", "BOOLEAN"),
        ColumnSpec("doc", "JSONB"),
    ],
    key=["id"],
)
TYPES_SPEC = DatasetSpec(name="typed", domain="example.org", dataset_id="abcd-1234", base=ALL_TYPES,
                         raw=raw_table_spec("typed_raw", "values", ALL_TYPES))


@pytest.mark.parametrize(
    ("column", "text", "expected"),
    [
        ("id", " -0042 ", -42),
        ("id", "+12345678901234567", 12345678901234567),  # 18 characters: a plain cast
        ("id", "-999999999999999999", -999999999999999999),  # 19: checked by Postgres first
        ("text", "  padded  ", "padded"),
        ("text", "   ", None),
        ("numeric", "1.50e2", "150"),
        ("numeric", "-.5", "-0.5"),
        ("double", "2.5E-3", 0.0025),
        ("day", "2021-02-28", dt.date(2021, 2, 28)),
        ("day", "2020-03-01T00:00:00.000", dt.date(2020, 3, 1)),
        ("day", "2021/02/03", dt.date(2021, 2, 3)),
        ("day", "12/26/2021", dt.date(2021, 12, 26)),
        ("day", "05/23/2021 12:00:00 AM", dt.date(2021, 5, 23)),
        ("moment", "05/23/2021 01:02:03 PM", dt.datetime(2021, 5, 23, 13, 2, 3)),
        ("moment", "2020-03-01T04:05:06.789", dt.datetime(2020, 3, 1, 4, 5, 6, 789000)),
        ("instant", "2020-03-01T04:05:06", dt.datetime(2020, 3, 1, 4, 5, 6, tzinfo=dt.timezone.utc)),
        ("instant", "2020-03-01 04:05:06+02:00", dt.datetime(2020, 3, 1, 2, 5, 6, tzinfo=dt.timezone.utc)),
        ("instant", "2020-03-01", dt.datetime(2020, 3, 1, tzinfo=dt.timezone.utc)),
        ("flag", "TRUE", True),
        ("flag", "", None),
        ("doc", '{"type": "Point", "coordinates": [1, 2]}', {"type": "Point", "coordinates": [1, 2]}),
    ],
)
def test_values_of_every_type_are_typed(connection, warehouse_url: str, column: str, text: str, expected) -> None:
    load_all(connection, TYPES_SPEC, pages_of([{"id": "1", column: text}] if column != "id" else [{"id": text}]))
    where = "1" if column != "id" else str(expected)
    (value,) = query(warehouse_url, f'SELECT "{column}"::text, "{column}" FROM typed."values" WHERE id = {where}')[0][1:] or [None]
    if column == "numeric":
        value = query(warehouse_url, 'SELECT numeric::text FROM typed."values"')[0][0]
    if column == "doc":
        value = json.loads(value) if isinstance(value, str) else value
    if isinstance(expected, dt.datetime) and expected.tzinfo:
        value = value.astimezone(dt.timezone.utc)
    assert value == expected


@pytest.mark.parametrize(
    ("column", "text", "problem"),
    [
        ("id", "12x", "bad id (not a whole number in the BIGINT range)"),
        ("id", "99999999999999999999", "bad id (not a whole number in the BIGINT range)"),
        ("id", "1\x002", "bad id (not a whole number in the BIGINT range)"),
        ("id", "", "missing id"),
        ("numeric", "1.2.3", "bad numeric (not a number)"),
        ("double", "1e400", "bad double (not a number in the DOUBLE PRECISION range)"),
        ("double", "NaN", "bad double (not a number in the DOUBLE PRECISION range)"),
        ("day", "2021-02-30", "bad day (not a date)"),
        ("day", "13/01/2021", "bad day (not a date)"),
        ("day", "today", "bad day (not a date)"),
        ("moment", "2021-01-01T25:00:00", "bad moment (not a timestamp)"),
        ("instant", "yesterday", "bad instant (not a timestamp with time zone)"),
        ("flag", "yes", "bad flag (not true or false)"),
        ("doc", "{bad", "bad doc (not valid JSON)"),
    ],
)
def test_a_bad_value_of_any_type_refuses_the_delivery(connection, warehouse_url: str, column: str, text: str, problem: str) -> None:
    good = [{"id": str(i), "text": f"row {i}", "day": "2021-01-01"} for i in range(20)]
    load_all(connection, TYPES_SPEC, pages_of(good))
    before = snapshot(warehouse_url, TYPES_SPEC)

    delivery = [dict(row) for row in good]
    delivery[13][column] = text
    landing = load.land(connection, TYPES_SPEC, pages_of(delivery, 7), FETCHED_AT)
    with pytest.raises(load.InvalidRowsError) as refused:
        load.gate(connection, TYPES_SPEC, landing, allow_shrink=False, max_shrink_fraction=0.05)
    connection.rollback()

    message = str(refused.value)
    assert message.startswith(f"1 of 20 source rows cannot be typed ({problem}: 1); first rows:\n")
    assert f"  source row 13: {problem}: " in message
    shown = text.replace("\x00", "\\u0000")
    assert repr(shown if shown else None) in message  # as delivered (a NUL byte shown as \\u0000)
    assert snapshot(warehouse_url, TYPES_SPEC) == before  # nothing written, no staging table left


def test_bad_rows_report_counts_each_problem_and_shows_the_first_five(connection) -> None:
    rows = [{"id": str(i), "day": "2021-01-01"} for i in range(100)]
    for i in (3, 50, 60, 70, 80, 90):
        rows[i]["day"] = "2021-13-01"
    rows[50]["flag"] = "maybe"
    rows[99]["id"] = None
    landing = load.land(connection, TYPES_SPEC, pages_of(rows, 30), FETCHED_AT)
    with pytest.raises(load.InvalidRowsError) as refused:
        load.gate(connection, TYPES_SPEC, landing, allow_shrink=False, max_shrink_fraction=0.05)
    lines = str(refused.value).splitlines()
    assert lines[0] == (
        "7 of 100 source rows cannot be typed (missing id: 1, bad day (not a date): 6, bad flag (not true or false): 1); first rows:"
    )
    assert [line.split(":")[0] for line in lines[1:]] == [f"  source row {i}" for i in (3, 50, 60, 70, 80)]
    assert lines[2].startswith("  source row 50: bad day (not a date), bad flag (not true or false): ")


def test_a_missing_required_column_is_named_before_anything_is_written(connection, warehouse_url: str) -> None:
    rows = [{k: v for k, v in row.items() if k != "tot_cases"} for row in cdc_rows()[:50]]
    with pytest.raises(SocrataError, match=r"required column\(s\) missing: tot_cases \(columns present: submission_date, state,"):
        load.land(connection, cdc_spec(), pages_of(rows), FETCHED_AT)
    connection.rollback()
    assert snapshot(warehouse_url, cdc_spec()) == ((None, None), 0)


# ----------------------------------------------------------------------------- shrink guard
def test_a_shrinking_source_is_refused_unless_allowed(connection, warehouse_url: str) -> None:
    spec = cdc_spec()
    rows = cdc_rows()
    load_all(connection, spec, pages_of(rows))
    before = snapshot(warehouse_url, spec)
    fewer = [row for row in rows if row["state"] not in ("RMI", "PR")]  # two series (of five) gone: 40% of the rows

    landing = load.land(connection, spec, pages_of(fewer), FETCHED_AT)
    with pytest.raises(load.ShrinkingSourceError) as refused:
        load.gate(connection, spec, landing, allow_shrink=False, max_shrink_fraction=0.05)
    connection.rollback()
    assert str(refused.value) == (
        f"refusing to replace cdc.cases_deaths: the source has {len(fewer):,} rows, the stored table {len(rows):,} "
        f"({1 - len(fewer) / len(rows):.1%} fewer; at most 5% allowed); 2 (state) series disappeared: PR, RMI. "
        "Nothing was written. If the source really shrank, re-run with run config `allow_shrink: true` for the raw asset."
    )
    assert snapshot(warehouse_url, spec) == before

    # A lost series alone is refused too, within the row floor.
    without_rmi = [row for row in rows if row["state"] != "RMI"]
    landing = load.land(connection, spec, pages_of(without_rmi), FETCHED_AT)
    with pytest.raises(load.ShrinkingSourceError, match=r"^refusing to replace cdc.cases_deaths: 1 \(state\) series disappeared: RMI\. Nothing"):
        load.gate(connection, spec, landing, allow_shrink=False, max_shrink_fraction=0.25)
    connection.rollback()

    _, _, counts = load_all(connection, spec, pages_of(fewer), allow_shrink=True)
    assert counts == load.MergeCounts(total=len(fewer), added=0, revised=0, withdrawn=len(rows) - len(fewer))


# ----------------------------------------------------------------------------- content hash
def test_content_hash_changes_with_any_value_and_nothing_else(connection) -> None:
    rows = cdc_rows()[:400]

    def content_hash(delivery, size=100) -> str:
        landing = load.land(connection, cdc_spec(), pages_of(delivery, size), FETCHED_AT)
        load.discard(connection, landing)
        return landing.content_hash

    reference = content_hash(rows)
    assert content_hash(rows, 37) == reference  # page boundaries
    assert content_hash([dict(reversed(list(row.items()))) for row in rows]) == reference  # column order
    assert content_hash([{**row, "unsent": None} for row in rows]) == reference  # an empty column sent or not
    changed = [dict(row) for row in rows]
    changed[123]["conf_death"] = changed[123]["conf_death"] + "0"  # an extra column's value
    assert content_hash(changed) != reference
    assert content_hash(rows[:-1]) != reference
    assert content_hash(rows[1:2] + rows[:1] + rows[2:]) != reference  # row order
    swapped = [dict(row) for row in rows]
    swapped[7]["new_case"], swapped[7]["pnew_case"] = swapped[7]["pnew_case"], swapped[7]["new_case"]
    assert swapped[7]["new_case"] == rows[7]["new_case"] or content_hash(swapped) != reference


def test_nul_bytes_leave_free_text_and_extra_columns(connection, warehouse_url: str) -> None:
    rows = cdc_rows()[:10]
    rows[3]["consent_cases"] = "Ag\x00ree"
    rows[4]["consent_deaths"] = "N\x00/A"
    landing, _, _ = load_all(connection, cdc_spec(), pages_of(rows))
    assert landing.nul_values == 2
    stored = query(warehouse_url, "SELECT consent_cases, extra_columns->>'consent_deaths' FROM cdc_raw.cases_deaths")
    assert ("Agree", rows[3]["consent_deaths"]) in stored and (rows[4]["consent_cases"], "N/A") in stored


# ----------------------------------------------------------------------------- memory
MEMORY_PROBE = r"""
import datetime as dt, resource, sys
import adbc_driver_postgresql.dbapi as adbc, pyarrow as pa
from covid_assets.datasets import load
from covid_assets_tests.test_dataset_load import cdc_spec

ROWS, PAGE = int(sys.argv[2]), 5_000

def pages(count):
    for start in range(0, count, PAGE):
        ids = range(start, min(start + PAGE, count))
        yield pa.table({
            "submission_date": [f"{1 + i % 12:02}/{1 + i // 12 % 28:02}/{2000 + i // 336}" for i in ids],
            "state": [f"S{i % 97:03}" for i in ids],
            "tot_cases": [str(i * 7919) for i in ids],
            "new_case": [str(i % 1000) for i in ids],
            "created_at": [f"01/{1 + i % 28:02}/2021 0{i % 10}:00:00 PM" for i in ids],
            **{f"extra_{n}": [f"value {n} of row {i} with some padding" for i in ids] for n in range(6)},
        })

data_bytes = sum(table.nbytes for table in pages(ROWS))
with adbc.connect(sys.argv[1]) as connection:
    load.land(connection, cdc_spec(required=()), pages(PAGE), dt.datetime.now(dt.timezone.utc))  # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    landing = load.land(connection, cdc_spec(required=()), pages(ROWS), dt.datetime.now(dt.timezone.utc))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    checked = load.gate(connection, cdc_spec(required=()), landing, allow_shrink=False, max_shrink_fraction=0.05)
    assert landing.rows == ROWS and checked.rows == ROWS, (landing.rows, checked.rows)
print(data_bytes, peak - before)
"""


def probe_growth(warehouse_url: str, rows: int) -> tuple[int, int]:
    """(Arrow bytes of the delivery, peak RSS growth while landing it) in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, warehouse_url, str(rows)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data_bytes, growth = map(int, result.stdout.split())
    return data_bytes, growth


@pytest.mark.slow
def test_landing_memory_is_bounded_by_a_batch_not_the_delivery(warehouse_url: str) -> None:
    """Four times the rows (about 32 and 130 MB as Arrow, wide rows with six extra columns) through a
    fresh process each: the peak RSS growth is what one COPY batch costs, the same at both sizes.

    Measured: 24, 33 and 23 MB at 100k, 400k and 1M rows (a few MB of noise between runs); holding
    the pages (`list(pages)` in `land`) grows it with the delivery (+170 MB at 300k rows).
    """
    small_bytes, small_growth = probe_growth(warehouse_url, 100_000)
    large_bytes, large_growth = probe_growth(warehouse_url, 400_000)
    assert large_bytes > 120_000_000
    extra = large_growth - small_growth
    assert extra < (large_bytes - small_bytes) / 5, (
        f"peak RSS grew {small_growth / 1e6:.0f} MB for {small_bytes / 1e6:.0f} MB of data, "
        f"{large_growth / 1e6:.0f} MB for {large_bytes / 1e6:.0f} MB"
    )
    assert large_growth < large_bytes / 2


# ----------------------------------------------------------------------------- pages
def test_csv_pages_hold_what_the_whole_file_reader_reads(tmp_path: Path) -> None:
    """Pieces of a few kB (many pages) read exactly as pandas reads the whole file: every cell as delivered."""
    from covid_assets.sources.socrata import read_export_file

    pages = list(export_pages(CDC_CSV, block_bytes=4_096))
    assert len(pages) > 50 and max(page.nbytes for page in pages) < 20_000
    expected = read_export_file(CDC_CSV, required=()).frame
    got = pa.concat_tables(pages).to_pandas(types_mapper={pa.string(): __import__("pandas").StringDtype()}.get)
    assert list(got.columns) == list(expected.columns)
    assert got.equals(expected)


def test_csv_pages_cut_only_between_records(tmp_path: Path) -> None:
    """Quoted newlines and quotes across piece boundaries, a BOM, CRLF line ends, repeated names, an "NA"."""
    rows = [[f"line one {i}\r\nline \"two\"", str(i), "NA" if i % 7 == 0 else "", f'"{i}"'] for i in range(500)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(["note", "id", "flag", "id"])
    writer.writerows(rows)
    export = tmp_path / "tricky.csv.gz"
    export.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.getvalue().encode()))

    pages = list(export_pages(export, block_bytes=1_000))
    assert len(pages) > 10
    table = pa.concat_tables(pages)
    assert table.column_names == ["note", "id", "flag", "id.1"]
    assert table.to_pylist() == [
        {"note": note, "id": id_, "flag": flag or None, "id.1": quoted} for note, id_, flag, quoted in rows
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "no CSV header"),
        (b"a,b\n1,2,3\n", "malformed CSV"),
        (b"a,b\n1,\xff\n", "not valid UTF-8"),
        (b'[{"a": "1"}, 2]', "an item is a JSON int"),
        (b'[{"a": "1"}, {"a": ', "not valid JSON"),
        (b'{"data": [["1"]]}', "without meta.view"),
        (b'{"meta": {"view": {"columns": [{"fieldName": "a"}]}}, "data": [["1", "2"]]}', "data row 0 is an array of 2 values, expected 1"),
    ],
)
def test_a_broken_export_is_named_without_its_contents(tmp_path: Path, content: bytes, problem: str) -> None:
    export = tmp_path / ("broken.json" if content[:1] in (b"[", b"{") else "broken.csv")
    export.write_bytes(content)
    with pytest.raises(SocrataError, match=f"cannot read export file {export}: .*{problem}"):
        list(export_pages(export))


def test_a_json_array_export_pages_and_keeps_non_string_values_as_json(tmp_path: Path) -> None:
    rows = [{"a": str(i), "n": i, "geo": {"type": "Point", "coordinates": [i, 1]}} for i in range(25)]
    rows[3] = {"a": "only a"}
    export = tmp_path / "rows.json"
    export.write_text(json.dumps(rows))
    pages = list(export_pages(export, page_rows=10))
    assert [page.num_rows for page in pages] == [10, 10, 5]
    table = pa.concat_tables(pages, promote_options="default")
    assert table.column("n").to_pylist()[:5] == ["0", "1", "2", None, "4"]
    assert json.loads(table.column("geo")[4].as_py()) == {"type": "Point", "coordinates": [4, 1]}


def test_api_pages_stream_into_the_warehouse(connection, warehouse_url: str) -> None:
    from covid_assets.sources.socrata import SocrataClient, SocrataSource, SocrataTarget
    from covid_assets_tests.support.fake_socrata import FakeSocrata

    rows = [{k: v for k, v in row.items() if v != ""} for row in cdc_rows()]  # the API leaves out empty fields
    with FakeSocrata(rows, max_limit=500, dataset_id="9mfq-cb36") as server:
        client = SocrataClient(SocrataTarget(base_url=server.base_url, dataset_id="9mfq-cb36"), SocrataSource(page_size=500))
        with client.plan() as plan:
            landing, checked, counts = load_all(connection, cdc_spec(), plan.pages())
    assert (landing.rows, landing.pages, counts.added) == (len(rows), -(-len(rows) // 500), len(rows))
    file_landing = load.land(connection, cdc_spec(), export_pages(CDC_CSV), FETCHED_AT)
    assert landing.content_hash == file_landing.content_hash  # the same values, whatever the pages and the columns sent


def test_a_column_the_declaration_gains_is_added_and_filled(connection, warehouse_url: str) -> None:
    rows = cdc_rows()[:200]
    load_all(connection, cdc_spec(), pages_of(rows))
    before = cdc_spec().base
    base = TableSpec.build("cdc", "cases_deaths", [*before.columns, ColumnSpec("conf_cases", "BIGINT")], key=CDC_KEY)
    wider = cdc_spec(base=base, raw=raw_table_spec("cdc_raw", "cases_deaths", base))
    _, _, counts = load_all(connection, wider, pages_of(rows))
    given = [row for row in rows if row["conf_cases"]]
    assert counts == load.MergeCounts(total=200, added=0, revised=len(given), withdrawn=0) and 0 < len(given) < 200
    stored = base_rows(warehouse_url, wider)
    assert all(stored[(us_date(r["submission_date"]), r["state"])][-1] == int(r["conf_cases"]) for r in given)
    assert query(warehouse_url, "SELECT count(conf_cases) FROM cdc_raw.cases_deaths")[0][0] == len(given)


# ----------------------------------------------------------------------------- declared typing rules
CODES = {"AL": "01", "AK": "02", "PR": "72"}
RULED = TableSpec.build(
    "ruled",
    "results",
    [
        ColumnSpec("state", "TEXT", rules=ColumnRules(pattern="[A-Z]{2}", pattern_label="a 2-letter code")),
        ColumnSpec("fips", "TEXT", rules=ColumnRules(pad_width=2, fill_from="state", fill_map=tuple(CODES.items()))),
        ColumnSpec("outcome", "TEXT", rules=ColumnRules(allowed=("Positive", "Negative"))),
        ColumnSpec("day", "DATE", rules=ColumnRules(problem="bad day")),
        ColumnSpec("n", "BIGINT", rules=ColumnRules(max_abs=10**12, problem="non-numeric n")),
    ],
    key=["state", "outcome", "day"],
)
RULED_SPEC = DatasetSpec(name="ruled", domain="example.org", dataset_id="abcd-1234", base=RULED,
                         raw=raw_table_spec("ruled_raw", "results", RULED))
RULED_ROW = {"state": "AL", "fips": "01", "outcome": "Positive", "day": "2021-01-01", "n": "5"}


@pytest.mark.parametrize(
    ("change", "column", "expected"),
    [
        ({"fips": "1"}, "fips", "01"),  # a code a CSV tool read as a number regains its zero
        ({"fips": " 123 "}, "fips", "123"),  # never cut
        ({"fips": None}, "fips", "01"),  # filled from the state
        ({"fips": " ", "state": "PR"}, "fips", "72"),
        ({"fips": None, "state": "ZZ"}, "fips", None),  # no entry: left NULL
        ({"n": "999999999999"}, "n", 999_999_999_999),
        ({"n": "-0000000000000007"}, "n", -7),  # the bound is on the value, not its digits
    ],
)
def test_declared_rules_pad_fill_and_bound_values(connection, warehouse_url: str, change: dict, column: str, expected) -> None:
    load_all(connection, RULED_SPEC, pages_of([{**RULED_ROW, **change}]))
    assert query(warehouse_url, f"SELECT {column} FROM ruled.results") == [(expected,)]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"state": "ALA"}, "state is not a 2-letter code"),
        ({"state": "al"}, "state is not a 2-letter code"),
        ({"state": "A\x00L"}, "state is not a 2-letter code"),  # a NUL byte makes a ruled text bad, never vanishes
        ({"state": None}, "missing state"),
        ({"outcome": "Maybe"}, "unknown outcome"),
        ({"outcome": None}, "unknown outcome"),  # a key with allowed values: missing is unknown
        ({"day": "2021-13-01"}, "bad day"),
        ({"n": "12a"}, "non-numeric n"),
        ({"n": "1.5"}, "non-numeric n"),
        ({"n": "1000000000000"}, "n out of range (|n| >= 10^12)"),
        ({"n": "-99999999999999999999999"}, "n out of range (|n| >= 10^12)"),
    ],
)
def test_a_value_breaking_a_declared_rule_is_a_bad_row_named_by_the_rule(connection, warehouse_url: str, change: dict, problem: str) -> None:
    rows = [{**RULED_ROW, "state": "AK"}, {**RULED_ROW, **change}, {**RULED_ROW, "state": "PR"}]
    landing = load.land(connection, RULED_SPEC, pages_of(rows), FETCHED_AT)
    with pytest.raises(load.InvalidRowsError) as refused:
        load.gate(connection, RULED_SPEC, landing, allow_shrink=False, max_shrink_fraction=0.05)
    connection.rollback()
    message = str(refused.value)
    assert message.startswith(f"1 of 3 source rows cannot be typed ({problem}: 1); first rows:\n"), message
    assert f"  source row 1: {problem}: " in message
    assert snapshot(warehouse_url, RULED_SPEC) == ((None, None), 0)


# ----------------------------------------------------------------------------- typing shortcuts
@pytest.mark.parametrize("warehouse_type", [t for t, r in sql_typing.RULES.items() if r.plain_pattern])
def test_a_plain_pattern_matches_only_values_its_rule_leaves_as_they_are(warehouse_url: str, warehouse_type: str) -> None:
    """The loader skips a rule's prepare (and valid) for a column whose values all match its plain
    pattern; here Postgres confirms, value by value, that the skipped SQL would have changed nothing."""
    import pyarrow.compute as pc
    import psycopg
    from psycopg import sql

    rule = sql_typing.rule(warehouse_type)
    samples = [
        "2020-03-01", "2020-03-01T00:00:00.000", "2020-03-01T04:05:06", "2020-03-01 04:05:06", "2021-02-30", "2020-3-1",
        "12/26/2021", "2020/03/01", "2020-03-01T04:05:06.7891", "0", "-1", "+12345678901234567", "123456789012345678",
        "-123456789012345678", "9223372036854775807", "9999999999999999999", "1e3", "1.0", " 1", "١٢",
    ]
    matching = [v for v, hit in zip(samples, pc.match_substring_regex(pa.array(samples), rule.plain_pattern).to_pylist()) if hit]
    assert len(matching) >= 3 and len(matching) < len(samples)
    with psycopg.connect(warehouse_url) as conn:
        for value in matching:
            text = sql.Literal(value)
            prepared, valid = conn.execute(sql.SQL("SELECT {}, {}").format(rule.prepare(text), rule.valid(text))).fetchone()
            assert prepared == value
            assert valid or not rule.plain_is_valid, value


def test_typing_skips_only_what_would_change_nothing(connection) -> None:
    """A delivery whose values are all plain is typed by the short SQL exactly as by the full one;
    one padded text and one US date on the last page send those two columns, on every page, back
    through trimming and the date layouts."""
    rows = [
        {"id": str(i), "text": f"row {i}", "day": f"2021-01-{i % 28 + 1:02d}", "moment": "2020-03-01T04:05:06.789", "numeric": "1.5"}
        for i in range(50)
    ]
    messy = [dict(row) for row in rows]
    messy[-1].update(text=" padded ", day="12/26/2021")
    messy[-2].update(moment="2020-03-01T04:05:06.789\t")
    columns = {column.name: column for column in ALL_TYPES.columns}

    def typed(typing: load._Typing) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(typing.typed_rows().as_string() + ' ORDER BY ":row"')
            return cursor.fetchall()

    for delivery, padded, plain in ((rows, set(), {"id", "day", "moment"}), (messy, {"text", "moment"}, {"id"})):
        landing = load.land(connection, TYPES_SPEC, pages_of(delivery, 20), FETCHED_AT)
        assert {name for name in columns if landing.plain.needs_trim(name)} == padded
        assert {name for name, column in columns.items() if landing.plain.is_plain(column)} == plain
        assert typed(load._Typing(TYPES_SPEC, landing.table, landing.plain)) == typed(load._Typing(TYPES_SPEC, landing.table, sql_typing.Plain.unknown()))
        connection.rollback()


def test_a_blank_value_is_seen_as_one_to_trim() -> None:
    plain = sql_typing.Plain.expecting(ALL_TYPES.columns)
    plain.see("text", pa.chunked_array([pa.array(["a", None, "b"])]))
    assert not plain.needs_trim("text")
    plain.see("text", pa.chunked_array([pa.array(["a", ""])]))
    assert plain.needs_trim("text")

