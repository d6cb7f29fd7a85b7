"""`SocrataDataset`: the Dagster Component that turns one declaration (`defs.yaml`) into definitions.

For one declared dataset it builds:

* the source, observed (never written): its data version is `rowsUpdatedAt`-count, as for COVID;
* one step that writes the raw table and the typed base table (`load_dataset`, a multi-asset:
  the base table is merged from the typed rows the gate staged, which live only inside the run's
  transaction, so the two are one step). It streams the pages into a staging table (`land`),
  writes nothing when the source is unchanged (its signature, then the content hash of the
  landing), refuses bad rows and a shrinking source before anything is published (`gate`), then
  replaces the raw table and merges the base table (`publish_raw`, `merge_base`);
* the base table's checks in SQL: the key unique and not null, the declared value checks and the
  row count of the accepted load; all blocking, so a failure rolls the run back; and the two
  checks of its history (`datasets/history.py`): the current versions equal the table (blocking),
  the loads reconcile with the versions;
* a job, and the declared schedule and/or sensor.

Where the rows come from is the deployment's business, never run config: `https://{domain}`
(`SOCRATA_BASE_URL_<NAME>` overrides it, e.g. for a test's local stand-in), the app token from
`SOCRATA_APP_TOKEN`, and the declared `export_file` instead of the API when `SOCRATA_OFFLINE=1`
(what `./dev offline` sets). Run config holds bounded knobs only (`DatasetLoadConfig`); the HTTP
knobs are the `socrata` resource's (`SocrataSource`), the transaction the `warehouse` resource's.
"""

import datetime as dt
import importlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    Component,
    ComponentLoadContext,
    Config,
    DagsterRunStatus,
    DataVersion,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    Resolvable,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    AssetObservation,
    define_asset_job,
    multi_asset,
    multi_asset_check,
    multi_observable_source_asset,
    sensor,
)
from psycopg import sql
from pydantic import Field

from covid_assets.datasets.dataset_spec import DatasetSpec
from covid_assets.datasets.declaration import DatasetDeclaration, DeclarationError
from covid_assets.datasets.history import checks_now, history_checks
from covid_assets.datasets.operations import confirm_unchanged, job_tables, source_failure, wait_if_retrying
from covid_assets.freshness import STALENESS_CHECK, source_stale_days, source_staleness, table_freshness_policy, with_freshness_policy
from covid_assets.settings import env_flag
from covid_assets.sources.socrata import FetchStats, SocrataError, SocrataSource, SocrataTarget, SourceSignature
from covid_assets.storage.statements import listed, repeated_key_rows
from covid_assets.storage.warehouse import COMMIT_FAILED_TAG, WarehouseResource

if TYPE_CHECKING:
    import pyarrow as pa
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

    from covid_assets.datasets.history import LoadOrigin

__all__ = ["OFFLINE_ENV", "DatasetLoadConfig", "SocrataDataset", "base_url_env", "dataset_definitions", "dataset_target"]

OFFLINE_ENV = "SOCRATA_OFFLINE"  # "1": every declared dataset reads its bundled export_file
SCHEDULES_ENABLED_ENV = "COVID_SCHEDULE_ENABLED"
SENSORS_ENABLED_ENV = "COVID_SOURCE_SENSOR_ENABLED"
OBSERVE_DEADLINE_S = 8.0  # per request of an observation, so a sensor tick ends within a minute


def base_url_env(name: str) -> str:
    """The variable that points one dataset elsewhere than https://{domain} (a mirror, a test's stand-in)."""
    return f"SOCRATA_BASE_URL_{name.upper()}"


class SocrataDataset(Component, Resolvable, DatasetDeclaration):
    """A Socrata dataset loaded into Postgres: source observation, raw and typed base tables, checks, schedule.

    Its attributes are a `DatasetDeclaration` (covid_assets/datasets/declaration.py); scaffold one
    with `python -m covid_assets.datasets.scaffold`.
    """

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        spec = self.to_spec(context.path / "defs.yaml")
        return dataset_definitions(spec, schedule=self.schedule, sensor_minutes=self.sensor.minimum_interval_minutes if self.sensor else None)


