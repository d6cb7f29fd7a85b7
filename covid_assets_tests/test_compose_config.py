"""docker-compose.yml, Dockerfile, .env.example, dagster.yaml and workspace.yaml, read together.

No Docker here, so the Compose stack cannot be started; this test catches, statically, what a user
would hit on `docker compose up`: a variable a file reads that nothing provides, a credential that
does not match the database it is meant for, a host or port nobody serves, a service started before
what it needs is healthy, a port published on every interface, a secret written into a file. And what
an operator might not notice: one role doing two jobs (Dagster's storage, the pipeline, analysts, the
superuser), a reader that cannot read tables created later or can write, a service that starts with
the example passwords, an image whose dependency versions are not pinned.

`check_deployment(files)` takes the paths, so the second half of this module breaks each rule in a
copy of the files and makes sure the checker notices.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from psycopg import sql

from covid_assets.assets.tables import RAW_SCHEMA, SCHEMA
from covid_assets_tests.helpers import SNAPSHOT, TABLES, create_database, deployment_instance, drop_database, from_file, materialize_all

REPO = Path(__file__).parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}
# Set by the official postgres image itself, so init scripts may read them without Compose's help.
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA", "POSTGRES_INITDB_ARGS", "PGUSER", "PGPORT"}
# The code location starts an embedded Postgres when it gets no warehouse: inside a container that would
# be a warehouse that silently disappears with the container. Either way of naming it will do.
WAREHOUSE_SETTINGS = (("COVID_DB_URL",), ("COVID_DB_HOST", "COVID_DB_PORT", "COVID_DB_NAME", "COVID_DB_USER", "COVID_DB_PASSWORD"))
WAREHOUSE_SCHEMAS = (RAW_SCHEMA, SCHEMA)
# What analysts' read-only role may be granted.
READ_PRIVILEGES = {"SELECT", "USAGE", "CONNECT"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$", re.IGNORECASE)
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# How the code names the variables it reads (string literals): the project's prefixes, and the UI link base.
PROJECT_VARIABLE = re.compile(r"[\"']((?:COVID|SOCRATA|ALERT)_[A-Z0-9_]+|DAGSTER_UI_URL)[\"']")
SHELL_VARIABLE = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)")


@dataclass(frozen=True)
class DeploymentFiles:
    compose: Path
    dockerfile: Path
    env_example: Path
    dagster_yaml: Path
    workspace: Path
    instance_storage: Path | None = None  # the deployment's storage, appended to dagster.yaml by the image
    gitignore: Path | None = None
    dockerignore: Path | None = None
    code_dir: Path | None = None  # the Python package whose environment variables the code server must get
    pyproject: Path | None = None
    constraints: Path | None = None  # the versions the Dockerfile installs

    @classmethod
    def in_directory(cls, root: Path) -> DeploymentFiles:
        return cls(
            compose=root / "docker-compose.yml",
            dockerfile=root / "Dockerfile",
            env_example=root / ".env.example",
            dagster_yaml=root / "dagster.yaml",
            workspace=root / "workspace.yaml",
            instance_storage=root / "docker" / "dagster-storage.yaml",
            gitignore=root / ".gitignore",
            dockerignore=root / ".dockerignore",
            code_dir=root / "covid_assets",
            pyproject=root / "pyproject.toml",
            constraints=root / "docker" / "constraints.txt",
        )


# --------------------------------------------------------------------------- reading the files


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(variables set, variables only mentioned in comments as `# NAME=...`), as Compose reads a .env file."""
    values: dict[str, str] = {}
    documented: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if match := re.match(r"#\s*([A-Z_][A-Z0-9_]*)=", line):
            documented.add(match.group(1))
            continue
        if not line or line.startswith("#"):
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2:
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        values[name.strip()] = value
    return values, documented


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # None, "-", ":-", "?", ":?", "+", ":+"
    where: str


def interpolate(value: Any, env: dict[str, str], where: str, references: list[Reference]) -> Any:
    """Compose's variable substitution over every string of the parsed file (keys are left alone)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env, f"{where}.{key}", references) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, f"{where}[{index}]", references) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        references.append(Reference(name, op, where))
        current = env.get(name)
        if op in (":-", ":?"):
            return current if current else ("" if op == ":?" else arg)
        if op in ("-", "?"):
            return current if current is not None else ("" if op == "?" else arg)
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return arg if current is not None else ""
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def service_environment(service: dict) -> dict[str, str | None]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = [item.partition("=") for item in environment]
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: (None if value is None else str(value)) for name, value in environment.items()}


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(argv: list[str], *flags: str) -> str | None:
    for index, part in enumerate(argv):
        if part in flags and index + 1 < len(argv):
            return argv[index + 1]
        for flag in flags:
            if flag.startswith("--") and part.startswith(flag + "="):
                return part.split("=", 1)[1]
    return None


def env_references(config: Any) -> dict[str, str]:
    """`{env: NAME}` values of a Dagster config file, by dotted path."""
    found: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if set(node) == {"env"} and isinstance(node["env"], str):
                found[path] = node["env"]
                return
            for key, item in node.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")

    walk(config, "")
    return found


@dataclass
class Dockerfile:
    env: dict[str, str]
    workdir: str
    copies: dict[str, str]  # source file name -> destination path in the image
    sources: dict[str, str]  # destination path in the image -> source path in the build context
    runs: list[str]
    entrypoint: list[str]


def read_dockerfile(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    workdir = "/"
    copies: dict[str, str] = {}
    sources: dict[str, str] = {}
    runs: list[str] = []
    entrypoint: list[str] = []

    def expand(value: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), value.strip("\"'"))

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ENV":
            parts = shlex.split(rest)
            if parts and "=" not in parts[0]:
                env[parts[0]] = expand(" ".join(parts[1:]))
            else:
                for part in parts:
                    name, _, value = part.partition("=")
                    env[name] = expand(value)
        elif instruction == "WORKDIR":
            workdir = str(Path(workdir) / expand(rest.strip()))
        elif instruction in ("COPY", "ADD"):
            parts = [part for part in shlex.split(rest) if not part.startswith("--")]
            destination = expand(parts[-1])
            into_directory = destination.endswith("/") or len(parts) > 2
            if not destination.startswith("/"):
                destination = str(Path(workdir) / destination)
            for source in parts[:-1]:
                name = Path(source).name
                copies[name] = str(Path(destination) / name) if into_directory else destination
                sources[copies[name]] = source
        elif instruction == "RUN":
            runs.append(rest)
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
    return Dockerfile(env, workdir, copies, sources, runs, entrypoint)


def installed_instance(files: DeploymentFiles) -> str:
    """dagster.yaml as the image installs it: with the deployment's storage appended."""
    if files.instance_storage is None:
        return files.dagster_yaml.read_text()
    return deployment_instance(files.dagster_yaml, files.instance_storage)


def appends_storage(dockerfile: Dockerfile, dagster_home: str, storage_name: str) -> bool:
    """The storage file is copied into DAGSTER_HOME and a RUN appends it to dagster.yaml there."""
    home = dagster_home.rstrip("/")
    copied = dockerfile.copies.get(storage_name)
    return copied == f"{home}/{storage_name}" and any(
        re.search(rf"cat\s+{re.escape(copied)}\s*>>\s*{re.escape(home)}/dagster\.yaml", run) for run in dockerfile.runs
    )


def ignores(ignore_file: Path, name: str) -> bool:
    """Whether a .gitignore/.dockerignore ignores `name` at the top of the tree (last match wins)."""
    ignored = False
    for line in ignore_file.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").lstrip("/").removeprefix("**/").rstrip("/")
        if fnmatch.fnmatchcase(name, pattern):
            ignored = not negated
    return ignored


# --------------------------------------------------------------------------- the roles an init script sets up

IDENT = r'("[^"]*"|[\w$]+)'


def unquoted(name: str) -> str:
    return name.strip().strip('"')


def sql_names(text: str) -> list[str]:
    return [unquoted(part) for part in text.split(",")]


