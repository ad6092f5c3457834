"""Hostile input: schemathesis fuzzes the live API from its own /openapi.json; no 5xx, nothing off-schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from genq.client import Client, GenqError
from shared import usage
from shared.jobstore import JobStore
from shared.keystore import KeyStore
from shared.settings import ModelSpec, Settings
from tests.support import Proc

MAX_EXAMPLES = 40  # fuzzed requests per operation; the coverage phase adds its boundary cases
SEED = 20240601  # the same requests on every run, so a failure reproduces
REQUEST_TIMEOUT_S = 15  # per request; nothing here waits on a running job
KNOWN_JOB_ODDS = 0.5  # how often a {job_id} is a real job (or a body's model the real one) when fuzzing
MAX_NEW_TOKENS_CAP = 32  # keeps the jobs fuzzing submits short, so the worker keeps up and stops quickly
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def settings(settings: Settings, tiny_spec: ModelSpec) -> Settings:
    """Only the tiny model, with a small cap (fuzzing may ask for the cap, and ignore_eos)."""
    tiny = tiny_spec.model_copy(update={"max_new_tokens_cap": MAX_NEW_TOKENS_CAP})
    return settings.model_copy(update={"models": [tiny]})


@pytest.fixture
def ended_jobs(start_worker: Callable[..., Proc], client: Client) -> dict[str, str]:
    """Start a worker and end one job each way; return their ids by status."""
    start_worker()
    ok = client.submit("Hello", max_new_tokens=4, metadata={"k": [1, {"x": None}]})
    expired = client.submit("Late", max_new_tokens=4, timeout_s=0.001)  # its deadline passes while queued
    cancelled = client.submit("Count", max_new_tokens=MAX_NEW_TOKENS_CAP, priority="batch")
    try:
        client.cancel(cancelled["id"])
    except GenqError as exc:  # it may already have ended; its stream is checked whatever the ending
        assert exc.status == 409, exc
    jobs = {client.wait(j["id"], 60)["status"]: j["id"] for j in (ok, expired, cancelled)}
    assert {"succeeded", "failed"} <= jobs.keys(), jobs
    return jobs


@pytest.fixture
def api_schema(api_server: str, ended_jobs: dict[str, str]) -> schemathesis.BaseSchema:
    """The live API's own OpenAPI document; real job ids and the real model seed the fuzzing."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT_S,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "dictionaries": {"jobs": {"values": list(ended_jobs.values())}, "models": {"values": ["tiny"]}},
            "parameters": {
                "path.job_id": {"dictionary": "jobs", "probability": KNOWN_JOB_ODDS},
                "body.model": {"dictionary": "models", "probability": KNOWN_JOB_ODDS},
            },
        }
    )
    return schemathesis.openapi.from_url(f"{api_server}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _restore_nodeid(request: pytest.FixtureRequest) -> None:
    # HACK: schemathesis 4.32.5's lazy loader reads `node._nodeid`, which pytest 9.2 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.mark.timeout(180)
@schema.parametrize()
@hypothesis_settings(deadline=None)
def test_fuzzed_requests_get_documented_answers(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def good_requests(jobs: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Requests that must succeed, so every success body and event stream is checked at least once."""
    model = {"model": "tiny"}
    chat = {**model, "messages": CHAT, "max_tokens": 4}
    completion = {**model, "prompt": "Hi", "max_tokens": 4}
    return [
        ("POST", "/v1/jobs", {"body": {**model, "prompt": "Hi", "max_new_tokens": 4}}),
        ("POST", "/v1/jobs", {"body": {**model, "messages": CHAT, "stop": ["x"], "seed": 1}}),
        ("GET", "/v1/jobs", {"query": {"limit": 2}}),
        *[("GET", "/v1/jobs/{job_id}", {"path_parameters": {"job_id": j}}) for j in jobs.values()],
        *[("GET", "/v1/jobs/{job_id}/stream", {"path_parameters": {"job_id": j}}) for j in jobs.values()],
        ("POST", "/v1/jobs/{job_id}/cancel", {"path_parameters": {"job_id": jobs["succeeded"]}}),
        ("GET", "/v1/models", {}),
        ("GET", "/readyz", {}),
        ("POST", "/v1/chat/completions", {"body": chat}),
        ("POST", "/v1/chat/completions", {"body": {**chat, "stream": True}}),
        ("POST", "/v1/completions", {"body": completion}),
        ("POST", "/v1/completions", {"body": {**completion, "stream": True}}),
    ]


@pytest.mark.timeout(120)
def test_good_requests_get_documented_answers(
    api_schema: schemathesis.BaseSchema, ended_jobs, subtests
) -> None:
    for method, path, parts in good_requests(ended_jobs):
        with subtests.test(msg=f"{method} {path} {parts}"):
            case = api_schema[path][method].Case(**parts)
            response = case.call_and_validate(checks=CHECKS)
            assert response.status_code < 300 or path.endswith("/cancel"), response.text


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin_key(store: JobStore) -> dict[str, str]:
    """An admin key of tenant ops, and another key (of acme) for it to revoke; keys now guard every route."""
    keystore = KeyStore(store.r)
    admin, _ = keystore.create("ops", admin=True)
    _, other = keystore.create("acme", label="to revoke")
    return {"key": admin, "other_id": other.id}


@pytest.fixture
def admin_schema(admin_key: dict[str, str], api_server: str) -> schemathesis.BaseSchema:
    """The live API's admin and usage routes, called with an admin key made before the API starts."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT_S,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            # Never the admin's own tenant: fuzzed limits on it would throttle the fuzzing itself.
            "dictionaries": {"keys": {"values": [admin_key["other_id"]]}, "tenants": {"values": ["acme"]}},
            "parameters": {
                "path.key_id": {"dictionary": "keys", "probability": KNOWN_JOB_ODDS},
                "path.tenant": {"dictionary": "tenants", "probability": KNOWN_JOB_ODDS},
            },
        }
    )
    return schemathesis.openapi.from_url(f"{api_server}/openapi.json", config=config)


admin_ops = schemathesis.pytest.from_fixture("admin_schema").include(path_regex="^/v1/(admin/|usage)")


@pytest.mark.timeout(180)
@admin_ops.parametrize()
@hypothesis_settings(deadline=None)
def test_fuzzed_admin_requests_get_documented_answers(
    case: schemathesis.Case, admin_key: dict[str, str]
) -> None:
    case.call_and_validate(checks=CHECKS, headers=bearer(admin_key["key"]))


def good_admin_requests(other_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Admin and usage requests that must succeed, so each success body is checked against the document."""
    acme = {"path_parameters": {"tenant": "acme"}}
    week_ago = usage.today() - timedelta(days=7)
    return [
        ("POST", "/v1/admin/keys", {"body": {"tenant": "acme", "expires_in": "90d", "label": "ci"}}),
        ("GET", "/v1/admin/keys", {"query": {"tenant": "acme"}}),
        ("DELETE", "/v1/admin/keys/{key_id}", {"path_parameters": {"key_id": other_id}}),
        ("GET", "/v1/admin/keys", {}),
        ("PATCH", "/v1/admin/tenants/{tenant}/limits", {**acme, "body": {"max_queued": 3}}),
        ("GET", "/v1/admin/tenants/{tenant}/limits", acme),
        ("GET", "/v1/admin/tenants/{tenant}/usage", {**acme, "query": {"start": str(week_ago)}}),
        ("GET", "/v1/usage", {"query": {"start": "2026-01-01", "end": "2026-01-31"}}),
    ]


@pytest.mark.timeout(120)
def test_good_admin_requests_get_documented_answers(
    admin_schema: schemathesis.BaseSchema, admin_key: dict[str, str], subtests
) -> None:
    for method, path, parts in good_admin_requests(admin_key["other_id"]):
        with subtests.test(msg=f"{method} {path} {parts}"):
            case = admin_schema[path][method].Case(**parts)
            response = case.call_and_validate(checks=CHECKS, headers=bearer(admin_key["key"]))
            assert response.status_code < 300, response.text