# ----------------------------------------------------------------------------- where the rows come from
def dataset_target(spec: DatasetSpec, environ: Mapping[str, str] | None = None) -> SocrataTarget:
    """The dataset's source as this deployment's environment says (read when the run starts, never from config).

    The declaration names the variables (`environment`); a declared source-file variable that is set
    wins, then the declared export_file when SOCRATA_OFFLINE=1, else the API."""
    variables = {"base_url": base_url_env(spec.name), "dataset_id": None, "source_file": None, **spec.environment}
    target = SocrataTarget.from_env(environ, variables, base_url=spec.base_url, dataset_id=spec.dataset_id)
    if target.source_file is None and env_flag(OFFLINE_ENV, default=False, environ=environ):
        if spec.export_file is None:
            raise Failure(f"{OFFLINE_ENV} is set but dataset {spec.name!r} declares no export_file to read offline")
        target = replace(target, source_file=str(spec.export_file))
    return target


# ----------------------------------------------------------------------------- the definitions
@dataclass(frozen=True)
class DatasetKeys:
    source: AssetKey
    raw: AssetKey
    base: AssetKey

    @classmethod
    def of(cls, spec: DatasetSpec) -> "DatasetKeys":
        return cls(spec.source_key, spec.raw.asset_key, spec.base.asset_key)


def dataset_definitions(spec: DatasetSpec, *, schedule: str | None = None, sensor_minutes: float | None = None) -> Definitions:
    """Everything one declared dataset produces; resources (`socrata`, `warehouse`) come from the code location."""
    job = define_asset_job(
        name=job_name(spec),
        selection=AssetSelection.assets(spec.raw.asset_key, spec.base.asset_key),
        description=f"Refresh {spec.raw.qualified_name} and {spec.base.qualified_name} from {spec.domain} {spec.dataset_id}.",
    )
    schedules = [dataset_schedule(spec, job, schedule)] if schedule else []
    sensors = [dataset_sensor(spec, job, sensor_minutes)] if sensor_minutes else []
    return Definitions(
        assets=[source_observation(spec), *with_freshness_policy([load_step(spec)], table_freshness_policy())],
        asset_checks=[base_checks(spec)],
        jobs=[job],
        schedules=schedules,
        sensors=sensors,
    )


def source_observation(spec: DatasetSpec):
    keys = DatasetKeys.of(spec)

    @multi_observable_source_asset(
        specs=[
            AssetSpec(
                keys.source,
                description=(
                    f"{spec.title or spec.dataset_id}, as published on {spec.domain} (Socrata dataset {spec.dataset_id}): "
                    "observed, never written. Its data version is the publisher's rowsUpdatedAt and the row count."
                ),
                group_name=spec.group,
                owners=list(spec.owners),
                kinds={"socrata"},
            )
        ],
        check_specs=[
            AssetCheckSpec(
                STALENESS_CHECK,
                asset=keys.source,
                description="The publisher updated the dataset within COVID_SOURCE_STALE_DAYS (14) days. A warning: "
                "when it fails the pipeline is fine and the source has stopped.",
            )
        ],
        name=f"observe_{spec.name}_source",
    )
    def observe(socrata: SocrataSource):
        observation = observe_source(spec, socrata)
        staleness = observation.staleness
        check = AssetCheckResult(
            asset_key=keys.source, check_name=staleness.check_name, passed=staleness.passed,
            severity=staleness.severity, metadata=staleness.metadata,
        )
        yield ObserveResult(asset_key=keys.source, data_version=DataVersion(observation.version), metadata=observation.metadata, check_results=[check])

    return observe


@dataclass(frozen=True)
class SourceObservation:
    """What one observation found: the data version, what to show for it, and the publisher's staleness."""

    version: str
    metadata: dict[str, Any]
    staleness: AssetCheckEvaluation

    @property
    def run_key(self) -> str:
        """One release, one run: the key of the refresh a new version asks for."""
        return f"source-version-{self.version}"


class SourceUnreachable(RuntimeError):
    """The observation failed; the sensor tick shows this, the next tick tries again."""


