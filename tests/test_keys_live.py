"""Runtime keys against TWO API processes (gunicorn) and real workers: the CLI talks to Redis only.

A created or revoked key must take effect on every API process within 2 s (GENQ_KEY_CACHE_S is
1 s); usage must equal the sum of the jobs' own `usage`, whatever retries and lost workers happen.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from genq.client import Client, GenqError
from shared import keys
from shared.jobstore import JobStore
from shared.keystore import hash_key
from shared.schemas import Status
from shared.settings import CRASH_MARKER, Settings
from tests.support import GENQ, ROOT, Proc, settings_env, start_api, wait_until
from tests.test_faults import keep_alive

BOOT_KEY = "gq_live-bootstrap-key-000000000000000000000000"
EFFECT_S = 2.0  # the promise: a created or revoked key takes effect everywhere within this


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A static bootstrap key (so the API is never open), the default 1 s key cache."""
    return settings.model_copy(update={"api_keys": f"boot:{hash_key(BOOT_KEY)}", "key_cache_s": 1.0})


@pytest.fixture
def apis(settings: Settings, tmp_path: Path) -> Iterator[list[tuple[Proc, str]]]:
    """Two API processes on the same Redis."""
    procs = [start_api(settings, tmp_path / f"api{i}.log") for i in range(2)]
    yield procs
    for proc, _ in procs:
        proc.stop()


