"""A dataset declaration: what one `defs.yaml` states about a Socrata dataset, and its `DatasetSpec`.

The declaration is plain data (a pydantic model, which Dagster's `Resolvable` reads from YAML):
where the dataset lives, its two tables, its key, each column's type and description, what must
hold of its values, the shrink threshold and how it is refreshed. Column types are written into
the declaration by the scaffolding command (`covid_assets.datasets.scaffold`, from the dataset's
view metadata), so loading the code location never asks the network; each column keeps the
Socrata `source_type` it was derived from, and a `type` given by hand overrides the derived one.

Field-level mistakes (a misspelt key, a table name that is no identifier) are refused by pydantic
while Dagster reads the YAML, with the file and line; the checks that span fields (a key column
that is not declared, a check on an unknown column) raise `DeclarationError`, naming the file and
the field.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import yaml
from dagster import Model
from pydantic import Field, StringConstraints, field_validator

from covid_assets.datasets.dataset_spec import DatasetSpec, DateWindow, ValueChecks, raw_table_spec
from covid_assets.datasets.table_spec import ColumnRules, ColumnSpec, TableSpec
from covid_assets.sources.socrata.errors import SocrataError
from covid_assets.sources.socrata.metadata import warehouse_type

__all__ = [
    "ChecksDeclaration",
    "ColumnDeclaration",
    "DatasetDeclaration",
    "DateWindowDeclaration",
    "DeclarationError",
    "EnvironmentDeclaration",
    "FillDeclaration",
    "RangeDeclaration",
    "SensorDeclaration",
    "TableName",
    "load_declaration",
]

# Lower-case Postgres identifiers that need no quoting, at most 63 bytes (Postgres' limit).
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)]
DatasetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=50)]
FourByFour = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{4}-[a-z0-9]{4}$")]
Domain = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$", max_length=253)]


class DeclarationError(ValueError):
    """A declaration that cannot be resolved: names the file and the field."""

    def __init__(self, file: Path | str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}: {message}")
        self.file, self.field = str(file), field


def _identifier(value: str) -> str:
    """A plain Annotated constraint would do, but Dagster's Resolvable accepts only plain types in nested models."""
    if not _is_identifier(value):
        raise ValueError(f"{value!r} is not a lower-case identifier (a-z, 0-9, _; at most 63 characters)")
    return value


