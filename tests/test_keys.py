"""Runtime keys, admin routes, tenants' limits and usage, through the app and real Redis.

Jobs here end through the real Lua transitions (claim, finish, cancel, requeue) without a model,
so that usage is counted by the very step that ends them; tests/test_keys_live.py runs workers.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from shared import keys
from shared.jobstore import JobStore
from shared.keystore import KeyStore, hash_key, parse_duration
from shared.schemas import Status
from shared.settings import Settings

STATIC_KEY = "gq_static-bootstrap-key-for-tests-000000000000"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A static bootstrap key, and no key cache (the two-process tests cover the cache)."""
    return settings.model_copy(update={"api_keys": f"boot:{hash_key(STATIC_KEY)}", "key_cache_s": 0.0})


@pytest.fixture
def keystore(store: JobStore) -> KeyStore:
    """The key store on the test's Redis, as the CLI uses it."""
    return KeyStore(store.r)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def end_job(
    store: JobStore, job_id: str, prompt: int, completion: int, status: Status = Status.SUCCEEDED
) -> None:
    """Run a job to its end through the real claim and finish steps, with this usage."""
    assert store.claim(job_id, "w-test", "cpu").outcome == "claimed"
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    assert store.finish(
        job_id, status, "w-test", usage=usage, output={"text": "x", "finish_reason": "length"}
    )


def test_runtime_key_works_and_its_record_holds_no_key(http, keystore: KeyStore, store: JobStore) -> None:
    key, record = keystore.create("acme", label="ci")
    resp = http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(key))
    assert resp.status_code == 202, resp.get_json()
    assert store.raw(resp.get_json()["id"])["key_id"] == record.id
    assert store.r.hget(keys.api_key(hash_key(key)), "id") == record.id  # found by its hash
    stored = {k: store.r.hgetall(k) if store.r.type(k) == "hash" else None for k in store.r.keys("genq:api*")}
    assert key not in json.dumps(stored)
    assert http.get("/v1/models", headers=bearer(STATIC_KEY)).status_code == 200  # bootstrap key still works


def test_revoked_and_expired_keys_say_so_only_to_their_holder(http, keystore: KeyStore) -> None:
    revoked, record = keystore.create("acme")
    expired, _ = keystore.create("acme", expires_in_s=1)
    keystore.revoke(record.id)
    time.sleep(1.1)
    for key, code in [(revoked, "key_revoked"), (expired, "key_expired")]:
        resp = http.get("/v1/models", headers=bearer(key))
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == code
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        # A stranger guessing near it learns nothing: the same answer as for any unknown key.
        near = http.get("/v1/models", headers=bearer(key[:-1] + ("A" if key[-1] != "A" else "B")))
        assert near.status_code == 401 and near.get_json()["error"]["code"] == "unauthorized"


def test_api_is_open_only_while_no_key_exists(keystore: KeyStore, settings: Settings) -> None:
    from api.app import create_app

    open_http = create_app(settings.model_copy(update={"api_keys": ""})).test_client()
    assert open_http.get("/v1/models").status_code == 200
    _, record = keystore.create("acme")
    keystore.revoke(record.id)  # a revoked key still closes the API: revoking never opens it
    assert open_http.get("/v1/models").status_code == 401


def test_admin_routes_need_an_admin_key(http, keystore: KeyStore) -> None:
    plain, _ = keystore.create("acme")
    for key in [plain, STATIC_KEY]:
        assert http.get("/v1/admin/keys", headers=bearer(key)).status_code == 403
        assert http.post("/v1/admin/keys", json={"tenant": "x"}, headers=bearer(key)).status_code == 403
    assert http.get("/v1/admin/keys").status_code == 401


