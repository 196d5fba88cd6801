"""compose.yaml runs what exists: the services, their images, commands and settings."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from fastapi_pubsub_cluster import PubSubSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict)
    return found


def command_words(service: dict[str, Any]) -> list[str]:
    """The service's command as words, looking inside ``sh -c "..."``."""
    command = service.get("command")
    words = shlex.split(command) if isinstance(command, str) else list(command or [])
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(words[2])
        if words[0] == "exec":
            words = words[1:]
    return [str(word) for word in words]


def interpolate(value: str) -> str:
    """``value`` as compose reads it with no variable set: ``${NAME:-default}`` is the default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda match: match[1] or "", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): interpolate(str(value)) for key, value in env.items()}


def test_it_defines_redis_app_and_bench_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "app", "bench"} <= set(services)


def test_every_service_has_an_image_or_a_buildable_context(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (ROOT / context / (dockerfile or "Dockerfile")).is_file(), name


def test_the_dockerfile_copies_only_paths_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source


def test_redis_is_a_redis_image_with_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:")
    assert "redis-cli" in redis["healthcheck"]["test"]


APP_TARGETS = ("app", "app-cluster")


def dockerfile_stages() -> dict[str, list[str]]:
    """Each stage's instructions, its parent stages' first (``FROM <stage> AS <name>``)."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if match:
            parent, name = match.groups()
            current = [*stages.get(parent, []), line]
            stages[name] = current
        elif current:
            if current[-1].endswith("\\"):
                current[-1] = current[-1][:-1] + " " + line
            else:
                current.append(line)
    return stages


def build_target(service: dict[str, Any]) -> str | None:
    build = service.get("build")
    return build.get("target") if isinstance(build, dict) else None