class TableName(Model):
    """Where a table lives: `schema.table`."""

    schema_: str = Field(alias="schema")
    table: str
    group: str | None = Field(default=None, description="The asset group of this table (default: the dataset's group)")

    _names = field_validator("schema_", "table")(_identifier)

    @field_validator("group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        return None if value is None else _identifier(value)


class FillDeclaration(Model):
    """Complete a missing value from another column's value: `values` maps that value to this column's."""

    column: str = Field(description="The base column whose (trimmed) value is looked up, e.g. state")
    values: dict[str, str] = Field(description="Its value -> this column's value, e.g. AL: '01'")

    @field_validator("values")
    @classmethod
    def _some(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("give at least one value")
        return value


class ColumnDeclaration(Model):
    """One base column. `type` overrides the type derived from `source_type` (Socrata's dataTypeName);
    the typing rules below make a value that breaks them a bad row (the delivery is refused)."""

    type: str | None = Field(default=None, description="Warehouse type (TEXT, BIGINT, NUMERIC, DATE, ...); overrides the derived one")
    source_type: str | None = Field(default=None, description="Socrata dataTypeName the scaffold found, e.g. number")
    description: str = ""
    source: str | None = Field(default=None, description="The source field, when it differs from the column name")
    pattern: str | None = Field(default=None, description="A regular expression every value matches whole, e.g. '[A-Z]{2}'")
    pattern_label: str | None = Field(default=None, description="What the pattern means, for the bad-row report: 'a 2-letter code'")
    allowed_values: list[str] | None = Field(default=None, description="The only values the column may hold (a typing rule)")
    max_abs: int | None = Field(default=None, description="Numbers: every value's |n| is below this bound")
    pad_width: int | None = Field(default=None, description="Text: left-pad a shorter value with zeros to this width")
    fill_from: FillDeclaration | None = Field(default=None, description="Text: a missing value is looked up from another column's")
    problem: str | None = Field(default=None, description="How the bad-row report names a value that cannot be typed")

    @field_validator("max_abs")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"{value} is not a positive bound")
        return value

    @field_validator("pad_width")
    @classmethod
    def _width(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 100:
            raise ValueError(f"{value} is outside 1 to 100 characters")
        return value


class EnvironmentDeclaration(Model):
    """The NAMES of the environment variables that point a deployment's dataset elsewhere (never values).

    base_url defaults to SOCRATA_BASE_URL_<NAME>; dataset_id and source_file to none (the declared
    id; the API, or the declared export_file with SOCRATA_OFFLINE=1)."""

    base_url: str | None = None
    dataset_id: str | None = None
    source_file: str | None = None

    @field_validator("base_url", "dataset_id", "source_file")
    @classmethod
    def _a_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,99}", value):
            raise ValueError(f"{value[:100]!r} is not an environment variable name (A-Z, 0-9, _): name the variable, never a value")
        return value


class RangeDeclaration(Model):
    min: float | None = None
    max: float | None = None


class DateWindowDeclaration(Model):
    column: str
    earliest: str = Field(description="ISO date, e.g. 2020-01-22")
    future_days: int = Field(default=0, description="How many days after today a value may lie (0 to 3660)")

    @field_validator("future_days")
    @classmethod
    def _bounded(cls, value: int) -> int:
        if not 0 <= value <= 3660:
            raise ValueError(f"{value} is outside 0 to 3660 days")
        return value


class ChecksDeclaration(Model):
    """What must hold of the base table's values after every load (asset checks in SQL)."""

    not_null: list[str] = Field(default_factory=list)
    allowed_values: dict[str, list[str]] = Field(default_factory=dict)
    ranges: dict[str, RangeDeclaration] = Field(default_factory=dict)
    date_window: DateWindowDeclaration | None = None
    names: dict[str, str] = Field(
        default_factory=dict,
        description="Check names other than the defaults, by check (primary_key, not_null, allowed_values, ranges, "
        "date_window, row_count) or by check and column (allowed_values.state: a check of its own for that column)",
    )


class SensorDeclaration(Model):
    """Observe the source on a timer and refresh once per new version (rowsUpdatedAt and count)."""

    minimum_interval_minutes: float = Field(default=60.0, description="Minutes between observations (1 to a week)")

    @field_validator("minimum_interval_minutes")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if not 1 <= value <= 7 * 24 * 60:
            raise ValueError(f"{value:g} minutes is outside 1 minute to a week")
        return value


class DatasetDeclaration(Model):
    """The attributes of one `SocrataDataset` in its `defs.yaml`."""

    domain: Domain = Field(description="The Socrata domain, e.g. data.cdc.gov (the API is https://{domain})")
    dataset_id: FourByFour = Field(description="The Socrata four-by-four, e.g. 9mfq-cb36")
    name: DatasetName = Field(description="Short identifier used in job, check and sensor names")
    source_name: Identifier | None = Field(default=None, description="The observed source asset is socrata/<source_name> (default: name)")
    environment: EnvironmentDeclaration = Field(default_factory=EnvironmentDeclaration)
    title: str = ""
    description: str = ""
    raw: TableName
    base: TableName
    key: list[Identifier] = Field(min_length=1, description="Base columns that identify a row")
    columns: dict[str, ColumnDeclaration] = Field(min_length=1, description="Base columns, in order, by name")
    required: list[str] = Field(default_factory=list, description="Source fields every delivery must have")
    checks: ChecksDeclaration = Field(default_factory=ChecksDeclaration)
    max_shrink_fraction: float = Field(default=0.05, ge=0, le=1)
    series_key: list[Identifier] = Field(default_factory=list)
    group: Identifier = "datasets"
    owners: list[str] = Field(default_factory=list)
    schedule: str | None = Field(default=None, description="Cron schedule of the refresh, e.g. '0 7 * * *' (UTC)")
    sensor: SensorDeclaration | None = None
    export_file: str | None = Field(default=None, description="A bundled export for offline runs, relative to this file")
    figures: str | None = Field(
        default=None,
        description="module:function computing the base table's figures for the UI after each load, "
        "called with (connection, DatasetSpec) inside the run's transaction; returns metadata",
    )

    def to_spec(self, file: Path) -> DatasetSpec:
        """The resolved dataset; `file` is the declaration's YAML (errors name it, `export_file` is relative to it)."""
        columns = [self._column_spec(file, name, column) for name, column in self.columns.items()]
        try:
            description = (self.description or self.title or self.dataset_id) + f"\n\nTyped, unique on ({', '.join(self.key)})."
            base = TableSpec.build(self.base.schema_, self.base.table, columns, key=self.key, description=description)
        except ValueError as error:
            raise DeclarationError(file, "key", str(error)) from None
        self._check_columns(file, base)
        self._check_schedule(file)
        return DatasetSpec(
            name=self.name,
            source_name=self.source_name or "",
            environment=self.environment.model_dump(exclude_none=True),
            domain=self.domain,
            dataset_id=self.dataset_id,
            base=base,
            raw=raw_table_spec(self.raw.schema_, self.raw.table, base, description=self._raw_description()),
            required=tuple(self.required),
            checks=self._value_checks(file),
            max_shrink_fraction=self.max_shrink_fraction,
            series_key=tuple(self.series_key),
            export_file=self._export_path(file),
            title=self.title,
            description=self.description,
            group=self.group,
            raw_group=self.raw.group,
            base_group=self.base.group,
            owners=tuple(self.owners),
            figures=self._figures(file),
        )

    def _column_spec(self, file: Path, name: str, column: ColumnDeclaration) -> ColumnSpec:
        field = f"columns.{name}"
        if not _is_identifier(name):
            raise DeclarationError(file, field, "a column name must be a lower-case identifier (a-z, 0-9, _), at most 63 characters")
        if column.type is None and column.source_type is None:
            raise DeclarationError(file, field, "no type: give `type`, or `source_type` to derive it from (the scaffold writes both)")
        try:
            declared, _ = warehouse_type(column.source_type or "", column.type, name)
        except SocrataError as error:
            raise DeclarationError(file, f"{field}.type", str(error)) from None
        source = column.source or name
        return ColumnSpec(name, declared, column.description, source=column.source, lineage=(source,), rules=self._rules(file, name, column, declared))

    def _rules(self, file: Path, name: str, column: ColumnDeclaration, declared: str) -> ColumnRules:
        field = f"columns.{name}"
        if column.pattern is not None:
            try:
                re.compile(column.pattern)
            except re.error as error:
                raise DeclarationError(file, f"{field}.pattern", f"not a regular expression ({error})") from None
        if column.max_abs is not None and declared not in ("BIGINT", "NUMERIC", "DOUBLE PRECISION"):
            raise DeclarationError(file, f"{field}.max_abs", f"{name!r} is {declared}, not a number")
        for option in ("pad_width", "fill_from"):
            if getattr(column, option) is not None and declared != "TEXT":
                raise DeclarationError(file, f"{field}.{option}", f"{name!r} is {declared}: only a TEXT column is padded or filled")
        fill = column.fill_from
        if fill is not None and (fill.column == name or fill.column not in self.columns):
            raise DeclarationError(file, f"{field}.fill_from.column", f"{fill.column!r} is not another declared column")
        return ColumnRules(
            pattern=column.pattern,
            pattern_label=column.pattern_label,
            allowed=tuple(column.allowed_values or ()),
            max_abs=column.max_abs,
            pad_width=column.pad_width,
            fill_from=fill.column if fill else None,
            fill_map=tuple(fill.values.items()) if fill else (),
            problem=column.problem,
        )

    def _check_columns(self, file: Path, base: TableSpec) -> None:
        """Every column a check, the series key or the raw table names exists."""
        known = set(base.column_names)
        sources = {column.source_field for column in base.columns}
        named = [
            *((f"checks.not_null[{i}]", c) for i, c in enumerate(self.checks.not_null)),
            *((f"checks.allowed_values.{c}", c) for c in self.checks.allowed_values),
            *((f"checks.ranges.{c}", c) for c in self.checks.ranges),
            *((f"series_key[{i}]", c) for i, c in enumerate(self.series_key)),
        ]
        if self.checks.date_window:
            named.append(("checks.date_window.column", self.checks.date_window.column))
        for field, column in named:
            if column not in known:
                raise DeclarationError(file, field, f"{column!r} is not a declared column (columns: {', '.join(base.column_names)})")
        for i, source in enumerate(self.required):
            if source not in sources:
                raise DeclarationError(file, f"required[{i}]", f"{source!r} is not the source field of a declared column")
        if window := self.checks.date_window:
            if base[window.column].type not in ("DATE", "TIMESTAMP", "TIMESTAMPTZ"):
                raise DeclarationError(file, "checks.date_window.column", f"{window.column!r} is {base[window.column].type}, not a date")
        for column in self.checks.ranges:
            if base[column].type not in ("BIGINT", "NUMERIC", "DOUBLE PRECISION"):
                raise DeclarationError(file, f"checks.ranges.{column}", f"{column!r} is {base[column].type}, not a number")
        for column in ("fetched_at", "extra_columns"):
            if column in sources:
                raise DeclarationError(file, "columns", f"{column!r} is a column of the raw table itself; map the source field to another name")

    def _figures(self, file: Path) -> str | None:
        """`module:function`, both dotted identifiers (imported when a load runs, never while definitions load)."""
        if self.figures is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.figures):
            raise DeclarationError(file, "figures", f"{self.figures[:100]!r} is not module:function")
        return self.figures

    def _check_schedule(self, file: Path) -> None:
        from dagster._utils.schedules import is_valid_cron_string

        if self.schedule is not None and not is_valid_cron_string(self.schedule):
            raise DeclarationError(file, "schedule", f"{self.schedule!r} is not a cron schedule (e.g. '0 7 * * *')")

    def _value_checks(self, file: Path) -> ValueChecks:
        window = None
        if declared := self.checks.date_window:
            try:
                earliest = dt.date.fromisoformat(declared.earliest)
            except ValueError:
                raise DeclarationError(file, "checks.date_window.earliest", f"{declared.earliest!r} is not an ISO date (YYYY-MM-DD)") from None
            window = DateWindow(declared.column, earliest, declared.future_days)
        for column, bounds in self.checks.ranges.items():
            if bounds.min is None and bounds.max is None:
                raise DeclarationError(file, f"checks.ranges.{column}", "give min, max or both")
            if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
                raise DeclarationError(file, f"checks.ranges.{column}", f"min {bounds.min:g} is above max {bounds.max:g}")
        self._check_names(file)
        return ValueChecks(
            names=dict(self.checks.names),
            not_null=tuple(self.checks.not_null),
            allowed_values={column: tuple(values) for column, values in self.checks.allowed_values.items()},
            ranges={column: (bounds.min, bounds.max) for column, bounds in self.checks.ranges.items()},
            date_window=window,
        )

    def _check_names(self, file: Path) -> None:
        """A name is given to a check the declaration has, is an identifier, and names one check only."""
        checks = self.checks
        known = {"primary_key", "row_count", *(["not_null"] if checks.not_null else []), *(["date_window"] if checks.date_window else [])}
        for kind, columns in (("allowed_values", checks.allowed_values), ("ranges", checks.ranges)):
            if columns:
                known |= {kind, *(f"{kind}.{column}" for column in columns)}
        for check, name in checks.names.items():
            if check not in known:
                raise DeclarationError(file, f"checks.names.{check}", f"no such check here (checks: {', '.join(sorted(known))})")
            if not _is_identifier(name):
                raise DeclarationError(file, f"checks.names.{check}", f"{name!r} is not a lower-case identifier")
        if len(set(checks.names.values())) < len(checks.names):
            raise DeclarationError(file, "checks.names", "two checks have one name")

    def _export_path(self, file: Path) -> Path | None:
        if self.export_file is None:
            return None
        path = (Path(file).parent / self.export_file).resolve()
        if not path.is_file():
            raise DeclarationError(file, "export_file", f"{self.export_file!r} is not a file (looked for {path})")
        return path

    def _raw_description(self) -> str:
        what = self.title or self.dataset_id
        return (
            f"Every row of {what} ({self.domain} {self.dataset_id}) exactly as delivered: the declared source fields as "
            "text, any other field in `extra_columns` (JSON), and `fetched_at`."
        )


def load_declaration(path: Path) -> DatasetSpec:
    """The dataset a `defs.yaml` declares, resolved without loading the component (scripts, tests, the COVID tables)."""
    return DatasetDeclaration.model_validate(yaml.safe_load(path.read_text())["attributes"]).to_spec(path)


def _is_identifier(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z_][a-z0-9_]*", name)) and len(name) <= 63
