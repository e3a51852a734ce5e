"""docker-compose.yml and the files it mounts, checked without a Docker engine.

The Compose file is validated against the compose-spec schema that ships inside check-jsonschema
(no network), and cross-checked against the code: the variables our services get are ones the
settings read, Prometheus scrapes the ports our processes listen on, the Grafana dashboard queries
metrics that exist, and the commands run modules that exist.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings

import hitl.metrics
from api.routes import health
from api.stream_limits import WS_MAX_FRAME_BYTES
from hitl.settings import Settings, WorkerSettings, known_variables
from launcher.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "hitl.json"

OUR_SERVICES = ("migrate", "api", "worker", "discord-bot")
"""The services running our image: their environment is read by hitl.settings."""

PENDING_GAUGE = "hitl_pending_approvals"
"""The API's pending-approvals gauge (hitl.metrics.PENDING)."""

# The Temporal Core SDK's metrics (temporalio's Runtime with PrometheusConfig defaults: no unit
# suffix, durations in milliseconds), as worker.py re-exports them through prometheus_client,
# which adds ``_total`` to counters. Names from the SDK metrics reference, checked against a
# live worker on temporalio 1.35.
TEMPORAL_COUNTERS = frozenset(
    {
        "request",
        "request_failure",
        "long_request",
        "long_request_failure",
        "worker_start",
        "workflow_completed",
        "workflow_failed",
        "workflow_canceled",
        "workflow_continue_as_new",
        "workflow_task_queue_poll_empty",
        "workflow_task_queue_poll_succeed",
        "workflow_task_execution_failed",
        "activity_poll_no_task",
        "activity_task_received",
        "activity_execution_failed",
        "activity_execution_cancelled",
        "local_activity_total",
        "local_activity_execution_failed",
        "local_activity_execution_cancelled",
        "sticky_cache_hit",
        "sticky_cache_miss",
        "sticky_cache_total_forced_eviction",
    }
)
TEMPORAL_HISTOGRAMS = frozenset(
    {
        "request_latency",
        "long_request_latency",
        "workflow_endtoend_latency",
        "workflow_task_schedule_to_start_latency",
        "workflow_task_execution_latency",
        "workflow_task_replay_latency",
        "activity_schedule_to_start_latency",
        "activity_execution_latency",
        "activity_succeed_endtoend_latency",
        "local_activity_execution_latency",
        "local_activity_succeeded_endtoend_latency",
    }
)
TEMPORAL_GAUGES = frozenset(
    {"num_pollers", "sticky_cache_size", "worker_task_slots_available", "worker_task_slots_used"}
)
PROMETHEUS_BUILTINS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
"""Addresses a process in a container must listen on to be reached from other containers."""
SECRET_WORDS = ("PASSWORD", "PWD", "TOKEN", "SECRET")
_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}")
_REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
_DEFAULTED = re.compile(r"^\$\{(?P<variable>[A-Za-z_][A-Za-z0-9_]*):-(?P<default>[^}]*)\}$")
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@]+:(?P<password>[^@]*)@")


# --- loading --------------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, anchors and merge keys resolved."""
    return _yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services by name."""
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The provisioned Grafana dashboard."""
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):  # the KEY=VALUE list form
        raw = dict(str(item).partition("=")[::2] for item in raw)
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _setting_groups() -> Iterator[type[BaseSettings]]:
    for field in Settings.model_fields.values():
        group = field.annotation
        assert isinstance(group, type) and issubclass(group, BaseSettings)
        yield group


def _settings_fields() -> dict[str, tuple[type[BaseSettings], str]]:
    """Each environment variable the settings read → (its group, its field name)."""
    return {
        f"{group.model_config.get('env_prefix', '')}{name}".upper(): (group, name)
        for group in _setting_groups()
        for name in group.model_fields
    }


