"""Redis Sentinel: a real master, replica and Sentinel; the API and a worker find the master through
the Sentinel, and follow it when the Sentinel fails it over to the replica."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from genq.client import Client, GenqError
from genq.supervisor import Child
from shared.jobstore import JobStore
from shared.redisconn import connect, limiter_uri, parse_sentinel
from shared.settings import Settings
from tests.support import free_port, start_api, wait_until

MASTER = "genq-master"  # the name the Sentinel monitors
DOWN_AFTER_MS = 1000  # how long the master must be silent before the Sentinel calls it down


class Cluster:
    """A master, its replica and one Sentinel (quorum 1), each a real redis-server on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server is not installed; run `make setup`"
        self.master_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        self.procs: dict[str, Child] = {}

    @property
    def url(self) -> str:
        """Return GENQ_REDIS_URL for this cluster: its Sentinel (twice over: a dead one is skipped)."""
        return f"sentinel://127.0.0.1:{free_port()};sentinel://127.0.0.1:{self.sentinel_port}/0"

    def _start(self, name: str, args: list[str]) -> None:
        (self.workdir / name).mkdir(parents=True, exist_ok=True)
        base = ["--bind", "127.0.0.1", "--dir", str(self.workdir / name), "--save", ""]
        self.procs[name] = Child(name, [self.binary, *args, *base], quiet=True)

    def start(self) -> None:
        """Start all three and wait until the Sentinel knows the master and its replica."""
        self._start("master", ["--port", str(self.master_port), "--appendonly", "yes"])
        self._start(
            "replica",
            ["--port", str(self.replica_port), "--replicaof", "127.0.0.1", str(self.master_port)],
        )
        conf = self.workdir / "sentinel.conf"  # a Sentinel rewrites its config file: it must be writable
        conf.write_text(
            f"port {self.sentinel_port}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"logfile {self.log}\n"
        )
        self.procs["sentinel"] = Child(
            "sentinel", [self.binary, str(conf), "--sentinel", "--bind", "127.0.0.1"], quiet=True
        )
        # A Sentinel whose timer runs late by 2 s (a loaded CI host) enters TILT for 30 s and fails
        # nothing over meanwhile; this test is about genq following a failover, not about TILT.
        wait_until(self._untilted, 30, "the Sentinel to answer", 0.1)
        wait_until(lambda: self.replicas() == 1, 30, "the Sentinel to see the master and its replica", 0.1)

    def _untilted(self) -> bool:
        try:
            self.sentinel().execute_command("SENTINEL", "DEBUG", "tilt-trigger", 60_000, "tilt-period", 1000)
        except redis.RedisError:
            return False
        return True

    def wait_for_failover(self, timeout_s: float) -> None:
        """Wait until the Sentinel names the replica as master; on timeout, show the Sentinel's log."""
        try:
            wait_until(lambda: self.master_port_now() == self.replica_port, timeout_s, "the failover", 0.2)
        except AssertionError as exc:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{exc}; the Sentinel's log ends:\n{tail}") from None

    @property
    def log(self) -> Path:
        """Return the Sentinel's log file, which says why a failover waited (TILT, no good replica)."""
        return self.workdir / "sentinel.log"

    def sentinel(self) -> redis.Redis:
        """Return a client of the Sentinel itself."""
        return redis.Redis(port=self.sentinel_port, decode_responses=True)

    def master_port_now(self) -> int | None:
        """Return the port of the master the Sentinel names now."""
        try:
            return int(self.sentinel().sentinel_get_master_addr_by_name(MASTER)[1])
        except (redis.RedisError, TypeError):
            return None

    def replicas(self) -> int:
        """Return how many replicas the Sentinel knows that are up and in sync with the master."""
        try:
            found = self.sentinel().sentinel_slaves(MASTER)
        except redis.RedisError:
            return 0
        return sum(1 for r in found if "s_down" not in r["flags"] and r["master-link-status"] == "ok")

    def stop(self) -> None:
        """Stop every process still running."""
        for proc in self.procs.values():
            proc.stop(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh master, replica and Sentinel for one test."""
    c = Cluster(tmp_path / "redis")
    c.start()
    yield c
    c.stop()


@pytest.fixture
def settings(settings: Settings, cluster: Cluster) -> Settings:
    """The test settings, reaching Redis only through the Sentinel."""
    return settings.model_copy(update={"redis_url": cluster.url, "redis_sentinel_master": MASTER})


@pytest.fixture
def store(settings: Settings) -> JobStore:
    """A job store that finds the master through the Sentinel, like the API's and the workers'."""
    return JobStore(connect(settings.redis_url, settings.redis_sentinel_master), settings.result_ttl)


def test_sentinel_urls_parse_and_name_the_master() -> None:
    parsed = parse_sentinel("sentinel://:p%40ss@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://h3:26380")
    assert parsed.hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("h3", 26380)]
    assert parsed.db == 2 and parsed.password == "p@ss"
    assert limiter_uri("sentinel://:p%40ss@a:1;sentinel://b:2", "m") == "redis+sentinel://:p%40ss@a:1,b:2/m"
    assert limiter_uri("redis://x:6379/0", "") == "redis://x:6379/0"
    with pytest.raises(ValueError, match="GENQ_REDIS_SENTINEL_MASTER"):
        Settings(redis_url="sentinel://127.0.0.1:26379")
    with pytest.raises(ValueError, match="not sentinel://"):
        Settings(redis_url="sentinel://127.0.0.1:26379;redis://x", redis_sentinel_master="m")


def test_api_and_worker_find_the_master_through_the_sentinel(
    cluster: Cluster, settings: Settings, start_worker, tmp_path: Path
) -> None:
    start_worker()
    proc, base = start_api(settings, tmp_path / "api.log")
    try:
        client = Client(base, timeout_s=30)
        done = client.wait(client.submit("Hello", max_new_tokens=4)["id"], 60)
        assert done["status"] == "succeeded"
        master = redis.Redis(port=cluster.master_port, decode_responses=True)
        assert master.hgetall(f"genq:job:{done['id']}")["status"] == "succeeded"
        assert master.keys("LIMITS:*genq:ratelimit*")  # the rate limiter counts there too
        assert client.models()["data"][0]["ready_workers"] == 1
    finally:
        proc.stop()


@pytest.mark.slow
def test_a_failover_loses_no_accepted_job(
    cluster: Cluster, settings: Settings, start_worker, tmp_path: Path
) -> None:
    worker = start_worker()
    proc, base = start_api(settings, tmp_path / "api.log")
    try:
        client = Client(base, timeout_s=30)
        before = client.wait(client.submit("Before", max_new_tokens=4)["id"], 60)
        assert before["status"] == "succeeded"
        master = redis.Redis(port=cluster.master_port)
        assert master.wait(1, 5000) == 1  # the replica holds everything so far
        cluster.procs["master"].signal(signal.SIGKILL)
        cluster.wait_for_failover(120)

        # Both follow by themselves: to the new master, found through the Sentinel. Until the API's
        # pool has reconnected to it, a submission gets 503 (nothing accepted): a client retries.
        def submitted() -> str | None:
            try:
                return client.submit("After", max_new_tokens=4)["id"]
            except GenqError as exc:
                assert exc.status == 503, exc
                return None

        after = client.wait(str(wait_until(submitted, 30, "a submission after the failover", 0.5)), 120)
        assert after["status"] == "succeeded" and after["worker"] == before["worker"], after
        assert client.get(before["id"])["output"] == before["output"]  # replicated before the failover
        new_master = redis.Redis(port=cluster.replica_port, decode_responses=True)
        assert new_master.hget(f"genq:job:{after['id']}", "status") == "succeeded"
        assert worker.proc.poll() is None
    finally:
        proc.stop()
