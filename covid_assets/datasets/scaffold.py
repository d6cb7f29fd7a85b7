"""Write a dataset declaration (`covid_assets/defs/<name>/defs.yaml`) from the dataset's view metadata.

    python -m covid_assets.datasets.scaffold --domain data.cdc.gov --dataset xt86-xqxz \\
        --name nchs_visits --key panel,unit,stub_label,year \\
        [--from-file rows.json.gz] [--type year=BIGINT ...] [--export-file ...]

The column types are derived here, once, from `/api/views/{id}.json` (or the `meta.view` of a
`rows.json` export given with `--from-file`): `dataTypeName` -> warehouse type, with `--type`
overrides. They are written into the declaration with each column's description, so loading the
code location never asks the network; the file is meant to be read and edited (checks, schedule).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from covid_assets.sources.socrata.errors import SocrataError
from covid_assets.sources.socrata.metadata import ColumnType, ViewMetadata, column_types, parse_view

__all__ = ["COMPONENT_TYPE", "DEFS_DIR", "declaration_document", "main", "read_view_file"]

COMPONENT_TYPE = "covid_assets.datasets.component.SocrataDataset"
DEFS_DIR = Path(__file__).resolve().parents[1] / "defs"
# A rows.json export holds the rows after the metadata: read at most this much of it for `meta.view`.
MAX_EXPORT_BYTES = 512 * 1024 * 1024


def read_view_file(path: Path) -> ViewMetadata:
    """The view metadata in a file: `/api/views/{id}.json` saved, or a `rows.json` export (`meta.view`), gzipped or not."""
    with path.open("rb") as head:
        opener = gzip.open if head.read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        data = handle.read(MAX_EXPORT_BYTES + 1)
    if len(data) > MAX_EXPORT_BYTES:
        raise SocrataError(f"{path}: larger than {MAX_EXPORT_BYTES >> 20} MiB; save /api/views/{{id}}.json and give that instead")
    try:
        document = json.loads(data)
    except ValueError as error:
        raise SocrataError(f"{path}: not JSON ({error.__class__.__name__} at character {getattr(error, 'pos', '?')}); "
                           "a CSV export has no column metadata: give rows.json or /api/views/{id}.json") from None
    if isinstance(document, dict) and isinstance(document.get("meta"), dict) and "view" in document["meta"]:
        document = document["meta"]["view"]
    return parse_view(document, str(path))


def fetch_view(domain: str, dataset_id: str) -> ViewMetadata:
    """The view metadata from the API (the app token from SOCRATA_APP_TOKEN, when set)."""
    from covid_assets.sources.socrata import SocrataClient, SocrataSource, SocrataTarget

    only_token = dict.fromkeys(("base_url", "dataset_id", "source_file"))
    target = SocrataTarget.from_env(variables=only_token, base_url=f"https://{domain}", dataset_id=dataset_id)
    return SocrataClient(target, SocrataSource(), required_columns=()).metadata()


def column_name(field_name: str) -> str:
    """A lower-case identifier for a source field (the field name itself when it is one)."""
    name = re.sub(r"[^a-z0-9_]+", "_", field_name.lower()).strip("_") or "column"
    name = f"c_{name}" if name[0].isdigit() else name
    return name[:63]


def declaration_document(
    view: ViewMetadata,
    *,
    domain: str,
    dataset_id: str,
    name: str,
    key: Sequence[str],
    overrides: Mapping[str, str] | None = None,
    raw_schema: str | None = None,
    base_schema: str | None = None,
    export_file: str | None = None,
) -> dict[str, Any]:
    """The declaration's YAML document: every data column with its derived (or overridden) type and description."""
    types = column_types(view, overrides)
    names = _column_names(types)
    unknown_key = [field for field in key if field not in types]
    if unknown_key:
        raise SocrataError(f"--key names field(s) the view does not have: {', '.join(unknown_key)} (its fields: {', '.join(types)})")
    attributes: dict[str, Any] = {
        "domain": domain,
        "dataset_id": dataset_id,
        "name": name,
        "title": view.name or dataset_id,
        "description": view.description or "",
        "raw": {"schema": raw_schema or f"{name}_raw", "table": f"raw_{name}"},
        "base": {"schema": base_schema or name, "table": name},
        "key": [names[field] for field in key],
        "columns": {names[field]: _column(column, names[field]) for field, column in types.items()},
        "required": list(key),
        "checks": {"not_null": [names[field] for field in key]},
        "max_shrink_fraction": 0.05,
        "group": name,
        "schedule": "0 7 * * *",
    }
    if export_file:
        attributes["export_file"] = export_file
    return {"type": COMPONENT_TYPE, "attributes": attributes}


def _column_names(types: Mapping[str, ColumnType]) -> dict[str, str]:
    names: dict[str, str] = {}
    for field in types:
        candidate, n = column_name(field), 2
        while candidate in names.values() or candidate in ("fetched_at", "extra_columns"):
            candidate, n = f"{column_name(field)[:60]}_{n}", n + 1
        names[field] = candidate
    return names


def _column(column: ColumnType, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": column.warehouse_type, "source_type": column.source_type or None}
    if name != column.field_name:
        entry["source"] = column.field_name
    entry["description"] = column.description or ""
    if column.note:
        entry["description"] = f"{entry['description']} ({column.note})".strip()
    return {k: v for k, v in entry.items() if v is not None}


def dump(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, width=110)


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        field, sep, declared = item.partition("=")
        if not sep or not field or not declared:
            raise SocrataError(f"--type {item!r}: expected FIELD=TYPE, e.g. year=BIGINT")
        overrides[field] = declared
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_assets.datasets.scaffold", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", required=True, help="Socrata domain, e.g. data.cdc.gov")
    parser.add_argument("--dataset", required=True, help="the dataset's four-by-four, e.g. xt86-xqxz")
    parser.add_argument("--name", required=True, help="short identifier: the defs folder, tables and job are named after it")
    parser.add_argument("--key", required=True, help="comma-separated source fields that identify a row")
    parser.add_argument("--from-file", type=Path, help="rows.json export or saved /api/views/{id}.json (else the API is asked)")
    parser.add_argument("--type", action="append", default=[], metavar="FIELD=TYPE", help="override a derived type (repeatable)")
    parser.add_argument("--raw-schema", help="default: <name>_raw")
    parser.add_argument("--base-schema", help="default: <name>")
    parser.add_argument("--export-file", help="bundled export for offline runs, relative to the defs.yaml")
    parser.add_argument("--output", type=Path, help="default: covid_assets/defs/<name>/defs.yaml")
    parser.add_argument("--force", action="store_true", help="overwrite an existing declaration")
    args = parser.parse_args(argv)
    output = args.output or DEFS_DIR / args.name / "defs.yaml"
    if output.exists() and not args.force:
        print(f"{output} exists; --force to overwrite", file=sys.stderr)
        return 1
    try:
        view = read_view_file(args.from_file) if args.from_file else fetch_view(args.domain, args.dataset)
        document = declaration_document(
            view,
            domain=args.domain,
            dataset_id=args.dataset,
            name=args.name,
            key=[field.strip() for field in args.key.split(",") if field.strip()],
            overrides=_parse_overrides(args.type),
            raw_schema=args.raw_schema,
            base_schema=args.base_schema,
            export_file=args.export_file,
        )
    except (SocrataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dump(document))
    print(f"wrote {output} ({len(document['attributes']['columns'])} columns); review it, then `dg check defs`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
