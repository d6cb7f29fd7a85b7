"""A dataset's view metadata (``/api/views/{id}.json``) and the warehouse column types it implies.

Socrata describes every dataset in one JSON document: its name, ``rowsUpdatedAt`` (the change
detection evidence) and its columns, each with ``fieldName`` (the key in row objects), ``name``
(for people), ``dataTypeName`` and ``description``. Hidden system columns (``:id``,
``:created_at``, ...) have a field name starting with ``:`` or the type ``meta_data``; rows
queried without synthetic fields do not carry them. The ``rows.json`` export of a dataset holds
the same document under ``meta.view``.

:func:`parse_view` reads it into a :class:`ViewMetadata`; :func:`column_types` maps each data
column to a warehouse type (:data:`WAREHOUSE_TYPE_OF`; an unknown type stays ``TEXT``, with a
note), with per-column overrides from a declaration (e.g. ``number`` to ``BIGINT``).

The document is the source's text, so it is bounded: at most :data:`MAX_COLUMNS` columns and
:data:`MAX_METADATA_BYTES` bytes, field names of at most :data:`MAX_FIELD_NAME` printable
characters (a field name identifies a column: it is refused, never cut), display names and
types clipped like any quoted source text, descriptions cut at :data:`MAX_DESCRIPTION`
characters. Errors name the document and the column's position, never more of its text than that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, get_args

from covid_assets.sources.socrata.errors import SocrataError, clip

__all__ = [
    "MAX_COLUMNS",
    "MAX_DESCRIPTION",
    "MAX_FIELD_NAME",
    "MAX_METADATA_BYTES",
    "WAREHOUSE_TYPE_OF",
    "WAREHOUSE_TYPES",
    "ColumnType",
    "SourceColumn",
    "ViewMetadata",
    "WarehouseType",
    "column_types",
    "parse_view",
    "rows_updated_at",
    "warehouse_type",
]

MAX_COLUMNS = 1_000  # Socrata's own limit per dataset is lower; beyond this a document is not a dataset
MAX_FIELD_NAME = 255
MAX_NAME = 300
MAX_TYPE_NAME = 64
MAX_DESCRIPTION = 1_000
# 24 columns of xt86-xqxz with their cached statistics take 18 kB: 16 MiB is ample for 1,000.
MAX_METADATA_BYTES = 16 * 1024 * 1024

WarehouseType = Literal["TEXT", "NUMERIC", "BIGINT", "DOUBLE PRECISION", "DATE", "TIMESTAMP", "TIMESTAMPTZ", "BOOLEAN", "JSONB"]
WAREHOUSE_TYPES: tuple[WarehouseType, ...] = get_args(WarehouseType)

# Socrata dataTypeName -> warehouse type (https://dev.socrata.com/docs/datatypes, and the older
# names view metadata still uses). Geometry and the url object arrive as JSON objects: JSONB.
WAREHOUSE_TYPE_OF: dict[str, WarehouseType] = {
    "text": "TEXT",
    "number": "NUMERIC",  # exact; a declaration may say BIGINT or DOUBLE PRECISION
    "double": "DOUBLE PRECISION",
    "money": "NUMERIC",
    "percent": "NUMERIC",
    "calendar_date": "DATE",
    "floating_timestamp": "TIMESTAMP",  # no time zone: a local date and time
    "fixed_timestamp": "TIMESTAMPTZ",  # an instant
    "checkbox": "BOOLEAN",
    **dict.fromkeys(("point", "multipoint", "line", "multiline", "polygon", "multipolygon", "location", "url"), "JSONB"),
}


@dataclass(frozen=True)
class SourceColumn:
    """One column of the view, its text bounded."""

    field_name: str  # the key in row objects (SODA) and the column's API name
    name: str  # the display name
    data_type: str  # Socrata's dataTypeName, e.g. "number"; "" when the document has none
    description: str | None
    position: int  # 0-based place in the document's column list

    @property
    def system(self) -> bool:
        """A hidden system column (``:id``, ``:created_at``, ...): not in rows queried without synthetic fields."""
        return self.field_name.startswith(":") or self.data_type == "meta_data"


@dataclass(frozen=True)
class ViewMetadata:
    """What ``/api/views/{id}.json`` says about a dataset (bounded; see the module docstring)."""

    dataset_id: str | None
    name: str | None
    description: str | None
    rows_updated_at: int | None
    columns: tuple[SourceColumn, ...]  # every column, system ones included, in the document's order

    @property
    def data_columns(self) -> tuple[SourceColumn, ...]:
        """The columns rows carry: the system ones left out."""
        return tuple(c for c in self.columns if not c.system)


@dataclass(frozen=True)
class ColumnType:
    """The warehouse type of one data column, and why."""

    field_name: str
    warehouse_type: WarehouseType
    source_type: str
    description: str | None
    note: str | None = None  # set when the type was not simply derived (unknown source type, an override)


def rows_updated_at(document: Any) -> int | None:
    """The document's ``rowsUpdatedAt`` when it is a number (seconds since the epoch), else None.

    Lenient on purpose: change detection only trusts evidence, it never fails on its absence.
    """
    value = document.get("rowsUpdatedAt") if isinstance(document, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_view(document: Any, source: str) -> ViewMetadata:
    """The view metadata in `document` (the parsed JSON of `source`, a URL or a file, named in errors)."""
    if not isinstance(document, dict):
        raise SocrataError(f"view metadata from {source}: expected a JSON object, got a JSON {type(document).__name__}")
    columns = document.get("columns")
    if not isinstance(columns, list):
        raise SocrataError(f"view metadata from {source} has no column list")
    if len(columns) > MAX_COLUMNS:
        raise SocrataError(
            f"view metadata from {source} lists {len(columns):,} columns, more than the {MAX_COLUMNS:,} accepted"
        )
    parsed = tuple(_column(item, position, source) for position, item in enumerate(columns))
    seen: dict[str, int] = {}
    for column in parsed:
        if (first := seen.setdefault(column.field_name, column.position)) != column.position:
            raise SocrataError(
                f"view metadata from {source}: columns {first} and {column.position} have the same fieldName "
                f"{clip(column.field_name)!r}"
            )
    return ViewMetadata(
        dataset_id=_optional_text(document.get("id"), MAX_TYPE_NAME),
        name=_optional_text(document.get("name"), MAX_NAME),
        description=_description(document.get("description")),
        rows_updated_at=rows_updated_at(document),
        columns=parsed,
    )


def _column(item: Any, position: int, source: str) -> SourceColumn:
    if not isinstance(item, dict):
        raise SocrataError(f"view metadata from {source}: column {position} is a JSON {type(item).__name__}, not an object")
    field_name = item.get("fieldName")
    if not isinstance(field_name, str) or not field_name:
        raise SocrataError(f"view metadata from {source}: column {position} has no fieldName")
    if len(field_name) > MAX_FIELD_NAME or not field_name.isprintable():
        raise SocrataError(
            f"view metadata from {source}: the fieldName of column {position} is not a column name "
            f"({len(field_name):,} characters, at most {MAX_FIELD_NAME} printable ones accepted): "
            f"{clip(field_name, 80)!r}"
        )
    data_type = item.get("dataTypeName")
    return SourceColumn(
        field_name=field_name,
        name=_optional_text(item.get("name"), MAX_NAME) or field_name,
        data_type=clip(data_type, MAX_TYPE_NAME) if isinstance(data_type, str) else "",
        description=_description(item.get("description")),
        position=position,
    )


def _optional_text(value: Any, limit: int) -> str | None:
    return clip(value, limit) if isinstance(value, str) and value.strip() else None


def _description(value: Any) -> str | None:
    """A description as people wrote it (line breaks kept, other control characters not), cut to size."""
    if not isinstance(value, str):
        return None
    kept = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in value[: MAX_DESCRIPTION + 1]).strip()
    if not kept:
        return None
    return kept if len(value) <= MAX_DESCRIPTION else kept[:MAX_DESCRIPTION].rstrip() + " [...]"


def warehouse_type(data_type: str, override: str | None = None, column: str | None = None) -> tuple[WarehouseType, str | None]:
    """The warehouse type for a Socrata `data_type` (or the declared `override`), and a note when
    it was not simply derived. An unknown type is kept as TEXT: the values as delivered."""
    if override is not None:
        declared = " ".join(override.upper().split())
        if declared not in WAREHOUSE_TYPES:
            where = f" for column {clip(column, 80)!r}" if column else ""
            raise SocrataError(
                f"unknown column type {clip(override, 40)!r}{where}: expected one of {', '.join(WAREHOUSE_TYPES)}"
            )
        derived = WAREHOUSE_TYPE_OF.get(data_type, "TEXT")
        note = None if declared == derived else f"declared {declared} (the metadata's {data_type or 'missing type'} maps to {derived})"
        return declared, note  # type: ignore[return-value]
    if data_type in WAREHOUSE_TYPE_OF:
        return WAREHOUSE_TYPE_OF[data_type], None
    shown = f"Socrata type {data_type!r}" if data_type else "no Socrata type"
    return "TEXT", f"{shown} is not one this platform maps: kept as TEXT, the values as delivered"


def column_types(view: ViewMetadata, overrides: Mapping[str, str] | None = None) -> dict[str, ColumnType]:
    """The warehouse type of every data column (system columns left out), by field name, in the
    view's order; `overrides` (field name -> type) win over the derived types."""
    overrides = dict(overrides or {})
    data_columns = view.data_columns
    unknown = sorted(set(overrides) - {c.field_name for c in data_columns})
    if unknown:
        raise SocrataError(
            f"type overrides name column(s) the view does not have: {clip(', '.join(unknown))} "
            f"(its columns: {clip(', '.join(c.field_name for c in data_columns))})"
        )
    types = {}
    for column in data_columns:
        warehouse, note = warehouse_type(column.data_type, overrides.get(column.field_name), column.field_name)
        types[column.field_name] = ColumnType(column.field_name, warehouse, column.data_type, column.description, note)
    return types
