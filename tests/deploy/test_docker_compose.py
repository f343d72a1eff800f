"""The deployment files: docker-compose.yaml (+ the emulator override), Dockerfile, .dockerignore.

No Docker engine is needed: the compose files are parsed with PyYAML, merged and interpolated the way
Compose does for the constructs they use, and checked for what the running cluster relies on. Only
``test_docker_compose_config_validates`` needs the ``docker compose`` client (no engine), and is skipped
without it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
EMULATOR = ROOT / "docker-compose.emulator.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"
CONSTRAINTS = ROOT / "constraints.txt"

EMULATOR_PROFILE = "emulator"
AIRFLOW_SERVICES = frozenset(
    {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
        "airflow-triggerer",
        "airflow-init",
        "airflow-cli",
        "flower",
    }
)
EMULATOR_SERVICES = frozenset({"moto", "emulator-seed"})
SEED_COMMAND = [
    "python",
    "-m",
    "devtools.emulator",
    "seed",
    "--endpoint-url",
    "http://moto:5000",
]
AIRFLOW_HOME = PurePosixPath("/opt/airflow")
WORKER_LOG_SERVER_PORT = 8793
ONE_SHOT_SERVICES = frozenset({"airflow-init", "airflow-cli", "emulator-seed"})

# --- Compose semantics, as far as these files use them ------------------------------------------------

_TEMPLATE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


class InterpolationError(ValueError):
    """A ``$`` that Compose would reject, or a required variable that is unset."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``-``, ``?``, ``+``."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        if match["braced"] is None:
            raise InterpolationError(f"invalid interpolation (use $$ for a literal $) in {text!r}")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise InterpolationError(f"invalid interpolation ${{{match['braced']}}} in {text!r}")
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        value = env.get(name)
        is_set = value is not None and (value != "" or not (op or "").startswith(":"))
        if op is None:
            return value or ""
        if op.endswith("-"):
            return value if is_set else arg  # type: ignore[return-value]
        if op.endswith("?"):
            if not is_set:
                raise InterpolationError(f"required variable {name} is unset: {arg}")
            return value  # type: ignore[return-value]
        return arg if is_set else ""

    return _TEMPLATE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not keys) of a parsed compose file."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    return node


def merge(base: Any, override: Any) -> Any:
    """Compose's override merge for mappings (environment, depends_on, build, services)."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


@cache
def raw(path: Path) -> dict[str, Any]:
    """One compose file as PyYAML reads it (anchors and ``<<`` merge keys resolved)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def model(*paths: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated project of these files, with every service (profiles not applied)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, raw(path))
    return interpolate_tree(merged, env or {})