def privilege_set(text: str) -> set[str]:
    aliases = {"TEMP": "TEMPORARY", "ALL PRIVILEGES": "ALL"}
    return {aliases.get(name.upper(), name.upper()) for name in sql_names(text)}


@dataclass(frozen=True)
class Grant:
    privileges: set[str]
    on: str  # e.g. "DATABASE", "SCHEMA", "TABLES (default privileges)"; "" for a role membership
    objects: list[str] | None  # None: every schema (default privileges without IN SCHEMA)
    grantees: list[str]
    owner: str | None = None  # default privileges: for objects this role creates


@dataclass
class RoleSetup:
    """Roles, owners and grants of an init script's SQL (its psql variables already replaced)."""

    passwords: dict[str, str | None]
    database_owners: dict[str, str]
    schema_owners: dict[str, str]
    grants: list[Grant]

    def privileges(self, role: str, on: str, name: str | None) -> set[str]:
        found: set[str] = set()
        for grant in self.grants:
            if role in grant.grantees and grant.on == on and name in (grant.objects or []):
                found |= grant.privileges
        return found


def read_role_setup(script: str, env: dict[str, str | None]) -> RoleSetup:
    """The SQL fed to psql in heredocs, `:"var"`/`:'var'` replaced by the values of the shell variables
    they are set from (`-v var="$NAME"`), read statement by statement."""
    superuser = env.get("POSTGRES_USER") or "postgres"
    psql_vars = dict(re.findall(r"-v\s+(\w+)=\"?\$\{?(\w+)\}?\"?", script))
    body = "\n".join(text for _, text in re.findall(r"<<-?\s*'?(\w+)'?\n(.*?)\n\1\n", script, re.DOTALL))
    body = re.sub(r":([\"'])(\w+)\1", lambda m: m.group(1) + str(env.get(psql_vars.get(m.group(2), "")) or "") + m.group(1), body)
    body = re.sub(r"--[^\n]*|^\\\w+[^\n]*$", ";", body, flags=re.MULTILINE)
    setup = RoleSetup({superuser: env.get("POSTGRES_PASSWORD")}, {}, {}, [])
    setup.database_owners[env.get("POSTGRES_DB") or superuser] = superuser
    for statement in (" ".join(part.split()) for part in body.split(";")):
        if match := re.fullmatch(rf"CREATE (?:ROLE|USER) {IDENT}(.*)", statement, re.IGNORECASE):
            password = re.search(r"PASSWORD '([^']*)'", match.group(2))
            setup.passwords[unquoted(match.group(1))] = password.group(1) if password else None
        elif match := re.fullmatch(rf"CREATE DATABASE {IDENT}(?: (?:WITH )?OWNER =? ?{IDENT})?.*", statement, re.IGNORECASE):
            setup.database_owners[unquoted(match.group(1))] = unquoted(match.group(2) or superuser)
        elif match := re.fullmatch(rf"ALTER DATABASE {IDENT} OWNER TO {IDENT}", statement, re.IGNORECASE):
            setup.database_owners[unquoted(match.group(1))] = unquoted(match.group(2))
        elif match := re.fullmatch(rf"CREATE SCHEMA (?:IF NOT EXISTS )?{IDENT}(?: AUTHORIZATION {IDENT})?.*", statement, re.IGNORECASE):
            setup.schema_owners[unquoted(match.group(1))] = unquoted(match.group(2) or superuser)
        elif match := re.fullmatch(r"GRANT (.+?)(?: ON (ALL TABLES IN SCHEMA|DATABASE|SCHEMA|TABLE)? ?(.+?))? TO (.+?)(?: WITH .*)?", statement, re.IGNORECASE):
            what, kind, objects, grantees = match.groups()
            privileges, on = (privilege_set(what), (kind or "TABLE").upper()) if objects else ({f"membership in {', '.join(sql_names(what))}"}, "")
            setup.grants.append(Grant(privileges, on, sql_names(objects or ""), sql_names(grantees)))
        elif match := re.fullmatch(
            rf"ALTER DEFAULT PRIVILEGES(?: FOR (?:ROLE|USER) {IDENT})?(?: IN SCHEMA (.+?))? GRANT (.+?) ON (\w+) TO (.+?)(?: WITH .*)?", statement, re.IGNORECASE
        ):
            owner, schemas, what, kind, grantees = match.groups()
            setup.grants.append(
                Grant(privilege_set(what), f"{kind.upper()} (default privileges)", sql_names(schemas) if schemas else None,
                      sql_names(grantees), unquoted(owner or superuser))
            )  # fmt: skip
    return setup


def check_roles(setup: RoleSetup, superuser: str, logins: dict[str, tuple[str, str | None]], where: str) -> list[str]:
    """One role per job (Dagster's storage, the pipeline, analysts), none of them the superuser; each
    with what its job needs and no more. `logins`: job -> (role, database) as the services log in."""
    problems: list[str] = []
    storage, dagster_db = logins.get("Dagster's storage", (None, None))
    pipeline, warehouse_db = logins.get("the pipeline", (None, None))
    reads_later = [g for g in setup.grants if g.on == "TABLES (default privileges)" and "SELECT" in g.privileges]
    readers = sorted({role for grant in reads_later for role in grant.grantees})
    jobs = [(job, role) for job, (role, _) in logins.items()] + [("analysts' read-only role", role) for role in readers]
    for index, (job, role) in enumerate(jobs):
        if role == superuser:
            problems.append(f"{where}: {job} uses the superuser {role!r}; give it a role of its own, created by the init script")
        for other, other_role in jobs[index + 1 :]:
            if role is not None and role == other_role:
                problems.append(f"{where}: {job} and {other} share the role {role!r}; give each its own")
    if storage is not None:
        if dagster_db is not None and setup.database_owners.get(dagster_db) != storage:
            problems.append(
                f"{where}: Dagster's database {dagster_db!r} is owned by {setup.database_owners.get(dagster_db)!r}, "
                f"not by the role Dagster logs in as ({storage!r})"
            )
        owned = sorted({f"database {db}" for db, owner in setup.database_owners.items() if owner == storage and db != dagster_db}
                       | {f"schema {schema}" for schema, owner in setup.schema_owners.items() if owner == storage})  # fmt: skip
        if owned:
            problems.append(f"{where}: Dagster's storage role {storage!r} also owns {', '.join(owned)}; it should own Dagster's database only")
    if pipeline is not None:
        for schema in WAREHOUSE_SCHEMAS:
            if setup.schema_owners.get(schema) != pipeline:
                problems.append(
                    f"{where}: the init script does not create schema {schema} owned by the pipeline's role {pipeline!r} "
                    f"(CREATE SCHEMA {schema} AUTHORIZATION ...)"
                )
        lacking = {"CONNECT", "CREATE", "TEMPORARY"} - setup.privileges(pipeline, "DATABASE", warehouse_db)
        if setup.database_owners.get(warehouse_db) != pipeline and lacking:
            problems.append(
                f"{where}: the pipeline's role {pipeline!r} lacks {', '.join(sorted(lacking))} on the warehouse database {warehouse_db!r} "
                "(a run creates its schemas if missing and stages rows in temporary tables)"
            )
    if not readers:
        problems.append(
            f"{where}: no read-only role for analysts that also reads tables created later "
            "(ALTER DEFAULT PRIVILEGES FOR ROLE <pipeline> IN SCHEMA ... GRANT SELECT ON TABLES TO <reader>)"
        )
    for reader in readers:
        for schema in WAREHOUSE_SCHEMAS:
            if not any(reader in g.grantees and g.owner == pipeline and (g.objects is None or schema in g.objects) for g in reads_later):
                problems.append(
                    f"{where}: {reader!r} would not read the tables the pipeline ({pipeline!r}) creates later in {schema} "
                    f"(ALTER DEFAULT PRIVILEGES FOR ROLE {pipeline} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {reader})"
                )
            if "USAGE" not in setup.privileges(reader, "SCHEMA", schema):
                problems.append(f"{where}: analysts' role {reader!r} has no USAGE on schema {schema}, so it sees none of its tables")
        if "CONNECT" not in setup.privileges(reader, "DATABASE", warehouse_db):
            problems.append(f"{where}: analysts' role {reader!r} has no CONNECT on the warehouse database {warehouse_db!r}")
        extra = {p for g in setup.grants if reader in g.grantees for p in g.privileges} - READ_PRIVILEGES
        if extra:
            problems.append(f"{where}: analysts' read-only role {reader!r} is granted {', '.join(sorted(extra))}; it may only read")
    return problems


