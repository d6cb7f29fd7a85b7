"""How a value as delivered (text) becomes a warehouse value, in SQL: one rule per warehouse type.

The loader types whole tables in a statement or two (`datasets/load.py`), so each rule is a pair
of SQL expressions over the trimmed text `t` of one value (never blank: blank is NULL for every
type): a validity predicate that never raises, and a cast that cannot fail where the predicate
holds. A value given but not valid is a bad row, refused with the delivery, never read another way.

* TEXT: any text (trimmed).
* BIGINT: a whole number (optional sign, decimal digits) in the BIGINT range.
* NUMERIC: a decimal number, optionally with an exponent (at most 3 digits: the value always fits).
* DOUBLE PRECISION: the same, within the range of a double (no NaN or Infinity).
* DATE, TIMESTAMP: ISO ``YYYY-MM-DD`` (with an optional ``THH:MM:SS[.fff]`` or `` HH:MM:SS``, as
  Socrata's floating timestamps are), ``YYYY/MM/DD``, and the US ``MM/DD/YYYY`` with an optional
  ``HH:MM[:SS] AM/PM`` (CDC exports). A DATE ignores a time of day. Each layout is rewritten to
  ISO before Postgres reads it, so the session's DateStyle never decides what a date means.
* TIMESTAMPTZ: the same layouts with an optional zone (``Z``, ``+HH``, ``+HH:MM``); none is UTC.
* BOOLEAN: ``true`` or ``false``, in any case.
* JSONB: any valid JSON that jsonb can hold.

Calendar and range validity come from Postgres itself (`pg_input_is_valid`, PostgreSQL 16+), so
February 30th or a 20-digit count is refused exactly where a cast would fail.

A column may declare more than its type (`ColumnRules`): a shorter text left-padded with zeros
and a missing one filled from a lookup of another column (`completed`, before the type's rule
reads the text), and rules a typed value must keep, each a bad-row problem of its own
(`rule_problems`): a pattern, allowed values, a bound on |n|.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from covid_assets.datasets.table_spec import ColumnRules, ColumnSpec
from covid_assets.sources.socrata.metadata import WAREHOUSE_TYPES, WarehouseType

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Plain", "TypeRule", "RULES", "completed", "rule", "rule_problems", "trimmed", "WHOLE_NUMBER"]

_WHITESPACE = " \t\r\n"
_SIGNED_DECIMAL = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_TIME = r"\d{1,2}:\d{2}(:\d{2}(\.\d{1,6})?)?"
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)"
WHOLE_NUMBER = r"^[+-]?[0-9]+$"  # a whole number as text, whatever its size
_HAS_ZONE = rf"\d:\d{{2}}(:\d{{2}}(\.\d+)?)?( ?[AaPp][Mm])? ?{_ZONE}$"  # a zone after a time (a date's "-23" is not one)


@dataclass(frozen=True)
class TypeRule:
    """The SQL that types one value, in two steps so costly text work is done once per value:
    `prepare(t)` rewrites the trimmed text (dates to ISO; NULL when no accepted layout matches),
    then `valid(n)` (never raises, false for NULL) and `cast(n)` (safe where valid) read the result."""

    type: WarehouseType
    expected: str  # what a valid value is, for the bad-row report
    valid_template: str  # SQL with {n} standing for the prepared text
    cast_template: str
    prepare_template: str = "{t}"  # SQL with {t} standing for the trimmed text
    # A regular expression (RE2, as Arrow reads it) for the usual values: a value matching it is left
    # as it is by `prepare`, and, when `plain_is_valid`, is valid too. When a whole delivery's values
    # of a column match, the loader skips that SQL (see `Plain`).
    plain_pattern: str | None = None
    plain_is_valid: bool = False

    def prepare(self, text: sql.Composable) -> sql.Composed:
        return sql.SQL(self.prepare_template).format(t=text)

    def valid(self, prepared: sql.Composable) -> sql.Composed:
        return sql.SQL(self.valid_template).format(n=prepared)

    def cast(self, prepared: sql.Composable) -> sql.Composed:
        return sql.SQL(self.cast_template).format(n=prepared)


def _layouts(zone: bool) -> tuple[str, str, str]:
    """The accepted layouts as regular expressions: ISO, YYYY/MM/DD, and US MM/DD/YYYY with AM/PM."""
    z = rf"( ?{_ZONE})?" if zone else ""
    return (
        rf"^\d{{4}}-\d{{1,2}}-\d{{1,2}}([T ]{_TIME})?{z}$",
        rf"^\d{{4}}/\d{{1,2}}/\d{{1,2}}([T ]{_TIME})?{z}$",
        rf"^\d{{1,2}}/\d{{1,2}}/\d{{4}}( \d{{1,2}}:\d{{2}}(:\d{{2}})? ?[AaPp][Mm])?{z}$",
    )


# The layouts nearly every value has, by shape (each digit a 9): recognised by one cheap translate(),
# where a regular expression costs about 2 microseconds a value (a third of the typing time).
_ISO_SHAPES = ("9999-99-99", "9999-99-99T99:99:99.999", "9999-99-99T99:99:99", "9999-99-99 99:99:99")
_US_SHAPES = ("99/99/9999", "99/99/9999 99:99:99 AM", "99/99/9999 99:99:99 PM")


def _iso(text: str, zone: bool = False) -> str:
    """SQL rewriting each accepted layout of `text` to ISO year-month-day order (NULL for any other layout).

    The common shapes are recognised first without a regular expression; otherwise the fifth
    character tells the layouts apart, so one regular expression is tried per value. The US
    layout is rebuilt with split_part (regexp_replace costs ten times as much).
    """
    iso, slashes, us = map(_quote, _layouts(zone))
    shape = f"translate({text}, '0123456789', '9999999999')"
    year_and_rest = f"split_part({text}, '/', 3)"
    us_as_iso = (
        f"left({year_and_rest}, 4) || '-' || split_part({text}, '/', 1) || '-' || split_part({text}, '/', 2)"
        f" || substr({year_and_rest}, 5)"
    )
    return (
        f"CASE WHEN {shape} IN ({_shapes(_ISO_SHAPES)}) THEN {text} "
        f"WHEN {shape} IN ({_shapes(_US_SHAPES)}) THEN {us_as_iso} "
        f"ELSE CASE substr({text}, 5, 1) WHEN '-' THEN CASE WHEN {text} ~ {iso} THEN {text} END "
        f"WHEN '/' THEN CASE WHEN {text} ~ {slashes} THEN translate({text}, '/', '-') END "
        f"ELSE CASE WHEN {text} ~ {us} THEN {us_as_iso} END END END"
    )


def _as_pattern(shapes: tuple[str, ...]) -> str:
    """The shapes (each digit a 9) as one regular expression: what `_iso` passes through unchanged."""
    return "^(?:" + "|".join(shape.replace(".", r"\.").replace("9", "[0-9]") for shape in shapes) + ")$"


def _shapes(shapes: tuple[str, ...]) -> str:
    return ", ".join(f"'{shape}'" for shape in shapes)


def _quote(pattern: str) -> str:
    """A regular expression as a standard-conforming SQL string literal (braces doubled for sql.SQL)."""
    return "'" + pattern.replace("'", "''").replace("{", "{{").replace("}", "}}") + "'"


def _with_utc(text: str) -> str:
    """A timestamp without a zone read as UTC, whatever the session's TimeZone."""
    return f"CASE WHEN {text} ~ {_quote(_HAS_ZONE)} THEN {text} ELSE {text} || ' +00' END"


