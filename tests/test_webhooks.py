"""Webhooks: signed POSTs to a real receiver on 127.0.0.1, retries, slow receivers, refused URLs.

Every request these tests let out goes to 127.0.0.1; refused URLs are refused before anything is
sent, and names other than "localhost" are resolved by a stand-in for getaddrinfo.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from api.app import create_app
from genq.client import Client
from shared import keys
from shared.jobstore import JobStore
from shared.schemas import JobCreate, Status
from shared.settings import Settings
from shared.webhooks import RefusedURL, resolve, sign, verify_signature
from tests.support import wait_until
from worker.webhooks import WebhookSender

SECRET = "whsec_test_secret"
MAX_ATTEMPTS = 3  # per event, in these tests
SLOW_S = 3.0  # how long the slow receiver takes to answer


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks on, allowed to reach 127.0.0.1, with quick retries."""
    return settings.model_copy(
        update={
            "webhook_secret": SECRET,
            "webhook_allow_private": True,
            "webhook_backoff_s": 0.1,
            "webhook_max_attempts": MAX_ATTEMPTS,
        }
    )


class Receiver:
    """A webhook endpoint on 127.0.0.1 that verifies each signature and records each call.

    It answers the planned statuses in turn (the last one repeats), each after delay_s.
    """

    def __init__(self, statuses: tuple[int, ...] = (200,), delay_s: float = 0.0) -> None:
        self.statuses, self.delay_s = statuses, delay_s
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received = time.time()
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    n = len(receiver.calls)
                    call = {
                        "event": self.headers["X-Genq-Event"],
                        "delivery": self.headers["X-Genq-Delivery"],
                        "content_type": self.headers["Content-Type"],
                        "path": self.path,
                        "valid": verify_signature(SECRET, self.headers["X-Genq-Signature"], raw),
                        "body": json.loads(raw),
                        "received_at": received,
                    }
                    receiver.calls.append(call)
                time.sleep(receiver.delay_s)
                self.send_response(receiver.statuses[min(n, len(receiver.statuses) - 1)])
                self.send_header("Content-Length", "0")
                self.end_headers()
                call["answered_at"] = time.time()

            def log_message(self, *args: Any) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Return the URL to register (with a path and query, which must arrive intact)."""
        return f"http://127.0.0.1:{self.server.server_port}/hooks/genq?tenant=t1"

    def of(self, event: str) -> list[dict[str, Any]]:
        """Return the calls for one event, in arrival order."""
        with self.lock:
            return [c for c in self.calls if c["event"] == event]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on 127.0.0.1; each is stopped after the test."""
    started: list[Receiver] = []

    def _start(statuses: tuple[int, ...] = (200,), delay_s: float = 0.0) -> Receiver:
        started.append(Receiver(statuses, delay_s))
        return started[-1]

    yield _start
    for r in started:
        r.close()


def delivery(client: Client, job_id: str, event: str, status: str) -> dict[str, Any]:
    """Wait until a job's delivery of this event has reached this status; return the record."""

    def settled() -> dict[str, Any] | None:
        found = (client.get(job_id).get("webhook_deliveries") or {}).get(event)
        return found if found and found["status"] == status else None

    return wait_until(settled, 30, f"the {event} webhook to be {status}", 0.1)  # type: ignore[return-value]


# --- delivery, through real workers and the real API ------------------------------------------------