def observe_source(spec: DatasetSpec, socrata: SocrataSource, now: dt.datetime | None = None) -> SourceObservation:
    """Ask the source what it holds now (two small requests, or the export file's size and time);
    a failing request raises SocrataError (URL and status, never the token)."""
    now = now or dt.datetime.now(dt.UTC)
    key = spec.source_key
    target = dataset_target(spec)
    if target.source_file:
        stat = os.stat(target.source_file)
        metadata = {"source": MetadataValue.path(target.source_file), "file_bytes": stat.st_size}
        return SourceObservation(f"file-{stat.st_size}-{stat.st_mtime_ns}", metadata, source_staleness(None, now, 0, key))
    signature = socrata.signature(OBSERVE_DEADLINE_S, target, spec.required)
    metadata: dict[str, Any] = {"source": MetadataValue.url(target.base_url), "row_count": signature.row_count}
    if signature.rows_updated_at is not None:
        metadata["rows_updated_at"] = MetadataValue.timestamp(dt.datetime.fromtimestamp(signature.rows_updated_at, dt.UTC))
    version = f"{signature.rows_updated_at or 'unknown'}-{signature.row_count}"
    return SourceObservation(version, metadata, source_staleness(signature.rows_updated_at, now, source_stale_days(), key))


def table_specs(spec: DatasetSpec) -> list[AssetSpec]:
    """The raw and the base table as the UI shows them: description, column schema, lineage, owners."""
    keys = DatasetKeys.of(spec)
    common: dict[str, Any] = {"owners": list(spec.owners), "skippable": True}
    raw = AssetSpec(
        keys.raw,
        deps=[keys.source],
        description=spec.raw.description,
        kinds={"socrata", "postgres"},
        group_name=spec.raw_group or spec.group,
        metadata={**spec.raw.definition_metadata(), "dagster/table_name": spec.raw.qualified_name},
        **common,
    )
    base = AssetSpec(
        keys.base,
        deps=[keys.raw],
        description=spec.base.description,
        kinds={"postgres"},
        group_name=spec.base_group or spec.group,
        metadata={
            **spec.base.definition_metadata(),
            "dagster/table_name": spec.base.qualified_name,
            "dagster/column_lineage": spec.base.column_lineage(keys.raw),
        },
        **common,
    )
    return [raw, base]


class DatasetLoadConfig(Config):
    """Bounded knobs of one load; where it connects and what it sends are not config (see the module docstring)."""

    allow_shrink: bool = Field(default=False, description="Accept a delivery with fewer rows, or lost series, than the base table.")
    max_shrink_fraction: float | None = Field(
        default=None, ge=0, le=1, description="Largest share of base rows a load may lose without allow_shrink (default: the declaration's)."
    )
    skip_if_unchanged: bool = Field(
        default=False,
        description="Write nothing (and skip downstream) when the source is unchanged since the last load. "
        "The schedule and the sensor turn this on; a manual materialization is a forced refresh.",
    )


def scheduled_run_config(spec: DatasetSpec) -> dict[str, Any]:
    """What the schedule and the sensor launch: a run that writes nothing when the source is unchanged."""
    return {"ops": {load_step_name(spec): {"config": {"skip_if_unchanged": True}}}}


def load_step_name(spec: DatasetSpec) -> str:
    return f"load_{spec.name}"


def job_name(spec: DatasetSpec) -> str:
    return f"refresh_{spec.name}"


@dataclass(frozen=True)
class LastLoad:
    """What the last committed load recorded on the raw table: the evidence change detection compares with."""

    signature: SourceSignature
    content_hash: str | None
    base_rows: int | None

    def evidence(self) -> dict[str, object]:
        """The raw table's materialization metadata that `read_last_load` reads back."""
        return {
            "content_hash": self.content_hash,
            "rows_updated_at": self.signature.rows_updated_at or None,
            "source_row_count": self.signature.row_count,
            "base_rows": self.base_rows,
        }


def load_step(spec: DatasetSpec):
    keys = DatasetKeys.of(spec)

    @multi_asset(specs=table_specs(spec), name=load_step_name(spec), can_subset=False)
    def load(
        context: AssetExecutionContext, config: DatasetLoadConfig, socrata: SocrataSource, warehouse: WarehouseResource
    ) -> Iterator[MaterializeResult]:
        yield from load_dataset(context, spec, keys, config, socrata, warehouse)

    return load