_DATE_TEXT = _iso("{t}")
_TIMESTAMPTZ_TEXT = _with_utc(f"({_iso('{t}', zone=True)})")
_DECIMAL = f"length({{n}}) <= 1000 AND {{n}} ~ {_quote(_SIGNED_DECIMAL)}"

RULES: dict[WarehouseType, TypeRule] = {
    rule.type: rule
    for rule in (
        TypeRule("TEXT", "text", "true", "{n}"),
        TypeRule(
            "BIGINT",
            "not a whole number in the BIGINT range",
            # At most 18 characters always fits (|n| < 10^18 < 2^63): only longer ones need Postgres' own check.
            f"({{n}} ~ {_quote(WHOLE_NUMBER)} AND (length({{n}}) <= 18 OR pg_input_is_valid({{n}}, 'bigint')))",
            "{n}::bigint",
            plain_pattern=r"^(?:[+-][0-9]{1,17}|[0-9]{1,18})$",  # the valid template's first case
            plain_is_valid=True,
        ),
        TypeRule("NUMERIC", "not a number", f"({_DECIMAL})", "{n}::numeric"),
        TypeRule(
            "DOUBLE PRECISION",
            "not a number in the DOUBLE PRECISION range",
            f"({_DECIMAL} AND pg_input_is_valid({{n}}, 'double precision'))",
            "{n}::double precision",
        ),
        TypeRule(
            "DATE", "not a date", "coalesce(pg_input_is_valid({n}, 'date'), false)", "{n}::date", _DATE_TEXT, _as_pattern(_ISO_SHAPES)
        ),
        TypeRule(
            "TIMESTAMP", "not a timestamp", "coalesce(pg_input_is_valid({n}, 'timestamp'), false)", "{n}::timestamp", _DATE_TEXT,
            _as_pattern(_ISO_SHAPES),
        ),
        TypeRule(
            "TIMESTAMPTZ",
            "not a timestamp with time zone",
            "coalesce(pg_input_is_valid({n}, 'timestamptz'), false)",
            "{n}::timestamptz",
            _TIMESTAMPTZ_TEXT,
        ),
        TypeRule("BOOLEAN", "not true or false", "(lower({n}) IN ('true', 'false'))", "lower({n})::boolean"),
        TypeRule("JSONB", "not valid JSON", "pg_input_is_valid({n}, 'jsonb')", "{n}::jsonb"),
    )
}
assert set(RULES) == set(WAREHOUSE_TYPES), "every warehouse type needs a typing rule"