# --- 1. the compose-spec schema -------------------------------------------------------------


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).with_name("check-jsonschema")
    assert tool.exists(), f"{tool} is missing: run `make install` (the lock's dev group)"
    # The vendored schema ships in the package: no download, so this works offline.
    return subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_follows_the_compose_spec() -> None:
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_does_reject_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(
        COMPOSE.read_text(encoding="utf-8").replace(
            '    restart: "no"\n', '    restart: "no"\n    replicaz: 2\n', 1
        ),
        encoding="utf-8",
    )
    result = _check_jsonschema(bad)
    assert result.returncode != 0
    assert "replicaz" in result.stdout + result.stderr


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} names no image"
        _, _, tag = str(image).rpartition("/")[2].partition(":")
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"


# --- 2. the environment of our services -----------------------------------------------------


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_our_services_pass_only_variables_the_settings_read(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    assert "env_file" not in service, "an env_file's variable names cannot be checked"
    environment = _environment(service)
    assert environment, f"{name} gets no settings"
    unknown = sorted(set(environment) - known_variables())
    assert not unknown, f"{name} passes variables hitl.settings does not read: {unknown}"


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_written_defaults_are_the_settings_defaults(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """A ``${VAR:-default}`` must not drift from the default in hitl/settings.py."""
    fields = _settings_fields()
    profiled = bool(services[name].get("profiles"))
    for variable, value in _environment(services[name]).items():
        match = _DEFAULTED.match(value)
        if match is None or variable not in fields:
            continue
        assert match["variable"] == variable, f"{variable} reads ${{{match['variable']}}}"
        group, field_name = fields[variable]
        field = group.model_fields[field_name]
        assert field.annotation is not None
        if match["default"] == "" and group.model_config.get("env_ignore_empty"):
            continue  # the group reads an empty variable as unset: its own default
        try:
            # With the field's own validators and bounds (an empty percentage reads as unset).
            annotation: Any = field.annotation
            written = TypeAdapter(Annotated[annotation, field]).validate_python(match["default"])
        except ValidationError:
            refused = True
        else:
            refused = False
        if refused:
            # The process would refuse to start (SEC-040) whenever the variable is unset:
            # acceptable only in an opt-in service, which must be configured anyway.
            assert profiled and match["default"] == "", (
                f"{name}: {variable} defaults to {match['default']!r}, which the settings refuse"
            )
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr) and isinstance(written, SecretStr):
            default, written = default.get_secret_value(), written.get_secret_value()
        assert written == default, f"{name}: {variable} defaults to {written!r}, not {default!r}"


def test_secrets_come_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    secret_settings = {
        variable
        for variable, (group, name) in _settings_fields().items()
        if group.model_fields[name].annotation is SecretStr
    }
    for name, service in services.items():
        for variable, value in _environment(service).items():
            if variable in secret_settings or any(word in variable for word in SECRET_WORDS):
                assert _INTERPOLATION.fullmatch(value), f"{name}: {variable} is written literally"
            url = _URL_PASSWORD.match(value)
            if url is not None:
                assert _INTERPOLATION.fullmatch(url["password"]), (
                    f"{name}: {variable} has a literal password"
                )


def _required_variables(service: dict[str, Any]) -> set[str]:
    return {match[1] for text in _strings(service) for match in _REQUIRED.finditer(text)}


def test_opt_in_services_require_nothing_more(services: dict[str, dict[str, Any]]) -> None:
    """Compose interpolates every service, active profile or not: a ``${VAR:?}`` only an opt-in
    service needs would stop ``docker compose up`` for everyone who did not opt in."""
    always = set[str]().union(
        *(_required_variables(s) for s in services.values() if not s.get("profiles"))
    )
    for name, service in services.items():
        if service.get("profiles"):
            extra = sorted(_required_variables(service) - always)
            assert not extra, f"{name} is opt-in but requires {extra} of everyone"


# --- 3. Prometheus targets ------------------------------------------------------------------


def _scrape_targets() -> Iterator[tuple[str, str, str, int]]:
    """(job, metrics path, host, port) for every target of deploy/prometheus/prometheus.yml."""
    for job in _yaml(PROMETHEUS)["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = str(target).rpartition(":")
                yield job["job_name"], path, host, int(port)
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                yield job["job_name"], path, host, int(dns["port"])
        unsupported = set(job) & {"file_sd_configs", "docker_sd_configs", "http_sd_configs"}
        assert not unsupported, f"teach this test the {unsupported} of job {job['job_name']}"


def _option(argv: list[str], option: str) -> str | None:
    return argv[argv.index(option) + 1] if option in argv else None


def _listens_on(name: str, service: dict[str, Any]) -> tuple[set[int], str | None]:
    """The ports a service of ours serves metrics on, and the metrics path it serves."""
    environment = _environment(service)
    if name == "api":
        argv = [str(part) for part in service["command"]]
        assert _option(argv, "--host") in WILDCARD_HOSTS, "uvicorn must listen beyond loopback"
        port = int(_option(argv, "--port") or 8000)
        assert int(environment.get("HITL_API_PORT", port)) == port
        paths = {getattr(route, "path", None) for route in health.router.routes}
        return {port}, "/metrics" if "/metrics" in paths else None
    if name == "worker":
        # Set explicitly: the worker binds to loopback unless told otherwise.
        host = environment.get("HITL_WORKER_METRICS_HOST")
        assert host in WILDCARD_HOSTS, "the worker's metrics must listen beyond loopback"
        default_port = WorkerSettings.model_fields["metrics_port"].default
        port = int(environment.get("HITL_WORKER_METRICS_PORT", default_port))
        return {port}, "/metrics"  # prometheus_client's server answers on any path
    pytest.fail(f"this test does not know which port {name} listens on")


def test_prometheus_scrapes_the_api_and_the_worker() -> None:
    assert {"api", "worker"} <= {job for job, *_ in _scrape_targets()}


def test_every_scrape_target_is_a_service_on_its_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for job, path, host, port in _scrape_targets():
        assert host in services, f"job {job} scrapes {host}, which is no service"
        ports, metrics_path = _listens_on(host, services[host])
        assert port in ports, f"job {job} scrapes {host}:{port}; {host} listens on {ports}"
        assert path == metrics_path, f"job {job} scrapes {path}; {host} serves {metrics_path}"


def test_replicated_services_publish_no_fixed_host_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if int(service.get("deploy", {}).get("replicas", 1)) > 1:
            assert not service.get("ports"), f"{name}'s replicas would fight for its host port"


def test_grafana_reads_the_compose_prometheus(services: dict[str, dict[str, Any]]) -> None:
    (source,) = _yaml(DATASOURCES)["datasources"]
    host, _, port = str(source["url"]).removeprefix("http://").partition(":")
    assert host in services
    published = {str(mapping).rsplit(":", 1)[-1] for mapping in services[host].get("ports", [])}
    assert port in published


# --- 4. the Grafana dashboard ---------------------------------------------------------------


def _our_metric_names() -> set[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names = set()
    for metric in vars(hitl.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def _temporal_metric_names() -> set[str]:
    names = {f"temporal_{name}_total" for name in TEMPORAL_COUNTERS}
    names |= {f"temporal_{name}" for name in TEMPORAL_GAUGES}
    names |= {
        f"temporal_{name}{suffix}"
        for name in TEMPORAL_HISTOGRAMS
        for suffix in ("_bucket", "_count", "_sum")
    }
    return names


_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (enough PromQL for our dashboards)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, with their $__variables
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        function = expr[match.end() :].lstrip().startswith("(")
        if not function and match.group() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(x_bucket{job="a"}[5m]))) / '
        "sum without (instance) (increase(y_total[$__range])) or on (job) up"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "up"}


def _panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from _panels(panel)


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_reads_only_metrics_that_exist(dashboard: dict[str, Any]) -> None:
    known = _our_metric_names() | _temporal_metric_names() | PROMETHEUS_BUILTINS
    for title, expr in _queries(dashboard):
        names = metric_names(expr)
        assert names, f"panel {title!r} reads no metric: {expr}"
        assert names <= known, f"panel {title!r} reads unknown metrics {names - known}"


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    used = {name for _, expr in _queries(dashboard) for name in metric_names(expr)}
    wanted = {
        "hitl_requests_total",
        "hitl_approvals_total",
        "hitl_rejections_total",
        "hitl_response_latency_seconds_bucket",
        PENDING_GAUGE,
        "blocked_by_guardian_total",
    }
    assert wanted <= used
    assert any(name.startswith("temporal_") for name in used), "no worker health panel"


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    (source,) = _yaml(DATASOURCES)["datasources"]
    panels = list(_panels(dashboard))
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids repeat"
    for panel in panels:
        for node in [panel, *panel.get("targets", [])]:
            if "datasource" in node:
                assert node["datasource"]["uid"] == source["uid"], panel["title"]


# --- 5. what the containers run -------------------------------------------------------------


def _dockerfile_cmd() -> list[str]:
    (line,) = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("CMD ")
    ]
    argv = json.loads(line.removeprefix("CMD "))
    assert isinstance(argv, list)
    return [str(part) for part in argv]