def load_dataset(
    context: AssetExecutionContext,
    spec: DatasetSpec,
    keys: DatasetKeys,
    config: DatasetLoadConfig,
    socrata: SocrataSource,
    warehouse: WarehouseResource,
) -> Iterator[MaterializeResult]:
    """Land, gate, publish and merge inside the run's transaction; nothing when the source is unchanged."""
    from covid_assets.datasets.load import InvalidRowsError, ShrinkingSourceError, discard, gate, land, merge_base, publish_raw

    wait_if_retrying(context)
    target = dataset_target(spec)
    last = read_last_load(context, keys.raw) if config.skip_if_unchanged else None
    tables = job_tables(context, [keys.raw, keys.base])

    def unchanged(evidence_text: str, evidence: dict[str, object]) -> None:
        """Nothing written: every table of the run's job is confirmed current, the evidence carried forward."""
        confirm_unchanged(context, evidence_text, evidence, tables=tables, raw_key=keys.raw, source_key=keys.source)

    still_stored = last is not None and holds_last_load(warehouse, spec, last, tables)
    signature = None if target.source_file else _signature_or_none(context, spec, socrata, target)
    if still_stored and signature and signature.rows_updated_at is not None and signature == last.signature:
        unchanged(f"rowsUpdatedAt {signature.rows_updated_at} and count {signature.row_count:,}", last.evidence())
        return
    source = target.source_file or f"{target.base_url} {spec.dataset_id}"
    fetched_at = dt.datetime.now(dt.UTC)
    fetch = Fetch(spec, socrata, target, signature, _progress_logger(context))
    with warehouse.transaction() as connection:
        try:
            landing = land(connection, spec, fetch.pages(), fetched_at, source=source)
        except SocrataError as error:
            raise source_failure(context, error) from error
        for warning in landing.warnings():
            context.log.warning(warning)
        delivered = SourceSignature(signature.rows_updated_at if signature else None, landing.rows)
        if still_stored and landing.content_hash == last.content_hash:
            discard(connection, landing)
            today = LastLoad(delivered, landing.content_hash, last.base_rows)
            unchanged(f"content hash {landing.content_hash}", today.evidence())  # today's rowsUpdatedAt from now on
            return
        try:
            accepted = gate(
                connection,
                spec,
                landing,
                allow_shrink=config.allow_shrink,
                max_shrink_fraction=spec.max_shrink_fraction if config.max_shrink_fraction is None else config.max_shrink_fraction,
            )
        except (InvalidRowsError, ShrinkingSourceError) as error:
            raise Failure(description=f"{source}: {error}") from error
        schema_change = publish_raw(connection, spec, landing)
        counts = merge_base(connection, spec, accepted, load_origin(context, signature, target))
        figures = base_figures(spec, connection)
        previews = {table.name: preview(connection, table) for table in (spec.raw, spec.base)}
    evidence = LastLoad(delivered, landing.content_hash, accepted.rows).evidence()
    source_value = MetadataValue.path(source) if target.source_file else MetadataValue.url(target.base_url)
    yield MaterializeResult(
        asset_key=keys.raw,
        data_version=DataVersion(landing.content_hash),
        metadata={
            "source": source_value,
            "dagster/row_count": landing.rows,
            "dagster/table_name": spec.raw.qualified_name,
            "dagster/column_schema": spec.raw.written_column_schema,
            "preview": previews[spec.raw.name],
            **fetch.metadata(),
            **landing.metadata(),
            **schema_change.metadata(),
            **evidence,
        },
    )
    yield MaterializeResult(
        asset_key=keys.base,
        data_version=DataVersion(landing.content_hash),
        metadata={
            "dagster/row_count": counts.total,
            "dagster/table_name": spec.base.qualified_name,
            "dagster/column_schema": spec.base.written_column_schema,
            "preview": previews[spec.base.name],
            "rows": accepted.rows,
            "rows_added": counts.added,
            "rows_revised": counts.revised,
            "rows_withdrawn": counts.withdrawn,
            "duplicates_dropped": accepted.duplicates_dropped,
            **figures,
        },
    )