def rule(warehouse_type: WarehouseType) -> TypeRule:
    return RULES[warehouse_type]


def trimmed(column: sql.Composable) -> sql.Composed:
    """The value without surrounding whitespace; NULL when blank (blank is NULL for every type)."""
    return sql.SQL("NULLIF(btrim({}, {}), '')").format(column, sql.Literal(_WHITESPACE))


@dataclass
class Plain:
    """What a delivery's values of each staged field looked like, gathered page by page in Arrow
    (a vectorised pass of a few milliseconds per column), so the typing SQL skips work that would
    change nothing: `trimmed` for a field without a blank or padded value (0.25 s of typing on the
    243k COVID rows), and a rule's `prepare` (and `valid`, where `plain_is_valid`) for a column whose
    values all match the rule's `plain_pattern` (0.25 s for the dates and counts). One value
    otherwise, anywhere in the delivery, and the column takes the full path on every page."""

    patterns: dict[str, set[str]]  # field read by a base column -> the plain patterns of the rules that read it
    padded: set[str]  # fields with a blank or padded value
    irregular: set[tuple[str, str]]  # (field, pattern) with a value not matching
    known: bool = True  # False: nothing was seen, every value takes the full path

    @classmethod
    def expecting(cls, columns: Sequence[ColumnSpec]) -> Plain:
        """Ready to see the values of the staged fields that `columns` read (a padded or filled
        column's rule reads other text than the field's: it always takes the full path)."""
        patterns: dict[str, set[str]] = {}
        for column in columns:
            read = patterns.setdefault(column.source_field, set())
            if (pattern := rule(column.type).plain_pattern) and not (column.rules.pad_width or column.rules.fill_map):
                read.add(pattern)
        return cls(patterns, set(), set())

    @classmethod
    def unknown(cls) -> Plain:
        return cls({}, set(), set(), known=False)

    def see(self, field: str, values: pa.ChunkedArray) -> None:
        """One page's values of `field`, as staged (all-null pages change nothing: `any`/`all` give null)."""
        import pyarrow.compute as pc

        if field not in self.patterns:  # kept in the raw table only
            return
        if field not in self.padded:
            size = pc.binary_length(values)
            changed = pc.or_(pc.equal(size, 0), pc.not_equal(size, pc.binary_length(pc.utf8_trim(values, _WHITESPACE))))
            if pc.any(changed).as_py():  # what `trimmed` would change: a blank or padded value
                self.padded.add(field)
        for pattern in self.patterns[field]:
            if (field, pattern) not in self.irregular and pc.all(pc.match_substring_regex(values, pattern)).as_py() is False:
                self.irregular.add((field, pattern))

    def needs_trim(self, field: str) -> bool:
        return not self.known or field in self.padded

    def is_plain(self, column: ColumnSpec) -> bool:
        """Every value of the column's field is left as it is by trimming and by its rule's `prepare`."""
        pattern = rule(column.type).plain_pattern
        return (
            self.known
            and pattern in self.patterns.get(column.source_field, ())
            and column.source_field not in self.padded
            and (column.source_field, pattern) not in self.irregular
        )


