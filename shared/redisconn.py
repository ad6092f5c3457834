"""Redis connections from GENQ_REDIS_URL: a plain redis:// URL, or Sentinels that name the master.

A Sentinel URL is kombu's: `sentinel://[:PASSWORD@]HOST:PORT[/DB]`, several joined by `;`, with
the master's name in GENQ_REDIS_SENTINEL_MASTER. The job store, the Celery broker and the API's
rate limiter then each ask the Sentinels for the current master, and follow a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"
HEALTH_CHECK_S = 30  # seconds between checks of an idle pooled connection
# Longest wait for a free pooled connection, in seconds. A burst of job ends no longer queues here
# (the API's waiter readers read a burst's records in one call, on connections of their own), but
# in a CPU-starved gevent process a greenlet holds its connection until the hub gets back to it,
# so under overload waits still reach seconds: at 10 s, 2-4% of 5,000 streams failed with
# service_unavailable on this project's busy machine (load 4-5, bench.waiters), none at 60 s.
POOL_WAIT_S = 60
SENTINEL_TIMEOUT_S = 1.0  # how long one Sentinel may take to answer, in seconds


@dataclass(frozen=True)
class SentinelURL:
    """What a sentinel:// URL names: the Sentinels, and the master's database and credentials."""

    hosts: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    """Return True when the URL names Sentinels rather than one Redis."""
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel(url: str) -> SentinelURL:
    """Parse `sentinel://[user:password@]host:port[/db];sentinel://...`; ValueError if malformed."""
    hosts: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"{part!r} is not sentinel://HOST:PORT")
        hosts.append((parts.hostname, parts.port or 26379))
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        username = unquote(parts.username) if parts.username else username
        password = unquote(parts.password) if parts.password else password
    return SentinelURL(hosts, db, username, password)


def connect(
    url: str,
    sentinel_master: str = "",
    decode_responses: bool = True,
    max_connections: int = 0,
    **options: Any,
) -> redis.Redis:
    """Return a client of the Redis master: directly, or found (and re-found) through Sentinels.

    options go to the client's connections (socket_timeout=..., for instance). With max_connections,
    a plain URL's pool holds at most that many and a caller waits for a free one (up to POOL_WAIT_S).
    """
    if not is_sentinel(url) and max_connections:
        pool = bounded_pool(url, max_connections, decode_responses=decode_responses, **options)
        return redis.Redis(connection_pool=pool)
    if not is_sentinel(url):
        return redis.Redis.from_url(
            url, decode_responses=decode_responses, health_check_interval=HEALTH_CHECK_S, **options
        )
    parsed = parse_sentinel(url)
    sentinels = Sentinel(parsed.hosts, sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S})
    return sentinels.master_for(
        sentinel_master,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        decode_responses=decode_responses,
        health_check_interval=HEALTH_CHECK_S,
        **options,
    )


def bounded_pool(url: str, max_connections: int, **options: Any) -> redis.BlockingConnectionPool:
    """Return a pool of at most max_connections to a plain redis:// URL; callers wait for a free one."""
    return redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=HEALTH_CHECK_S,
        **options,
    )


def limiter_uri(url: str, sentinel_master: str = "") -> str:
    """Return the storage URI the rate limiter (the `limits` package) takes for this Redis."""
    if not is_sentinel(url):
        return url
    parsed = parse_sentinel(url)
    auth = f":{quote(parsed.password, safe='')}@" if parsed.password else ""
    hosts = ",".join(f"{h}:{p}" for h, p in parsed.hosts)
    return f"redis+sentinel://{auth}{hosts}/{sentinel_master}"