def load_origin(context: AssetExecutionContext, signature: SourceSignature | None, target: SocrataTarget) -> "LoadOrigin":
    """What `{schema}.loads` records of where this load came from."""
    from covid_assets.datasets.history import LoadOrigin

    updated = signature.rows_updated_at if signature else None
    return LoadOrigin(
        run_id=context.run_id,
        rows_updated_at=None if updated is None else dt.datetime.fromtimestamp(updated, dt.UTC),
        source_file=target.source_file,
    )


def preview(connection: Any, table) -> MetadataValue:
    """The table's first rows (by key) as markdown, as the IO manager shows a write."""
    from covid_assets.storage.postgres_io import PREVIEW_ROWS

    order = sql.SQL(" ORDER BY {}").format(listed(table.key)) if table.key else sql.SQL("")
    statement = sql.SQL("SELECT * FROM {}{} LIMIT {}").format(sql.Identifier(table.schema, table.name), order, sql.Literal(PREVIEW_ROWS))
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string())
        frame = cursor.fetch_arrow_table().to_pandas()
    return MetadataValue.md(frame.to_markdown(index=False))


class Fetch:
    """The delivery as bounded Arrow pages (the export file, or the API in `:id` order), and what
    fetching them cost, known once the last page is in."""

    def __init__(self, spec: DatasetSpec, socrata: SocrataSource, target: SocrataTarget, signature: SourceSignature | None, progress) -> None:
        self.spec, self.socrata, self.target, self.signature, self.progress = spec, socrata, target, signature, progress
        self.stats: FetchStats | None = None

    def pages(self) -> Iterator["pa.Table"]:
        from covid_assets.datasets.pages import export_pages

        started = time.monotonic()
        if self.target.source_file:
            rows = pages = 0
            for page in export_pages(self.target.source_file):
                rows, pages = rows + page.num_rows, pages + 1
                yield page
            size = os.stat(self.target.source_file).st_size
            self.stats = FetchStats(rows, pages, 0, 0, size, round(time.monotonic() - started, 3))
            return
        known_count = self.signature.row_count if self.signature else None
        with self.socrata.client(self.spec.required, self.target).plan(self.progress) as plan:
            yield from plan.pages(known_count)
            self.stats = plan.stats(elapsed_s=time.monotonic() - started)

    def metadata(self) -> dict[str, Any]:
        stats = self.stats
        if stats is None:
            return {}
        return {
            "fetch_pages": stats.pages,
            "fetch_requests": stats.requests,
            "fetch_retries": stats.retries,
            "fetch_bytes": stats.bytes,
            "fetch_seconds": round(stats.elapsed_s, 3),
        }


PROGRESS_EVERY_S = 2.0  # each log line is an event the instance stores: one per page cost 0.3 s on 25 pages


def _progress_logger(context: AssetExecutionContext):
    """Progress at most every PROGRESS_EVERY_S seconds, and the last page always."""
    last_logged = time.monotonic()

    def log_progress(rows_so_far: int, total: int | None) -> None:
        nonlocal last_logged
        now = time.monotonic()
        if now - last_logged < PROGRESS_EVERY_S and (total is None or rows_so_far < total):
            return
        last_logged = now
        of_total = f" of {total:,}" if total else ""
        context.log.info(f"fetched {rows_so_far:,}{of_total} rows")

    return log_progress


def base_figures(spec: DatasetSpec, connection: Any) -> dict[str, Any]:
    """The declared figures of the base table (`figures: module:function`), computed in the run's transaction."""
    if not spec.figures:
        return {}
    module, _, function = spec.figures.partition(":")
    return dict(getattr(importlib.import_module(module), function)(connection, spec))


def _signature_or_none(context: AssetExecutionContext, spec: DatasetSpec, socrata: SocrataSource, target: SocrataTarget) -> SourceSignature | None:
    try:
        return socrata.signature(target=target, required_columns=spec.required)
    except SocrataError as error:
        context.log.warning(f"could not read the source's rowsUpdatedAt/count ({error}); doing a full fetch")
        return None