def test_started_and_completed_arrive_signed_with_the_job(start_worker, client: Client, receiver) -> None:
    start_worker()
    hook = receiver()
    job = client.submit(
        "The quick brown fox",
        max_new_tokens=8,
        temperature=0,
        webhook={"url": hook.url, "events": ["started", "completed"]},
    )
    done = client.wait(job["id"], 60)
    assert done["status"] == "succeeded"
    delivery(client, job["id"], "completed", "delivered")
    delivery(client, job["id"], "started", "delivered")
    assert {c["event"] for c in hook.calls} == {"started", "completed"}
    for call in hook.calls:
        assert call["valid"], call
        assert call["content_type"] == "application/json"
        assert call["path"] == "/hooks/genq?tenant=t1"
        assert call["body"]["id"] == job["id"] and call["body"]["event"] == call["event"]
    completed = hook.of("completed")[0]["body"]
    assert completed["status"] == "succeeded"
    assert completed["output"] == done["output"] and completed["usage"] == done["usage"]
    assert hook.of("started")[0]["delivery"] != hook.of("completed")[0]["delivery"]
    final = client.get(job["id"])["webhook_deliveries"]
    assert final == {
        "started": {"status": "delivered", "attempts": 1, "last_error": None},
        "completed": {"status": "delivered", "attempts": 1, "last_error": None},
    }


def test_only_the_chosen_events_are_sent(start_worker, client: Client, receiver) -> None:
    start_worker()
    hook = receiver()
    job = client.submit("Hello", max_new_tokens=4, webhook={"url": hook.url})  # default: completed
    client.wait(job["id"], 60)
    delivery(client, job["id"], "completed", "delivered")
    assert [c["event"] for c in hook.calls] == ["completed"]
    assert set(client.get(job["id"])["webhook_deliveries"]) == {"completed"}


def test_a_failing_receiver_is_retried_until_it_answers(start_worker, client: Client, receiver) -> None:
    start_worker(webhook_backoff_s=0.5)
    hook = receiver(statuses=(500, 500, 200))
    job = client.submit("Hello", max_new_tokens=4, webhook={"url": hook.url})
    assert client.wait(job["id"], 60)["status"] == "succeeded"
    record = delivery(client, job["id"], "completed", "delivered")
    assert record["attempts"] == 3 and record["last_error"] is None
    calls = hook.of("completed")
    assert len(calls) == 3 and all(c["valid"] for c in calls)
    assert len({c["delivery"] for c in calls}) == 1  # one delivery id across its retries
    gaps = [b["received_at"] - a["received_at"] for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0, gaps  # the backoff doubles: 0.5 s, then 1 s


def test_a_receiver_that_always_fails_ends_failed_after_max_attempts(
    start_worker, client: Client, receiver, store: JobStore
) -> None:
    start_worker()
    hook = receiver(statuses=(500,))
    job = client.submit("Hello", max_new_tokens=4, webhook={"url": hook.url})
    record = delivery(client, job["id"], "completed", "failed")
    assert record == {"status": "failed", "attempts": MAX_ATTEMPTS, "last_error": "HTTP 500"}
    time.sleep(1)  # nothing more is tried, and nothing is left scheduled
    assert len(hook.of("completed")) == MAX_ATTEMPTS
    assert store.r.zcard(keys.WEBHOOKS_DUE) == 0


def test_a_slow_receiver_does_not_delay_the_job(start_worker, client: Client, receiver) -> None:
    start_worker()
    hook = receiver(delay_s=SLOW_S)
    job = client.submit(
        "Hello", max_new_tokens=4, webhook={"url": hook.url, "events": ["started", "completed"]}
    )
    done = client.wait(job["id"], 60)
    assert done["status"] == "succeeded"
    assert done["finished_at"] - done["started_at"] < SLOW_S
    delivery(client, job["id"], "completed", "delivered")
    # The job ended before the receiver had answered (or even been sent) either webhook.
    assert all(done["finished_at"] < c["answered_at"] for c in hook.calls)
    assert {c["event"] for c in hook.calls} == {"started", "completed"}


# --- the sender, in-process ----------------------------------------------------------------------


def stored_job(store: JobStore, url: str, events: list[str]) -> str:
    """Store a job with a webhook straight into Redis (no URL check) and make it succeed."""
    job_id = "job_" + "1" * 32
    store.create(job_id, "tiny", JobCreate(prompt="x", model="tiny", webhook={"url": url, "events": events}))
    assert store.finish(job_id, Status.SUCCEEDED)
    return job_id


def scheduled(store: JobStore) -> list[tuple[str, str]]:
    """Return the (job or batch id, event) of every delivery waiting in Redis."""
    due = map(json.loads, store.r.zrange(keys.WEBHOOKS_DUE, 0, -1))
    return [(d.get("job_id") or d["batch_id"], d["event"]) for d in due]


def end_by_finish(store: JobStore, job_id: str) -> None:
    assert store.claim(job_id, "w", "cpu").outcome == "claimed"
    assert store.finish(job_id, Status.FAILED, holder="w")


def end_by_cancel(store: JobStore, job_id: str) -> None:
    assert store.cancel(job_id) == "cancelled"


def end_by_expiry(store: JobStore, job_id: str) -> None:
    store.r.hset(keys.job(job_id), "deadline", repr(time.time() - 1))
    assert store.claim(job_id, "w", "cpu").outcome == "expired"


def end_by_worker_loss(store: JobStore, job_id: str) -> None:
    assert store.claim(job_id, "w", "cpu", lease_s=-1).outcome == "claimed"  # its lease has already lapsed
    assert store.requeue(job_id, max_attempts=1) == "failed"


@pytest.mark.parametrize("end", [end_by_finish, end_by_cancel, end_by_expiry, end_by_worker_loss])
def test_every_way_a_job_ends_schedules_its_completed_webhook(
    store: JobStore, end: Callable[[JobStore, str], None]
) -> None:
    job_id = "job_" + "2" * 32
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["started", "completed"]}
    store.create(job_id, "tiny", JobCreate(prompt="x", model="tiny", webhook=hook))
    end(store, job_id)
    assert ("job_" + "2" * 32, "completed") in scheduled(store)
    assert store.get(job_id).webhook_deliveries["completed"].status == "pending"


