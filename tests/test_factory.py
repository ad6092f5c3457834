"""The app factory: independent apps per Settings, nothing read at import, no torch in the API."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from api.app import create_app
from shared.settings import Settings
from tests.support import ROOT


def _env(**extra: str) -> dict[str, str]:
    """Return the environment for a child Python on this checkout, without the suite's GENQ_* vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_apps_from_different_settings_are_independent(settings: Settings) -> None:
    small = create_app(settings.model_copy(update={"max_body_bytes": 1024}))
    large = create_app(settings.model_copy(update={"max_body_bytes": 4096}))
    body = {"prompt": "x" * 2000}
    assert small.test_client().post("/v1/jobs", json=body).status_code == 413
    assert large.test_client().post("/v1/jobs", json=body).status_code == 202
    assert (
        small.test_client().post("/v1/jobs", json=body).status_code == 413
    )  # building large changed nothing
    assert small.extensions["genq"].settings.max_body_bytes == 1024
    assert large.extensions["genq"].settings.max_body_bytes == 4096
    assert small.extensions["genq"].store is not large.extensions["genq"].store


def test_apps_use_their_own_catalog(settings: Settings) -> None:
    only_tiny = create_app(settings.model_copy(update={"models": settings.models[:1]})).test_client()
    full = create_app(settings).test_client()
    body = {"prompt": "x", "model": "smollm2-135m-instruct"}
    assert only_tiny.post("/v1/jobs", json=body).status_code == 422
    assert full.post("/v1/jobs", json=body).status_code == 202
    assert [m["name"] for m in only_tiny.get("/v1/models").get_json()["data"]] == ["tiny"]


def test_create_app_with_explicit_settings_ignores_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENQ_PORT", "not-a-port")
    app = create_app(settings)
    assert app.test_client().get("/healthz").status_code == 200
    with pytest.raises(ValidationError, match="port"):
        Settings()
    with pytest.raises(ValidationError, match="port"):
        create_app()  # without settings, the factory reads GENQ_* then, and only then


def test_create_app_without_settings_reads_the_environment(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENQ_REDIS_URL", redis_url)
    monkeypatch.setenv("GENQ_MAX_BODY_BYTES", "2048")
    app = create_app()
    context = app.extensions["genq"]
    context.sweeper.set()  # a served app sweeps; stop it before it races other tests' sweeps
    assert context.settings.redis_url == redis_url
    assert app.config["MAX_CONTENT_LENGTH"] == 2048


def test_importing_the_api_reads_no_environment() -> None:
    code = (
        "import api, api.app, api.jobs, api.meta, api.errors, api.openapi\n"
        "import shared.celery_app, shared.jobstore\n"
        "from pydantic import ValidationError\n"
        "from shared.settings import Settings\n"
        "try:\n"
        "    Settings()\n"
        "except ValidationError:\n"
        "    print('settings-refused')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(GENQ_PORT="garbage"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "settings-refused"


def test_the_api_never_imports_torch_or_transformers(redis_url: str) -> None:
    code = (
        "import sys, api.app, api.jobs\n"
        "from api.app import create_app\n"
        "from shared.settings import Settings\n"
        f"app = create_app(Settings(redis_url={redis_url!r}))\n"
        "http = app.test_client()\n"
        "assert http.post('/v1/jobs', json={'prompt': 'x'}).status_code == 202\n"
        "assert http.get('/v1/models').status_code == 200\n"
        "assert http.get('/openapi.json').status_code == 200\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "clean"  # after the API's log lines (stdout too)
