"""compose.yaml runs what exists: the services, their images, commands and settings."""

from __future__ import annotations

import importlib.util
import re
import shlex
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


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def module_path(dotted: str) -> Path:
    return ROOT.joinpath(*dotted.split(".")).with_suffix(".py")


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


def test_the_app_runs_an_existing_asgi_app_under_uvicorn_with_several_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    words = command_words(services["app"])
    assert words[0] == "uvicorn"
    module, _, attribute = words[1].partition(":")
    path = module_path(module)
    assert path.is_file(), path
    assert re.search(rf"^{attribute}\s*=", path.read_text(encoding="utf-8"), re.MULTILINE)
    assert "--workers" in words
    assert words[words.index("--host") + 1] == "0.0.0.0"


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
    from fastapi_pubsub_cluster.redis_clients import RedisEndpoint, is_cluster_url

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