def test_jobs_without_a_webhook_schedule_nothing(store: JobStore) -> None:
    store.create("job_" + "3" * 32, "tiny", JobCreate(prompt="x", model="tiny"))
    end_by_finish(store, "job_" + "3" * 32)
    assert scheduled(store) == [] and store.get("job_" + "3" * 32).webhook_deliveries is None


def test_delivery_rechecks_the_address_and_refuses_without_sending(
    settings: Settings, store: JobStore, receiver
) -> None:
    hook = receiver()
    # Accepted earlier, but now the host counts as private (as after a DNS rebinding): never sent.
    job_id = stored_job(store, hook.url, ["completed"])
    sender = WebhookSender(store, settings.model_copy(update={"webhook_allow_private": False}))
    assert sender.send_one()
    record = store.get(job_id).webhook_deliveries["completed"]
    assert record.status == "failed" and record.attempts == 1
    assert "loopback" in record.last_error
    assert hook.calls == [] and store.r.zcard(keys.WEBHOOKS_DUE) == 0


def test_a_delivery_taken_by_a_sender_that_dies_comes_due_again(
    settings: Settings, store: JobStore, receiver
) -> None:
    hook = receiver()
    job_id = stored_job(store, hook.url, ["completed"])
    dead = WebhookSender(store, settings)
    member = dead._take(keys=[keys.WEBHOOKS_DUE], args=[repr(time.time()), repr(time.time() + dead.lease_s)])
    assert member  # taken, then its sender "dies" before sending
    other = WebhookSender(store, settings)
    assert not other.send_one()  # leased: nobody else takes it meanwhile
    assert other.send_one(now=time.time() + dead.lease_s + 1)  # the lease lapsed: sent
    assert store.get(job_id).webhook_deliveries["completed"].status == "delivered"
    assert len(hook.calls) == 1


# --- a batch's own webhook -----------------------------------------------------------------------


