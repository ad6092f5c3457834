"""API keys, tenant isolation, per-tenant limits and log hygiene, over real HTTP and Redis."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from api.auth import authenticate, hash_key, load_keys, new_key
from genq.client import Client, GenqError
from shared.settings import Settings
from tests.support import GENQ, ROOT, start_api, wait_until

ACME_KEY = new_key()
GLOBEX_KEY = new_key()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two tenants, each with one key (only their hashes are configured)."""
    return settings.model_copy(
        update={"api_keys": f"acme:{hash_key(ACME_KEY)},globex:sha256:{hash_key(GLOBEX_KEY)}"}
    )


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


V1_ROUTES = [
    ("post", "/v1/jobs", {"prompt": "x"}),
    ("get", "/v1/jobs", None),
    ("get", "/v1/jobs/job_" + "0" * 32, None),
    ("get", "/v1/jobs/job_" + "0" * 32 + "/stream", None),
    ("post", "/v1/jobs/job_" + "0" * 32 + "/cancel", None),
    ("get", "/v1/models", None),
    ("post", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
    ("post", "/v1/completions", {"model": "tiny", "prompt": "x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), V1_ROUTES)
@pytest.mark.parametrize("key", [None, "wrong", "gq_" + "x" * 43, ""])
def test_every_v1_endpoint_needs_a_valid_key(http, store, method: str, path: str, body, key) -> None:
    resp = getattr(http, method)(path, json=body, headers=_auth(key) if key is not None else {})
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert not store.r.keys("genq:job:*")


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
def test_health_and_docs_stay_open(http, path: str) -> None:
    assert http.get(path).status_code == 200


def test_keys_file_stores_only_hashes_and_cli_prints_the_key_once(tmp_path: Path, settings: Settings) -> None:
    keys_file = tmp_path / "keys"
    out = subprocess.run(
        [*GENQ, "keys", "create", "--tenant", "initech", "--file", str(keys_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("gq_") and len(key) > 40
    stored = keys_file.read_text()
    assert key not in stored and hash_key(key) in stored
    loaded = load_keys(settings.model_copy(update={"api_keys": "", "api_keys_file": keys_file}))
    assert authenticate(loaded, f"Bearer {key}") == "initech"
    assert authenticate(loaded, f"Bearer {key}x") is None
    bad = subprocess.run(
        [*GENQ, "keys", "create", "--tenant", "no spaces", "--file", str(keys_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2


def test_malformed_key_configuration_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="64 hex"):
        load_keys(settings.model_copy(update={"api_keys": "acme:plaintextkey"}))


def test_tenants_cannot_see_each_others_jobs(http, store) -> None:
    job = http.post("/v1/jobs", json={"prompt": "acme secret"}, headers=_auth(ACME_KEY)).get_json()
    path = f"/v1/jobs/{job['id']}"
    assert http.get(path, headers=_auth(ACME_KEY)).status_code == 200
    unknown = http.get("/v1/jobs/job_" + "0" * 32, headers=_auth(GLOBEX_KEY))
    for method, suffix in [("get", ""), ("get", "/stream"), ("post", "/cancel")]:
        other = getattr(http, method)(path + suffix, headers=_auth(GLOBEX_KEY))
        assert other.status_code == 404, suffix
        assert other.get_json()["error"]["code"] == unknown.get_json()["error"]["code"] == "not_found"
    assert store.get(job["id"]).status.value == "queued"  # globex's cancel did nothing
    assert http.get("/v1/jobs", headers=_auth(GLOBEX_KEY)).get_json()["data"] == []
    mine = http.get("/v1/jobs", headers=_auth(ACME_KEY)).get_json()["data"]
    assert [j["id"] for j in mine] == [job["id"]]


def test_list_jobs_filters_and_pages(http) -> None:
    ids = [
        http.post("/v1/jobs", json={"prompt": f"p{i}"}, headers=_auth(ACME_KEY)).get_json()["id"]
        for i in range(5)
    ]
    http.post(f"/v1/jobs/{ids[1]}/cancel", headers=_auth(ACME_KEY))
    page = http.get("/v1/jobs?limit=2", headers=_auth(ACME_KEY)).get_json()
    assert [j["id"] for j in page["data"]] == [ids[4], ids[3]] and page["next_cursor"]
    rest = http.get(f"/v1/jobs?limit=10&cursor={page['next_cursor']}", headers=_auth(ACME_KEY)).get_json()
    assert [j["id"] for j in rest["data"]] == [ids[2], ids[1], ids[0]] and rest["next_cursor"] is None
    cancelled = http.get("/v1/jobs?status=cancelled", headers=_auth(ACME_KEY)).get_json()["data"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    for bad in ["limit=0", "limit=101", "status=nope", "cursor=abc", "extra=1"]:
        assert http.get(f"/v1/jobs?{bad}", headers=_auth(ACME_KEY)).status_code == 422, bad


def test_tenant_queued_cap(app, http, settings: Settings) -> None:
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued_per_tenant": 2})
    for _ in range(2):
        assert http.post("/v1/jobs", json={"prompt": "x"}, headers=_auth(ACME_KEY)).status_code == 202
    full = http.post("/v1/jobs", json={"prompt": "x"}, headers=_auth(ACME_KEY))
    assert full.status_code == 429 and full.get_json()["error"]["code"] == "tenant_queue_full"
    assert full.headers["Retry-After"]
    # Another tenant is not held back by acme's backlog.
    assert http.post("/v1/jobs", json={"prompt": "x"}, headers=_auth(GLOBEX_KEY)).status_code == 202


def test_idempotency_keys_are_scoped_to_the_tenant(http) -> None:
    headers = {"Idempotency-Key": "same"}
    a = http.post("/v1/jobs", json={"prompt": "x"}, headers={**headers, **_auth(ACME_KEY)})
    b = http.post("/v1/jobs", json={"prompt": "x"}, headers={**headers, **_auth(GLOBEX_KEY)})
    assert a.status_code == b.status_code == 202 and a.get_json()["id"] != b.get_json()["id"]


def test_rate_limit_holds_across_two_api_processes(settings: Settings, tmp_path: Path) -> None:
    limited = settings.model_copy(update={"rate_limit": "6/minute"})
    procs = [start_api(limited, tmp_path / f"api{i}.log") for i in range(2)]
    try:
        clients = [Client(base, api_key=ACME_KEY) for _, base in procs]
        for i in range(6):
            clients[i % 2].models()
        for client in clients:
            with pytest.raises(GenqError) as refused:
                client.models()
            assert refused.value.status == 429 and refused.value.code == "rate_limited"
        # Each tenant has its own budget.
        assert Client(procs[0][1], api_key=GLOBEX_KEY).models()["object"] == "list"
    finally:
        for proc, _ in procs:
            proc.stop()


def test_logs_hold_no_keys_and_no_text_by_default(start_worker, api_server: str, tmp_path: Path) -> None:
    worker = start_worker()
    client = Client(api_server, api_key=ACME_KEY)
    secret = "SECRET-PROMPT-" + str(time.time_ns())
    done = client.wait(client.submit(secret, max_new_tokens=4)["id"], 60)
    assert done["status"] == "succeeded"
    # The worker logs the job just after storing its result, which the client may see first.
    wait_until(lambda: f"job {done['id']} succeeded" in worker.log(), 10, "the worker to log the job")
    logs = worker.log() + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert secret not in logs and ACME_KEY not in logs and done["output"]["text"] not in logs


def test_log_text_puts_prompts_in_worker_logs(start_worker, api_server: str) -> None:
    worker = start_worker(log_text=True)
    client = Client(api_server, api_key=ACME_KEY)
    done = client.wait(client.submit("VISIBLE-PROMPT", max_new_tokens=4)["id"], 60)
    assert done["status"] == "succeeded"
    wait_until(lambda: "VISIBLE-PROMPT" in worker.log(), 10, "the prompt in the worker log")


def test_open_mode_says_so_at_start(tmp_path: Path, settings: Settings) -> None:
    proc, base = start_api(settings.model_copy(update={"api_keys": ""}), tmp_path / "open.log")
    try:
        assert Client(base).models()["object"] == "list"  # no key needed
        assert "OPEN" in proc.log()
    finally:
        proc.stop()
