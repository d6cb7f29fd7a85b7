"""The COVID pipeline's eight warehouse tables, each described once (key = [schema, table]).

The raw and base tables are the declaration's (`COVID`, from covid_assets/defs/covid_pcr_testing/
defs.yaml: columns, types, typing rules, key); each summary, and the revisions, is one `TableSpec` here: its name, key,
description and, per column, the Postgres type, what the column means and which base-table columns
it is computed from. The asset keys, primary keys, the summaries' pandas dtypes, the checks' keys,
the Postgres types the IO manager creates and the column schema and lineage the UI shows are all
derived from these specs.
"""

from __future__ import annotations

from pathlib import Path

from covid_assets.datasets.declaration import load_declaration
from covid_assets.datasets.table_spec import ColumnSpec, TableSpec

SCHEMA = "covid_19"
OWNERS = ["team:data-platform"]
# The source, raw and base tables are declared (covid_assets/defs/covid_pcr_testing/defs.yaml) and
# loaded by the generic path; the summaries below are computed from the base table.
DECLARATION = Path(__file__).parents[1] / "defs" / "covid_pcr_testing" / "defs.yaml"

COVID = load_declaration(DECLARATION)  # read once per process: no network, a small YAML file
BASE = COVID.base
RAW = COVID.raw
RAW_SCHEMA = RAW.schema
# The published dataset itself, observed (never materialized): upstream of the raw table.
SOURCE_ASSET_KEY = COVID.source_key
COUNT_COLUMNS = BASE.names_of_type("BIGINT")
OUTCOMES = BASE["overall_outcome"].rules.allowed


def _summary(name: str, key: str, description: str, *columns: tuple[str, str, str, tuple[str, ...]]) -> TableSpec:
    """A `covid_19.<name>` table computed from the base table; each column is
    (name, type, description, the base columns it is computed from)."""
    return TableSpec.build(
        SCHEMA,
        name,
        [ColumnSpec(column, type_, text, lineage=lineage) for column, type_, text, lineage in columns],
        key=[key],
        description=description,
    )


_COUNT = ("new_results_reported", "overall_outcome")
_DAILY = (*_COUNT, "date")
_TOTAL = ("total_results_reported", "overall_outcome", "date")
_STATE = ("state", "TEXT", "Two-letter jurisdiction code.", ("state",))
_STATE_NAME = ("state_name", "TEXT", "Name of the jurisdiction (from its latest row).", ("state_name", "date"))
_RATE = "DOUBLE PRECISION"

OUTCOME_RESULTS = _summary(
    "outcome_results",
    "overall_outcome",
    "How many PCR results of each outcome have been reported in total, and what share of all results is "
    "positive, negative or inconclusive? One row per outcome, largest first.",
    ("overall_outcome", "TEXT", "Test outcome.", ("overall_outcome",)),
    ("total_results_reported", "BIGINT", "All results with this outcome (sum of daily results).", _COUNT),
    ("pct_of_results", _RATE, "Share of all results, percent, 2 decimals.", _COUNT),
)
STATE_RESULTS = _summary(
    "state_results",
    "state",
    "How many positive, negative and inconclusive tests has each jurisdiction reported over the whole "
    "series, and what is its overall positivity rate? One row per jurisdiction, by state code.",
    _STATE,
    _STATE_NAME,
    ("positive_tests", "BIGINT", "Positive results over the whole series.", _COUNT),
    ("negative_tests", "BIGINT", "Negative results over the whole series.", _COUNT),
    ("inconclusive_tests", "BIGINT", "Inconclusive results over the whole series.", _COUNT),
    ("total_tests", "BIGINT", "All results over the whole series.", _COUNT),
    ("positivity_rate", _RATE, "positive / total × 100, 2 decimals; NULL when there are no tests.", _COUNT),
)
SMOOTHED_RESULTS = _summary(
    "smoothed_results",
    "date",
    "What does the national testing curve look like day by day? Results per outcome for every calendar "
    "day, their 7-day trailing means and the 7-day positivity rate, for plotting trends without weekday noise.",
    ("date", "DATE", "Calendar day; days without reports are included with zero counts.", ("date",)),
    ("positive_tests", "BIGINT", "National positive results that day.", _DAILY),
    ("negative_tests", "BIGINT", "National negative results that day.", _DAILY),
    ("inconclusive_tests", "BIGINT", "National inconclusive results that day.", _DAILY),
    ("smoothed_positive_tests", _RATE, "7-day trailing mean of positive results; NULL for the first 6 days.", _DAILY),
    ("smoothed_negative_tests", _RATE, "7-day trailing mean of negative results; NULL for the first 6 days.", _DAILY),
    ("smoothed_inconclusive_tests", _RATE, "7-day trailing mean of inconclusive results; NULL for the first 6 days.", _DAILY),
    ("smoothed_positivity_rate", _RATE, "7-day positives / 7-day results × 100; NULL for the first 6 days.", _DAILY),
)
TOTAL_RESULTS = _summary(
    "total_results",
    "state",
    "Where does each jurisdiction's cumulative count stand? Its latest reporting date and the cumulative "
    "results per outcome as of that outcome's most recent row, one labelled row per jurisdiction.",
    _STATE,
    _STATE_NAME,
    ("latest_date", "DATE", "The jurisdiction's last reported day.", ("date",)),
    ("positive_total", "BIGINT", "Cumulative positive results on that outcome's latest row (0 if none).", _TOTAL),
    ("negative_total", "BIGINT", "Cumulative negative results on that outcome's latest row (0 if none).", _TOTAL),
    ("inconclusive_total", "BIGINT", "Cumulative inconclusive results on that outcome's latest row (0 if none).", _TOTAL),
    ("total_results_reported", "BIGINT", "Sum of the three cumulative totals.", _TOTAL),
)
RECENT_POSITIVITY_RESULTS = _summary(
    "recent_positivity_results",
    "state",
    "Which jurisdictions had the highest positivity recently? The top 10 over the 30 days ending on the "
    "data's latest date (the dataset is no longer updated, so the window is anchored on the data, not today).",
    ("rank", "BIGINT", "1 = highest positivity in the window; ties broken by state code.", (*_DAILY, "state")),
    _STATE,
    _STATE_NAME,
    ("positive_tests", "BIGINT", "Positive results in the 30 days ending on the data's latest date.", _DAILY),
    ("total_tests", "BIGINT", "All results in the same window.", _DAILY),
    ("positivity_rate", _RATE, "positive / total × 100 in the window, 2 decimals.", _DAILY),
)

