"""One description per warehouse table: its name, key and, for each column, type, description and lineage.

Everything else about a table is derived from its `TableSpec`: the Postgres column types the IO
manager and the SQL typing use, the pandas dtypes of the frames that hold it, the column schema
and column lineage the UI shows, the primary key the merge and the checks use. A table is
described once, here or in a dataset declaration, never in parallel lists in several files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from covid_assets.sources.socrata.metadata import WAREHOUSE_TYPES, WarehouseType

if TYPE_CHECKING:
    from dagster import AssetKey, TableColumnLineage, TableSchema

__all__ = ["ColumnSpec", "ColumnRules", "TableSpec", "PANDAS_DTYPE_NAMES"]

# Warehouse type -> the pandas dtype a frame of the table holds it in (by name, so that importing
# this module does not import pandas; `TableSpec.pandas_dtypes` resolves them).
PANDAS_DTYPE_NAMES: dict[WarehouseType, str] = {
    "TEXT": "string",
    "BIGINT": "Int64",
    "NUMERIC": "float64",  # frames only: the warehouse keeps NUMERIC exact
    "DOUBLE PRECISION": "float64",
    "DATE": "date32[pyarrow]",
    "TIMESTAMP": "timestamp[us][pyarrow]",
    "TIMESTAMPTZ": "timestamp[us, tz=UTC][pyarrow]",
    "BOOLEAN": "boolean",
    "JSONB": "string",
}


@dataclass(frozen=True)
class ColumnRules:
    """What a value must be beyond its type, and how a missing one is completed (the loader's SQL typing).

    Each rule makes a value that breaks it a bad row, refused with the delivery, named in the
    bad-row report: `pattern` (a regular expression the whole trimmed text matches; `pattern_label`
    says what that means, e.g. "a 2-letter code"), `allowed` (the only values; a missing value of a
    key column with allowed values is reported as unknown), `max_abs` (numbers: |n| < max_abs).
    `pad_width` left-pads a shorter value with zeros (a code a CSV tool read as a number);
    `fill_from` and `fill_map` complete a missing value from another column's (trimmed) value.
    `problem` names a value that cannot be typed in the report (default: "bad <column> (<expected>)").
    """

    pattern: str | None = None
    pattern_label: str | None = None
    allowed: tuple[str, ...] = ()
    max_abs: int | None = None
    pad_width: int | None = None
    fill_from: str | None = None
    fill_map: tuple[tuple[str, str], ...] = ()
    problem: str | None = None

    @property
    def constrains(self) -> bool:
        """A rule can refuse a value (so a NUL byte in it must stay visible, not be removed)."""
        return bool(self.pattern or self.allowed or self.max_abs)


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its warehouse type, what it means, and where its values come from.

    `source` is the source field a base column is typed from (its own name by default); `lineage`
    names the upstream columns a derived column is computed from (for the UI's column lineage).
    """

    name: str
    type: WarehouseType
    description: str = ""
    source: str | None = None
    lineage: tuple[str, ...] = ()
    rules: ColumnRules = ColumnRules()

    def __post_init__(self) -> None:
        if self.type not in WAREHOUSE_TYPES:
            raise ValueError(f"column {self.name!r}: unknown type {self.type!r} (expected one of {', '.join(WAREHOUSE_TYPES)})")

    @property
    def source_field(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class TableSpec:
    schema: str
    name: str
    columns: tuple[ColumnSpec, ...]
    key: tuple[str, ...] = ()
    description: str = ""
    _by_name: Mapping[str, ColumnSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {column.name: column for column in self.columns}
        if len(by_name) != len(self.columns):
            raise ValueError(f"table {self.qualified_name}: a column name is repeated")
        if missing := [name for name in self.key if name not in by_name]:
            raise ValueError(f"table {self.qualified_name}: key column(s) {', '.join(missing)} are not columns of it")
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def build(
        cls,
        schema: str,
        name: str,
        columns: Iterable[ColumnSpec],
        key: Sequence[str] = (),
        description: str = "",
    ) -> TableSpec:
        return cls(schema=schema, name=name, columns=tuple(columns), key=tuple(key), description=description)

    def __getitem__(self, column: str) -> ColumnSpec:
        return self._by_name[column]

    @property
    def qualified_name(self) -> str:
        """As analysts write it: schema.table."""
        return f"{self.schema}.{self.name}"

    @property
    def asset_key(self) -> AssetKey:
        from dagster import AssetKey

        return AssetKey([self.schema, self.name])

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def names_of_type(self, *types: WarehouseType) -> list[str]:
        return [column.name for column in self.columns if column.type in types]

    @property
    def postgres_types(self) -> dict[str, WarehouseType]:
        return {column.name: column.type for column in self.columns}

    @property
    def pandas_dtypes(self) -> dict[str, object]:
        import pandas as pd

        return {column.name: pd.api.types.pandas_dtype(PANDAS_DTYPE_NAMES[column.type]) for column in self.columns}

    @property
    def column_descriptions(self) -> dict[str, str]:
        return {column.name: column.description for column in self.columns}

    @property
    def column_schema(self) -> TableSchema:
        """The columns with their types as declared (lower case) and descriptions: what the UI shows."""
        return self._schema(lambda type_: type_.lower())

    @property
    def written_column_schema(self) -> TableSchema:
        """The same with the types as Postgres names them: what a materialization reports it wrote."""
        return self._schema(str)

    def _schema(self, type_name) -> TableSchema:
        from dagster import TableColumn, TableSchema

        return TableSchema(
            columns=[
                TableColumn(name=column.name, type=type_name(column.type), description=column.description or None)
                for column in self.columns
            ]
        )

    def definition_metadata(self) -> dict[str, object]:
        """What an asset declares of its table: the key, and the column schema (types and descriptions)
        the IO manager creates the table with and the UI shows."""
        key = {"primary_key": list(self.key)} if self.key else {}
        return {**key, "column_descriptions": self.column_descriptions, "dagster/column_schema": self.column_schema}

    def column_lineage(self, upstream: AssetKey) -> TableColumnLineage:
        from dagster import TableColumnDep, TableColumnLineage

        return TableColumnLineage(
            deps_by_column={
                column.name: [TableColumnDep(asset_key=upstream, column_name=source) for source in column.lineage]
                for column in self.columns
                if column.lineage
            }
        )