def enabled(project: Mapping[str, Any], profiles: set[str]) -> dict[str, dict[str, Any]]:
    """The services that ``docker compose --profile ... up`` starts (without naming any service)."""
    return {
        name: service
        for name, service in project["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def depends_on(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return dict(deps)


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, Mapping), "use the mapping form of `environment` (it merges by key)"
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def volume_targets(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> host source of the service's short-syntax bind mounts."""
    targets = {}
    for volume in service.get("volumes") or []:
        source, target, *_ = str(volume).split(":")
        targets[target] = source
    return targets


def host_ports(service: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """(host part, container port) of every published port, short syntax."""
    for port in service.get("ports") or []:
        if isinstance(port, Mapping):
            yield str(port.get("published", "")), int(port["target"])
            continue
        *host, container = str(port).split(":")
        yield ":".join(host), int(container.split("/")[0])


def requirement_pin(name: str, path: Path = REQUIREMENTS) -> str:
    pins = re.findall(rf"^{re.escape(name)}==([^\s;#]+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(pins) == 1, f"{path.name} must pin {name}== exactly once, found {pins}"
    return pins[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, args = stripped.partition(" ")
            instructions.append((keyword.upper(), " ".join(args.split())))
    return instructions


@pytest.fixture(scope="module")
def default_project() -> dict[str, Any]:
    """``docker compose up`` with this repository's files and no .env."""
    return model(COMPOSE)


@pytest.fixture(scope="module")
def emulator_project() -> dict[str, Any]:
    return model(COMPOSE, EMULATOR)


@pytest.fixture(scope="module")
def anchor() -> dict[str, Any]:
    return interpolate_tree(raw(COMPOSE)["x-airflow-common"], {})


# --- The files parse, and the model is consistent -----------------------------------------------------


def test_compose_files_parse_and_interpolate() -> None:
    for path in (COMPOSE, EMULATOR):
        project = model(path)
        assert project["services"], f"{path.name} defines no services"
        for name, service in project["services"].items():
            assert isinstance(service, Mapping), f"{path.name}: service {name} is not a mapping"


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        pytest.param((COMPOSE,), set(), id="default"),
        pytest.param((COMPOSE,), {"flower", "debug"}, id="flower+debug"),
        pytest.param((COMPOSE, EMULATOR), {EMULATOR_PROFILE}, id="emulator"),
        pytest.param((COMPOSE, EMULATOR), {EMULATOR_PROFILE, "flower", "debug"}, id="emulator+all"),
    ],
)
def test_every_dependency_is_a_started_service(files: tuple[Path, ...], profiles: set[str]) -> None:
    project = model(*files)
    services = enabled(project, profiles)
    for name, service in services.items():
        for dep, spec in depends_on(service).items():
            assert dep in project["services"], f"{name} depends on undefined service {dep}"
            assert dep in services, f"{name} depends on {dep}, which profiles {sorted(profiles)} leave off"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in project["services"][dep], f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOT_SERVICES, f"{name} waits for {dep} to exit, but it is long-running"


def test_emulator_override_refuses_to_start_without_its_profile(
    emulator_project: dict[str, Any],
) -> None:
    """Both files without ``--profile emulator`` is an invalid model, not a half-configured cluster."""
    services = enabled(emulator_project, set())
    missing = {dep for service in services.values() for dep in depends_on(service) if dep not in services}
    assert missing == {"emulator-seed"}


def test_long_running_services_have_healthchecks(emulator_project: dict[str, Any]) -> None:
    for name, service in emulator_project["services"].items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart") in (None, "no"), f"one-shot {name} must not restart"
        else:
            assert "healthcheck" in service, f"{name} has no healthcheck"
            assert service.get("restart") in ("always", "unless-stopped"), f"{name} must restart"


# --- One pinned image --------------------------------------------------------------------------------


def test_airflow_services_share_the_pinned_project_image(
    default_project: dict[str, Any], anchor: dict[str, Any]
) -> None:
    airflow_version = requirement_pin("apache-airflow")
    assert anchor["image"] == f"cmdb-ec2-inventory:{airflow_version}"
    assert anchor["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    using_anchor = {
        name
        for name, service in default_project["services"].items()
        if service.get("image") == anchor["image"]
    }
    assert using_anchor == AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES:
        assert default_project["services"][name]["build"] == anchor["build"], name


def test_every_built_service_builds_the_same_image(
    emulator_project: dict[str, Any], anchor: dict[str, Any]
) -> None:
    built = {name: s for name, s in emulator_project["services"].items() if "build" in s}
    assert set(built) == AIRFLOW_SERVICES | {"emulator-seed"}
    for name, service in built.items():
        assert service["image"] == anchor["image"], name
        assert service["build"] == anchor["build"], name
    for name, service in emulator_project["services"].items():
        image = str(service.get("image", ""))
        assert not image.startswith("apache/airflow"), f"{name} bypasses the project image"
        assert ":" in image, f"{name}: image {image!r} has no tag"
        assert not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"


def test_image_name_is_overridable_for_a_registry() -> None:
    project = model(COMPOSE, EMULATOR, env={"AIRFLOW_IMAGE_NAME": "registry.example/cmdb:3"})
    images = {s["image"] for n, s in project["services"].items() if n in AIRFLOW_SERVICES | {"emulator-seed"}}
    assert images == {"registry.example/cmdb:3"}


def test_no_dependencies_installed_at_container_start(default_project: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        assert env_of(default_project["services"][name]).get("_PIP_ADDITIONAL_REQUIREMENTS") == "", name


# --- Code mounts and Airflow settings ---------------------------------------------------------------


def test_code_is_mounted_where_airflow_and_python_look(default_project: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = default_project["services"][name]
        env = env_of(service)
        mounts = volume_targets(service)
        dags = env.get("AIRFLOW__CORE__DAGS_FOLDER", str(AIRFLOW_HOME / "dags"))
        plugins = env.get("AIRFLOW__CORE__PLUGINS_FOLDER", str(AIRFLOW_HOME / "plugins"))
        include = str(AIRFLOW_HOME / "include")
        assert mounts.get(dags) == "./dags", f"{name}: dags/ not mounted at {dags}"
        assert mounts.get(plugins) == "./plugins", f"{name}: plugins/ not mounted at {plugins}"
        assert mounts.get(include) == "./include", f"{name}: include/ not mounted at {include}"
        pythonpath = env.get("PYTHONPATH", "").split(":")
        assert str(PurePosixPath(include).parent) in pythonpath, f"{name}: include's parent not on PYTHONPATH"
    for folder in ("dags", "plugins", "include"):
        assert (ROOT / folder).is_dir(), f"{folder}/ is missing from the repository"


DEV_TOOLING = ("devtools", "tests", "bench")


def test_the_deployment_mounts_and_copies_no_dev_tooling(default_project: dict[str, Any]) -> None:
    """docker-compose.yaml, the image and its build context carry production code only."""
    for name, service in default_project["services"].items():
        for target, source in volume_targets(service).items():
            parts = set(PurePosixPath(source).parts) | set(PurePosixPath(target).parts)
            assert not parts & set(DEV_TOOLING), f"{name} mounts {source}:{target}"
    # The Dockerfile's instructions and its optional COPY lines (commented out) alike.
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    copies = re.findall(r"^#?\s*(?:COPY|ADD)\s+(.*)$", text, re.MULTILINE)
    assert copies, "no COPY in the Dockerfile"
    for copy in copies:
        assert not {p.strip("/") for p in copy.split()} & set(DEV_TOOLING), copy
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for folder in DEV_TOOLING:
        assert _dockerignored(f"{folder}/x.py", patterns), f"{folder}/ would be sent to the Docker build"


def test_bundled_examples_are_off(emulator_project: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        assert env_of(emulator_project["services"][name])["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name


def test_celery_executor_with_redis_broker_and_postgres_backend(default_project: dict[str, Any]) -> None:
    services = default_project["services"]

    def image_of(host: str | None) -> str:
        assert host in services, f"{host} is not a service"
        return str(services[host]["image"])

    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert broker.scheme == "redis", name
        assert image_of(broker.hostname).startswith("redis:"), name
        backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
        assert backend.scheme.startswith("db+postgresql"), name
        assert image_of(backend.hostname).startswith("postgres:"), name
        metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert metadata.scheme.startswith("postgresql"), name
        assert image_of(metadata.hostname).startswith("postgres:"), name
        assert (metadata.hostname, metadata.path) == (backend.hostname, backend.path), name


def test_execution_api_url_points_at_the_apiserver(default_project: dict[str, Any]) -> None:
    services = default_project["services"]
    apiserver_ports = {container for _, container in host_ports(services["airflow-apiserver"])}
    for name in AIRFLOW_SERVICES:
        url = urlsplit(env_of(services[name])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert url.hostname == "airflow-apiserver", name
        assert services[url.hostname]["command"] == "api-server"
        assert url.port in apiserver_ports, f"{name}: port {url.port} is not the api-server's"
        assert url.path == "/execution/", name


def test_components_share_the_secrets_tokens_depend_on(default_project: dict[str, Any]) -> None:
    """The scheduler issues task tokens that the api-server checks: one JWT secret and Fernet key."""
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        values = {env_of(default_project["services"][name]).get(key) for name in AIRFLOW_SERVICES}
        assert None not in values, key
        assert len(values) == 1, key


def test_simple_auth_manager_is_airflow_core(default_project: dict[str, Any]) -> None:
    env = env_of(default_project["services"]["airflow-apiserver"])
    module, _, cls = env["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")
    assert cls == "SimpleAuthManager"
    spec = importlib.util.find_spec("airflow")
    assert spec is not None
    assert spec.submodule_search_locations
    module_file = Path(next(iter(spec.submodule_search_locations))).joinpath(*module.split(".")[1:])
    assert module_file.with_suffix(".py").is_file(), f"{module} is not in the installed Airflow"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "airflow:admin"
    init = default_project["services"]["airflow-init"]
    assert env_of(init)["_AIRFLOW_DB_MIGRATE"] == "true"
    assert "_AIRFLOW_WWW_USER_CREATE" not in env_of(init), "`airflow users create` is FAB-only"


def test_worker_log_server_port_is_not_published(emulator_project: dict[str, Any]) -> None:
    for name, service in emulator_project["services"].items():
        for host, container in host_ports(service):
            published = host.rpartition(":")[2] or str(container)
            assert published != str(WORKER_LOG_SERVER_PORT), f"{name} publishes {WORKER_LOG_SERVER_PORT}"


# --- The emulator profile ----------------------------------------------------------------------------


def test_emulator_services_are_only_in_the_emulator_profile(
    default_project: dict[str, Any], emulator_project: dict[str, Any]
) -> None:
    in_profile = {
        name
        for name, service in emulator_project["services"].items()
        if EMULATOR_PROFILE in (service.get("profiles") or [])
    }
    assert in_profile == EMULATOR_SERVICES
    for name in EMULATOR_SERVICES:
        assert emulator_project["services"][name]["profiles"] == [EMULATOR_PROFILE], name
    assert not EMULATOR_SERVICES & set(default_project["services"]), "docker-compose.yaml has emulator bits"
    for profiles in (set(), {"flower", "debug"}):
        assert not EMULATOR_SERVICES & set(enabled(emulator_project, profiles)), profiles
    assert set(enabled(emulator_project, {EMULATOR_PROFILE})) >= EMULATOR_SERVICES


def test_override_only_merges_by_key() -> None:
    """The override changes existing services only through mappings, which Compose merges by key."""
    base = raw(COMPOSE)["services"]
    for name, service in raw(EMULATOR)["services"].items():
        if name in base:
            assert set(service) <= {"environment", "depends_on"}, name
            for key in service:
                assert isinstance(service[key], Mapping), f"{name}.{key} must be a mapping"
        else:
            assert name in EMULATOR_SERVICES, f"the override adds an unexpected service {name}"


def _aws_conn(service: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(env_of(service)["AIRFLOW_CONN_AWS_DEFAULT"])


def test_emulator_points_every_airflow_service_at_moto(emulator_project: dict[str, Any]) -> None:
    services = emulator_project["services"]
    moto_entrypoint = services["moto"]["entrypoint"]
    moto_port = int(moto_entrypoint[moto_entrypoint.index("-p") + 1])
    assert services["moto"]["image"] == f"motoserver/moto:{requirement_pin('moto', CONSTRAINTS)}"
    # MOTO_ACCOUNT_ID would put every request, assumed roles included, into one account.
    assert "MOTO_ACCOUNT_ID" not in env_of(services["moto"])
    variables = set()
    for name in AIRFLOW_SERVICES | {"emulator-seed"}:
        env = env_of(services[name])
        conn = _aws_conn(services[name])
        assert conn["conn_type"] == "aws", name
        endpoint = urlsplit(conn["extra"]["endpoint_url"])
        assert (endpoint.hostname, endpoint.port) == ("moto", moto_port), name
        assert env["AWS_ENDPOINT_URL"] == conn["extra"]["endpoint_url"], name
        assert env["AWS_EC2_METADATA_DISABLED"] == "true", name
        variables.add(env["AIRFLOW_VAR_CMDB_EC2_INVENTORY"])
    assert len(variables) == 1, "the seed and every Airflow service must see the same demo Variable"


def test_demo_variable_is_valid_configuration(emulator_project: dict[str, Any]) -> None:
    config = pytest.importorskip("include.cmdb_inventory.config")
    raw_variable = env_of(emulator_project["services"]["airflow-worker"])["AIRFLOW_VAR_CMDB_EC2_INVENTORY"]
    settings = config.parse_settings(raw_variable)
    assert [a.id for a in settings.accounts] == [f"{digit}" * 12 for digit in "1234"]
    assert settings.aws_conn_id == "aws_default"
    # The same world the seeder creates and `make demo` uses: one source of truth.
    emulator = pytest.importorskip("devtools.emulator")
    assert json.loads(raw_variable) == emulator.demo_variable()
    conn = _aws_conn(emulator_project["services"]["airflow-worker"])
    assert conn == emulator.demo_connection("http://moto:5000")


def test_emulator_seed_runs_the_seeding_cli_after_moto(emulator_project: dict[str, Any]) -> None:
    seed = emulator_project["services"]["emulator-seed"]
    assert seed["command"] == SEED_COMMAND
    assert depends_on(seed) == {"moto": {"condition": "service_healthy"}}
    env = env_of(seed)
    assert env["CONNECTION_CHECK_MAX_COUNT"] == "0", "the seed must not wait for the Airflow DB"
    assert str(AIRFLOW_HOME) in env["PYTHONPATH"].split(":")
    assert volume_targets(seed)[str(AIRFLOW_HOME / "include")] == "./include"
    assert volume_targets(seed)[str(AIRFLOW_HOME / "devtools")] == "./devtools"
    for name in ("airflow-scheduler", "airflow-worker"):
        condition = depends_on(emulator_project["services"][name])["emulator-seed"]["condition"]
        assert condition == "service_completed_successfully", name


# What the image has not: the test and dev dependencies (moto is the `moto` service, not a package there).
NOT_IN_THE_IMAGE = ("moto", "pytest", "cfnlint", "responses")


def test_the_seed_container_seeds_with_its_mounts_and_the_images_packages(
    emulator_project: dict[str, Any], tmp_path: Path
) -> None:
    """The seed command, from a copy of /opt/airflow made of the service's mounts, against a moto server."""
    from devtools import sandbox

    seed = emulator_project["services"]["emulator-seed"]
    home = tmp_path / "opt-airflow"
    home.mkdir()
    for target, source in volume_targets(seed).items():
        relative = PurePosixPath(target).relative_to(AIRFLOW_HOME)
        (home / relative).symlink_to(ROOT / source)
    pythonpath = env_of(seed)["PYTHONPATH"].replace(str(AIRFLOW_HOME), str(home))
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in NOT_IN_THE_IMAGE)
    with sandbox.moto_server() as url:
        command = [str(a).replace("http://moto:5000", url) for a in seed["command"]]
        assert command[:2] == ["python", "-m"]
        run = "runpy.run_module(sys.argv[0], run_name='__main__')"
        code = f"import runpy, sys; {blocked}; sys.argv = {command[2:]!r}; {run}"
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": pythonpath,
            "NO_PROXY": "*",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    seeded = json.loads(done.stdout)
    assert sum(len(v) for v in seeded["instances"].values()) == 13


def test_production_file_takes_aws_settings_only_from_env_file(
    default_project: dict[str, Any], anchor: dict[str, Any]
) -> None:
    assert anchor["env_file"] == [{"path": ".env", "required": False}]
    for name in AIRFLOW_SERVICES:
        env = env_of(default_project["services"][name])
        leaked = {k for k in env if k.startswith(("AWS_", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
        assert not leaked, f"{name} sets {leaked} in docker-compose.yaml"
    assert "moto" not in COMPOSE.read_text(encoding="utf-8").split("---", 1)[1]


# --- No credentials in the files --------------------------------------------------------------------

_KEY_PATTERNS = (
    re.compile(r"AKIA|ASIA"),
    re.compile(r"aws_secret_access_key|aws_access_key_id|aws_session_token", re.IGNORECASE),
)


@pytest.mark.parametrize("path", [COMPOSE, EMULATOR, DOCKERFILE], ids=lambda p: p.name)
def test_no_aws_keys(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for pattern in _KEY_PATTERNS:
        found = pattern.search(text)
        assert found is None, f"{path.name} contains {found.group(0)!r}: identities come from roles"


# --- Dockerfile and build context --------------------------------------------------------------------


def test_dockerfile_base_image_matches_the_pins() -> None:
    instructions = dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"apache/airflow:(?P<version>[\w.]+)-python(?P<python>\d+\.\d+)", froms[0])
    assert match, f"unexpected base image {froms[0]}"
    assert match["version"] == requirement_pin("apache-airflow")
    assert match["version"] == requirement_pin("apache-airflow", CONSTRAINTS)
    compiled_for = re.search(r"--python-version[ =](\d+\.\d+)", CONSTRAINTS.read_text(encoding="utf-8"))
    assert compiled_for, "constraints.txt does not say which Python it was compiled for"
    assert match["python"] == compiled_for.group(1)


def test_dockerfile_installs_the_lock_as_the_airflow_user() -> None:
    instructions = dockerfile_instructions()
    copied = " ".join(args for keyword, args in instructions if keyword in ("COPY", "ADD"))
    assert "requirements.txt" in copied
    assert "constraints.txt" in copied
    installs = [
        (index, args)
        for index, (keyword, args) in enumerate(instructions)
        if keyword == "RUN" and "pip install" in args
    ]
    assert len(installs) == 1
    index, command = installs[0]
    assert "--no-cache-dir" in command
    assert re.search(r"(^|\s)-r\s+\S*requirements\.txt(\s|$)", command)
    assert re.search(r"(^|\s)-c\s+\S*constraints\.txt(\s|$)", command)
    users = [args for keyword, args in instructions[:index] if keyword == "USER"]
    assert not users or users[-1] in ("airflow", "50000"), "pip must run as the airflow user"


def _dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern on a parent also covers its children."""
    parts = relative.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(c, pattern) or fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_secrets_and_clutter_out_of_the_build() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".env", ".venv/bin/python", ".git/config", "logs/x.log", "tests/deploy/x.py"):
        assert _dockerignored(path, patterns), f"{path} would be sent to the Docker build"
    for path in ("requirements.txt", "constraints.txt", "dags/cmdb_ec2_inventory.py"):
        assert not _dockerignored(path, patterns), f"{path} is needed by the Dockerfile"
    assert _dockerignored("include/cmdb_inventory/__pycache__/config.cpython-311.pyc", patterns)


# --- The real parser, where the docker compose client exists ----------------------------------------


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        pytest.param((COMPOSE,), (), id="default"),
        pytest.param((COMPOSE,), ("flower", "debug"), id="flower+debug"),
        pytest.param((COMPOSE, EMULATOR), (EMULATOR_PROFILE,), id="emulator"),
    ],
)
def test_docker_compose_config_validates(files: tuple[Path, ...], profiles: tuple[str, ...]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("the `docker compose` client is not installed (no engine is needed for `config`)")
    args = [*cli, "--project-directory", str(ROOT)]
    for path in files:
        args += ["-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    checked = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    listed = subprocess.run(
        [*args, "config", "--services"], capture_output=True, text=True, timeout=60, check=True
    )
    started = set(listed.stdout.split())
    assert (started >= EMULATOR_SERVICES) == (EMULATOR_PROFILE in profiles), started