def batch_delivery(client: Client, batch_id: str, event: str, status: str) -> dict[str, Any]:
    """Wait until a batch's delivery of this event has reached this status; return the record."""

    def settled() -> dict[str, Any] | None:
        found = (client.get_batch(batch_id).get("webhook_deliveries") or {}).get(event)
        return found if found and found["status"] == status else None

    return wait_until(settled, 60, f"the batch's {event} webhook to be {status}", 0.1)  # type: ignore[return-value]


def test_a_batch_webhook_fires_once_when_it_starts_and_once_when_it_ends(
    start_worker, client: Client, receiver, tmp_path
) -> None:
    start_worker()
    hook = receiver()
    item_hook = receiver()
    items = [{"custom_id": f"c{i}", "prompt": f"Item {i}:", "max_new_tokens": 4} for i in range(5)]
    items[0]["webhook"] = {"url": item_hook.url}  # an item's own webhook works beside the batch's
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    # A JSONL file with options goes as multipart: the file plus metadata and webhook fields.
    batch = client.create_batch(
        jsonl=path,
        metadata={"req": "R-7"},
        webhook={"url": hook.url, "events": ["started", "completed"]},
    )
    done = client.wait_batch(batch["id"], 120)
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 5
    assert done["started_at"] is not None and done["finished_at"] >= done["started_at"]
    batch_delivery(client, batch["id"], "completed", "delivered")
    batch_delivery(client, batch["id"], "started", "delivered")
    # Once each. Senders run in parallel, so a short batch's two events may arrive in either order.
    assert sorted(c["event"] for c in hook.calls) == ["completed", "started"]
    for call in hook.calls:
        assert call["valid"] and call["path"] == "/hooks/genq?tenant=t1"
        body = call["body"]
        assert body["id"] == batch["id"] and body["object"] == "batch" and body["event"] == call["event"]
        assert body["metadata"] == {"req": "R-7"} and "results" not in body
        assert call["delivery"] == f"{batch['id']}:{call['event']}"
    started, completed = hook.of("started")[0]["body"], hook.of("completed")[0]["body"]
    # Each POST carries the batch as it is when sent: with a tiny model it may have ended already.
    assert started["status"] in ("in_progress", "completed") and started["counts"]["total"] == 5
    assert completed["status"] == "completed" and completed["counts"]["succeeded"] == 5
    assert completed["finished_at"] == done["finished_at"]
    delivery(client, done["results"][0]["job_id"], "completed", "delivered")
    assert [c["body"]["id"] for c in item_hook.calls] == [done["results"][0]["job_id"]]
    assert client.get(done["results"][1]["job_id"])["batch_id"] == batch["id"]


def test_a_cancelled_batch_sends_completed_once(http, store: JobStore, receiver) -> None:
    hook = receiver()
    items = [{"custom_id": f"c{i}", "prompt": "x", "max_new_tokens": 2} for i in range(3)]
    webhook = {"url": hook.url, "events": ["started", "completed"]}
    resp = http.post("/v1/batches", json={"requests": items, "webhook": webhook})
    assert resp.status_code == 202, resp.get_json()
    batch_id = resp.get_json()["id"]
    assert scheduled(store) == []  # no worker: nothing has started
    assert http.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
    assert scheduled(store) == [(batch_id, "completed")]  # once, though three jobs ended
    public = http.get(f"/v1/batches/{batch_id}").get_json()
    assert public["status"] == "cancelled" and public["finished_at"] is not None
    assert public["started_at"] is None
    pending = {"status": "pending", "attempts": 0, "last_error": None}
    assert public["webhook_deliveries"] == {"completed": pending}


