"""Authentication cost per request with 100,000 runtime keys stored vs 1: `python -m bench.keys`.

Starts its own redis-server, fills it with keys as `genq keys create` stores them (by SHA-256), and
times (1) the function the API calls per request (`Authenticator.caller`), uncached (one Redis
read) and with the API's default 1 s cache, and (2) whole requests through the Flask app (test
client, GET /v1/usage, no rate limit). Target: no measurable difference, auth under 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from api.auth import Authenticator
from bench.processes import start_redis, supervisor
from shared import keys
from shared.keystore import KeyStore, hash_key, new_key
from shared.settings import Settings

FILL_PIPELINE = 5000  # keys written per round trip while filling
TARGET_MS = 1.0  # the bound on authentication per request
DIFF_TOLERANCE_MS = 0.05  # differences below this count as "no measurable difference"


def fill(r: redis.Redis, store: KeyStore, n: int) -> None:
    """Store n-1 more keys, each a copy of a record KeyStore.create wrote (but with no audit line each)."""
    _, record = store.create("bench-filler")
    template = r.hgetall(keys.api_key(r.get(keys.api_key_id(record.id))))
    for first in range(0, n - 1, FILL_PIPELINE):
        pipe = r.pipeline(transaction=False)
        for i in range(first, min(first + FILL_PIPELINE, n - 1)):
            digest, key_id = hash_key(new_key()), f"key_fill{i:012d}"
            pipe.hset(keys.api_key(digest), mapping={**template, "id": key_id, "tenant": f"t{i % 1000}"})
            pipe.set(keys.api_key_id(key_id), digest)
            pipe.zadd(keys.API_KEYS, {key_id: time.time()})
        pipe.execute()


ROUNDS = 8  # the 1-key and many-key cases alternate this many times, so load drifts hit both alike


def timed(call: Callable[[], object], n: int) -> list[float]:
    """Return the milliseconds of each of n calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def cases(url: str) -> dict[str, Callable[[], object]]:
    """Return what is timed against the Redis database at url, each with a fresh key of its own."""
    from api.app import create_app

    r = redis.Redis.from_url(url, decode_responses=True)
    key, _ = KeyStore(r).create("bench", label="measured")
    header = {"Authorization": f"Bearer {key}"}
    uncached, cached = Authenticator([], KeyStore(r)), Authenticator([], KeyStore(r, 1.0))
    client = create_app(Settings(redis_url=url, rate_limit="", log_level="WARNING")).test_client()
    assert client.get("/v1/usage", headers=header).status_code == 200
    return {
        "function, no cache": lambda: uncached.caller(header["Authorization"]),
        "function, 1 s cache": lambda: cached.caller(header["Authorization"]),
        "HTTP GET /v1/usage (Flask app)": lambda: client.get("/v1/usage", headers=header),
    }


def main() -> None:
    """Print auth cost with 1 key stored and with --keys keys stored, and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys stored in the large case")
    parser.add_argument("--calls", type=int, default=4000, help="timed calls per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        children = supervisor(Path(workdir))
        try:
            url = start_redis(children, Path(workdir))
            # Database 0 holds 1 key, database 1 all of them: the two cases alternate on one server.
            many_url = url.rsplit("/", 1)[0] + "/1"
            many = redis.Redis.from_url(many_url, decode_responses=True)
            t0 = time.perf_counter()
            fill(many, KeyStore(many), args.keys - 1)
            print(f"stored {many.zcard(keys.API_KEYS) + 1:,} keys in {time.perf_counter() - t0:.1f} s")
            one, lots = cases(url), cases(many_url)
            samples: dict[tuple[str, int], list[float]] = {}
            for name in one:
                n = args.calls // ROUNDS // (4 if name.startswith("HTTP") else 1)
                timed(one[name], n), timed(lots[name], n)  # warm-up
                for _ in range(ROUNDS):
                    samples.setdefault((name, 1), []).extend(timed(one[name], n))
                    samples.setdefault((name, args.keys), []).extend(timed(lots[name], n))
        finally:
            children.stop_all()
    print(f"\n| auth per request (ms) | 1 key: median | p99 | {args.keys:,} keys: median | p99 |")
    print("|---|---|---|---|---|")
    verdict = True
    for name in one:
        (m1, p1), (m2, p2) = (
            (statistics.median(x), statistics.quantiles(x, n=100)[98])
            for x in (samples[name, 1], samples[name, args.keys])
        )
        print(f"| {name} | {m1:.3f} | {p1:.3f} | {m2:.3f} | {p2:.3f} |")
        if name.startswith("function"):
            verdict &= m2 < TARGET_MS and abs(m2 - m1) < max(DIFF_TOLERANCE_MS, 0.25 * m1)
    print(
        f"\ntarget (auth < {TARGET_MS} ms, no measurable difference at {args.keys:,} keys): "
        f"{'PASS' if verdict else 'MISS'}"
    )


if __name__ == "__main__":
    main()