def read_last_load(context: AssetExecutionContext, raw_key: AssetKey) -> LastLoad | None:
    """The last load that was committed (a failed run emits its materializations, then rolls back)."""
    event = context.instance.get_latest_materialization_event(raw_key)
    if event is None or event.asset_materialization is None:
        return None
    run = context.instance.get_run_by_id(event.run_id)
    if run is None or run.status != DagsterRunStatus.SUCCESS or COMMIT_FAILED_TAG in run.tags:
        return None
    metadata = event.asset_materialization.metadata

    def value(name: str) -> Any:
        entry = metadata.get(name)
        return None if entry is None else entry.value

    return LastLoad(
        signature=SourceSignature(rows_updated_at=value("rows_updated_at"), row_count=value("source_row_count")),
        content_hash=value("content_hash"),
        base_rows=value("base_rows"),
    )


def holds_last_load(warehouse: WarehouseResource, spec: DatasetSpec, last: LastLoad, tables: Sequence[AssetKey]) -> bool:
    """The base table still has the last load's rows, and no table of the run's job (the base table among
    them) has been dropped: one catalog query, then one count."""
    if warehouse.missing_tables([(spec.base.schema, spec.base.name), *(tuple(key.path) for key in tables if key != spec.base.asset_key and len(key.path) == 2)]):
        return False
    return warehouse.count_rows(spec.base.schema, spec.base.name) == last.base_rows


# ----------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class CheckQuery:
    """One check: its name, what it asserts, and a query returning (label, offending rows) pairs."""

    name: str
    description: str
    query: sql.Composable
    counts_named: bool = False  # the query's labels name the counts already (else: <column>_violations)


def check_queries(spec: DatasetSpec) -> list[CheckQuery]:
    """The checks of the base table as SQL; each query returns one row of offending-row counts.

    A check's name is the declared one (`checks.names`) or its kind; a column given a name of its
    own (`allowed_values.state: states_are_known`) is a check of its own, the others share one."""
    table = sql.Identifier(spec.base.schema, spec.base.name)
    any_key_null = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in spec.base.key)
    values = spec.checks
    names = values.names
    checks = [
        CheckQuery(
            names.get("primary_key", "primary_key"),
            f"({', '.join(spec.base.key)}) is unique and never null.",
            sql.SQL(
                "SELECT CASE WHEN {pk} THEN 0 ELSE ({d}) END AS duplicate_keys, "
                "CASE WHEN {pk} THEN 0 ELSE (SELECT count(*) FROM {t} WHERE {n}) END AS null_keys"
            ).format(pk=primary_key_on(table, spec.base.key), d=repeated_key_rows(table, spec.base.key), t=table, n=any_key_null),
            counts_named=True,
        )
    ]
    if values.not_null:
        counts = sql.SQL(", ").join(
            sql.SQL("count(*) FILTER (WHERE {c} IS NULL) AS {a}").format(c=sql.Identifier(c), a=sql.Identifier(c)) for c in values.not_null
        )
        checks.append(CheckQuery(names.get("not_null", "not_null"), f"Never null: {', '.join(values.not_null)}.", sql.SQL("SELECT {} FROM {}").format(counts, table)))
    for name, allowed in _by_check_name("allowed_values", values.allowed_values, names):
        counts = sql.SQL(", ").join(
            sql.SQL("count(*) FILTER (WHERE {c} IS NOT NULL AND {c}::text NOT IN ({v})) AS {a}").format(
                c=sql.Identifier(c), v=sql.SQL(", ").join(map(sql.Literal, v)), a=sql.Identifier(c)
            )
            for c, v in allowed.items()
        )
        described = "; ".join(f"{c} in {', '.join(v)}" for c, v in allowed.items())
        checks.append(CheckQuery(name, f"Only the declared values (or null): {described}.", sql.SQL("SELECT {} FROM {}").format(counts, table)))
    for name, ranges in _by_check_name("ranges", values.ranges, names):
        parts, described = [], []
        for c, (low, high) in ranges.items():
            conditions = [sql.SQL("{} < {}").format(sql.Identifier(c), sql.Literal(low))] if low is not None else []
            conditions += [sql.SQL("{} > {}").format(sql.Identifier(c), sql.Literal(high))] if high is not None else []
            parts.append(sql.SQL("count(*) FILTER (WHERE {}) AS {}").format(sql.SQL(" OR ").join(conditions), sql.Identifier(c)))
            described.append(f"{c} in [{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]")
        checks.append(CheckQuery(name, f"Within range: {'; '.join(described)}.", sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(parts), table)))
    if window := values.date_window:
        checks.append(
            CheckQuery(
                names.get("date_window", "date_window"),
                f"{window.column} between {window.earliest.isoformat()} and {window.future_days} day(s) after today.",
                sql.SQL("SELECT count(*) FILTER (WHERE {c} < {e}::date OR {c} >= current_date + {d}) AS {a} FROM {t}").format(
                    c=sql.Identifier(window.column), e=sql.Literal(window.earliest.isoformat()), d=sql.Literal(window.future_days + 1),
                    a=sql.Identifier(window.column), t=table,
                ),
            )
        )
    return checks