def test_a_batch_starts_once_and_ends_with_its_last_job(http, store: JobStore) -> None:
    webhook = {"url": "http://127.0.0.1:9/hook", "events": ["started", "completed"]}
    items = [{"custom_id": f"c{i}", "prompt": "x", "max_new_tokens": 2} for i in range(3)]
    batch_id = http.post("/v1/batches", json={"requests": items, "webhook": webhook}).get_json()["id"]
    jobs = [json.loads(item)[1] for item in store.r.lrange(keys.batch_items(batch_id), 0, -1)]
    for job_id in jobs:
        assert store.claim(job_id, "w", "cpu").outcome == "claimed"
    assert scheduled(store) == [(batch_id, "started")]  # the first claim only
    for job_id in jobs[:2]:
        assert store.finish(job_id, Status.SUCCEEDED, holder="w")
    assert scheduled(store) == [(batch_id, "started")]  # one job is still running
    assert store.finish(jobs[2], Status.FAILED, holder="w")
    assert sorted(scheduled(store)) == [(batch_id, "completed"), (batch_id, "started")]
    assert not store.finish(jobs[2], Status.FAILED, holder="w")  # a job ends once: no second event
    assert len(scheduled(store)) == 2


def test_a_withdrawn_batch_schedules_nothing_and_leaves_no_key(
    http, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    import api.batches

    real, sent = api.batches.enqueue, []

    def fail_on_the_third(*args: Any) -> None:
        if len(sent) == 2:
            raise redis.ConnectionError("Redis went away")
        sent.append(args)
        real(*args)

    monkeypatch.setattr(api.batches, "enqueue", fail_on_the_third)
    items = [{"custom_id": f"c{i}", "prompt": "x", "max_new_tokens": 2} for i in range(4)]
    webhook = {"url": "http://127.0.0.1:9/hook", "events": ["started", "completed"]}
    resp = http.post("/v1/batches", json={"requests": items, "webhook": webhook})
    assert resp.status_code == 503
    # Its four jobs were cancelled, yet the batch, withdrawn, neither completes nor comes back.
    assert scheduled(store) == [] and store.r.keys("genq:batch:*") == []


@pytest.mark.parametrize(
    ("webhook", "overrides", "field", "says", "code"),
    [
        (
            {"url": "http://10.0.0.1/hook"},
            {"webhook_allow_private": False},
            "webhook.url",
            "private",
            "webhook_url_refused",
        ),
        (
            {"url": "http://127.0.0.1:9/hook"},
            {"webhook_secret": ""},
            "webhook",
            "GENQ_WEBHOOK_SECRET",
            "webhooks_disabled",
        ),
        (
            {"url": "http://127.0.0.1:9/hook", "events": ["finished"]},
            {},
            "webhook.events.0",
            "started",
            "validation_error",
        ),
    ],
)
def test_batch_webhooks_are_checked_like_job_webhooks(
    settings: Settings, store: JobStore, webhook: dict, overrides: dict, field: str, says: str, code: str
) -> None:
    app = create_app(settings.model_copy(update=overrides))
    body = {"requests": [{"custom_id": "c0", "prompt": "x"}], "webhook": webhook}
    resp = app.test_client().post("/v1/batches", json=body)
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["error"]
    [detail] = error["details"]
    assert detail["field"] == field and says in detail["message"], detail
    assert error["code"] == code
    assert store.r.keys("genq:job:*") == [] and store.r.keys("genq:batch:*") == []


# --- signatures ----------------------------------------------------------------------------------


def test_signature_verifies_and_rejects_tampering() -> None:
    body = b'{"id":"job_1","event":"completed"}'
    header = sign(SECRET, body)
    assert verify_signature(SECRET, header, body)
    assert verify_signature(SECRET, header, body.decode())
    assert not verify_signature(SECRET, header, body + b" ")
    assert not verify_signature("another secret", header, body)
    assert not verify_signature(SECRET, sign(SECRET, body, int(time.time()) - 301), body)  # replayed
    assert verify_signature(SECRET, sign(SECRET, body, int(time.time()) - 60), body)
    rotated = f"{sign(SECRET, body)},v1={'0' * 64}"  # several v1 values: any may match
    assert verify_signature(SECRET, rotated, body)
    for bad in ("", "v1=abc", "t=,v1=", f"t=abc,{header.split(',')[1]}", header.split(",")[0]):
        assert not verify_signature(SECRET, bad, body)
    assert not verify_signature(SECRET, None, body)


# --- URL checks at submission (Flask test client; nothing is ever sent) ---------------------------


def post(settings: Settings, webhook: Any, **overrides: Any) -> Any:
    """POST /v1/jobs with this webhook to an app built from settings with these fields changed."""
    app = create_app(settings.model_copy(update=overrides))
    app.config["TESTING"] = True
    return app.test_client().post("/v1/jobs", json={"prompt": "Hi", "webhook": webhook})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",  # carrier-grade NAT: not globally routable
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
        "http://[::ffff:a9fe:a9fe]/hook",  # 169.254.169.254, mapped
        "http://[64:ff9b::a00:1]/hook",  # 10.0.0.1 through NAT64
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "https://localhost/hook",
    ],
)
def test_private_addresses_are_refused(settings: Settings, store: JobStore, url: str) -> None:
    resp = post(settings, {"url": url}, webhook_allow_private=False)
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "webhook_url_refused"
    assert [d["field"] for d in error["details"]] == ["webhook.url"]
    assert store.r.keys("genq:job:*") == []


