"""Declared datasets: the declaration model, the scaffold, the SocrataDataset component and `dg`.

The scaffold is tested on the real `rows.json` export of data.cdc.gov xt86-xqxz (its `meta.view` is
the dataset's view metadata); the CDC 9mfq-cb36 declaration is loaded from covid_assets/defs/ and,
where the loader is present, materialized offline from its bundled export into a real Postgres.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DefaultScheduleStatus, Definitions, load_from_defs_folder

from covid_assets.datasets.component import DatasetKeys, DatasetLoadConfig, base_checks, base_url_env, check_queries, dataset_target
from covid_assets.datasets.declaration import DatasetDeclaration, DeclarationError, load_declaration
from covid_assets.datasets.scaffold import main as scaffold
from covid_assets.resources import build_resources
from covid_assets.sources.socrata.metadata import parse_view

ROOT = Path(__file__).parents[1]
XT86 = Path(__file__).parent / "fixtures" / "cdc_xt86-xqxz_rows.json.gz"
CDC_YAML = ROOT / "covid_assets" / "defs" / "cdc_cases_deaths_by_state" / "defs.yaml"
CDC_EXPORT = ROOT / "covid_assets" / "data" / "cdc_9mfq-cb36_cases_deaths_by_state_20211227.csv.gz"
RAW, BASE, SOURCE = AssetKey(["cdc_raw", "raw_cases_deaths_by_state"]), AssetKey(["cdc", "cases_deaths_by_state"]), AssetKey(["socrata", "cdc_cases_deaths_by_state"])
HAS_LOADER = importlib.util.find_spec("covid_assets.datasets.load") is not None
HISTORY_CHECKS = ("history_matches_base", "loads_reconcile_with_history")


def dataset_defs() -> Definitions:
    """The declared datasets as the code location loads them, with its resources."""
    return Definitions.merge(load_from_defs_folder(path_within_project=ROOT / "covid_assets"), Definitions(resources=build_resources()))


def cdc_attributes() -> dict:
    return yaml.safe_load(CDC_YAML.read_text())["attributes"]


def xt86_view():
    with gzip.open(XT86) as handle:
        return parse_view(json.load(handle)["meta"]["view"], str(XT86))


# ----------------------------------------------------------------------------- loading
def test_the_definitions_load_with_the_network_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    defs = dataset_defs()
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {SOURCE, RAW, BASE} <= graph.get_all_asset_keys()
    assert graph.get(RAW).parent_keys == {SOURCE} and graph.get(BASE).parent_keys == {RAW}


def test_the_cdc_declaration_gives_tables_with_schema_lineage_checks_and_schedule() -> None:
    defs = dataset_defs()
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    raw, base = specs[RAW], specs[BASE]
    for spec in (raw, base):
        assert spec.group_name == "cdc_cases_deaths" and spec.owners == ["team:data-platform"] and "postgres" in spec.kinds
    assert "socrata" in specs[SOURCE].kinds and "9mfq-cb36" in specs[SOURCE].description
    columns = {column.name: column for column in base.metadata["dagster/column_schema"].columns}
    declared = cdc_attributes()["columns"]
    assert list(columns) == list(declared)
    assert {name: column.type for name, column in columns.items()} == {name: c["type"].lower() for name, c in declared.items()}
    assert all(columns[name].description == c["description"] for name, c in declared.items())
    raw_columns = [column.name for column in raw.metadata["dagster/column_schema"].columns]
    assert raw_columns == [*declared, "extra_columns", "fetched_at"]
    lineage = base.metadata["dagster/column_lineage"].deps_by_column
    assert {name: [(dep.asset_key, dep.column_name) for dep in deps] for name, deps in lineage.items()} == {
        name: [(RAW, name)] for name in declared
    }
    graph = defs.resolve_asset_graph()
    checks = {key.name: key for key in graph.asset_check_keys if key.asset_key == BASE}
    assert set(checks) == {"primary_key", "not_null", "allowed_values", "ranges", "date_window", "row_count_matches_load", *HISTORY_CHECKS}
    check_specs = [spec for checks_def in defs.asset_checks for spec in checks_def.check_specs if spec.asset_key == BASE]
    assert check_specs and all(spec.blocking == (spec.name != "loads_reconcile_with_history") for spec in check_specs)
    schedule = defs.resolve_schedule_def("cdc_cases_deaths_by_state_schedule")
    assert schedule.cron_schedule == "0 7 * * *" and schedule.default_status == DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def(schedule.job_name)
    assert {key for key in job.asset_layer.selected_asset_keys} == {RAW, BASE}


def test_where_the_rows_come_from_is_the_environment_never_run_config(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_declaration(CDC_YAML)
    for variable in ("SOCRATA_OFFLINE", "SOCRATA_APP_TOKEN", base_url_env(spec.name)):
        monkeypatch.delenv(variable, raising=False)
    assert (dataset_target(spec).base_url, dataset_target(spec).source_file) == ("https://data.cdc.gov", None)
    monkeypatch.setenv(base_url_env(spec.name), "http://127.0.0.1:9")
    assert dataset_target(spec).base_url == "http://127.0.0.1:9"
    monkeypatch.setenv("SOCRATA_OFFLINE", "1")
    assert Path(dataset_target(spec).source_file) == CDC_EXPORT.resolve()
    assert set(DatasetLoadConfig.model_fields) == {"allow_shrink", "max_shrink_fraction", "skip_if_unchanged"}


def test_a_declaration_names_its_environment_variables_and_its_source_asset(monkeypatch: pytest.MonkeyPatch) -> None:
    attributes = {**cdc_attributes(), "source_name": "cases_deaths_published",
                  "environment": {"base_url": "CDC_BASE_URL", "dataset_id": "CDC_DATASET_ID", "source_file": "CDC_SOURCE_FILE"}}
    spec = DatasetDeclaration.model_validate(attributes).to_spec(CDC_YAML)
    assert DatasetKeys.of(spec).source == AssetKey(["socrata", "cases_deaths_published"])
    for variable in ("SOCRATA_OFFLINE", "CDC_BASE_URL", "CDC_DATASET_ID", "CDC_SOURCE_FILE", base_url_env(spec.name)):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(base_url_env(spec.name), "http://127.0.0.1:8")  # not the declared name: not read
    assert (dataset_target(spec).base_url, dataset_target(spec).dataset_id) == ("https://data.cdc.gov", "9mfq-cb36")
    monkeypatch.setenv("CDC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CDC_DATASET_ID", "abcd-efgh")
    assert (dataset_target(spec).base_url, dataset_target(spec).dataset_id) == ("http://127.0.0.1:9", "abcd-efgh")
    monkeypatch.setenv("SOCRATA_OFFLINE", "1")
    assert Path(dataset_target(spec).source_file) == CDC_EXPORT.resolve()
    monkeypatch.setenv("CDC_SOURCE_FILE", str(XT86))  # a source file the deployment names wins over the bundled one
    assert dataset_target(spec).source_file == str(XT86)


def test_checks_take_their_declared_names_and_a_named_column_is_a_check_of_its_own() -> None:
    from covid_assets.datasets.history import history_checks

    attributes = cdc_attributes()
    attributes["checks"]["names"] = {"primary_key": "key_is_unique", "allowed_values.consent_deaths": "death_consent_is_known",
                                     "date_window": "dates_in_range", "row_count": "row_count_matches_accepted_load"}
    spec = DatasetDeclaration.model_validate(attributes).to_spec(CDC_YAML)
    queries = {query.name: query for query in check_queries(spec)}
    assert set(queries) == {"key_is_unique", "not_null", "allowed_values", "death_consent_is_known", "ranges", "dates_in_range"}
    assert "consent_cases in" in queries["allowed_values"].description and "consent_deaths" not in queries["allowed_values"].description
    assert queries["death_consent_is_known"].description.startswith("Only the declared values (or null): consent_deaths in")
    checks = base_checks(spec)
    history = {check.name for check in history_checks(spec.base)}  # the base table's revision history
    assert {key.name for key in checks.check_keys} == {*queries, "row_count_matches_accepted_load", *history}


# ----------------------------------------------------------------------------- the scaffold
def run_scaffold(tmp_path: Path, *extra: str) -> tuple[int, dict | None]:
    output = tmp_path / "defs.yaml"
    code = scaffold(
        ["--domain", "data.cdc.gov", "--dataset", "xt86-xqxz", "--from-file", str(XT86), "--name", "nchs_visits",
         "--key", "panel,unit,stub_label,year", "--output", str(output), "--force", *extra]
    )
    return code, yaml.safe_load(output.read_text()) if code == 0 else None


def test_the_scaffold_derives_every_column_type_and_description_from_the_view_metadata(tmp_path: Path) -> None:
    code, document = run_scaffold(tmp_path)
    assert code == 0
    view = xt86_view()
    columns = document["attributes"]["columns"]
    data_columns = [c for c in view.columns if not c.field_name.startswith(":") and c.data_type != "meta_data"]
    assert list(columns) == [c.field_name for c in data_columns] and len(columns) == 16
    expected = {"text": "TEXT", "number": "NUMERIC"}  # the two dataTypeNames xt86-xqxz uses
    for column in data_columns:
        declared = columns[column.field_name]
        assert (declared["source_type"], declared["type"]) == (column.data_type, expected[column.data_type]), column.field_name
        assert declared["description"] == (column.description or "")
    # The declaration it wrote resolves, with the key as given.
    spec = DatasetDeclaration.model_validate(document["attributes"]).to_spec(tmp_path / "defs.yaml")
    assert spec.base.key == ("panel", "unit", "stub_label", "year") and len(spec.base.columns) == 16


def test_each_socrata_data_type_maps_to_its_warehouse_type(tmp_path: Path) -> None:
    mapping = {
        "text": "TEXT", "number": "NUMERIC", "calendar_date": "DATE", "floating_timestamp": "TIMESTAMP",
        "fixed_timestamp": "TIMESTAMPTZ", "checkbox": "BOOLEAN", "point": "JSONB", "location": "JSONB", "url": "JSONB",
        "some_new_type": "TEXT",  # unknown: kept as delivered, with a note
    }
    view = {"columns": [{"fieldName": f"c_{t}", "dataTypeName": t} for t in mapping] + [{"fieldName": ":id", "dataTypeName": "meta_data"}]}
    metadata = tmp_path / "view.json"
    metadata.write_text(json.dumps(view))
    output = tmp_path / "out.yaml"
    assert scaffold(["--domain", "x.gov", "--dataset", "abcd-1234", "--from-file", str(metadata), "--name", "types",
                     "--key", "c_text", "--output", str(output)]) == 0
    columns = yaml.safe_load(output.read_text())["attributes"]["columns"]
    assert {name: column["type"] for name, column in columns.items()} == {f"c_{t}": w for t, w in mapping.items()}
    assert "not one this platform maps" in columns["c_some_new_type"]["description"]


def test_a_type_override_wins_and_one_for_an_unknown_field_is_refused_by_name(tmp_path: Path, capsys) -> None:
    code, document = run_scaffold(tmp_path, "--type", "panel_num=BIGINT", "--type", "year_num=double precision")
    assert code == 0
    columns = document["attributes"]["columns"]
    assert (columns["panel_num"]["type"], columns["panel_num"]["source_type"]) == ("BIGINT", "number")
    assert columns["year_num"]["type"] == "DOUBLE PRECISION"
    assert columns["unit_num"]["type"] == "NUMERIC"  # the others keep the derived type
    code, _ = run_scaffold(tmp_path, "--type", "panel_number=BIGINT")
    assert code == 1 and "panel_number" in capsys.readouterr().err
    code, _ = run_scaffold(tmp_path, "--type", "panel_num=INTEGR")
    assert code == 1 and "INTEGR" in capsys.readouterr().err


def test_a_hand_written_type_overrides_the_derived_one() -> None:
    attributes = cdc_attributes()
    spec = DatasetDeclaration.model_validate(attributes).to_spec(CDC_YAML)
    assert spec.base["tot_cases"].type == "BIGINT"  # source_type number would give NUMERIC
    del attributes["columns"]["tot_cases"]["type"]
    assert DatasetDeclaration.model_validate(attributes).to_spec(CDC_YAML).base["tot_cases"].type == "NUMERIC"


# ----------------------------------------------------------------------------- errors name file and field
def project_with(tmp_path: Path, attributes: dict) -> Path:
    """A throwaway dg project whose one declaration has `attributes`."""
    package = f"declared_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.dg]\ndirectory_type = "project"\n[tool.dg.project]\nroot_module = "{package}"\ndefs_module = "{package}.defs"\n'
    )
    folder = tmp_path / package / "defs" / "broken"
    folder.mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "defs" / "__init__.py").write_text("")
    attributes = {**attributes, "export_file": str(CDC_EXPORT)}
    (folder / "defs.yaml").write_text(yaml.safe_dump({"type": "covid_assets.datasets.component.SocrataDataset", "attributes": attributes}))
    return folder / "defs.yaml"


def load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attributes: dict) -> tuple[Path, str]:
    file = project_with(tmp_path, attributes)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as caught:
        load_from_defs_folder(path_within_project=tmp_path)
    return file, "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    "change, says",
    [
        # refused by pydantic while Dagster reads the YAML: the field's path, the file and line
        (lambda a: a["base"].update(table="Cases-By-State"), "attributes.base.TableName.table at {file}:"),
        (lambda a: a.update(max_shrink_fraction=2), "attributes.max_shrink_fraction.constrained-float at {file}:"),
        # refused when the declaration resolves: "file: field: what is wrong"
        (lambda a: a.update(key=["submission_date", "jurisdiction"]), "{file}: key: table cdc.cases_deaths_by_state: key column(s) jurisdiction"),
        (lambda a: a["checks"]["ranges"].update(state={"min": 0}), "{file}: checks.ranges.state: 'state' is TEXT, not a number"),
        (lambda a: a["columns"]["tot_cases"].update(type="INTEGR"), "{file}: columns.tot_cases.type: unknown column type 'INTEGR'"),
        (lambda a: a.update(schedule="every day"), "{file}: schedule: 'every day' is not a cron schedule"),
        (lambda a: a["checks"]["date_window"].update(earliest="22/01/2020"), "{file}: checks.date_window.earliest: '22/01/2020'"),
        # the typing rules and the names of checks
        (lambda a: a["columns"]["tot_cases"].update(pad_width=2), "{file}: columns.tot_cases.pad_width: 'tot_cases' is BIGINT"),
        (lambda a: a["columns"]["state"].update(max_abs=10), "{file}: columns.state.max_abs: 'state' is TEXT, not a number"),
        (lambda a: a["columns"]["state"].update(pattern="[A-Z"), "{file}: columns.state.pattern: not a regular expression"),
        (lambda a: a["columns"]["consent_cases"].update(fill_from={"column": "jurisdiction", "values": {"a": "b"}}),
         "{file}: columns.consent_cases.fill_from.column: 'jurisdiction' is not another declared column"),
        (lambda a: a["checks"].update(names={"allowed_values.state": "x"}), "{file}: checks.names.allowed_values.state: no such check here"),
        (lambda a: a["checks"].update(names={"primary_key": "a", "row_count": "a"}), "{file}: checks.names: two checks have one name"),
        (lambda a: a.update(environment={"base_url": "https://example.org"}), "is not an environment variable name"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_file_and_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, says) -> None:
    attributes = cdc_attributes()
    change(attributes)
    file, message = load_error(tmp_path, monkeypatch, attributes)
    assert says.format(file=file) in message, message[-2000:]


def test_a_declaration_error_says_file_and_field_in_its_first_line(tmp_path: Path) -> None:
    attributes = cdc_attributes()
    attributes["series_key"] = ["jurisdiction"]
    with pytest.raises(DeclarationError) as caught:
        DatasetDeclaration.model_validate(attributes).to_spec(tmp_path / "defs.yaml")
    assert str(caught.value).startswith(f"{tmp_path / 'defs.yaml'}: series_key[0]: 'jurisdiction' is not a declared column")


# ----------------------------------------------------------------------------- dg
@pytest.mark.slow
def test_dg_check_defs_passes_from_the_repository_root() -> None:
    """As a new user types it: no DAGSTER_HOME, no Dagster database variables. Dagster then reads the
    repository's dagster.yaml (the instance policy), which must not need the deployment's Postgres."""
    leave_out = ("DAGSTER_HOME", "DAGSTER_PG_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(leave_out)}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200")
    dg = Path(sys.executable).with_name("dg")
    completed = subprocess.run([str(dg), "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    assert "All definitions loaded successfully" in completed.stdout + completed.stderr


# ----------------------------------------------------------------------------- offline loads into Postgres
needs_loader = pytest.mark.skipif(not HAS_LOADER, reason="covid_assets.datasets.load is not on this branch yet")


def materialize_cdc(url: str, instance=None, source: dict | None = None, tags: dict | None = None, **run_config):
    """The CDC dataset's raw and base table with their checks, as a manual materialization (`run_config`:
    the load step's config; `source`: the deployment's source variables, by default the bundled export)."""
    from dagster import AssetSelection, materialize

    from covid_assets.sources.socrata import SocrataSource
    from covid_assets.storage.postgres_io import warehouse_resources
    from covid_assets_tests.helpers import deployment

    defs = load_from_defs_folder(path_within_project=ROOT / "covid_assets")
    with deployment(url, **(source or {"SOCRATA_OFFLINE": "1"})):
        return materialize(
            [*defs.assets, *defs.asset_checks],
            selection=AssetSelection.assets(RAW, BASE),
            resources={**warehouse_resources(), "socrata": SocrataSource(max_retries=0, backoff_factor=0)},
            run_config={"ops": {"load_cdc_cases_deaths_by_state": {"config": run_config}}} if run_config else None,
            raise_on_error=False,
            instance=instance,
            tags=tags,
        )


@needs_loader
def test_the_cdc_dataset_loads_offline_from_its_bundled_export_and_its_checks_pass(warehouse_url: str) -> None:
    import pandas as pd

    from covid_assets_tests.helpers import query

    result = materialize_cdc(warehouse_url)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {
        "primary_key", "not_null", "allowed_values", "ranges", "date_window", "row_count_matches_load", *HISTORY_CHECKS
    }
    assert all(e.passed for e in evaluations), [(e.check_name, e.metadata) for e in evaluations if not e.passed]
    export = pd.read_csv(CDC_EXPORT, dtype=str, keep_default_na=False)
    assert query(warehouse_url, "SELECT count(*), count(DISTINCT state) FROM cdc.cases_deaths_by_state") == [(len(export), export.state.nunique())]
    assert query(warehouse_url, "SELECT count(*) FROM cdc_raw.raw_cases_deaths_by_state") == [(len(export),)]
    first = export.iloc[0]
    month, day, year = first.submission_date.split("/")
    row = query(
        warehouse_url,
        "SELECT tot_cases, conf_cases, new_case FROM cdc.cases_deaths_by_state WHERE state = %s AND submission_date = %s",
        (first.state, f"{year}-{month}-{day}"),
    )
    assert row == [(int(first.tot_cases), int(first.conf_cases) if first.conf_cases else None, int(first.new_case))]


@pytest.mark.slow
@needs_loader
def test_an_unchanged_source_confirms_every_table_and_a_manual_run_reloads(warehouse_url: str) -> None:
    from dagster import DagsterInstance

    from covid_assets.datasets.operations import SOURCE_UNCHANGED_TAG
    from covid_assets_tests.helpers import confirmed, materialized, query

    with DagsterInstance.ephemeral() as instance:
        first = materialize_cdc(warehouse_url, instance, skip_if_unchanged=True)
        assert first.success and materialized(first) == {RAW.path[-1], BASE.path[-1]}
        loaded = {e.asset_key: e.materialization.metadata for e in first.get_asset_materialization_events()}
        before = query(warehouse_url, "SELECT xmin::text, count(*) FROM cdc.cases_deaths_by_state GROUP BY 1")
        raw_before = query(warehouse_url, "SELECT max(fetched_at) FROM cdc_raw.raw_cases_deaths_by_state")
        for _ in range(2):  # the second confirmation compares with the evidence the first carried forward
            again = materialize_cdc(warehouse_url, instance, skip_if_unchanged=True)  # as the schedule and the sensor run it
            assert again.success and materialized(again) == set() and confirmed(again) == {RAW.path[-1], BASE.path[-1]}
            confirmations = {e.asset_key: e.materialization.metadata for e in again.get_asset_materialization_events()}
            assert all(metadata["rows_written"].value == 0 for metadata in confirmations.values())
            for evidence in ("content_hash", "source_row_count", "base_rows"):
                assert confirmations[RAW][evidence].value == loaded[RAW][evidence].value
            assert instance.get_run_by_id(again.run_id).tags.get(SOURCE_UNCHANGED_TAG) == "true"
        assert query(warehouse_url, "SELECT xmin::text, count(*) FROM cdc.cases_deaths_by_state GROUP BY 1") == before
        assert query(warehouse_url, "SELECT max(fetched_at) FROM cdc_raw.raw_cases_deaths_by_state") == raw_before
        tables = query(warehouse_url, "SELECT tablename::text FROM pg_tables WHERE schemaname IN ('cdc', 'cdc_raw') ORDER BY 1")
        assert tables == [("cases_deaths_by_state",), ("cases_deaths_by_state_history",), ("loads",), ("raw_cases_deaths_by_state",)]
        assert query(warehouse_url, "SELECT load_id FROM cdc.loads") == [(1,)]  # no staging table left behind, no second load
        forced = materialize_cdc(warehouse_url, instance)  # a manual materialization is a forced refresh
        assert forced.success and materialized(forced) == {RAW.path[-1], BASE.path[-1]}
        assert query(warehouse_url, "SELECT max(fetched_at) FROM cdc_raw.raw_cases_deaths_by_state") != raw_before


def test_the_schedule_and_the_sensor_skip_an_unchanged_source_and_every_table_has_a_freshness_policy() -> None:
    from covid_assets.datasets.component import scheduled_run_config

    defs = dataset_defs()
    spec = load_declaration(CDC_YAML)
    expected = {"ops": {"load_cdc_cases_deaths_by_state": {"config": {"skip_if_unchanged": True}}}}
    assert scheduled_run_config(spec) == expected
    from dagster import build_schedule_context

    with build_schedule_context() as context:
        requests = defs.resolve_schedule_def("cdc_cases_deaths_by_state_schedule").evaluate_tick(context).run_requests
    assert [request.run_config for request in requests] == [expected]
    assert DatasetLoadConfig().skip_if_unchanged is False
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    assert specs[RAW].freshness_policy is not None and specs[BASE].freshness_policy == specs[RAW].freshness_policy
    graph = defs.resolve_asset_graph()
    assert {key.name for key in graph.asset_check_keys if key.asset_key == SOURCE} == {"publisher_updated_recently"}


@pytest.mark.slow
@needs_loader
def test_a_transient_source_failure_asks_for_one_retry_which_waits_and_a_refusal_does_not(warehouse_url: str) -> None:
    import time

    from dagster import DagsterInstance

    from covid_assets.datasets.operations import RETRY_REASON_TAG, TRANSIENT_SOURCE_ERROR
    from covid_assets_tests.helpers import environment, failure_message
    from covid_assets_tests.support import FakeSocrata, Fault

    rows = pd_rows()[:300]
    retry_tags = {"dagster/max_retries", "dagster/retry_on_asset_or_op_failure", RETRY_REASON_TAG}
    with DagsterInstance.ephemeral() as instance, FakeSocrata(rows, dataset_id="9mfq-cb36") as server:
        source = {base_url_env("cdc_cases_deaths_by_state"): server.base_url}
        server.faults.append(Fault.error(503, times=1000))
        failed = materialize_cdc(warehouse_url, instance, source=source)
        assert not failed.success and "HTTP 503" in failure_message(failed)
        tags = instance.get_run_by_id(failed.run_id).tags
        assert (tags.get("dagster/max_retries"), tags.get("dagster/retry_on_asset_or_op_failure"), tags.get(RETRY_REASON_TAG)) == (
            "1", "true", TRANSIENT_SOURCE_ERROR
        )  # fmt: skip
        server.faults.clear()
        asked: list[float] = []
        server.on_request = lambda target, params: asked.append(time.monotonic())
        started = time.monotonic()
        with environment(COVID_RETRY_DELAY_S="1.5"):
            retried = materialize_cdc(warehouse_url, instance, source=source, tags={"dagster/retry_number": "1", RETRY_REASON_TAG: TRANSIENT_SOURCE_ERROR})
        assert retried.success, failure_message(retried)
        assert asked[0] - started >= 1.5, asked[0] - started
        server.set_rows(rows[:100])  # a shrinking source: refused, and never retried
        refused = materialize_cdc(warehouse_url, instance, source=source)
        assert not refused.success and "allow_shrink" in failure_message(refused)
        assert not retry_tags & set(instance.get_run_by_id(refused.run_id).tags)


def cdc_figures(connection, spec) -> dict:
    """A declared figures function (see test_a_load_reports_what_it_fetched_changed_and_counted)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(DISTINCT state) FROM {spec.base.qualified_name}")
        return {"jurisdictions": int(cursor.fetchone()[0])}