def primary_key_on(table: sql.Identifier, key: Sequence[str]) -> sql.Composed:
    """True when the table's primary key is exactly `key`: Postgres then keeps the key unique and
    never null, and the check need not scan and group the table (0.15 s on the COVID base table);
    a table whose constraint is gone or different is counted row by row."""
    return sql.SQL(
        "EXISTS (SELECT FROM pg_index i WHERE i.indrelid = {t}::regclass AND i.indisprimary AND "
        "(SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a "
        "WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = {k}::text[])"
    ).format(t=sql.Literal(table.as_string()), k=sql.Literal(sorted(key)))


def _by_check_name(kind: str, per_column: Mapping[str, Any], names: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The columns of one kind of check grouped into checks: one per column named on its own, one for the rest."""
    shared = {c: v for c, v in per_column.items() if f"{kind}.{c}" not in names}
    own = [(names[f"{kind}.{c}"], {c: v}) for c, v in per_column.items() if f"{kind}.{c}" in names]
    return ([(names.get(kind, kind), shared)] if shared else []) + own


def row_count_check_name(spec: DatasetSpec) -> str:
    return spec.checks.names.get("row_count", ROW_COUNT_CHECK)


ROW_COUNT_CHECK = "row_count_matches_load"


def base_checks(spec: DatasetSpec):
    keys = DatasetKeys.of(spec)
    queries = check_queries(spec)
    specs = [AssetCheckSpec(q.name, asset=keys.base, description=q.description, blocking=True) for q in queries]
    specs.append(
        AssetCheckSpec(
            row_count_check_name(spec), asset=keys.base, blocking=True,
            description="The base table holds exactly the rows the last accepted load typed (after duplicate keys were dropped).",
        )
    )

    specs += [AssetCheckSpec(c.name, asset=keys.base, description=c.description, blocking=c.blocking) for c in history_checks(spec.base)]
    _refuse_repeated_check_names(spec, [s.name for s in specs])

    @multi_asset_check(specs=specs, name=f"check_{spec.name}")
    def check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> Iterator[AssetCheckResult]:
        for query in queries:
            yield evaluate(keys.base, query, warehouse)
        yield row_count_result(context, keys.base, spec, warehouse)
        yield from history_results(keys.base, spec, warehouse)

    return check


def _refuse_repeated_check_names(spec: DatasetSpec, names: Sequence[str]) -> None:
    """Checks are keyed by name: a declared name that another check already has would silently drop
    one of them, so it is refused here, where every check's final name is known."""
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise DeclarationError(
            spec.name, "checks.names",
            f"{', '.join(repeated)} would name two checks of {spec.base.qualified_name} (the checks: {', '.join(names)}); give each its own name",
        )


def evaluate(key: AssetKey, query: CheckQuery, warehouse: WarehouseResource) -> AssetCheckResult:
    """Run one check's query in the run's transaction: it passes when every count is zero."""
    with warehouse.transaction() as connection, connection.cursor() as cursor:
        cursor.execute(query.query.as_string())
        row = cursor.fetchone()
        labels = [column[0] for column in cursor.description]
    counts = {label: int(count) for label, count in zip(labels, row)}
    return AssetCheckResult(
        asset_key=key,
        check_name=query.name,
        passed=not any(counts.values()),
        severity=AssetCheckSeverity.ERROR,
        metadata={f"{label}_violations" if not query.counts_named else label: count for label, count in counts.items()},
    )


def history_results(key: AssetKey, spec: DatasetSpec, warehouse: WarehouseResource) -> Iterator[AssetCheckResult]:
    """The history's checks (datasets/history.py), over the base table's columns as stored."""
    with warehouse.transaction() as connection:
        checks = checks_now(connection, spec.base)
    for check in checks:
        yield evaluate(key, CheckQuery(check.name, check.description, check.query), warehouse)


def row_count_result(context: AssetCheckExecutionContext, key: AssetKey, spec: DatasetSpec, warehouse: WarehouseResource) -> AssetCheckResult:
    event = context.instance.get_latest_materialization_event(key)
    entry = event.asset_materialization.metadata.get("rows") if event and event.asset_materialization else None
    expected = None if entry is None else entry.value
    stored = warehouse.row_count(spec.base.schema, spec.base.name)
    return AssetCheckResult(
        asset_key=key,
        check_name=row_count_check_name(spec),
        passed=expected is not None and stored == expected,
        severity=AssetCheckSeverity.ERROR,
        metadata={"stored_rows": stored if stored is not None else -1, "accepted_rows": expected if expected is not None else -1},
    )


# ----------------------------------------------------------------------------- schedule and sensor
def dataset_schedule(
    spec: DatasetSpec,
    job: "UnresolvedAssetJobDefinition",
    cron: str,
    *,
    name: str | None = None,
    timezone: str = "UTC",
    description: str | None = None,
) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=name or f"{spec.name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        run_config=scheduled_run_config(spec),
        default_status=DefaultScheduleStatus.RUNNING if env_flag(SCHEDULES_ENABLED_ENV) else DefaultScheduleStatus.STOPPED,
        description=description or f"Refreshes {spec.base.qualified_name} ({cron}, {timezone}); writes nothing when the source is unchanged.",
    )