# ----------------------------------------------------------------------------- declared rules
def completed(text: sql.Composable, rules: ColumnRules, fill_text: sql.Composable | None = None) -> sql.Composable:
    """The trimmed text as the type's rule reads it: left-padded with zeros to `pad_width` when shorter,
    and, when missing, the `fill_map` value of `fill_text` (the trimmed text of the `fill_from` column)."""
    if rules.pad_width:
        text = sql.SQL("CASE WHEN length({t}) < {w} THEN lpad({t}, {w}, '0') ELSE {t} END").format(
            t=text, w=sql.Literal(rules.pad_width)
        )
    if rules.fill_map and fill_text is not None:
        lookup = sql.Literal(json.dumps(dict(rules.fill_map), sort_keys=True))
        text = sql.SQL("coalesce({}, {}::jsonb ->> {})").format(text, lookup, fill_text)
    return text


def rule_problems(
    column: ColumnSpec, text: sql.Composable, value: sql.Composable, *, key: bool
) -> list[tuple[str, sql.Composable]]:
    """(what is wrong, a predicate on the trimmed text and typed value) for each way a value of `column`
    can be refused: not of its type, missing (key columns), against a declared rule. Never NULL."""
    rules = column.rules
    found: list[tuple[str, sql.Composable]] = []
    whole = sql.SQL("{} ~ {}").format(text, sql.Literal(WHOLE_NUMBER))
    if column.type != "TEXT":
        not_typed = sql.SQL("({} IS NOT NULL AND {} IS NULL)").format(text, value)
        if rules.max_abs:  # a whole number that failed is out of range, not "bad"
            not_typed = sql.SQL("({} AND NOT coalesce({}, false))").format(not_typed, whole)
        found.append((rules.problem or f"bad {column.name} ({rule(column.type).expected})", not_typed))
    missing = sql.SQL("({} IS NULL AND {} IS NULL)").format(text, value)
    unknown = sql.SQL("coalesce({}::text NOT IN ({}), false)").format(value, sql.SQL(", ").join(map(sql.Literal, rules.allowed)))
    if key and rules.allowed:  # a key with allowed values: a missing one is just another unknown value
        found.append((f"unknown {column.name}", sql.SQL("({} OR {})").format(missing, unknown)))
    elif key:
        found.append((f"missing {column.name}", missing))
    elif rules.allowed:
        found.append((f"unknown {column.name}", unknown))
    if rules.pattern:
        label = f"{column.name} is not {rules.pattern_label}" if rules.pattern_label else f"{column.name} does not match {rules.pattern}"
        found.append((label, sql.SQL("coalesce({}::text !~ {}, false)").format(value, sql.Literal(f"^(?:{rules.pattern})$"))))
    if rules.max_abs:
        bound = sql.Literal(rules.max_abs)
        found.append((
            f"{column.name} out of range (|n| >= {_power_of_ten(rules.max_abs)})",
            sql.SQL("(coalesce(abs({v}) >= {b}, false) OR ({v} IS NULL AND coalesce({w}, false)))").format(v=value, b=bound, w=whole),
        ))
    return found


def _power_of_ten(number: int) -> str:
    """10^12 for 1000000000000, as the bad-row report writes a bound; any other number with separators."""
    digits = str(number)
    return f"10^{len(digits) - 1}" if digits.startswith("1") and set(digits[1:]) <= {"0"} and len(digits) > 1 else f"{number:,}"