def _commands(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, list[str]]]:
    yield "Dockerfile CMD", _dockerfile_cmd()
    for name in OUR_SERVICES:
        yield name, [str(part) for part in services[name]["command"]]


def _module_file(module: str) -> Path:
    as_file = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    return as_file if as_file.exists() else ROOT.joinpath(*module.split("."), "__main__.py")


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def _runs_as_main(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
    )


@pytest.mark.parametrize("name", ["Dockerfile CMD", *OUR_SERVICES])
def test_commands_run_modules_that_exist(services: dict[str, dict[str, Any]], name: str) -> None:
    argv = dict(_commands(services))[name]
    if argv[:2] == ["python", "-m"]:
        path = _module_file(argv[2])
        assert path.exists(), f"{name} runs `python -m {argv[2]}`, but {path.name} is missing"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert path.name == "__main__.py" or _runs_as_main(tree), f"{path} has no __main__ block"
    elif argv[0] == "hitl":
        # The console script pyproject.toml declares; its subcommand must be one it has.
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*argv[1:], "--help"])
        assert exited.value.code == 0, f"{name} runs {argv}, which hitl does not know"
    elif argv[0] == "uvicorn":
        module, _, attribute = next(arg for arg in argv[1:] if not arg.startswith("-")).partition(
            ":"
        )
        path = _module_file(module)
        assert path.exists(), f"{name} serves {module}, which is missing"
        assert attribute in _top_level_names(ast.parse(path.read_text(encoding="utf-8")))
        # The WebSocket frame cap `hitl run` also gives uvicorn (api/stream_limits.py).
        assert argv[argv.index("--ws-max-size") + 1] == str(WS_MAX_FRAME_BYTES), name
    else:
        pytest.fail(f"{name} runs {argv}: teach this test how to check it")


def test_the_build_context_leaves_out_secrets_and_keeps_the_code(
    services: dict[str, dict[str, Any]],
) -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "teach this test about exceptions"

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)

    # .env holds the Compose secrets; data/ holds make run's development tokens.
    for secret in (".env", ".env.production", "data", ".git", ".venv"):
        assert ignored(secret), f"{secret} would be sent to the build and copied into the image"
    needed = {"pyproject.toml", "README.md", "requirements", "hitl", "workflows", "activities"}
    needed |= {"migrations", "store", "api", "launcher"}
    for _, argv in _commands(services):
        if argv[0] == "hitl":
            module = "launcher.cli"
        elif argv[:2] == ["python", "-m"]:
            module = argv[2]
        else:
            module = argv[1].partition(":")[0]
        needed.add(_module_file(module).relative_to(ROOT).parts[0])
    assert not sorted(path for path in needed if ignored(path))