def test_admin_creates_lists_and_revokes_keys_and_each_writes_one_audit_line(
    http, keystore: KeyStore, store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    admin, admin_record = keystore.create("ops", admin=True)
    caplog.set_level(logging.INFO, logger="genq.audit")
    caplog.clear()
    made = http.post(
        "/v1/admin/keys",
        json={"tenant": "acme", "label": "billing", "expires_in": "90d"},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.get_json()
    new = made.get_json()
    assert new["key"].startswith("gq_") and new["tenant"] == "acme" and new["state"] == "active"
    assert abs(new["expires"] - new["created"] - parse_duration("90d")) < 1
    assert http.get("/v1/models", headers=bearer(new["key"])).status_code == 200
    listed = http.get("/v1/admin/keys?tenant=acme", headers=bearer(admin))
    text = listed.get_data(as_text=True)
    assert [k["id"] for k in listed.get_json()["data"]] == [new["id"]]
    assert new["key"] not in text and hash_key(new["key"]) not in text and new["key"][:7] in text
    assert http.delete(f"/v1/admin/keys/{new['id']}", headers=bearer(admin)).get_json()["state"] == "revoked"
    assert http.get("/v1/models", headers=bearer(new["key"])).get_json()["error"]["code"] == "key_revoked"
    assert http.delete("/v1/admin/keys/key_nope", headers=bearer(admin)).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "genq.audit"]
    assert len(lines) == 2, lines
    assert "key_created" in lines[0] and "key_revoked" in lines[1]
    assert all(new["id"] in line and admin_record.id in line for line in lines)
    assert all(new["key"] not in line and hash_key(new["key"]) not in line for line in lines)
    assert [e["action"] for _, e in store.r.xrange(keys.AUDIT)][-2:] == ["key_created", "key_revoked"]


@pytest.mark.parametrize(
    "body",
    [{}, {"tenant": "no spaces"}, {"tenant": "a", "expires_in": "soon"}, {"tenant": "a", "extra": 1}, []],
)
def test_admin_key_create_names_bad_input(http, keystore: KeyStore, body: object) -> None:
    admin, _ = keystore.create("ops", admin=True)
    resp = http.post("/v1/admin/keys", json=body, headers=bearer(admin))
    assert resp.status_code == 422, resp.get_json()
    assert not list(keystore.records("a"))


def test_admin_key_cannot_read_other_tenants_jobs(http, keystore: KeyStore) -> None:
    acme, _ = keystore.create("acme")
    admin, _ = keystore.create("ops", admin=True)
    job = http.post("/v1/jobs", json={"prompt": "acme only"}, headers=bearer(acme)).get_json()
    assert http.get(f"/v1/jobs/{job['id']}", headers=bearer(admin)).status_code == 404
    assert http.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin)).status_code == 404
    assert http.get("/v1/jobs", headers=bearer(admin)).get_json()["data"] == []


def test_tenant_limits_override_the_defaults(http, keystore: KeyStore) -> None:
    admin, _ = keystore.create("ops", admin=True)
    acme, _ = keystore.create("acme")
    globex, _ = keystore.create("globex")
    resp = http.patch(
        "/v1/admin/tenants/acme/limits",
        json={"max_queued": 1, "requests_per_minute": 5},
        headers=bearer(admin),
    )
    assert resp.get_json()["effective"]["max_queued"] == 1, resp.get_json()
    assert http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(acme)).status_code == 202
    full = http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(acme))
    assert full.status_code == 429 and full.get_json()["error"]["code"] == "tenant_queue_full"
    assert http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(globex)).status_code == 202
    codes = [http.get("/v1/models", headers=bearer(acme)).status_code for _ in range(6)]
    assert codes[-1] == 429 and http.get("/v1/models", headers=bearer(globex)).status_code == 200
    cleared = http.patch("/v1/admin/tenants/acme/limits", json={"max_queued": None}, headers=bearer(admin))
    assert cleared.get_json()["overrides"] == {"requests_per_minute": 5}
    assert (
        http.patch(
            "/v1/admin/tenants/acme/limits", json={"max_queued": -1}, headers=bearer(admin)
        ).status_code
        == 422
    )


def test_budget_refuses_new_jobs_until_midnight_utc_and_accepted_jobs_still_run(
    http, keystore: KeyStore, store: JobStore
) -> None:
    keystore.set_limits("acme", {"tokens_per_day": 100})
    acme, _ = keystore.create("acme")
    globex, _ = keystore.create("globex")
    first = http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(acme)).get_json()["id"]
    second = http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(acme)).get_json()["id"]
    end_job(store, first, 60, 40)  # 100 tokens: the budget is spent
    over = http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(acme))
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "budget_exceeded"
    to_midnight = 86_400 - time.time() % 86_400
    assert abs(int(over.headers["Retry-After"]) - to_midnight) <= 2
    batch = http.post(
        "/v1/batches", json={"requests": [{"custom_id": "a", "prompt": "x"}]}, headers=bearer(acme)
    )
    assert batch.status_code == 429 and batch.get_json()["error"]["code"] == "budget_exceeded"
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    openai = http.post("/v1/chat/completions", json=chat, headers=bearer(acme))
    assert openai.status_code == 429 and openai.get_json()["error"]["code"] == "insufficient_quota"
    assert http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(globex)).status_code == 202
    end_job(store, second, 10, 10)  # accepted before: it still runs and counts
    assert http.get("/v1/usage", headers=bearer(acme)).get_json()["total_tokens"] == 120


