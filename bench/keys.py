"""Authentication cost per request with 100,000 runtime keys stored vs 1: `python -m bench.keys`.

Starts its own redis-server, fills it with keys as `genq keys create` stores them (by SHA-256), and
times (1) the function the API calls per request (`Authenticator.caller`), uncached (one Redis
read) and with the API's default 1 s cache, and (2) whole requests through the Flask app (test
client, GET /v1/usage, no rate limit). Target: no measurable difference, auth under 1 ms.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import redis

from api.auth import Authenticator
from shared import keys
from shared.keystore import KeyStore, hash_key, new_key
from shared.settings import Settings

FILL_PIPELINE = 5000  # keys written per round trip while filling
TARGET_MS = 1.0  # the bound on authentication per request
DIFF_TOLERANCE_MS = 0.05  # differences below this count as "no measurable difference"


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    """Start a throwaway redis-server (no persistence) and return it with its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (make setup)"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer")


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


def timed(call: Callable[[], object], n: int) -> tuple[float, float]:
    """Return the median and 99th-percentile milliseconds of n calls (after a warm-up)."""
    for _ in range(min(200, n)):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def measure(url: str, n_calls: int) -> dict[str, tuple[float, float]]:
    """Time auth per request against whatever keys the Redis at url holds, with one fresh key."""
    r = redis.Redis.from_url(url, decode_responses=True)
    key, _ = KeyStore(r).create("bench", label="measured")
    header = f"Bearer {key}"
    out = {}
    for name, cache_s in [("function, no cache", 0.0), ("function, 1 s cache", 1.0)]:
        auth = Authenticator([], KeyStore(r, cache_s))
        out[name] = timed(lambda a=auth: a.caller(header), n_calls)
    from api.app import create_app

    app = create_app(Settings(redis_url=url, rate_limit="", key_cache_s=1.0, log_level="WARNING"))
    client = app.test_client()
    assert client.get("/v1/usage", headers={"Authorization": header}).status_code == 200
    out["HTTP GET /v1/usage (Flask app)"] = timed(
        lambda: client.get("/v1/usage", headers={"Authorization": header}), n_calls // 4
    )
    return out


def main() -> None:
    """Print auth cost with 1 key stored and with --keys keys stored, and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys stored in the large case")
    parser.add_argument("--calls", type=int, default=4000, help="timed calls per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        proc, url = start_redis(workdir)
        try:
            r = redis.Redis.from_url(url, decode_responses=True)
            small = measure(url, args.calls)  # 1 key stored (the measured one)
            t0 = time.perf_counter()
            fill(r, KeyStore(r), args.keys)
            print(f"stored {r.zcard(keys.API_KEYS):,} keys in {time.perf_counter() - t0:.1f} s")
            large = measure(url, args.calls)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\n| auth per request (ms) | 1 key: median | p99 | {args.keys:,} keys: median | p99 |")
    print("|---|---|---|---|---|")
    verdict = True
    for name in small:
        (m1, p1), (m2, p2) = small[name], large[name]
        print(f"| {name} | {m1:.3f} | {p1:.3f} | {m2:.3f} | {p2:.3f} |")
        if name.startswith("function"):
            verdict &= m2 < TARGET_MS and abs(m2 - m1) < max(DIFF_TOLERANCE_MS, 0.25 * m1)
    print(
        f"\ntarget (auth < {TARGET_MS} ms, no measurable difference at {args.keys:,} keys): "
        f"{'PASS' if verdict else 'MISS'}"
    )


if __name__ == "__main__":
    main()