def run_with_env(code: str, env: dict[str, str]) -> str:
    """Run ``code`` in a fresh interpreter from the repository root, with only ``env`` as
    the PUBSUB_ settings (as the container would)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_app_runs_the_demo_under_gunicorn_with_its_config_file(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_TARGETS:
        words = command_words(services[name])
        assert words[0] == "gunicorn", name
        config = option(words, "-c")
        assert (ROOT / config).is_file(), config
        assert words[-1] == "fastapi_pubsub_cluster.demo.asgi:app", name


def test_the_asgi_app_the_compose_command_names_imports_and_has_a_healthz_route(
    services: dict[str, dict[str, Any]],
) -> None:
    module, _, attribute = command_words(services["app"])[-1].partition(":")
    code = (
        "import importlib\n"
        f"app = getattr(importlib.import_module({module!r}), {attribute!r})\n"
        "print(*sorted(getattr(route, 'path', '') for route in app.routes))\n"
    )
    env = {k: v for k, v in environment(services["app"]).items() if k.startswith("PUBSUB_")}
    assert "/healthz" in run_with_env(code, env).split()


def test_the_gunicorn_config_uses_the_fast_path_worker_class(
    services: dict[str, dict[str, Any]],
) -> None:
    from uvicorn_worker import UvicornWorker

    config = option(command_words(services["app"]), "-c")
    env = environment(services["app"])
    code = f"import runpy\nprint(runpy.run_path({config!r})['worker_class'])\n"
    dotted = run_with_env(code, env).strip()
    module, _, name = dotted.rpartition(".")
    worker = getattr(importlib.import_module(module), name)
    assert issubclass(worker, UvicornWorker)
    protocol_module, _, protocol = worker.CONFIG_KWARGS["ws"].partition(":")
    assert hasattr(importlib.import_module(protocol_module), protocol)
    assert worker.CONFIG_KWARGS["ws_per_message_deflate"] is True


def test_the_app_listens_on_the_published_port_with_several_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    app = services["app"]
    env = environment(app)
    assert int(env["WEB_CONCURRENCY"]) > 1
    assert env["BIND"] == "0.0.0.0:8000"
    assert "8000:8000" in [str(port) for port in app["ports"]]


def test_the_app_healthcheck_asks_the_healthz_route_that_pings_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_TARGETS:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "http://127.0.0.1:8000/healthz" in test, name
        assert "urlopen" in test, name  # raises on 503, so the check fails while Redis is down


def test_every_build_target_named_by_compose_is_a_dockerfile_stage(
    services: dict[str, dict[str, Any]],
) -> None:
    stages = dockerfile_stages()
    targets = {build_target(service) for service in services.values() if "build" in service}
    assert None not in targets  # a multi-stage Dockerfile: every service names its stage
    assert targets <= set(stages)
    for name in APP_TARGETS:
        assert build_target(services[name]) == "app", name
    assert build_target(services["bench"]) == "bench"


def test_the_app_image_is_slim_non_root_and_installs_dependencies_before_the_source() -> None:
    app = dockerfile_stages()["app"]
    assert app[0].startswith("FROM python:") and "-slim" in app[0]
    assert not any("bench" in line for line in app), "the app image installs no bench extra"
    users = [line.split()[1] for line in app if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")

    def first(predicate: Any) -> int:
        return next(i for i, line in enumerate(app) if predicate(line))

    pyproject = first(lambda line: line.startswith("COPY") and "pyproject.toml" in line)
    dependencies = first(lambda line: line.startswith("RUN") and "pip install -r" in line)
    source = first(lambda line: line.startswith("COPY fastapi_pubsub_cluster"))
    assert pyproject < dependencies < source


def test_the_bench_image_installs_the_bench_extra_and_the_benchmarks() -> None:
    bench = dockerfile_stages()["bench"]
    assert any("requirements.py bench" in line for line in bench)
    assert any(line.startswith("COPY benchmarks") for line in bench)


def test_the_images_copy_what_their_commands_run(services: dict[str, dict[str, Any]]) -> None:
    stages = dockerfile_stages()
    app_copies = " ".join(line for line in stages["app"] if line.startswith("COPY"))
    assert option(command_words(services["app"]), "-c") in app_copies
    assert services["publisher"]["entrypoint"][1] in app_copies


def test_redis_is_published_for_publishers_outside_compose(
    services: dict[str, dict[str, Any]],
) -> None:
    assert "6379:6379" in [str(port) for port in services["redis"]["ports"]]


def test_the_publisher_reaches_the_apps_clients(services: dict[str, dict[str, Any]]) -> None:
    publisher, app = services["publisher"], services["app"]
    assert publisher["profiles"] == ["publisher"]
    script = ROOT / publisher["entrypoint"][1]
    assert publisher["entrypoint"][0] == "python" and script.is_file()

    def settings_of(service: dict[str, Any]) -> PubSubSettings:
        env = environment(service)
        return PubSubSettings.from_env({k: v for k, v in env.items() if k.startswith("PUBSUB_")})

    # The same Redis and the same key prefix, or the message reaches no worker.
    assert settings_of(publisher).redis_url == settings_of(app).redis_url
    assert settings_of(publisher).key_prefix == settings_of(app).key_prefix


def test_the_app_is_configured_only_through_settings_the_library_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = {PubSubSettings.environment_variable(name) for name in PubSubSettings.model_fields}
    pubsub_vars = {k: v for k, v in environment(services["app"]).items() if k.startswith("PUBSUB_")}
    assert set(pubsub_vars) <= known
    PubSubSettings.from_env(pubsub_vars)  # valid values, not only valid names


def test_the_app_and_the_benchmarks_use_the_compose_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, variable in (("app", "PUBSUB_REDIS_URL"), ("bench", "REDIS_URL")):
        url = urlparse(environment(services[name])[variable])
        assert url.scheme == "redis"
        assert url.hostname == "redis"
        assert url.port in (None, 6379)
        assert "redis" in services[name]["depends_on"]


def test_bench_runs_the_benchmarks_package(services: dict[str, dict[str, Any]]) -> None:
    words = command_words(services["bench"])
    assert words[1:3] == ["-m", "benchmarks"]
    assert (ROOT / "benchmarks" / "__main__.py").is_file()
    assert importlib.util.find_spec("benchmarks") is not None


CLUSTER_NODES = ("redis-node-1", "redis-node-2", "redis-node-3")


def profile_services(services: dict[str, dict[str, Any]], profile: str) -> set[str]:
    return {name for name, service in services.items() if profile in service.get("profiles", [])}


def option(words: list[str], name: str) -> str:
    assert name in words, name
    return words[words.index(name) + 1]


def test_the_cluster_profile_has_three_nodes_an_init_and_an_app(
    services: dict[str, dict[str, Any]],
) -> None:
    assert profile_services(services, "cluster") == {*CLUSTER_NODES, "cluster-init", "app-cluster"}
    # the default services stay outside the profile
    for name in ("redis", "app"):
        assert "profiles" not in services[name], name


def test_every_cluster_node_is_a_cluster_enabled_redis_that_announces_its_name(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in CLUSTER_NODES:
        node = services[name]
        assert str(node["image"]).startswith("redis:7"), name
        words = command_words(node)
        assert words[0] == "redis-server", name
        assert option(words, "--cluster-enabled") == "yes", name
        assert option(words, "--cluster-announce-hostname") == name, name
        assert option(words, "--cluster-preferred-endpoint-type") == "hostname", name
        assert "--port" not in words or option(words, "--port") == "6379", name
        assert "redis-cli" in node["healthcheck"]["test"], name


def test_cluster_init_creates_the_cluster_from_every_node_once_they_are_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["cluster-init"]
    assert str(init["image"]).startswith("redis:7")
    assert str(init.get("restart", "no")) == "no"
    command = init["command"]
    script = command[2] if command[:2] == ["sh", "-c"] else " ".join(command)
    assert "redis-cli --cluster create " in script
    words = shlex.split(script.replace(";", " ; "))
    assert option(words, "--cluster-replicas") == "0"
    assert "--cluster-yes" in words
    for name in CLUSTER_NODES:
        assert name in script, name  # resolved to its address (CLUSTER MEET takes IPs)
        assert init["depends_on"][name]["condition"] == "service_healthy", name


def test_the_cluster_app_runs_the_example_app_on_a_cluster_url_of_the_three_nodes(
    services: dict[str, dict[str, Any]],
) -> None:
    from fastapi_pubsub_cluster.backends.redis.clients import RedisEndpoint, is_cluster_url

    app, plain = services["app-cluster"], services["app"]
    assert command_words(app) == command_words(plain)
    env = environment(app)
    url = env["PUBSUB_REDIS_URL"]
    assert is_cluster_url(url)
    hosts = urlparse(url).netloc.split(",")
    assert sorted(hosts) == [f"{name}:6379" for name in CLUSTER_NODES]
    pubsub_vars = {k: v for k, v in env.items() if k.startswith("PUBSUB_")}
    settings = PubSubSettings.from_env(pubsub_vars)
    RedisEndpoint(url, settings, client_name=None)  # the library accepts the URL
    assert app["depends_on"]["cluster-init"]["condition"] == "service_completed_successfully"
    published = {str(port).split(":")[0] for port in plain.get("ports", [])}
    assert not published & {str(port).split(":")[0] for port in app.get("ports", [])}
