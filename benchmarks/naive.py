"""The usual approach, restated as one script: the reference the pipeline is compared with.

    python benchmarks/naive.py --base-url http://127.0.0.1:PORT --db-url postgresql://...

1. sequential 1,000-row pages with `requests`, no `$order` (Socrata's default page size, and how
   most scripts page: `$limit` + `$offset` until a short page), every row kept as a Python dict;
2. `psycopg2.extras.execute_values` (default page size, 100 rows) into a table created by the script (typed columns, no key;
   Postgres casts the delivered strings);
3. the five summaries in SQL (`CREATE TABLE ... AS SELECT`), one transaction, one commit.

Without `$order` Socrata's pages are not a stable partition of the rows: the fake server, like
Socrata, draws every page from its own ordering, so this script gets some rows twice and
misses others (the extraction measurement counts them). It prints what it did as one JSON line.

`insert_execute_values` is also used by the write measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence

import psycopg2
import psycopg2.extras
import requests

COLUMNS = (
    "state", "state_name", "state_fips", "fema_region",
    "overall_outcome", "date", "new_results_reported", "total_results_reported",
)
CREATE_BASE = """
CREATE TABLE {table} (
    state TEXT, state_name TEXT, state_fips TEXT, fema_region TEXT, overall_outcome TEXT,
    date DATE, new_results_reported BIGINT, total_results_reported BIGINT
)"""

# The five summaries of covid_assets/assets/summary_frames.py, in SQL over {base}
# (written independently of the end-to-end test's SQL checks; they compute the same tables).
SUMMARIES = {
    "outcome_results": """
        SELECT overall_outcome, sum(new_results_reported)::bigint AS total_results_reported,
               round(100 * sum(new_results_reported)::numeric / sum(sum(new_results_reported)) OVER (), 2)::float8 AS pct_of_results
        FROM {base} GROUP BY 1 ORDER BY 2 DESC, 1""",
    "state_results": """
        WITH s AS (
          SELECT state,
                 coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Positive'), 0) AS p,
                 coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Negative'), 0) AS n,
                 coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Inconclusive'), 0) AS i
          FROM {base} GROUP BY state),
        names AS (SELECT DISTINCT ON (state) state, state_name FROM {base} ORDER BY state, date DESC, overall_outcome DESC)
        SELECT s.state, names.state_name, p::bigint AS positive_tests, n::bigint AS negative_tests,
               i::bigint AS inconclusive_tests, (p + n + i)::bigint AS total_tests,
               round(100 * p::numeric / nullif(p + n + i, 0), 2)::float8 AS positivity_rate
        FROM s JOIN names USING (state) ORDER BY s.state""",
    "smoothed_results": """
        WITH days AS (
          SELECT d::date AS date FROM generate_series((SELECT min(date) FROM {base}), (SELECT max(date) FROM {base}), interval '1 day') d),
        daily AS (
          SELECT days.date,
                 coalesce(sum(b.new_results_reported) FILTER (WHERE b.overall_outcome = 'Positive'), 0) AS p,
                 coalesce(sum(b.new_results_reported) FILTER (WHERE b.overall_outcome = 'Negative'), 0) AS n,
                 coalesce(sum(b.new_results_reported) FILTER (WHERE b.overall_outcome = 'Inconclusive'), 0) AS i
          FROM days LEFT JOIN {base} b USING (date) GROUP BY days.date),
        windowed AS (
          SELECT *, row_number() OVER w AS n_days, sum(p) OVER w AS p7, sum(n) OVER w AS n7, sum(i) OVER w AS i7
          FROM daily WINDOW w AS (ORDER BY date ROWS BETWEEN 6 PRECEDING AND CURRENT ROW))
        SELECT date, p::bigint AS positive_tests, n::bigint AS negative_tests, i::bigint AS inconclusive_tests,
               CASE WHEN n_days >= 7 THEN round(p7::numeric / 7, 2)::float8 END AS smoothed_positive_tests,
               CASE WHEN n_days >= 7 THEN round(n7::numeric / 7, 2)::float8 END AS smoothed_negative_tests,
               CASE WHEN n_days >= 7 THEN round(i7::numeric / 7, 2)::float8 END AS smoothed_inconclusive_tests,
               CASE WHEN n_days >= 7 THEN round(100 * p7::numeric / nullif(p7 + n7 + i7, 0), 2)::float8 END AS smoothed_positivity_rate
        FROM windowed ORDER BY date""",
    "total_results": """
        WITH latest AS (
          SELECT DISTINCT ON (state, overall_outcome) state, overall_outcome, total_results_reported AS t
          FROM {base} WHERE total_results_reported IS NOT NULL ORDER BY state, overall_outcome, date DESC),
        states AS (
          SELECT DISTINCT ON (state) state, state_name, max(date) OVER (PARTITION BY state) AS latest_date
          FROM {base} ORDER BY state, date DESC, overall_outcome DESC)
        SELECT s.state, s.state_name, s.latest_date,
               coalesce(max(t) FILTER (WHERE overall_outcome = 'Positive'), 0) AS positive_total,
               coalesce(max(t) FILTER (WHERE overall_outcome = 'Negative'), 0) AS negative_total,
               coalesce(max(t) FILTER (WHERE overall_outcome = 'Inconclusive'), 0) AS inconclusive_total,
               coalesce(sum(t), 0)::bigint AS total_results_reported
        FROM states s LEFT JOIN latest l USING (state) GROUP BY s.state, s.state_name, s.latest_date ORDER BY s.state""",
    "recent_positivity_results": """
        WITH w AS (
          SELECT state,
                 coalesce(sum(new_results_reported) FILTER (WHERE overall_outcome = 'Positive'), 0) AS p,
                 coalesce(sum(new_results_reported), 0) AS t
          FROM {base} WHERE date > (SELECT max(date) FROM {base}) - 30 GROUP BY state),
        r AS (SELECT state, p, t, round(100 * p::numeric / t, 2)::float8 AS rate FROM w WHERE t <> 0),
        names AS (SELECT DISTINCT ON (state) state, state_name FROM {base} ORDER BY state, date DESC, overall_outcome DESC)
        SELECT row_number() OVER (ORDER BY rate DESC, r.state)::bigint AS rank, r.state, names.state_name,
               p::bigint AS positive_tests, t::bigint AS total_tests, rate AS positivity_rate
        FROM r JOIN names USING (state) ORDER BY rate DESC, r.state LIMIT 10""",
}


def fetch_pages(base_url: str, dataset_id: str = "j8mb-icvb", page_size: int = 1000) -> tuple[list[dict], int]:
    """Every page until a short one, in sequence, no `$order`: the rows and the number of requests."""
    url = f"{base_url.rstrip('/')}/resource/{dataset_id}.json"
    rows: list[dict] = []
    requests_made = 0
    with requests.Session() as session:
        offset = 0
        while True:
            response = session.get(url, params={"$limit": page_size, "$offset": offset}, timeout=60)
            requests_made += 1
            response.raise_for_status()
            page = response.json()
            rows.extend(page)
            if len(page) < page_size:
                return rows, requests_made
            offset += page_size


def insert_execute_values(cursor, table: str, rows: Iterable[Sequence], page_size: int = 100) -> None:
    """`INSERT ... VALUES %s` in batches of `page_size` rows: psycopg2's execute_values with its default
    page size (1,000-row batches were measured slower here, not faster)."""
    columns = ", ".join(COLUMNS)
    psycopg2.extras.execute_values(cursor, f"INSERT INTO {table} ({columns}) VALUES %s", rows, page_size=page_size)


def load_and_summarize(db_url: str, rows: list[dict], schema: str = "naive") -> dict[str, int]:
    """Replace the base table and the five summaries in `schema` (one transaction)."""
    base = f"{schema}.covid_test_results"
    connection = psycopg2.connect(db_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            cursor.execute(f"DROP TABLE IF EXISTS {base}")
            cursor.execute(CREATE_BASE.format(table=base))
            insert_execute_values(cursor, base, ([row.get(column) for column in COLUMNS] for row in rows))
            counts = {}
            for name, query in SUMMARIES.items():
                cursor.execute(f"DROP TABLE IF EXISTS {schema}.{name}")
                cursor.execute(f"CREATE TABLE {schema}.{name} AS {query.format(base=base)}")
                counts[name] = cursor.rowcount
        connection.commit()
    finally:
        connection.close()
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="Socrata domain, e.g. http://127.0.0.1:8000")
    parser.add_argument("--db-url", required=True, help="libpq URL of the database")
    parser.add_argument("--dataset-id", default="j8mb-icvb")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, requests_made = fetch_pages(args.base_url, args.dataset_id)
    fetched = time.perf_counter()
    counts = load_and_summarize(args.db_url, rows)
    done = time.perf_counter()
    print(json.dumps({
        "rows": len(rows), "requests": requests_made,
        "fetch_s": round(fetched - started, 3), "load_and_summaries_s": round(done - fetched, 3), "summary_rows": counts,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