_KEY = tuple(BASE.key)
_CHANGE = "(new minus old values of new_results_reported)"
REVISIONS = TableSpec.build(
    SCHEMA,
    "revisions",
    [
        ColumnSpec("load_id", "BIGINT", "The load (covid_19.loads.load_id): 1, 2, 3, ... in the order the loads were applied."),
        ColumnSpec("committed_at", "TIMESTAMPTZ",
                   "When the load became visible (its COMMIT); covid_test_results_as_of(committed_at) reads what it left."),
        ColumnSpec("state", "TEXT", "Two-letter jurisdiction code.", lineage=("state",)),
        ColumnSpec("rows_added", "BIGINT", "The state's rows with a key the table did not hold before the load.", lineage=_KEY),
        ColumnSpec("rows_revised", "BIGINT", "The state's rows whose values the load changed.", lineage=tuple(BASE.column_names)),
        ColumnSpec("rows_withdrawn", "BIGINT", "The state's rows the load removed (accepted with allow_shrink).", lineage=_KEY),
        ColumnSpec("positive_results_change", "BIGINT", f"What the load added to the state's positive results {_CHANGE}.",
                   lineage=_COUNT),
        ColumnSpec("total_results_change", "BIGINT", f"What the load added to the state's results of all outcomes {_CHANGE}.",
                   lineage=("new_results_reported",)),
        ColumnSpec("earliest_date_touched", "DATE", "The earliest date of the rows the load added, revised or withdrew.",
                   lineage=("date",)),
    ],
    key=["load_id", "state"],
    description=(
        "What did each load change in each jurisdiction's history? One row per load and jurisdiction it touched: rows "
        "added, revised and withdrawn, the change in positive and in all results, the earliest date touched. A view "
        "over covid_19.covid_test_results_history and covid_19.loads, so always as current as the history."
    ),
)

SUMMARIES = (OUTCOME_RESULTS, STATE_RESULTS, SMOOTHED_RESULTS, TOTAL_RESULTS, RECENT_POSITIVITY_RESULTS)
# The tables computed from the base table: the five summaries (pandas) and the revisions (SQL over its history).
REPORTING = (*SUMMARIES, REVISIONS)
# Every table a full refresh writes, in lineage order.
TABLES = (RAW, BASE, *REPORTING)

RAW_ASSET_KEY = RAW.asset_key
BASE_ASSET_KEY = BASE.asset_key
PRIMARY_KEY = list(BASE.key)
TABLE_ASSET_KEYS = [spec.asset_key for spec in TABLES]
# The eight tables for `dagster asset materialize --select` (the code location's other declared
# datasets have their own sources and are left out).
COVID_SELECTION = ",".join(key.to_user_string() for key in TABLE_ASSET_KEYS)
SPEC_BY_KEY = {spec.asset_key: spec for spec in TABLES}
# As analysts name them (schema.table).
ALL_TABLES = [spec.qualified_name for spec in TABLES]

