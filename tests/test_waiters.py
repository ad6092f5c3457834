"""Open streams and long polls cost a socket: thousands of them leave the API answering (issue 12)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.context import Context
from api.events import job_events
from shared import keys
from shared.jobstore import DEFAULT_TENANT, JobStore, new_job_id
from shared.schemas import JobCreate, Status
from shared.settings import Settings
from tests import waitclient
from tests.support import RedisServer, start_api, wait_until

CONNECT_AT_ONCE = 200  # connections opened concurrently while the waiters are set up
POOL = 8  # the request handlers' Redis connections in the burst test (the least the settings allow)
BURST = 600  # waiters (half long polls, half streams) whose jobs end together in the burst test


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the waiter counts are global, and an in-process app of an
    earlier test (its hub's threads outlive the test) would otherwise go on publishing into them."""
    server = RedisServer(tmp_path_factory.mktemp("waiters-redis"))
    server.start()
    yield server
    server.stop()


def _queued_jobs(store: JobStore, n: int) -> list[str]:
    """Store n queued jobs (no worker will take them: the test ends them through the store)."""
    ids = [new_job_id() for _ in range(n)]
    for job_id in ids:
        store.create(job_id, "tiny", JobCreate(prompt="wait for me", model="tiny"))
    return ids


def _finish(store: JobStore, ids: list[str]) -> None:
    for job_id in ids:
        claim = store.claim(job_id, "w", "cpu")
        assert claim.outcome == "claimed"
        store.publish_tokens({job_id: "done soon"}, {job_id: claim.attempt})
        output = {"text": "done soon", "finish_reason": "stop"}
        assert store.finish(job_id, Status.SUCCEEDED, holder="w", attempt=claim.attempt, output=output)


def _open_waiters(store: JobStore) -> int:
    """Return the default tenant's open waiters as the API processes last published them."""
    counts = store.r.hgetall(keys.WAITERS)
    return sum(int(v.split()[0]) for f, v in counts.items() if f.rpartition("|")[0] == DEFAULT_TENANT)


def _redis_clients(store: JobStore) -> list[str]:
    """Return the last command of each connection Redis holds (what it was opened for)."""
    return [c["cmd"] for c in store.r.client_list()]