@needs_loader
def test_a_load_reports_what_it_fetched_changed_and_counted(warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetch costs and extras on the raw table, columns added to an old table, the declared figures of the base table."""
    import pandas as pd
    import psycopg
    from dagster import materialize

    from covid_assets.datasets.component import dataset_definitions
    from covid_assets.sources.socrata import SocrataSource
    from covid_assets.storage.postgres_io import warehouse_resources
    from covid_assets_tests.helpers import deployment

    attributes = {**cdc_attributes(), "figures": "covid_assets_tests.test_datasets_component:cdc_figures"}
    attributes["raw"] = {**attributes["raw"], "group": "landing"}
    spec = DatasetDeclaration.model_validate(attributes).to_spec(CDC_YAML)
    with psycopg.connect(warehouse_url) as conn:  # a raw table from before extra_columns, with a column no longer written
        conn.execute("CREATE SCHEMA cdc_raw")
        conn.execute("CREATE TABLE cdc_raw.raw_cases_deaths_by_state (submission_date TEXT, state TEXT, old_column TEXT)")
    defs = dataset_definitions(spec)
    assert {asset_spec.key: asset_spec.group_name for assets_def in defs.assets for asset_spec in assets_def.specs} == {
        SOURCE: "cdc_cases_deaths", RAW: "landing", BASE: "cdc_cases_deaths"
    }
    with deployment(warehouse_url, SOCRATA_OFFLINE="1"):
        result = materialize(list(defs.assets), resources={**warehouse_resources(), "socrata": SocrataSource()})
    assert result.success
    metadata = {e.asset_key: {k: v.value for k, v in e.materialization.metadata.items()} for e in result.get_asset_materialization_events()}
    raw, base = metadata[RAW], metadata[BASE]
    assert raw["fetch_bytes"] == CDC_EXPORT.stat().st_size and raw["fetch_pages"] >= 1 and (raw["fetch_requests"], raw["fetch_retries"]) == (0, 0)
    assert raw["extra_columns"] == "none"
    assert raw["columns_added"][:2] == ["tot_cases", "conf_cases"] and raw["columns_no_longer_written"] == ["old_column"]
    assert base["jurisdictions"] == pd.read_csv(CDC_EXPORT, dtype=str).state.nunique()


def pd_rows() -> list[dict[str, str]]:
    import pandas as pd

    return pd.read_csv(CDC_EXPORT, dtype=str, keep_default_na=False).to_dict("records")


def test_each_declared_check_counts_the_rows_that_break_it(warehouse_url: str) -> None:
    """The checks' SQL on a base table holding one offending row per check (and one good row)."""
    import psycopg

    from covid_assets.datasets.component import evaluate
    from covid_assets.storage.warehouse import WarehouseResource
    from covid_assets_tests.helpers import deployment

    spec = load_declaration(CDC_YAML)
    columns = ", ".join(f"{c.name} {c.type}" for c in spec.base.columns)
    good = {"submission_date": "2021-01-01", "state": "AL", "tot_cases": 5, "new_case": 1, "tot_death": 1, "new_death": 0,
            "created_at": "2021-01-02", "consent_cases": "Agree"}
    bad = [
        {**good, "state": "AK"},  # a duplicate of the key below
        {**good, "state": "AK"},
        {**good, "state": None},  # null key
        {**good, "state": "AZ", "tot_death": None},  # not_null
        {**good, "state": "CA", "consent_cases": "maybe"},  # allowed_values
        {**good, "state": "CO", "tot_cases": -1},  # ranges
        {**good, "state": "CT", "submission_date": "2019-12-31"},  # date_window
    ]
    with psycopg.connect(warehouse_url) as conn:
        conn.execute("CREATE SCHEMA cdc")
        conn.execute(f"CREATE TABLE cdc.cases_deaths_by_state ({columns})")
        for row in [good, *bad]:
            conn.execute(
                f"INSERT INTO cdc.cases_deaths_by_state ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values())
            )
    with deployment(warehouse_url):
        results = {q.name: evaluate(BASE, q, WarehouseResource()) for q in check_queries(spec)}
    assert not any(result.passed for result in results.values())
    counts = {name: {k: v.value for k, v in result.metadata.items() if v.value} for name, result in results.items()}
    assert counts == {
        "primary_key": {"duplicate_keys": 1, "null_keys": 1},
        "not_null": {"tot_death_violations": 1},
        "allowed_values": {"consent_cases_violations": 1},
        "ranges": {"tot_cases_violations": 1},
        "date_window": {"submission_date_violations": 1},
    }


def test_the_key_check_trusts_only_a_primary_key_on_exactly_the_key(warehouse_url: str) -> None:
    """A primary key on the declared key makes repeats impossible, so the check reads the catalog;
    a primary key on other columns (here the key plus one more) does not, and the rows are counted."""
    import psycopg

    from covid_assets.datasets.component import evaluate
    from covid_assets.storage.warehouse import WarehouseResource
    from covid_assets_tests.helpers import deployment

    spec = load_declaration(CDC_YAML)
    key_check = next(q for q in check_queries(spec) if q.name == "primary_key")
    columns = ", ".join(f"{c.name} {c.type}" for c in spec.base.columns)

    def key_check_with(primary_key: list[str]) -> dict[str, int]:
        with psycopg.connect(warehouse_url) as conn:
            conn.execute("DROP SCHEMA IF EXISTS cdc CASCADE")
            conn.execute("CREATE SCHEMA cdc")
            conn.execute(f"CREATE TABLE cdc.cases_deaths_by_state ({columns}, PRIMARY KEY ({', '.join(primary_key)}))")
            for new_case in (1, 2):  # the same (submission_date, state) twice when the constraint allows it
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO cdc.cases_deaths_by_state (submission_date, state, new_case) VALUES ('2021-01-01', 'AL', %s)", [new_case])
                except psycopg.errors.UniqueViolation:
                    pass
        with deployment(warehouse_url):
            result = evaluate(BASE, key_check, WarehouseResource())
        return {k: v.value for k, v in result.metadata.items()}

    assert key_check_with(list(spec.base.key)) == {"duplicate_keys": 0, "null_keys": 0}
    assert key_check_with([*spec.base.key, "new_case"]) == {"duplicate_keys": 1, "null_keys": 0}


@pytest.mark.parametrize("names", [{"primary_key": "history_matches_base"}, {"not_null": "primary_key"}, {"ranges": "row_count_matches_load"}])
def test_a_check_name_another_check_has_is_refused(names: dict[str, str]) -> None:
    """Checks are keyed by name, so two checks with one name would leave one of them out unseen."""
    attributes = cdc_attributes()
    attributes["checks"] = {**attributes["checks"], "names": names}
    spec = DatasetDeclaration.model_validate(attributes).to_spec(CDC_YAML)
    with pytest.raises(DeclarationError, match=f"checks.names: {next(iter(names.values()))} would name two checks"):
        base_checks(spec)
