"""Claims, finishes and acks of jobs that arrive or end together share round trips (real Redis)."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue
from kombu.asynchronous import Hub, get_event_loop, set_event_loop

from genq.client import Client
from shared import kombufix
from shared.groupcommit import GroupCommit
from shared.jobstore import JobStore
from tests.support import free_port, wait_until

# Returns its argument; with a delay in ms, spins that long first (Redis runs one script at a time,
# so a slow call keeps a batch in flight while other threads line up behind it).
ECHO = """
local wait_ms = tonumber(ARGV[2] or 0)
if wait_ms > 0 then
  local t = redis.call('TIME')
  local stop = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + wait_ms
  repeat t = redis.call('TIME') until tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 >= stop
end
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
return ARGV[1]
"""


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def _calls_behind_a_slow_one(group: GroupCommit, script, args: list[str]) -> tuple[dict, dict]:
    """One thread sends a 300 ms call; the others call while it is in flight; return replies, errors."""
    replies: dict[str, object] = {}
    errors: dict[str, Exception] = {}

    def call(arg: str, delay_ms: int = 0) -> None:
        try:
            replies[arg] = group.run(script, keys=[], args=[arg, delay_ms])
        except redis.RedisError as exc:
            errors[arg] = exc

    first = threading.Thread(target=call, args=("first", 300))
    first.start()
    wait_until(lambda: group.batches == 1, 5, "the slow call to be sent", 0.005)
    others = [threading.Thread(target=call, args=(a,)) for a in args]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    return replies, errors


def test_calls_made_while_one_is_in_flight_leave_in_one_pipeline(r: redis.Redis) -> None:
    group = GroupCommit(r)
    script = r.register_script(ECHO)
    assert group.run(script, keys=[], args=["alone"]) == "alone"  # a quiet caller sends at once
    assert (group.batches, group.calls) == (1, 1)
    group.batches = group.calls = 0
    names = [f"job-{n}" for n in range(8)]
    replies, errors = _calls_behind_a_slow_one(group, script, names)
    assert not errors
    assert replies == {"first": "first", **{n: n for n in names}}  # each caller gets its own reply
    assert (group.batches, group.calls) == (2, 9)  # the slow call, then the 8 together


def test_an_error_reaches_only_its_own_caller(r: redis.Redis) -> None:
    group = GroupCommit(r)
    replies, errors = _calls_behind_a_slow_one(group, r.register_script(ECHO), ["a", "fail", "b"])
    assert replies == {"first": "first", "a": "a", "b": "b"}
    assert list(errors) == ["fail"] and "asked to fail" in str(errors["fail"])
    assert group.batches == 2


def test_a_script_redis_has_not_loaded_is_loaded_and_run(r: redis.Redis) -> None:
    group = GroupCommit(r)
    script = r.register_script(ECHO)
    group.run(script, keys=[], args=["load"])
    r.script_flush()  # say, a restarted Redis: the batch's EVALSHA calls meet NOSCRIPT
    slow = r.register_script(ECHO + "\n-- another sha, so the slow call is not the one flushed")
    replies: dict[str, object] = {}
    first = threading.Thread(target=lambda: replies.update(first=group.run(slow, [], ["first", 300])))
    first.start()
    wait_until(lambda: group.batches == 2, 5, "the slow call to be sent", 0.005)
    others = [
        threading.Thread(target=lambda n=n: replies.update({n: group.run(script, [], [n])})) for n in "xyz"
    ]
    for t in [*others]:
        t.start()
    for t in [first, *others]:
        t.join(10)
    assert replies == {"first": "first", "x": "x", "y": "y", "z": "z"}


def test_a_lost_connection_fails_every_call_of_the_batch() -> None:
    group = GroupCommit(redis.Redis(port=free_port(), socket_connect_timeout=1))
    script = group.client.register_script(ECHO)
    with pytest.raises(redis.ConnectionError):
        group.run(script, keys=[], args=["x"])
    assert group.batches == 1  # and the next call is not stuck behind it
    with pytest.raises(redis.ConnectionError):
        group.run(script, keys=[], args=["y"])


# --- acks ---------------------------------------------------------------------
@pytest.fixture
def delivered(redis_url: str):
    """Five messages taken from a real kombu Redis channel and not yet acked."""
    kombufix.install()
    with Connection(redis_url) as conn:
        channel = conn.channel()
        queue = Queue("acks", Exchange("acks"), "acks")
        queue(channel).declare()
        for n in range(5):
            Producer(channel).publish({"n": n}, exchange=queue.exchange, routing_key="acks")
        yield channel, [channel.basic_get("acks", no_ack=False) for _ in range(5)]


def test_acks_of_one_loop_turn_leave_together_before_it_polls(delivered, r: redis.Redis) -> None:
    channel, messages = delivered
    assert r.hlen("unacked") == 5
    seen: dict[str, int] = {}

    def ack_all() -> None:  # on the loop, as Celery runs acks
        for message in messages:
            message.ack()
        seen["unacked after the acks"] = r.hlen("unacked")
        seen["zrem before"] = r.info("commandstats").get("cmdstat_zrem", {}).get("calls", 0)

    before = get_event_loop()
    hub = Hub()
    set_event_loop(hub)
    try:
        hub.call_soon(ack_all)
        hub.run_once()
    finally:
        set_event_loop(before)
        hub.close()
    assert seen["unacked after the acks"] == 5  # taken, not yet sent
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    zrem = r.info("commandstats")["cmdstat_zrem"]["calls"] - seen["zrem before"]
    assert zrem == 1  # one ZREM (and one HDEL) for the five
    assert not channel.qos._delivered or all(t in channel.qos._dirty for t in channel.qos._delivered)


def test_an_ack_off_the_loop_is_sent_at_once(delivered, r: redis.Redis) -> None:
    _, messages = delivered
    messages[0].ack()  # no event loop in this thread: kombu's own ack
    assert r.hlen("unacked") == 4


@pytest.mark.parametrize("acked", [3, 5])
def test_a_closing_channel_sends_its_acks_and_restores_only_the_rest(
    delivered, r: redis.Redis, acked: int
) -> None:
    channel, messages = delivered
    hub = Hub()
    before = get_event_loop()
    set_event_loop(hub)
    hub._loop_thread = threading.get_ident()  # as if on the loop, with the turn not yet over
    try:
        for message in messages[:acked]:
            message.ack()
        assert r.hlen("unacked") == 5
        channel.close()  # kombu restores what it has not seen acked (nothing, once all are)
    finally:
        set_event_loop(before)
        hub.close()
    assert r.hlen("unacked") == 0
    assert r.llen("acks") == 5 - acked  # the ones never acked are back in the queue, no other


# --- end to end ---------------------------------------------------------------
def test_a_batch_that_ends_together_is_stored_and_acked(
    start_worker, client: Client, store: JobStore
) -> None:
    worker = start_worker(max_batch=16)
    ids = [client.submit(f"question {n}", max_new_tokens=1, temperature=0)["id"] for n in range(48)]
    done = [client.wait(job_id, 60) for job_id in ids]
    assert all(d["status"] == "succeeded" for d in done)
    r = store.r
    wait_until(lambda: r.hlen("unacked") == 0, 10, "every message to be acked", 0.05)
    assert r.zcard("unacked_index") == 0
    worker.stop()  # a warm shutdown restores nothing: no message of a finished job comes back
    time.sleep(0.5)
    assert sum(r.llen(k) for k in r.scan_iter("genq.tiny*")) == 0
    # Its last lines count them: 48 claims and 48 finishes went through the group commit.
    assert "claims and finishes: 96 calls in" in worker.log()
    assert "acks on the event loop: 48 in" in worker.log()