def test_usage_is_counted_once_per_job_whatever_ends_it(http, keystore: KeyStore, store: JobStore) -> None:
    key_a, rec_a = keystore.create("acme")
    key_b, rec_b = keystore.create("acme")
    ids = [
        http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(k)).get_json()["id"]
        for k in (key_a, key_a, key_b, key_b)
    ]
    end_job(store, ids[0], 5, 7)
    assert not store.finish(ids[0], Status.FAILED, "")  # a second end is refused, and not counted
    end_job(store, ids[1], 3, 0, Status.FAILED)
    assert store.cancel(ids[2]) == "cancelled"
    assert store.claim(ids[3], "w-dead", "cpu").outcome == "claimed"  # its worker dies: lease lapses twice
    store.r.zadd(keys.RUNNING, {ids[3]: 0})
    assert store.requeue(ids[3], max_attempts=2) == "requeued"
    assert store.claim(ids[3], "w-dead", "cpu").outcome == "claimed"
    store.r.zadd(keys.RUNNING, {ids[3]: 0})
    assert store.requeue(ids[3], max_attempts=2) == "failed"
    got = http.get("/v1/usage", headers=bearer(key_a)).get_json()
    assert got["jobs"] == {"succeeded": 1, "failed": 2, "cancelled": 1}
    assert (got["prompt_tokens"], got["completion_tokens"], got["total_tokens"]) == (8, 7, 15)
    per_key = {k["key_id"]: k for k in got["keys"]}
    assert per_key[rec_a.id]["jobs"] == {"succeeded": 1, "failed": 1, "cancelled": 0}
    assert per_key[rec_b.id]["jobs"] == {"succeeded": 0, "failed": 1, "cancelled": 1}
    assert per_key[rec_a.id]["total_tokens"] == 15 and per_key[rec_b.id]["total_tokens"] == 0
    assert [d["date"] for d in got["days"]] == [got["start"]]


def test_usage_ranges_and_admin_view(http, keystore: KeyStore, store: JobStore) -> None:
    acme, _ = keystore.create("acme")
    admin, _ = keystore.create("ops", admin=True)
    end_job(store, http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(acme)).get_json()["id"], 2, 3)
    mine = http.get("/v1/usage", headers=bearer(admin)).get_json()
    assert mine["tenant"] == "ops" and mine["total_tokens"] == 0  # an admin's own usage is its tenant's
    theirs = http.get("/v1/admin/tenants/acme/usage?start=2020-01-01&end=2020-12-31", headers=bearer(admin))
    assert theirs.get_json()["total_tokens"] == 0 and theirs.get_json()["days"] == []
    today = http.get("/v1/admin/tenants/acme/usage", headers=bearer(admin)).get_json()
    assert today["total_tokens"] == 5
    assert http.get("/v1/admin/tenants/acme/usage", headers=bearer(acme)).status_code == 403
    for bad in ["start=yesterday", "start=2026-02-01&end=2026-01-01", "start=2020-01-01&end=2026-01-01"]:
        resp = http.get(f"/v1/usage?{bad}", headers=bearer(acme))
        assert resp.status_code == 422 and resp.get_json()["error"]["details"], bad


def test_prometheus_per_tenant_counters_are_capped(
    http, keystore: KeyStore, store: JobStore, settings: Settings
) -> None:
    for tenant in ("acme", "globex"):
        key, _ = keystore.create(tenant)
        end_job(
            store, http.post("/v1/jobs", json={"prompt": "x"}, headers=bearer(key)).get_json()["id"], 1, 2
        )
    text = http.get("/metrics").get_data(as_text=True)
    assert 'genq_tenant_jobs_total{status="succeeded",tenant="acme"} 1.0' in text
    assert 'genq_tenant_tokens_total{kind="completion",tenant="globex"} 2.0' in text
    from api.app import create_app

    capped = create_app(settings.model_copy(update={"metrics_max_tenants": 1})).test_client().get("/metrics")
    text = capped.get_data(as_text=True)
    assert "genq_tenants 2.0" in text and "genq_tenant_jobs_total" not in text


def test_redis_down_at_auth_never_lets_a_job_in_unverified(settings: Settings) -> None:
    from api.app import create_app
    from genq.supervisor import free_port

    dead = settings.model_copy(update={"api_keys": "", "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    http = create_app(dead).test_client()
    assert http.post("/v1/jobs", json={"prompt": "x", "temperature": -1}).status_code == 422  # still named
    refused = http.post("/v1/jobs", json={"prompt": "x"})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert http.get("/v1/models", headers=bearer("gq_anything")).status_code == 503