# --------------------------------------------------------------------------- entrypoints and the image's versions


@functools.lru_cache(maxsize=None)
def run_entrypoint(script: str, env: tuple[tuple[str, str], ...]) -> subprocess.CompletedProcess:
    """`sh script echo started` in `env` (cached: every copy of the files runs the same scripts)."""
    return subprocess.run(["sh", "-c", script, "sh", "echo", "started"], env={"PATH": os.environ["PATH"], **dict(env)}, capture_output=True, text=True)


def optional_credential(value: str, dotenv: dict[str, str]) -> bool:
    """`${NAME:-}` for a credential .env.example leaves empty: the feature it unlocks (an alert channel)
    is off until it is set, so there is no example value to refuse and no default to fall back on."""
    match = re.fullmatch(r"\$\{(\w+):-\}", value)
    return match is not None and dotenv.get(match.group(1)) == ""


def check_example_passwords(service: str, env: dict[str, str | None], entrypoint: list[str], scripts: dict[str, Path]) -> list[str]:
    """Runs the service's entrypoint script with each password at its .env.example value (the others
    real): it must refuse, naming the variable, and with real passwords run the service's command."""
    # An optional credential (empty in .env.example, its feature off until set) has no example to refuse.
    passwords = sorted(name for name in env if name.endswith("PASSWORD") and env[name])
    script = next((scripts[part] for part in entrypoint if part in scripts and scripts[part].is_file()), None)
    if not passwords:
        return []
    if script is None:
        return [f"service {service} starts even with .env.example's passwords: its entrypoint ({' '.join(entrypoint) or 'the image default'}) refuses none"]
    problems = []
    real = {name: "a-password-of-your-own" for name in passwords}

    def run(values: dict[str, str]) -> subprocess.CompletedProcess:
        return run_entrypoint(script.read_text(), tuple(sorted(values.items())))

    for name in passwords:
        refused = run({**real, name: env[name] or ""})
        if refused.returncode == 0 or name not in refused.stderr:
            problems.append(f"service {service} starts with {name}={env[name]!r}, the example of .env.example (its entrypoint {script.name} lets it through)")
    if run(real).stdout.strip() != "started":
        problems.append(f"service {service}: its entrypoint {script.name} does not run the service's command with passwords of your own")
    return problems