def fake_dns(answers: dict[str, list[str]]) -> Callable[..., list[tuple]]:
    """Return a getaddrinfo that knows only these names; IP literals (Redis's) resolve as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple]:
        try:
            return real(host, port, *args, flags=socket.AI_NUMERICHOST)  # never a DNS query
        except socket.gaierror:
            pass
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    return getaddrinfo


def test_names_are_judged_by_every_address_they_resolve_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        fake_dns({"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
                  "rebind.example.com": ["93.184.215.14", "10.1.2.3"]}),
    )  # fmt: skip
    assert [str(a) for a in resolve("https://hooks.example.com/x")] == [
        "93.184.215.14",
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]
    with pytest.raises(RefusedURL, match=r"10\.1\.2\.3"):
        resolve("https://rebind.example.com/x")
    with pytest.raises(RefusedURL, match="does not resolve"):
        resolve("https://nowhere.example.com/x")
    assert resolve("https://rebind.example.com/x", allow_private=True)


def test_public_hosts_are_accepted(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"hooks.example.com": ["93.184.215.14"]}))
    resp = post(settings, {"url": "https://hooks.example.com/genq"}, webhook_allow_private=False)
    assert resp.status_code == 202, resp.get_json()


def test_an_unresolvable_host_is_refused(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({}))
    resp = post(settings, {"url": "https://nowhere.example.com/genq"})
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "webhook_url_refused"


def test_webhooks_need_a_secret(settings: Settings, store: JobStore) -> None:
    resp = post(settings, {"url": "http://127.0.0.1:9/hook"}, webhook_secret="")
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "webhooks_disabled" and "GENQ_WEBHOOK_SECRET" in error["message"]
    assert store.r.keys("genq:job:*") == []


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        ({"url": "ftp://example.com/x"}, "webhook.url"),
        ({"url": "example.com/x"}, "webhook.url"),
        ({"url": "http://"}, "webhook.url"),
        ({"url": "http://user:pw@example.com/"}, "webhook.url"),
        ({"url": "http://example.com:99999/"}, "webhook.url"),
        ({"url": "http://example.com/" + "a" * 2048}, "webhook.url"),
        ({"url": "http://example.com/", "events": ["finished"]}, "webhook.events.0"),
        ({"url": "http://example.com/", "events": ["started", "started"]}, "webhook.events"),
        ({"url": "http://example.com/", "events": []}, "webhook.events"),
        ({"url": "http://example.com/", "secret": "x"}, "webhook.secret"),
        ({}, "webhook.url"),
    ],
)
def test_malformed_webhooks_are_422(settings: Settings, webhook: dict[str, Any], field: str) -> None:
    resp = post(settings, webhook)
    assert resp.status_code == 422
    assert field in [d["field"] for d in resp.get_json()["error"]["details"]], resp.get_json()
