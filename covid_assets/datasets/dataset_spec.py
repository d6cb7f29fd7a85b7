"""A declared Socrata dataset, resolved: where it comes from, its two tables, and what must hold of it.

A `DatasetSpec` is what a `SocrataDataset` declaration (one YAML file) resolves to, and all the
dataset-independent machinery reads: the loader (COPY, typing, guard and merge in SQL), the
asset factory and the checks. The raw table keeps the source's values as delivered (TEXT), the
base table is typed and unique on the key; both are described by `TableSpec`s derived from the
declared columns.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from covid_assets.datasets.table_spec import ColumnSpec, TableSpec

if TYPE_CHECKING:
    from dagster import AssetKey

__all__ = ["DatasetSpec", "ValueChecks", "DateWindow", "EXTRA_COLUMNS", "FETCHED_AT", "raw_table_spec"]

EXTRA_COLUMNS = "extra_columns"  # every source column the declaration does not name, as one JSON object per row
FETCHED_AT = "fetched_at"


@dataclass(frozen=True)
class DateWindow:
    """Every value of `column` lies in [earliest, today + future_days]."""

    column: str
    earliest: dt.date
    future_days: int = 0


@dataclass(frozen=True)
class ValueChecks:
    """Checks of the base table's values, run as asset checks after each load."""

    not_null: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # check (or check.column) -> its name, where not the default
    allowed_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # column: (min, max), inclusive
    date_window: DateWindow | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One declared dataset. `name` is a short identifier (letters, digits, underscores) used in
    asset and check names; `base` holds the typed columns, `raw` the same columns as delivered."""

    name: str
    domain: str  # e.g. data.cdc.gov; the API base URL is https://{domain}
    dataset_id: str  # the Socrata 4x4, e.g. 9mfq-cb36
    base: TableSpec  # typed, unique on base.key
    raw: TableSpec  # see raw_table_spec
    source_name: str = ""  # the observed source asset is socrata/<source_name> (default: name)
    environment: dict[str, str] = field(default_factory=dict)  # base_url/dataset_id/source_file -> variable NAME
    required: tuple[str, ...] = ()  # source fields every delivery must have
    checks: ValueChecks = field(default_factory=ValueChecks)
    max_shrink_fraction: float = 0.05
    series_key: tuple[str, ...] = ()  # the shrink guard also refuses a delivery in which one of these series disappears
    export_file: Path | None = None  # a bundled export, read instead of the API when running offline
    title: str = ""
    description: str = ""
    group: str = "datasets"
    raw_group: str | None = None  # the raw table's asset group (default: group)
    base_group: str | None = None
    owners: tuple[str, ...] = ()
    figures: str | None = None  # module:function -> the base table's figures after a load (see declaration.py)

    @property
    def source_key(self) -> AssetKey:
        from dagster import AssetKey

        return AssetKey(["socrata", self.source_name or self.name])

    @property
    def base_url(self) -> str:
        return f"https://{self.domain}"


def raw_table_spec(schema: str, name: str, base: TableSpec, description: str = "") -> TableSpec:
    """The landing table: each base column's source field as delivered (TEXT), the rest in JSONB."""
    columns = [
        ColumnSpec(column.source_field, "TEXT", f"As delivered (text). {column.description}".strip())
        for column in base.columns
    ]
    columns.append(
        ColumnSpec(
            EXTRA_COLUMNS,
            "JSONB",
            "Every other column the source sent, as a JSON object: column name -> value as delivered (text), "
            "only the columns this row has a value in; NULL when none.",
        )
    )
    columns.append(ColumnSpec(FETCHED_AT, "TIMESTAMPTZ", "When this full refresh fetched the rows (UTC)."))
    return TableSpec.build(schema, name, columns, description=description)