SOURCE_VERSION_TAG = "covid/source_version"


def dataset_sensor(
    spec: DatasetSpec,
    job: "UnresolvedAssetJobDefinition",
    minutes: float,
    *,
    name: str | None = None,
    poll_setting: str = "",
):
    """Observe the source every `minutes`, record the observation and the publisher's staleness, and ask
    for one refresh per new version (run key = the version: one release, one run, whatever the ticks
    and restarts), with the schedule's config (it writes nothing if the contents turn out equal). An
    unreachable source fails the tick, visibly (never the token); the next tick tries again."""
    keys = DatasetKeys.of(spec)

    @sensor(
        name=name or f"{spec.name}_source_sensor",
        job=job,
        minimum_interval_seconds=max(int(minutes * 60), 1),
        default_status=DefaultSensorStatus.RUNNING if env_flag(SENSORS_ENABLED_ENV) else DefaultSensorStatus.STOPPED,
        description=(
            f"Observes {spec.domain} {spec.dataset_id} every {minutes:g} min{poll_setting} and starts one refresh per new version "
            "(rowsUpdatedAt and row count)."
        ),
    )
    def watch(context: SensorEvaluationContext, socrata: SocrataSource) -> SensorResult:
        try:
            observation = observe_source(spec, socrata)
        except (SocrataError, OSError) as error:
            raise SourceUnreachable(f"could not observe the source ({error}); the next tick tries again") from None
        tags = {"dagster/data_version": observation.version, "dagster/data_version_is_user_provided": "true"}
        events = [AssetObservation(asset_key=keys.source, metadata=observation.metadata, tags=tags), observation.staleness]
        if context.cursor == observation.version:
            return SensorResult(asset_events=events, skip_reason=f"source version {observation.version} already seen")
        context.log.info(f"new source version {observation.version} (last seen: {context.cursor or 'none'}): requesting a refresh")
        request = RunRequest(
            run_key=observation.run_key, run_config=scheduled_run_config(spec), tags={SOURCE_VERSION_TAG: observation.version}
        )
        return SensorResult(run_requests=[request], asset_events=events, cursor=observation.version)

    return watch