def _timed_get(url: str) -> tuple[int, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, time.monotonic() - t0


def _timed_submit(base: str) -> tuple[int, float]:
    req = urllib.request.Request(
        f"{base}/v1/jobs",
        data=b'{"prompt": "hi", "model": "tiny"}',
        headers={"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, time.monotonic() - t0


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    await asyncio.get_running_loop().run_in_executor(None, wait_until, condition, timeout_s, what, 0.2)


async def _hold(base: str, path: str, gate: asyncio.Semaphore) -> waitclient.Reply:
    async with gate:
        reader, writer = await waitclient.connect(base)
        await waitclient.send(writer, "GET", path)
    return await waitclient.receive(reader, writer)


@pytest.mark.slow
def test_two_thousand_waiters_leave_the_api_answering(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    assert waitclient.raise_open_files() > 2500, "this test needs 2,000+ sockets"
    uncapped = settings.model_copy(update={"max_waiters_per_tenant": 0})  # one tenant holds them all
    proc, base = start_api(uncapped, tmp_path / "api.log")
    try:
        polls, streams = _queued_jobs(store, 1000), _queued_jobs(store, 1000)

        async def run() -> tuple[list[waitclient.Reply], list[tuple[int, float]], int]:
            gate = asyncio.Semaphore(CONNECT_AT_ONCE)
            tasks = [asyncio.create_task(_hold(base, f"/v1/jobs/{j}?wait=60", gate)) for j in polls]
            tasks += [asyncio.create_task(_hold(base, f"/v1/jobs/{j}/stream", gate)) for j in streams]
            loop = asyncio.get_running_loop()
            await _until(lambda: _open_waiters(store) == 2000, 90, "2,000 open waiters")
            store.heartbeat("w", {"model": "tiny", "pid": 0}, 60)  # /readyz wants one ready worker
            timings = [
                await loop.run_in_executor(None, _timed_get, f"{base}/healthz"),
                await loop.run_in_executor(None, _timed_get, f"{base}/readyz"),
                await loop.run_in_executor(None, _timed_submit, base),
                await loop.run_in_executor(None, _timed_get, f"{base}/healthz"),
            ]
            clients = _redis_clients(store)
            await loop.run_in_executor(None, _finish, store, polls + streams)
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return replies, timings, clients

        replies, timings, clients = asyncio.run(run())
    finally:
        proc.stop()
    assert [status for status, _ in timings] == [200, 200, 202, 200]
    assert max(seconds for _, seconds in timings) < 1.0, timings
    # Bounded by configuration, not by waiters: 2 processes x (16 job store + 5 waiter readers + 4
    # rate limiter + 4 key store + Celery's producers), plus this test's own; 60 measured.
    assert len(clients) < 70, f"{len(clients)} Redis connections for 2,000 waiters: {Counter(clients)}"
    for reply in replies[:1000]:  # long polls: the job as it ended
        assert reply.status == 200 and reply.json()["status"] == "succeeded", reply
    for reply in replies[1000:]:  # streams: their text, then the done event
        assert reply.status == 200 and "done soon" in reply.body and "event: done" in reply.body, reply


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_a_tenant_past_its_cap_gets_429_and_a_hang_up_frees_its_waiter(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    capped = settings.model_copy(update={"max_waiters_per_tenant": 3, "api_workers": 1})
    proc, base = start_api(capped, tmp_path / "api.log")
    try:
        ids = _queued_jobs(store, 3)

        async def run() -> None:
            # A client that sends half its headers and stalls is dropped after the header timeout.
            slow_reader, slow_writer = await waitclient.connect(base)
            slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: gen")
            await slow_writer.drain()
            held = []
            for path in (
                f"/v1/jobs/{ids[0]}?wait=60",
                f"/v1/jobs/{ids[1]}?wait=60",
                f"/v1/jobs/{ids[2]}/stream",
            ):
                _, writer = await waitclient.connect(base)
                await waitclient.send(writer, "GET", path)
                held.append(writer)
            loop = asyncio.get_running_loop()
            await _until(lambda: _open_waiters(store) == 3, 30, "3 open waiters")
            counted = lambda: _metric(base, "genq_api_tenant_waiters") == 3  # noqa: E731
            await _until(counted, 10, "/metrics to count 3 waiters")
            assert _metric(base, "genq_api_open_waiters") == 3
            for path in (f"/v1/jobs/{ids[0]}?wait=5", f"/v1/jobs/{ids[0]}/stream"):
                refused = await waitclient.request(base, "GET", path)
                assert refused.status == 429 and refused.json()["error"]["code"] == "too_many_waiters"
            # A poll that does not wait is not a waiter: it still answers.
            assert (await waitclient.request(base, "GET", f"/v1/jobs/{ids[0]}")).status == 200
            for writer in held:  # the clients hang up; their waiters go within seconds
                writer.close()
            await _until(lambda: _open_waiters(store) == 0, 10, "the hung-up waiters to be freed")
            assert _metric(base, "genq_api_open_waiters") == 0
            # Room again: a new long poll is admitted and gets its job's end.
            task = asyncio.create_task(waitclient.request(base, "GET", f"/v1/jobs/{ids[0]}?wait=30"))
            await _until(lambda: _open_waiters(store) == 1, 30, "a new waiter")
            await loop.run_in_executor(None, _finish, store, ids[:1])
            ended = await asyncio.wait_for(task, 30)
            assert ended.status == 200 and ended.json()["status"] == "succeeded"
            assert await asyncio.wait_for(slow_reader.read(), 30) == b""  # closed, nothing answered

        asyncio.run(run())
    finally:
        proc.stop()


def test_a_process_past_its_waiter_cap_answers_503(settings: Settings, store: JobStore) -> None:
    from api.app import create_app

    app = create_app(settings.model_copy(update={"max_waiters_per_process": 1}))
    http = app.test_client()
    job_id = _queued_jobs(store, 1)[0]
    first = http.get(f"/v1/jobs/{job_id}/stream", buffered=False)  # held open until closed
    assert first.status_code == 200
    refused = http.get(f"/v1/jobs/{job_id}?wait=5")
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "too_many_waiters"
    assert http.get(f"/v1/jobs/{job_id}").status_code == 200  # not waiting: not counted
    first.close()  # the server closes the body: its slot is free again
    again = http.get(f"/v1/jobs/{job_id}/stream", buffered=False)
    assert again.status_code == 200
    _finish(store, [job_id])
    assert b"event: done" in b"".join(again.response)
    again.close()


def test_a_burst_of_ends_reaches_every_waiter_while_the_request_pool_is_exhausted(
    settings: Settings, store: JobStore
) -> None:
    # The readers read the ended jobs' records on their own connections and hand them over, so
    # hundreds of waiters woken at once make no call through the pool the request handlers share.
    ctx = Context.build(settings.model_copy(update={"api_redis_connections": POOL}))
    polls, streams = _queued_jobs(store, BURST // 2), _queued_jobs(store, BURST // 2)
    answers: dict[str, object] = {}

    def poll(job_id: str) -> None:
        answers[job_id] = ctx.store.wait(job_id, 60)

    def stream(job_id: str) -> None:
        answers[job_id] = "".join(job_events(ctx.store, ctx.waiters, job_id))

    threads = [threading.Thread(target=poll, args=(j,), daemon=True) for j in polls]
    threads += [threading.Thread(target=stream, args=(j,), daemon=True) for j in streams]
    for thread in threads:
        thread.start()
    wait_until(lambda: ctx.waiters.subscriptions() == BURST, 60, f"{BURST} subscribed waiters")
    time.sleep(1)  # the last arrivals' wake-ups (through the pool) are sent
    pool = ctx.store.r.connection_pool
    taken = [pool.get_connection() for _ in range(POOL)]  # every request handler would wait now
    try:
        _finish(store, polls + streams)
        ended = time.monotonic()
        deadline = ended + 30
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        still = sum(thread.is_alive() for thread in threads)
        assert still == 0, f"{still} of {BURST} waiters still wait (on the request pool?)"
    finally:
        for connection in taken:
            pool.release(connection)
    for job_id in polls:
        job = answers[job_id]
        assert job is not None and job.status is Status.SUCCEEDED, job  # type: ignore[attr-defined]
    for job_id in streams:
        assert "done soon" in answers[job_id] and "event: done" in answers[job_id]  # type: ignore[operator]
