"""docker-compose.yml, Dockerfile, .env.example, dagster.yaml and workspace.yaml, read together.

No Docker here, so the Compose stack cannot be started; this test catches, statically, what a user
would hit on `docker compose up`: a variable a file reads that nothing provides, a credential that
does not match the database it is meant for, a host or port nobody serves, a service started before
what it needs is healthy, a port published on every interface, a secret written into a file.

`check_deployment(files)` takes the paths, so the second half of this module breaks each rule in a
copy of the files and makes sure the checker notices.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}
# Set by the official postgres image itself, so init scripts may read them without Compose's help.
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA", "POSTGRES_INITDB_ARGS", "PGUSER", "PGPORT"}
# The code location starts an embedded Postgres when this is missing: inside a container that would
# be a warehouse that silently disappears with the container.
REQUIRED_BY_CODE = ("COVID_DB_URL",)
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$", re.IGNORECASE)
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
SHELL_VARIABLE = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)")


@dataclass(frozen=True)
class DeploymentFiles:
    compose: Path
    dockerfile: Path
    env_example: Path
    dagster_yaml: Path
    workspace: Path
    gitignore: Path | None = None
    dockerignore: Path | None = None
    code_dir: Path | None = None  # the Python package whose environment variables the code server must get

    @classmethod
    def in_directory(cls, root: Path) -> DeploymentFiles:
        return cls(
            compose=root / "docker-compose.yml",
            dockerfile=root / "Dockerfile",
            env_example=root / ".env.example",
            dagster_yaml=root / "dagster.yaml",
            workspace=root / "workspace.yaml",
            gitignore=root / ".gitignore",
            dockerignore=root / ".dockerignore",
            code_dir=root / "covid_assets",
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


def read_dockerfile(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    workdir = "/"
    copies: dict[str, str] = {}

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
            *sources, destination = parts
            destination = expand(destination)
            if not destination.startswith("/"):
                destination = str(Path(workdir) / destination)
            for source in sources:
                name = Path(source).name
                copies[name] = str(Path(destination) / name) if destination.endswith("/") or len(sources) > 1 else destination
    return Dockerfile(env, workdir, copies)


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
    dagster_config = yaml.safe_load(files.dagster_yaml.read_text()) or {}
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

    # The code location's own variables go to the code server.
    code_vars: set[str] = set()
    if files.code_dir is not None:
        source = "\n".join(path.read_text() for path in files.code_dir.rglob("*.py"))
        code_vars = {name for name in set(dotenv) | documented | set(REQUIRED_BY_CODE) if re.search(rf"[\"']{name}[\"']", source)}
    for service in code_servers:
        for name in sorted(code_vars & set(dotenv)):
            if name not in envs[service]:
                problems.append(f".env.example sets {name}, which the code location reads, but service {service} (the code server) does not get it")
        for name in REQUIRED_BY_CODE:
            if name in code_vars and not envs[service].get(name):
                problems.append(
                    f"service {service} gets no {name}: the code location would start an embedded Postgres inside the container"
                )

    # Credentials: what each service is told about a Postgres vs. what that Postgres is set up with.
    postgres_services = {name for name, service in services.items() if str(service.get("image", "")).split(":")[0].endswith("postgres")}
    created_databases: dict[str, set[str]] = {}
    init_script_vars: dict[str, set[str]] = {}
    for name in postgres_services:
        env = envs[name]
        databases = {env.get("POSTGRES_DB") or env.get("POSTGRES_USER") or "postgres"}
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
            init_script_vars[name] = read
            for variable in sorted(read - set(env) - POSTGRES_IMAGE_ENV):
                problems.append(f"{source} (init script of service {name}) reads {variable}, which service {name} does not get")
            databases |= {env[variable] for variable in read if variable.endswith("_DB") and env.get(variable)}
        created_databases[name] = databases

    storage = (dagster_config.get("storage") or {}).get("postgres") or {}
    fields = {key: value.get("env") for key, value in (storage.get("postgres_db") or {}).items() if isinstance(value, dict)}
    needs: dict[str, set[str]] = {name: set() for name in services}

    def check_target(service: str, what: str, host: str | None, port: str | None, user: str | None, password: str | None, db: str | None) -> None:
        if not host:
            return
        if host not in services:
            if "." not in host:
                problems.append(f"service {service}: {what} names host {host}, which no service in docker-compose.yml is called")
            return
        needs[service].add(host)
        if host not in postgres_services:
            return
        target = envs[host]
        if (port or "5432") != "5432":
            problems.append(f"service {service}: {what} uses port {port}, but {host} listens on 5432")
        if user is not None and user != target.get("POSTGRES_USER", "postgres"):
            problems.append(f"service {service}: {what} logs in as {user!r}, but {host} creates user {target.get('POSTGRES_USER')!r}")
        if password is not None and password != target.get("POSTGRES_PASSWORD"):
            problems.append(f"service {service}: {what} uses a password other than {host}'s POSTGRES_PASSWORD")
        if db is not None and db not in created_databases[host]:
            problems.append(f"service {service}: {what} uses database {db!r}, which {host} does not create ({sorted(created_databases[host])})")

    for service, env in envs.items():
        if service in dagster_services and fields:
            check_target(
                service, "dagster.yaml's Postgres storage",
                *(env.get(fields[key]) if fields.get(key) else None for key in ("hostname", "port", "username", "password", "db_name")),
            )  # fmt: skip
        for variable, value in env.items():
            if value and re.match(r"postgres(ql)?(\+\w+)?://", value):
                url = urlsplit(value)
                check_target(
                    service, variable, url.hostname, str(url.port) if url.port else None,
                    unquote(url.username) if url.username else None, unquote(url.password) if url.password is not None else None,
                    url.path.lstrip("/") or None,
                )  # fmt: skip

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
            if re.search(r"://[^/@:]+:(?!\$)[^@]+@", value):
                problems.append(f"service {name}: {variable} has a literal password in its URL; take it from .env")
            elif SECRET_KEY.search(variable) and "$" not in value:
                problems.append(f"service {name}: {variable} is written into docker-compose.yml; take it from .env")
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
    assert service_environment(services["code-server"])["COVID_DB_URL"] == "postgresql://dagster:change-me@postgres:5432/covid"
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    assert env_references(yaml.safe_load(files.dagster_yaml.read_text()))["storage.postgres.postgres_db.password"] == "DAGSTER_PG_PASSWORD"
    image = read_dockerfile(files.dockerfile)
    assert image.env["DAGSTER_HOME"] == "/opt/dagster/dagster_home" == image.workdir
    assert image.copies["workspace.yaml"] == "/opt/dagster/dagster_home/workspace.yaml"


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
        "dagster.yaml", "env: DAGSTER_PG_DB", "env: DAGSTER_PG_DATABASE", "reads DAGSTER_PG_DATABASE, but docker-compose.yml does not give webserver",
    ),
    ".env.example lacks a required variable": (".env.example", "DAGSTER_PG_USER=dagster\n", "", ".env.example does not set DAGSTER_PG_USER"),
    ".env.example leaves a required variable empty": (".env.example", "DAGSTER_PG_PASSWORD=change-me", "DAGSTER_PG_PASSWORD=", "requires a non-empty DAGSTER_PG_PASSWORD"),
    ".env.example sets a variable Compose ignores": (".env.example", "WAREHOUSE_PG_DB=covid\n", "WAREHOUSE_PG_DB=covid\nCOVID_PGDATA=/data\n", "sets COVID_PGDATA, which docker-compose.yml never reads"),
    "code server misses a variable of the code": (
        "docker-compose.yml", "      SOCRATA_APP_TOKEN: ${SOCRATA_APP_TOKEN:-}\n", "", ".env.example sets SOCRATA_APP_TOKEN, which the code location reads",
    ),
    "code server gets no warehouse URL": (
        "docker-compose.yml", "      COVID_DB_URL: postgresql://${DAGSTER_PG_USER}:${DAGSTER_PG_PASSWORD}@postgres:5432/${WAREHOUSE_PG_DB:-covid}\n", "",
        "gets no COVID_DB_URL",
    ),
    "warehouse URL names a database nobody creates": (
        "docker-compose.yml", "@postgres:5432/${WAREHOUSE_PG_DB:-covid}", "@postgres:5432/warehouse", "uses database 'warehouse', which postgres does not create",
    ),
    "warehouse URL names an unknown host": ("docker-compose.yml", "@postgres:5432/${WAREHOUSE_PG_DB", "@db:5432/${WAREHOUSE_PG_DB", "names host db, which no service"),
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
        "docker-compose.yml", "POSTGRES_PASSWORD: ${DAGSTER_PG_PASSWORD:?set DAGSTER_PG_PASSWORD in .env}", "POSTGRES_PASSWORD: hunter2",
        "POSTGRES_PASSWORD is written into docker-compose.yml",
    ),
    "password written into a URL": (
        "docker-compose.yml", "postgresql://${DAGSTER_PG_USER}:${DAGSTER_PG_PASSWORD}@", "postgresql://${DAGSTER_PG_USER}:change-me@",
        "COVID_DB_URL has a literal password in its URL",
    ),
    "postgres healthcheck ignores the warehouse database": (
        "docker-compose.yml", '-d \\"$$WAREHOUSE_PG_DB\\"', '-d \\"$$POSTGRES_DB\\"', "does not check the database its init script creates",
    ),
    "webserver listens on loopback inside its container": (
        "docker-compose.yml", '"dagster-webserver", "-h", "0.0.0.0"', '"dagster-webserver", "-h", "127.0.0.1"', "so its published port answers nothing",
    ),
    "Dockerfile does not copy the workspace": ("Dockerfile", "COPY dagster.yaml workspace.yaml", "COPY dagster.yaml", "does not copy it there"),
    "Dockerfile has no DAGSTER_HOME": ("Dockerfile", "    DAGSTER_HOME=/opt/dagster/dagster_home\n", "    PIP_ROOT_USER_ACTION=ignore\n", "sets no DAGSTER_HOME"),
    ".env committed": (".gitignore", "\n.env\n", "\n", ".gitignore does not ignore .env"),
    ".env sent to the builder": (".dockerignore", "\n.env\n", "\n", ".dockerignore does not exclude .env"),
}


@pytest.fixture
def deployment_copy(tmp_path: Path) -> Iterator[DeploymentFiles]:
    root = tmp_path / "repo"
    (root / "docker" / "postgres").mkdir(parents=True)
    for name in ("docker-compose.yml", "Dockerfile", ".env.example", "dagster.yaml", "workspace.yaml", ".gitignore", ".dockerignore"):
        shutil.copyfile(REPO / name, root / name)
    shutil.copyfile(REPO / "docker" / "postgres" / "init-warehouse.sh", root / "docker" / "postgres" / "init-warehouse.sh")
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