def check_constraints(files: DeploymentFiles, dockerfile: Dockerfile) -> list[str]:
    """The image installs pinned versions: every runtime dependency of pyproject.toml pinned (==) in
    the constraints file, each pin allowed by pyproject.toml, and the Dockerfile installing with it."""
    assert files.constraints is not None and files.pyproject is not None
    problems = []
    where = files.constraints.relative_to(files.compose.parent)
    copied = any(source.endswith(str(where)) for source in dockerfile.sources.values())
    constrained = any(re.search(rf"pip install .*(-c|--constraint)[ =]\S*{re.escape(files.constraints.name)}", run) for run in dockerfile.runs)
    if not (copied and constrained):
        problems.append(f"Dockerfile installs the dependencies without {where} (pip install -c): each build would resolve them afresh")
    if not files.constraints.is_file():
        return [*problems, f"{where} is missing (docker/refresh-constraints.sh writes it)"]
    pins = {canonicalize_name(name): version for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", files.constraints.read_text(), re.MULTILINE)}
    for dependency in tomllib.loads(files.pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(dependency)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{where} does not pin {requirement.name}, a runtime dependency (refresh it: docker/refresh-constraints.sh)")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"{where} pins {requirement.name}=={pin}, which pyproject.toml's {dependency!r} excludes (refresh it: docker/refresh-constraints.sh)")
    return problems


# --------------------------------------------------------------------------- the checker


def check_deployment(files: DeploymentFiles) -> list[str]:
    """Every inconsistency found, as sentences a user can act on; [] when the files agree."""
    problems: list[str] = []
    dotenv, documented = read_env_file(files.env_example)
    references: list[Reference] = []
    raw_compose = yaml.safe_load(files.compose.read_text())
    compose = interpolate(raw_compose, dotenv, "docker-compose.yml", references)
    services: dict[str, dict] = compose.get("services") or {}
    raw_services: dict[str, dict] = raw_compose.get("services") or {}
    dagster_config = yaml.safe_load(installed_instance(files)) or {}
    workspace = yaml.safe_load(files.workspace.read_text()) or {}
    dockerfile = read_dockerfile(files.dockerfile)
    envs = {name: service_environment(service) for name, service in services.items()}
    commands = {name: command_of(service) for name, service in services.items()}

    # .env.example <-> docker-compose.yml
    missing: dict[str, list[str]] = {}
    empty: dict[str, list[str]] = {}
    for ref in references:
        if ref.op in (None, "?", ":?") and ref.name not in dotenv:
            missing.setdefault(ref.name, []).append(ref.where)
        elif ref.op == ":?" and not dotenv.get(ref.name):
            empty.setdefault(ref.name, []).append(ref.where)
    for name, where in missing.items():
        problems.append(f"docker-compose.yml reads ${{{name}}} without a default ({', '.join(where)}), but .env.example does not set {name}")
    for name, where in empty.items():
        problems.append(f"docker-compose.yml requires a non-empty {name} ({', '.join(where)}), but .env.example leaves it empty")
    used = {ref.name for ref in references}
    for name in sorted(set(dotenv) - used):
        problems.append(
            f".env.example sets {name}, which docker-compose.yml never reads: setting it in .env would change nothing "
            f"(pass it to a service, or comment it out as `# {name}=` if it is for other deployments)"
        )

    # The services that run the image of the Dockerfile, and so read dagster.yaml from DAGSTER_HOME.
    built_images = {service.get("image") for service in services.values() if service.get("build")}
    dagster_services = [
        name for name, service in services.items() if service.get("build") or (service.get("image") and service.get("image") in built_images)
    ]
    dagster_home = dockerfile.env.get("DAGSTER_HOME")
    if dagster_services and not dagster_home:
        problems.append("Dockerfile sets no DAGSTER_HOME, so the Dagster services would not find dagster.yaml")
    elif dagster_services and dockerfile.copies.get(files.dagster_yaml.name) != f"{dagster_home.rstrip('/')}/{files.dagster_yaml.name}":
        problems.append(f"Dockerfile does not copy {files.dagster_yaml.name} into DAGSTER_HOME ({dagster_home})")
    elif dagster_services and files.instance_storage is not None and not appends_storage(dockerfile, dagster_home, files.instance_storage.name):
        problems.append(
            f"Dockerfile does not append {files.instance_storage.name} to dagster.yaml in DAGSTER_HOME ({dagster_home}): "
            "the Dagster services would keep their runs in SQLite inside the container"
        )
    dagster_vars = env_references(dagster_config)
    for service in dagster_services:
        for path, name in dagster_vars.items():
            if name not in envs[service]:
                problems.append(
                    f"service {service} loads dagster.yaml, whose {path} reads {name}, but docker-compose.yml does not give {service} {name}"
                )

    # workspace.yaml -> the services that serve the code
    code_servers: list[str] = []
    for index, entry in enumerate(workspace.get("load_from") or []):
        grpc = entry.get("grpc_server") if isinstance(entry, dict) else None
        if grpc is None:
            problems.append(f"workspace.yaml entry {index} is not a grpc_server; in Compose the code runs in its own service")
            continue
        host, port = str(grpc.get("host", "localhost")), grpc.get("port")
        if host not in services:
            problems.append(f"workspace.yaml points at host {host}, which no service in docker-compose.yml is called")
            continue
        code_servers.append(host)
        served = option(commands[host], "-p", "--port")
        if served is None or str(port) != served:
            problems.append(f"workspace.yaml points at {host}:{port}, but service {host} serves port {served}")
        listens = option(commands[host], "-h", "--host") or "localhost"
        if listens not in ALL_INTERFACES:
            problems.append(f"service {host} listens on {listens} only, so the webserver and daemon cannot reach it (use -h 0.0.0.0)")
        health = services[host].get("healthcheck") or {}
        test = health.get("test") or []
        test_argv = shlex.split(test) if isinstance(test, str) else [str(part) for part in test]
        checked_port = option(test_argv, "-p", "--port")
        if checked_port is not None and checked_port != served:
            problems.append(f"service {host}'s healthcheck checks port {checked_port}, but it serves {served}")

    # The code location's own variables go to the code server, and each is in .env.example.
    code_vars: set[str] = set()
    if files.code_dir is not None:
        source = "\n".join(path.read_text() for path in files.code_dir.rglob("*.py"))
        candidates = set(dotenv) | documented | {name for names in WAREHOUSE_SETTINGS for name in names}
        code_vars = {name for name in candidates if re.search(rf"[\"']{name}[\"']", source)}
        for name in sorted(set(PROJECT_VARIABLE.findall(source)) - set(dotenv) - documented):
            problems.append(
                f"the code location reads {name}, which .env.example neither sets nor documents (as `# {name}=`)"
            )
    for service in code_servers:
        for name in sorted(code_vars & set(dotenv)):
            if name not in envs[service]:
                problems.append(f".env.example sets {name}, which the code location reads, but service {service} (the code server) does not get it")
        if not any(all(name in code_vars and envs[service].get(name) for name in names) for names in WAREHOUSE_SETTINGS):
            problems.append(
                f"service {service} gets no warehouse the code reads ({' or all of '.join(', '.join(names) for names in WAREHOUSE_SETTINGS)}): "
                "the code location would start an embedded Postgres inside the container"
            )

    # Credentials: what each service is told about a Postgres vs. what that Postgres is set up with.
    postgres_services = {name for name, service in services.items() if str(service.get("image", "")).split(":")[0].endswith("postgres")}
    created_databases: dict[str, set[str]] = {}
    init_script_vars: dict[str, set[str]] = {}
    role_setups: dict[str, RoleSetup] = {}
    for name in postgres_services:
        env = envs[name]
        databases = {env.get("POSTGRES_DB") or env.get("POSTGRES_USER") or "postgres"}
        init_texts: list[str] = []
        for volume in services[name].get("volumes") or []:
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if not target.startswith("/docker-entrypoint-initdb.d"):
                continue
            script = (files.compose.parent / source).resolve()
            if not script.is_file():
                problems.append(f"service {name} mounts {source} as an init script, but there is no such file")
                continue
            assigned = set(re.findall(r"^\s*([A-Z_][A-Z0-9_]*)=", script.read_text(), re.MULTILINE))
            read = set(SHELL_VARIABLE.findall(script.read_text())) - assigned
            init_texts.append(script.read_text())
            init_script_vars[name] = read
            for variable in sorted(read - set(env) - POSTGRES_IMAGE_ENV):
                problems.append(f"{source} (init script of service {name}) reads {variable}, which service {name} does not get")
            databases |= {env[variable] for variable in read if variable.endswith("_DB") and env.get(variable)}
        created_databases[name] = databases
        role_setups[name] = read_role_setup("\n".join(init_texts), env)

    storage = (dagster_config.get("storage") or {}).get("postgres") or {}
    fields = {key: value.get("env") for key, value in (storage.get("postgres_db") or {}).items() if isinstance(value, dict)}
    needs: dict[str, set[str]] = {name: set() for name in services}
    logins: dict[str, dict[str, tuple[str, str | None]]] = {name: {} for name in postgres_services}  # host -> job -> (role, database)

    def check_target(
        service: str, what: str, host: str | None, port: str | None, user: str | None, password: str | None, db: str | None, job: str | None = None
    ) -> None:
        if not host:
            return
        if host not in services:
            if "." not in host:
                problems.append(f"service {service}: {what} names host {host}, which no service in docker-compose.yml is called")
            return
        needs[service].add(host)
        if host not in postgres_services:
            return
        roles = role_setups[host].passwords
        if (port or "5432") != "5432":
            problems.append(f"service {service}: {what} uses port {port}, but {host} listens on 5432")
        if user is not None and user not in roles:
            problems.append(f"service {service}: {what} logs in as {user!r}, but {host} creates no such role ({sorted(roles)})")
        elif user is not None and password is not None and password != roles[user]:
            problems.append(f"service {service}: {what} uses a password other than the one {host} sets for {user!r}")
        if job is not None and user is not None:
            logins[host][job] = (user, db)
        if db is not None and db not in created_databases[host]:
            problems.append(f"service {service}: {what} uses database {db!r}, which {host} does not create ({sorted(created_databases[host])})")

    for service, env in envs.items():
        if service in dagster_services and fields:
            check_target(
                service, "dagster.yaml's Postgres storage",
                *(env.get(fields[key]) if fields.get(key) else None for key in ("hostname", "port", "username", "password", "db_name")),
                job="Dagster's storage",
            )  # fmt: skip
        if env.get("COVID_DB_HOST"):
            check_target(service, "COVID_DB_*", *(env.get(f"COVID_DB_{key}") for key in ("HOST", "PORT", "USER", "PASSWORD", "NAME")), job="the pipeline")
        for variable, value in env.items():
            if value and re.match(r"postgres(ql)?(\+\w+)?://", value):
                url = urlsplit(value)
                check_target(
                    service, variable, url.hostname, str(url.port) if url.port else None,
                    unquote(url.username) if url.username else None, unquote(url.password) if url.password is not None else None,
                    url.path.lstrip("/") or None, job="the pipeline" if variable == "COVID_DB_URL" else None,
                )  # fmt: skip

    # Roles: one per job, none the superuser, each allowed what its job needs (the init script).
    for name in postgres_services:
        superuser = envs[name].get("POSTGRES_USER") or "postgres"
        problems += check_roles(role_setups[name], superuser, logins[name], f"service {name}")

    # Start-up order: whatever a service connects to (Postgres, the code server) must be healthy first.
    for service in services:
        argv = commands[service]
        if option(argv, "-w", "--workspace") is not None:
            needs[service] |= set(code_servers)
        depends = services[service].get("depends_on") or {}
        if isinstance(depends, list):
            depends = {name: {"condition": "service_started"} for name in depends}
        for needed in sorted(needs[service] - {service}):
            condition = (depends.get(needed) or {}).get("condition", "service_started")
            if condition != "service_healthy":
                problems.append(
                    f"service {service} needs {needed} but is started before {needed} is healthy "
                    f"(depends_on: {needed}: condition: service_healthy)"
                )
            health = services[needed].get("healthcheck")
            if not health or health.get("disable"):
                problems.append(f"service {service} waits for {needed} to be healthy, but {needed} has no healthcheck")

    # Postgres: a health check that means "ready", and a volume where the image keeps its data.
    for name in postgres_services:
        test = (services[name].get("healthcheck") or {}).get("test") or []
        text = test if isinstance(test, str) else " ".join(map(str, test))
        if text and not re.search(r"(-h|--host)(\s+|=)[\"']?(127\.0\.0\.1|localhost|::1)", text):
            problems.append(
                f"service {name}'s healthcheck does not connect over TCP: on the first start the image runs its init scripts "
                "against a socket-only temporary server, so the check passes before the warehouse database exists (use -h 127.0.0.1)"
            )
        for variable in sorted(init_script_vars.get(name, set()) - POSTGRES_IMAGE_ENV):
            if variable.endswith("_DB") and variable not in text and envs[name].get(variable):
                problems.append(f"service {name}'s healthcheck does not check the database its init script creates (${variable})")
        tag = str(services[name]["image"]).partition(":")[2]
        major = re.match(r"(\d+)", tag)
        if not major:
            problems.append(f"service {name} uses image {services[name]['image']}: pin a major version (a new major cannot read old data)")
            continue
        expected = "/var/lib/postgresql" if int(major.group(1)) >= 18 else "/var/lib/postgresql/data"
        targets = [str(volume).split(":")[1] for volume in services[name].get("volumes") or [] if ":" in str(volume)]
        if expected not in targets:
            problems.append(f"service {name} ({services[name]['image']}) keeps its data under {expected}, but no volume is mounted there")

    # Published ports: loopback only, and onto the port the service listens on.
    for name, service in services.items():
        if service.get("network_mode") == "host":
            problems.append(f"service {name} uses network_mode: host, which exposes every port it opens on all interfaces")
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip, container = str(port.get("host_ip") or "0.0.0.0"), str(port.get("target"))
            else:
                spec = str(port).split("/")[0]
                match = re.fullmatch(r"(?:(?P<ip>\[[^\]]+\]|[^:]+):)?(?:(?P<host>[\d-]*):)?(?P<container>[\d-]+)", spec)
                if match is None:
                    problems.append(f"service {name} publishes {port!r}, which cannot be parsed")
                    continue
                if match.group("ip") and match.group("host") is None:  # "3000:3000" parses as ip=3000
                    host_ip = "0.0.0.0"
                else:
                    host_ip = match.group("ip") or "0.0.0.0"
                container = match.group("container")
            if host_ip not in LOOPBACK:
                problems.append(f"service {name} publishes port {port!r} on all interfaces ({host_ip}); bind it to 127.0.0.1")
            served = option(commands[name], "-p", "--port")
            if served is not None and container != served:
                problems.append(f"service {name} publishes container port {container}, but listens on {served}")
            listens = option(commands[name], "-h", "--host")
            if commands[name][:1] and commands[name][0].startswith("dagster") and (listens or "127.0.0.1") not in ALL_INTERFACES:
                problems.append(f"service {name} listens on {listens or '127.0.0.1'} inside its container, so its published port answers nothing")

    # Files a relative -w/--workspace needs inside the image.
    for name in dagster_services:
        workspace_arg = option(commands[name], "-w", "--workspace")
        if workspace_arg and not workspace_arg.startswith("/"):
            workdir = services[name].get("working_dir") or dockerfile.workdir
            if dockerfile.copies.get(Path(workspace_arg).name) != str(Path(workdir) / workspace_arg):
                problems.append(f"service {name} loads {workspace_arg} from {workdir}, but the Dockerfile does not copy it there")

    # Secrets: only from .env, never written into docker-compose.yml, never committed, never in the image.
    for name, service in raw_services.items():
        for variable, value in service_environment(service).items():
            if not value:
                continue
            secrets_pasted = [ref for ref in SHELL_VARIABLE.findall(value) if SECRET_KEY.search(ref)]
            if re.search(r"://[^/@:]+:(?!\$)[^@]+@", value):
                problems.append(f"service {name}: {variable} has a literal password in its URL; take it from .env")
            elif "://" in value and secrets_pasted:
                problems.append(
                    f"service {name}: {variable} pastes ${{{secrets_pasted[0]}}} into a URL unencoded, where a % @ / or # breaks it; "
                    "pass COVID_DB_HOST, COVID_DB_PORT, COVID_DB_NAME, COVID_DB_USER and COVID_DB_PASSWORD instead"
                )
            elif SECRET_KEY.search(variable) and "$" not in value:
                problems.append(f"service {name}: {variable} is written into docker-compose.yml; take it from .env")
            elif variable.endswith("PASSWORD") and not (re.fullmatch(r"\$\{\w+:\?[^}]*\}", value) or optional_credential(value, dotenv)):
                problems.append(f"service {name}: {variable} is {value!r}: take it from .env, required and without a default (${{NAME:?...}})")

    # Example passwords: every service with a password refuses to start with .env.example's.
    for name, service in services.items():
        mounts = {target.split(":")[0]: files.compose.parent / source for source, _, target in (str(v).partition(":") for v in service.get("volumes") or [])}
        scripts = {**mounts, **({path: files.compose.parent / source for path, source in dockerfile.sources.items()} if name in dagster_services else {})}
        entrypoint = service.get("entrypoint")
        if entrypoint is None:
            entrypoint = dockerfile.entrypoint if name in dagster_services else []
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(part) for part in entrypoint]
        problems += check_example_passwords(name, envs[name], entrypoint, scripts)
        if name in postgres_services and "entrypoint" in service:
            if "docker-entrypoint.sh" not in entrypoint:
                problems.append(f"service {name}'s entrypoint does not hand over to the image's docker-entrypoint.sh, which sets up the database")
            if not service.get("command"):
                problems.append(f"service {name} sets an entrypoint but no command: Compose then drops the image's command (postgres)")

    if files.constraints is not None and dagster_services:
        problems += check_constraints(files, dockerfile)

    if files.gitignore is not None:
        if not files.gitignore.exists() or not ignores(files.gitignore, ".env"):
            problems.append(".gitignore does not ignore .env, where the credentials are")
        elif ignores(files.gitignore, files.env_example.name):
            problems.append(f".gitignore ignores {files.env_example.name}, which must be committed")
    if files.dockerignore is not None and any(service.get("build") for service in services.values()):
        if not files.dockerignore.exists() or not ignores(files.dockerignore, ".env"):
            problems.append(".dockerignore does not exclude .env: docker build would send the credentials to the builder")
    return problems


# --------------------------------------------------------------------------- the committed files


def test_the_committed_deployment_files_agree() -> None:
    problems = check_deployment(DeploymentFiles.in_directory(REPO))
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_compose_will_run() -> None:
    """Guards the checker itself: the parsing above understood the committed files."""
    files = DeploymentFiles.in_directory(REPO)
    dotenv, _ = read_env_file(files.env_example)
    assert dotenv["COVID_SCHEDULE_CRON"] == "0 6 * * *"
    compose = interpolate(yaml.safe_load(files.compose.read_text()), dotenv, "", [])
    services = compose["services"]
    assert set(services) == {"postgres", "code-server", "webserver", "daemon"}
    assert service_environment(services["daemon"])["DAGSTER_PG_HOST"] == "postgres"
    warehouse = service_environment(services["code-server"])
    assert [warehouse[f"COVID_DB_{key}"] for key in ("HOST", "PORT", "NAME", "USER")] == ["postgres", "5432", "covid", "covid_pipeline"]
    roles = read_role_setup((REPO / "docker" / "postgres" / "init-warehouse.sh").read_text(), service_environment(services["postgres"]))
    assert roles.passwords == dict.fromkeys(("postgres", "dagster", "covid_pipeline", "covid_reader"), "change-me")
    assert roles.database_owners == {"dagster": "dagster", "covid": "postgres"} and roles.schema_owners == dict.fromkeys(WAREHOUSE_SCHEMAS, "covid_pipeline")
    assert Grant({"SELECT"}, "TABLES (default privileges)", list(WAREHOUSE_SCHEMAS), ["covid_reader"], "covid_pipeline") in roles.grants
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    assert env_references(yaml.safe_load(installed_instance(files)))["storage.postgres.postgres_db.password"] == "DAGSTER_PG_PASSWORD"
    image = read_dockerfile(files.dockerfile)
    assert image.env["DAGSTER_HOME"] == "/opt/dagster/dagster_home" == image.workdir
    assert image.copies["workspace.yaml"] == "/opt/dagster/dagster_home/workspace.yaml"
    assert image.sources["/opt/dagster/app/constraints.txt"] == "docker/constraints.txt"
    assert image.entrypoint == ["/bin/sh", "/usr/local/bin/refuse-example-passwords.sh"]


# --------------------------------------------------------------------------- the checker catches each mistake

# (file, text in the committed file, replacement, what the checker must say)
MISTAKES = {
    "webserver published on all interfaces": ("docker-compose.yml", '"127.0.0.1:3000:3000"', '"3000:3000"', "on all interfaces"),
    "webserver published on 0.0.0.0": ("docker-compose.yml", '"127.0.0.1:3000:3000"', '"0.0.0.0:3000:3000"', "on all interfaces (0.0.0.0)"),
    "published port is not the one served": ("docker-compose.yml", '"127.0.0.1:3000:3000"', '"127.0.0.1:3000:8080"', "listens on 3000"),
    "dagster.yaml variable not given to the services": (
        "docker-compose.yml", "  DAGSTER_PG_PASSWORD: ${DAGSTER_PG_PASSWORD:?set DAGSTER_PG_PASSWORD in .env}\n  DAGSTER_PG_DB", "  DAGSTER_PG_DB",
        "reads DAGSTER_PG_PASSWORD, but docker-compose.yml does not give daemon DAGSTER_PG_PASSWORD",
    ),
    "dagster.yaml reads a variable nobody sets": (
        "docker/dagster-storage.yaml", "env: DAGSTER_PG_DB", "env: DAGSTER_PG_DATABASE", "reads DAGSTER_PG_DATABASE, but docker-compose.yml does not give webserver",
    ),
    ".env.example lacks a required variable": (".env.example", "DAGSTER_PG_USER=dagster\n", "", ".env.example does not set DAGSTER_PG_USER"),
    ".env.example leaves a required variable empty": (".env.example", "DAGSTER_PG_PASSWORD=change-me", "DAGSTER_PG_PASSWORD=", "requires a non-empty DAGSTER_PG_PASSWORD"),
    ".env.example sets a variable Compose ignores": (".env.example", "WAREHOUSE_PG_DB=covid\n", "WAREHOUSE_PG_DB=covid\nCOVID_PGDATA=/data\n", "sets COVID_PGDATA, which docker-compose.yml never reads"),
    "a variable of the code left out of .env.example": (
        ".env.example", "COVID_RETRY_DELAY_S=300\n", "", "the code location reads COVID_RETRY_DELAY_S, which .env.example neither sets nor documents",
    ),
    "a required password made optional": (
        "docker-compose.yml", "  DAGSTER_PG_PASSWORD: ${DAGSTER_PG_PASSWORD:?set DAGSTER_PG_PASSWORD in .env}\n  DAGSTER_PG_DB",
        "  DAGSTER_PG_PASSWORD: ${DAGSTER_PG_PASSWORD:-}\n  DAGSTER_PG_DB", "DAGSTER_PG_PASSWORD is '${DAGSTER_PG_PASSWORD:-}': take it from .env, required",
    ),
    "the optional SMTP password given a default": (
        "docker-compose.yml", "${ALERT_SMTP_PASSWORD:-}", "${ALERT_SMTP_PASSWORD:-hunter2}", "ALERT_SMTP_PASSWORD is '${ALERT_SMTP_PASSWORD:-hunter2}'",
    ),
    "code server misses an alert variable": (
        "docker-compose.yml", "      ALERT_SMTP_HOST: ${ALERT_SMTP_HOST:-}\n", "",
        ".env.example sets ALERT_SMTP_HOST, which the code location reads, but service code-server (the code server) does not get it",
    ),
    "code server misses a variable of the code": (
        "docker-compose.yml", "      SOCRATA_APP_TOKEN: ${SOCRATA_APP_TOKEN:-}\n", "", ".env.example sets SOCRATA_APP_TOKEN, which the code location reads",
    ),
    "code server gets no warehouse": ("docker-compose.yml", "      COVID_DB_HOST: postgres\n", "", "gets no warehouse the code reads"),
    "warehouse names a database nobody creates": (
        "docker-compose.yml", "COVID_DB_NAME: ${WAREHOUSE_PG_DB:-covid}", "COVID_DB_NAME: warehouse", "uses database 'warehouse', which postgres does not create",
    ),
    "warehouse names an unknown host": ("docker-compose.yml", "COVID_DB_HOST: postgres", "COVID_DB_HOST: db", "names host db, which no service"),
    "warehouse logs in as a role nobody creates": (
        "docker-compose.yml", "      COVID_DB_USER: ${COVID_DB_USER:?set COVID_DB_USER in .env}\n      COVID_DB_PASSWORD: ${COVID_DB_PASSWORD:?set COVID_DB_PASSWORD in .env}\n      SOCRATA",
        "      COVID_DB_USER: pipeline\n      COVID_DB_PASSWORD: ${COVID_DB_PASSWORD:?set COVID_DB_PASSWORD in .env}\n      SOCRATA", "logs in as 'pipeline', but postgres creates no such role",
    ),
    "storage host is not a service": ("docker-compose.yml", "  DAGSTER_PG_HOST: postgres\n", "  DAGSTER_PG_HOST: localhost\n", "names host localhost"),
    "storage port is not Postgres's": ("docker-compose.yml", '  DAGSTER_PG_PORT: "5432"', '  DAGSTER_PG_PORT: "5433"', "uses port 5433"),
    "workspace host no service serves": ("workspace.yaml", "host: code-server", "host: code_server", "host code_server, which no service"),
    "workspace port no service serves": ("workspace.yaml", "port: 4000", "port: 4001", "points at code-server:4001, but service code-server serves port 4000"),
    "code server listens on loopback only": (
        "docker-compose.yml", '"code-server", "start", "-h", "0.0.0.0"', '"code-server", "start", "-h", "127.0.0.1"', "listens on 127.0.0.1 only",
    ),
    "code server healthcheck on the wrong port": ("docker-compose.yml", '"grpc-health-check", "-p", "4000"', '"grpc-health-check", "-p", "4001"', "checks port 4001"),
    "daemon started before the code server is healthy": (
        "docker-compose.yml", "      code-server:\n        condition: service_healthy\n    healthcheck:\n      test: [\"CMD\", \"dagster-daemon\"",
        "      code-server:\n        condition: service_started\n    healthcheck:\n      test: [\"CMD\", \"dagster-daemon\"",
        "service daemon needs code-server but is started before code-server is healthy",
    ),
    "webserver does not wait for Postgres": (
        "docker-compose.yml", "    ports:\n      - \"127.0.0.1:3000:3000\"\n    depends_on:\n      postgres:\n        condition: service_healthy\n",
        "    ports:\n      - \"127.0.0.1:3000:3000\"\n    depends_on:\n", "service webserver needs postgres but is started before postgres is healthy",
    ),
    "code server without a healthcheck": (
        "docker-compose.yml", '    healthcheck:\n      test: ["CMD", "dagster", "api", "grpc-health-check", "-p", "4000"]\n', "    healthcheck:\n      disable: true\n",
        "code-server has no healthcheck",
    ),
    "postgres healthcheck over the socket": ("docker-compose.yml", "psql -h 127.0.0.1 -U", "psql -U", "does not connect over TCP"),
    "postgres 18 volume at the old path": ("docker-compose.yml", "pgdata:/var/lib/postgresql\n", "pgdata:/var/lib/postgresql/data\n", "no volume is mounted there"),
    "postgres image not pinned": ("docker-compose.yml", "image: postgres:18", "image: postgres:latest", "pin a major version"),
    "init script reads a variable postgres does not get": (
        "docker-compose.yml", "      WAREHOUSE_PG_DB: ${WAREHOUSE_PG_DB:-covid}\n", "", "reads WAREHOUSE_PG_DB, which service postgres does not get",
    ),
    "init script missing": ("docker-compose.yml", "./docker/postgres/init-warehouse.sh:", "./docker/postgres/init.sh:", "there is no such file"),
    "password written into compose": (
        "docker-compose.yml", "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}", "POSTGRES_PASSWORD: hunter2",
        "POSTGRES_PASSWORD is written into docker-compose.yml",
    ),
    "password written into a URL": (
        "docker-compose.yml", "      COVID_DB_HOST: postgres\n", "      COVID_DB_URL: postgresql://covid_pipeline:hunter2@postgres:5432/covid\n",
        "COVID_DB_URL has a literal password in its URL",
    ),
    "password pasted into a URL": (
        "docker-compose.yml", "      COVID_DB_HOST: postgres\n",
        "      COVID_DB_URL: postgresql://${COVID_DB_USER}:${COVID_DB_PASSWORD}@postgres:5432/${WAREHOUSE_PG_DB:-covid}\n",
        "COVID_DB_URL pastes ${COVID_DB_PASSWORD} into a URL unencoded",
    ),
    "password with a default in compose": (
        "docker-compose.yml", "COVID_READER_PASSWORD: ${COVID_READER_PASSWORD:?set COVID_READER_PASSWORD in .env}",
        "COVID_READER_PASSWORD: ${COVID_READER_PASSWORD:-change-me}", "COVID_READER_PASSWORD is '${COVID_READER_PASSWORD:-change-me}': take it from .env",
    ),
    # Roles (docker/postgres/init-warehouse.sh)
    "pipeline logs in as Dagster's storage role": (
        "docker-compose.yml", "      COVID_DB_USER: ${COVID_DB_USER:?set COVID_DB_USER in .env}\n      COVID_DB_PASSWORD: ${COVID_DB_PASSWORD:?set COVID_DB_PASSWORD in .env}\n      SOCRATA",
        "      COVID_DB_USER: ${DAGSTER_PG_USER}\n      COVID_DB_PASSWORD: ${DAGSTER_PG_PASSWORD:?set DAGSTER_PG_PASSWORD in .env}\n      SOCRATA",
        "Dagster's storage and the pipeline share the role 'dagster'",
    ),
    "Dagster's storage is the superuser": (".env.example", "DAGSTER_PG_USER=dagster", "DAGSTER_PG_USER=postgres", "Dagster's storage uses the superuser 'postgres'"),
    "analysts read as the pipeline role": (
        ".env.example", "COVID_READER_USER=covid_reader", "COVID_READER_USER=covid_pipeline", "the pipeline and analysts' read-only role share the role 'covid_pipeline'",
    ),
    "Dagster's database owned by the superuser": (
        "docker/postgres/init-warehouse.sh", 'ALTER DATABASE :"dagster_db" OWNER TO :"dagster";\n', "", "Dagster's database 'dagster' is owned by 'postgres'",
    ),
    "Dagster's storage role owns a warehouse schema": (
        "docker/postgres/init-warehouse.sh", 'CREATE SCHEMA covid_19 AUTHORIZATION :"pipeline";', 'CREATE SCHEMA covid_19 AUTHORIZATION :"dagster";',
        "Dagster's storage role 'dagster' also owns schema covid_19",
    ),
    "warehouse schema owned by the superuser": (
        "docker/postgres/init-warehouse.sh", 'CREATE SCHEMA covid_19_raw AUTHORIZATION :"pipeline";', "CREATE SCHEMA covid_19_raw;",
        "does not create schema covid_19_raw owned by the pipeline's role 'covid_pipeline'",
    ),
    "pipeline cannot create schemas or temporary tables": (
        "docker/postgres/init-warehouse.sh", 'GRANT CONNECT, CREATE, TEMPORARY ON DATABASE :"warehouse" TO :"pipeline";', 'GRANT CONNECT ON DATABASE :"warehouse" TO :"pipeline";',
        "the pipeline's role 'covid_pipeline' lacks CREATE, TEMPORARY on the warehouse database 'covid'",
    ),
    "no reader of tables created later": (
        "docker/postgres/init-warehouse.sh", 'ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline" IN SCHEMA covid_19_raw, covid_19 GRANT SELECT ON TABLES TO :"reader";\n', "",
        "no read-only role for analysts",
    ),
    "reader's default privileges for tables of another role": (
        "docker/postgres/init-warehouse.sh", 'DEFAULT PRIVILEGES FOR ROLE :"pipeline"', 'DEFAULT PRIVILEGES FOR ROLE :"dagster"',
        "'covid_reader' would not read the tables the pipeline ('covid_pipeline') creates later in covid_19_raw",
    ),
    "reader's default privileges miss a schema": (
        "docker/postgres/init-warehouse.sh", "IN SCHEMA covid_19_raw, covid_19 GRANT", "IN SCHEMA covid_19 GRANT",
        "'covid_reader' would not read the tables the pipeline ('covid_pipeline') creates later in covid_19_raw",
    ),
    "reader without USAGE on a schema": (
        "docker/postgres/init-warehouse.sh", "GRANT USAGE ON SCHEMA covid_19_raw, covid_19 TO", "GRANT USAGE ON SCHEMA covid_19 TO",
        "'covid_reader' has no USAGE on schema covid_19_raw",
    ),
    "reader without CONNECT": (
        "docker/postgres/init-warehouse.sh", 'GRANT CONNECT ON DATABASE :"warehouse" TO :"reader";\n', "", "'covid_reader' has no CONNECT on the warehouse database 'covid'",
    ),
    "reader may write": (
        "docker/postgres/init-warehouse.sh", 'GRANT SELECT ON TABLES TO :"reader"', 'GRANT SELECT, INSERT ON TABLES TO :"reader"',
        "read-only role 'covid_reader' is granted INSERT",
    ),
    "reader is a member of the pipeline role": (
        "docker/postgres/init-warehouse.sh", 'GRANT CONNECT ON DATABASE :"warehouse" TO :"reader";', 'GRANT :"pipeline" TO :"reader";',
        "read-only role 'covid_reader' is granted membership in covid_pipeline",
    ),
    # Example passwords
    "postgres starts with the example passwords": (
        "docker-compose.yml", '    entrypoint: ["/bin/sh", "/usr/local/bin/refuse-example-passwords.sh", "docker-entrypoint.sh"]\n', "",
        "service postgres starts even with .env.example's passwords",
    ),
    "the Dagster image starts with the example passwords": (
        "Dockerfile", 'ENTRYPOINT ["/bin/sh", "/usr/local/bin/refuse-example-passwords.sh"]\n', "", "service code-server starts even with .env.example's passwords",
    ),
    "the entrypoint lets the example through": (
        "docker/refuse-example-passwords.sh", '[ "$value" = "change-me" ]', '[ "$value" = "changeme" ]',
        "service postgres starts with COVID_READER_PASSWORD='change-me', the example of .env.example",
    ),
    "an example password the stack does not refuse": (
        ".env.example", "COVID_DB_PASSWORD=change-me", "COVID_DB_PASSWORD=example-password", "service code-server starts with COVID_DB_PASSWORD='example-password'",
    ),
    "the entrypoint does not run the command": ("docker/refuse-example-passwords.sh", 'exec "$@"', "exit 0", "does not run the service's command"),
    "postgres entrypoint skips the image's own": (
        "docker-compose.yml", '"/usr/local/bin/refuse-example-passwords.sh", "docker-entrypoint.sh"]', '"/usr/local/bin/refuse-example-passwords.sh", "postgres"]',
        "does not hand over to the image's docker-entrypoint.sh",
    ),
    "postgres entrypoint without a command": ("docker-compose.yml", '    command: ["postgres"]\n', "", "Compose then drops the image's command"),
    # The image's versions
    "image installs without constraints": ("Dockerfile", "pip install -r requirements.txt -c constraints.txt", "pip install -r requirements.txt", "without docker/constraints.txt"),
    "constraints miss a runtime dependency": ("docker/constraints.txt", "\ntenacity==", "\n# tenacity==", "does not pin tenacity"),
    "constraints disagree with pyproject's dagster pin": (
        "docker/constraints.txt", "\ndagster==1.13.27\n", "\ndagster==1.13.26\n", "pins dagster==1.13.26, which pyproject.toml's 'dagster==1.13.27' excludes",
    ),
    "postgres healthcheck ignores the warehouse database": (
        "docker-compose.yml", '-d \\"$$WAREHOUSE_PG_DB\\"', '-d \\"$$POSTGRES_DB\\"', "does not check the database its init script creates",
    ),
    "webserver listens on loopback inside its container": (
        "docker-compose.yml", '"dagster-webserver", "-h", "0.0.0.0"', '"dagster-webserver", "-h", "127.0.0.1"', "so its published port answers nothing",
    ),
    "Dockerfile does not copy the workspace": ("Dockerfile", "COPY dagster.yaml workspace.yaml", "COPY dagster.yaml", "does not copy it there"),
    "Dockerfile does not add the deployment's storage": (
        "Dockerfile", "RUN cat /opt/dagster/dagster_home/dagster-storage.yaml >> /opt/dagster/dagster_home/dagster.yaml \\\n    && ",
        "RUN ", "does not append dagster-storage.yaml to dagster.yaml",
    ),
    "Dockerfile has no DAGSTER_HOME": ("Dockerfile", "    DAGSTER_HOME=/opt/dagster/dagster_home\n", "    PIP_ROOT_USER_ACTION=ignore\n", "sets no DAGSTER_HOME"),
    ".env committed": (".gitignore", "\n.env\n", "\n", ".gitignore does not ignore .env"),
    ".env sent to the builder": (".dockerignore", "\n.env\n", "\n", ".dockerignore does not exclude .env"),
}


@pytest.fixture
def deployment_copy(tmp_path: Path) -> Iterator[DeploymentFiles]:
    root = tmp_path / "repo"
    (root / "docker" / "postgres").mkdir(parents=True)
    for name in ("docker-compose.yml", "Dockerfile", ".env.example", "dagster.yaml", "workspace.yaml", ".gitignore", ".dockerignore", "pyproject.toml"):
        shutil.copyfile(REPO / name, root / name)
    for name in ("postgres/init-warehouse.sh", "refuse-example-passwords.sh", "constraints.txt", "dagster-storage.yaml"):
        shutil.copyfile(REPO / "docker" / name, root / "docker" / name)
    shutil.copytree(REPO / "covid_assets", root / "covid_assets", ignore=shutil.ignore_patterns("*.gz", "__pycache__"))
    yield DeploymentFiles.in_directory(root)


def test_an_untouched_copy_is_clean(deployment_copy: DeploymentFiles) -> None:
    assert check_deployment(deployment_copy) == []


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_the_checker_catches(mistake: str, deployment_copy: DeploymentFiles) -> None:
    file_name, old, new, expected = MISTAKES[mistake]
    path = deployment_copy.compose.parent / file_name
    text = path.read_text()
    assert text.count(old) == 1, f"{mistake}: {old!r} should occur once in {file_name} (did the file change?)"
    path.write_text(text.replace(old, new))
    problems = check_deployment(deployment_copy)
    assert any(expected in problem for problem in problems), f"{mistake}: expected {expected!r} in\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the init script on a real Postgres


def scram_verifies(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier of pg_authid is for `password` (RFC 7677; ASCII needs no SASLprep)."""
    method, iterations_salt, keys = verifier.split("$")
    iterations, salt = iterations_salt.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return method == "SCRAM-SHA-256" and hashlib.sha256(client_key).digest() == base64.b64decode(keys.split(":")[0])


@pytest.mark.slow
def test_the_init_script_gives_each_role_what_its_job_needs(postgres_server_url: str) -> None:
    """docker/postgres/init-warehouse.sh, run as the postgres image runs it, on a real server: then a
    full refresh as the pipeline's role, and each role tried at what it may and may not do. Role
    names get a suffix: roles belong to the whole cluster, which other tests share."""
    import pgserver

    suffix = uuid.uuid4().hex[:8]
    roles = {"DAGSTER_PG_USER": f"dagster_{suffix}", "COVID_DB_USER": f"pipeline_{suffix}", "COVID_READER_USER": f"reader_{suffix}"}
    passwords = {"DAGSTER_PG_PASSWORD": "d%@:/?#'x y", "COVID_DB_PASSWORD": "p@ss%2F'w", "COVID_READER_PASSWORD": 'r"e:a@d'}
    admin = psycopg.conninfo.conninfo_to_dict(postgres_server_url)
    dagster_db, _ = create_database(postgres_server_url, "dagster")  # the image creates POSTGRES_DB before its init scripts
    warehouse_db = f"covid_{suffix}"
    libpq = {f"PG{key.upper()}": str(value) for key, value in admin.items() if key in ("host", "port", "password", "sslmode")}
    env = {
        "PATH": f"{Path(pgserver.__file__).parent / 'pginstall' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **libpq, "POSTGRES_USER": str(admin.get("user") or "postgres"), "POSTGRES_DB": dagster_db, "WAREHOUSE_PG_DB": warehouse_db,
        **roles, **passwords,
    }  # fmt: skip

    def url(role: str, database: str) -> str:
        password = passwords[role.replace("_USER", "_PASSWORD")]
        return psycopg.conninfo.make_conninfo(postgres_server_url, user=roles[role], password=password, dbname=database)

    try:
        script = subprocess.run(["sh", str(REPO / "docker" / "postgres" / "init-warehouse.sh")], env=env, capture_output=True, text=True)
        assert script.returncode == 0, script.stderr
        with psycopg.connect(postgres_server_url) as conn:
            stored = dict(conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", (list(roles.values()),)).fetchall())
        for role, name in roles.items():
            assert scram_verifies(stored[name], passwords[role.replace("_USER", "_PASSWORD")]), f"{name}'s password is not {role}'s"

        # No COVID_DB_URL: the warehouse by parts, as Compose passes it; the run creates every table.
        parts = {"COVID_DB_HOST": admin.get("host"), "COVID_DB_PORT": admin.get("port"), "COVID_DB_NAME": warehouse_db}
        pipeline = {name: env[name] for name in ("COVID_DB_USER", "COVID_DB_PASSWORD")}
        result = materialize_all("", {**from_file(SNAPSHOT), **parts, **pipeline})
        assert result.success
        with psycopg.connect(url("COVID_READER_USER", warehouse_db)) as reader:
            for table in TABLES:
                assert reader.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0
            for statement in (f"INSERT INTO {TABLES[0]} DEFAULT VALUES", f"DELETE FROM {TABLES[1]}", "CREATE TABLE covid_19.mine (x int)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege), reader.transaction():
                    reader.execute(statement)
        with psycopg.connect(url("COVID_DB_USER", warehouse_db)) as pipeline, pytest.raises(psycopg.errors.InsufficientPrivilege):
            pipeline.execute("CREATE TABLE public.elsewhere (x int)")
        with psycopg.connect(url("DAGSTER_PG_USER", dagster_db)) as dagster:
            dagster.execute("CREATE TABLE runs_of_mine (x int)")  # dagster-postgres creates its tables in public
        for role, database in (("COVID_READER_USER", dagster_db), ("COVID_DB_USER", dagster_db), ("DAGSTER_PG_USER", warehouse_db)):
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                psycopg.connect(url(role, database)).close()
    finally:
        drop_database(postgres_server_url, warehouse_db)
        drop_database(postgres_server_url, dagster_db)
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            for name in roles.values():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- CI runs what the README says
def readme_quick_start_commands(readme: Path) -> dict[str, str]:
    """The Quick start's commands, by what their comment says they do ("the test suite" -> `./dev test`)."""
    section = readme.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = {}
    for line in filter(None, map(str.strip, block.splitlines())):
        command, _, comment = line.partition("#")
        commands[comment.strip()] = command.strip()
    return commands


def test_ci_runs_the_readme_test_command_and_installs_nothing_by_hand() -> None:
    """.ci/run ends in exactly the README's test command; before it, it only installs Chromium for the
    browser test (through apt-get, when missing): no pip, no venv, no database set up by hand."""
    test_command = next(command for said, command in readme_quick_start_commands(REPO / "README.md").items() if "test suite" in said)
    script = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip() and not line.strip().startswith("#")]
    assert script[-1] == f"exec {test_command}", script[-1]
    by_hand = [line for line in script[:-1] if re.search(r"\b(pip|venv|virtualenv|pgserver|initdb|pg_ctl|psql|dagster|dg|pytest)\b", line)]
    assert not by_hand, by_hand