def genq_keys(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """Run `genq keys ...` as a user would, against the test's Redis; it must succeed."""
    out = subprocess.run(
        [*GENQ, "keys", *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def status_of(base: str, key: str) -> tuple[int, str]:
    """Return the HTTP status and error code (or 'ok') of GET /v1/models with this key."""
    try:
        Client(base, api_key=key, timeout_s=10).models()
        return 200, "ok"
    except GenqError as exc:
        return exc.status, exc.code


def usage_of(base: str, key: str) -> dict:
    """Return GET /v1/usage (today) for the key's tenant."""
    request = urllib.request.Request(f"{base}/v1/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def first_change(bases: list[str], key: str, expect: tuple[int, str], since: float) -> list[float]:
    """Poll each API until it answers expect; return, per API, seconds from since to the request that did."""
    lags = []
    for base in bases:
        while True:
            sent = time.monotonic()
            if status_of(base, key) == expect:
                lags.append(sent - since)
                break
            assert sent - since < 10 * EFFECT_S, f"{base} never answered {expect}"
            time.sleep(0.05)
    return lags


def test_created_revoked_and_expired_keys_take_effect_on_both_apis(
    apis: list[tuple[Proc, str]], settings: Settings, tmp_path: Path
) -> None:
    bases = [base for _, base in apis]
    created = genq_keys(settings, "create", "--tenant", "acme", "--label", "live")
    t_created = time.monotonic()
    key = created.stdout.splitlines()[0]
    assert key.startswith("gq_") and created.stdout.strip() == key  # alone, on the first line
    lags = first_change(bases, key, (200, "ok"), t_created)
    assert max(lags) <= EFFECT_S, lags

    listed = [genq_keys(settings, "list", *extra).stdout for extra in ([], ["--json"])]
    record = next(k for k in json.loads(listed[1]) if k["tenant"] == "acme")
    for text in listed:
        assert key not in text and hash_key(key) not in text and key[:7] in text and record["id"] in text
    assert record["label"] == "live" and record["state"] == "active"

    revoked = genq_keys(settings, "revoke", record["id"])
    t_revoked = time.monotonic()
    lags = first_change(bases, key, (401, "key_revoked"), t_revoked)
    assert max(lags) <= EFFECT_S, lags
    # Each API runs several processes, each with its own cache: the first refusal came from one of
    # them, and the promise covers all of them once EFFECT_S has passed.
    time.sleep(max(0.0, t_revoked + EFFECT_S - time.monotonic()))
    for base in bases * 3:  # and it stays refused
        assert status_of(base, key) == (401, "key_revoked")

    expiring = genq_keys(settings, "create", "--tenant", "acme", "--expires-in", "2s").stdout.splitlines()[0]
    wait_until(lambda: all(status_of(b, expiring) == (401, "key_expired") for b in bases), 10, "expiry")

    # No key, nor its hash, in anything the processes and the CLI wrote.
    outputs = [created.stdout + created.stderr, revoked.stdout + revoked.stderr]
    logs = "".join(proc.log() for proc, _ in apis) + "".join(outputs[1:]) + created.stderr
    for secret in (key, hash_key(key), expiring, hash_key(expiring), BOOT_KEY, hash_key(BOOT_KEY)):
        assert secret not in logs
    assert "key_created" in created.stderr and "key_revoked" in revoked.stderr  # the CLI's audit lines


def test_tenant_over_its_daily_budget_gets_429_on_both_apis_and_others_do_not(
    apis: list[tuple[Proc, str]], settings: Settings, store: JobStore
) -> None:
    bases = [base for _, base in apis]
    genq_keys(settings, "limits", "--tenant", "acme", "--tokens-per-day", "50")
    acme = genq_keys(settings, "create", "--tenant", "acme").stdout.strip()
    globex = genq_keys(settings, "create", "--tenant", "globex").stdout.strip()
    wait_until(lambda: all(status_of(b, k)[0] == 200 for b in bases for k in (acme, globex)), 10, "keys")
    job = Client(bases[0], api_key=acme).submit("spend", max_new_tokens=4)["id"]
    # Ended through the real Lua step (no model needed): 60 tokens, over the budget of 50.
    assert store.claim(job, "w-test", "cpu").outcome == "claimed"
    usage = {"prompt_tokens": 20, "completion_tokens": 40}
    assert store.finish(
        job, Status.SUCCEEDED, "w-test", usage=usage, output={"text": "x", "finish_reason": "length"}
    )
    for base in bases:
        with pytest.raises(GenqError) as refused:
            Client(base, api_key=acme).submit("more")
        assert refused.value.status == 429 and refused.value.code == "budget_exceeded"
        assert Client(base, api_key=globex).submit("fine")["status"] == "queued"
    spent = json.loads(genq_keys(settings, "usage", "--tenant", "acme").stdout)
    assert spent["total_tokens"] == 60 and spent["jobs"]["succeeded"] == 1


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    """Short leases and fault injection: a prompt with CRASH_MARKER SIGKILLs its worker."""
    return settings.model_copy(
        update={"lease_seconds": 3.0, "worker_ttl": 2.0, "fault_injection": True, "max_attempts": 2}
    )


@pytest.mark.slow
def test_usage_equals_the_sum_of_jobs_usage_after_retries_and_killed_workers(
    start_worker, fault_settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    overrides = {"lease_seconds": 3.0, "worker_ttl": 2.0, "fault_injection": True, "max_attempts": 2}
    api, base = start_api(fault_settings, tmp_path / "api-faults.log")
    try:
        made = {
            name: genq_keys(fault_settings, "create", "--tenant", tenant).stdout.strip()
            for name, tenant in [("a1", "acme"), ("a2", "acme"), ("g", "globex")]
        }
        clients = {name: Client(base, api_key=key, timeout_s=30) for name, key in made.items()}
        wait_until(lambda: all(status_of(base, k)[0] == 200 for k in made.values()), 10, "keys to work")
        workers = [start_worker(**overrides), start_worker(**overrides)]
        stop = threading.Event()
        supervisor = keep_alive(
            workers, lambda wait_ready=True: start_worker(wait_ready=wait_ready, **overrides), stop
        )
        jobs: dict[str, list[str]] = {name: [] for name in made}
        params = {"max_new_tokens": 40, "ignore_eos": True, "temperature": 0}
        for i in range(24):
            name = ("a1", "a2", "g")[i % 3]
            jobs[name].append(clients[name].submit(f"Job {i}: once upon a time", **params)["id"])
        # A poison job: it kills its worker on each of its 2 attempts, then fails worker_lost; the
        # jobs batched with it on those workers are retried.
        jobs["a1"].append(clients["a1"].submit(f"please {CRASH_MARKER} now", max_new_tokens=5)["id"])
        late = [clients["a2"].submit(f"late {i}", **params)["id"] for i in range(3)]
        jobs["a2"] += late
        for job_id in late[:2]:
            clients["a2"].cancel(job_id)  # cancelled queued, or stopped while running
        wait_until(lambda: store.r.zcard(keys.RUNNING) > 0, 60, "a running job")
        workers[0].signal(signal.SIGKILL)  # and one plain kill mid-generation
        ended = {n: [clients[n].wait(j, 240) for j in ids] for n, ids in jobs.items()}
        stop.set()
        supervisor.join(5)
        assert all(j["status"] in ("succeeded", "failed", "cancelled") for js in ended.values() for j in js)
        assert any(j["attempts"] > 1 for js in ended.values() for j in js), "no job was retried"
        poison = ended["a1"][-1]
        assert poison["status"] == "failed" and poison["error"]["code"] == "worker_lost"

        def expected(names: list[str]) -> dict:
            done = [j for n in names for j in ended[n]]
            usages = [j["usage"] or {} for j in done]
            return {
                "jobs": {s: n for s, n in Counter(j["status"] for j in done).items()},
                "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usages),
                "completion_tokens": sum(u.get("completion_tokens", 0) for u in usages),
            }

        for tenant, names in [("acme", ["a1", "a2"]), ("globex", ["g"])]:
            got = json.loads(genq_keys(fault_settings, "usage", "--tenant", tenant).stdout)
            want = expected(names)
            assert {s: n for s, n in got["jobs"].items() if n} == want["jobs"], tenant
            assert (got["prompt_tokens"], got["completion_tokens"]) == (
                want["prompt_tokens"],
                want["completion_tokens"],
            ), tenant
            assert want["completion_tokens"] > 0
        # Per key, through the HTTP route of the tenant itself.
        per_key = {k["key_id"]: k for k in usage_of(base, made["a1"])["keys"]}
        listed = {k["id"]: k for k in json.loads(genq_keys(fault_settings, "list", "--json").stdout)}
        assert len(per_key) == 2 and all(listed[k]["tenant"] == "acme" for k in per_key)
        assert sorted(k["completion_tokens"] for k in per_key.values()) == sorted(
            expected([n])["completion_tokens"] for n in ("a1", "a2")
        )
        logs = api.log() + "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
        for key in made.values():
            assert key not in logs and hash_key(key) not in logs
    finally:
        api.stop()
