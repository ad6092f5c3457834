"""Transport security: workers refuse pickled messages; Redis with a password or TLS works end to end."""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from genq.client import Client
from shared.celery_app import TASK_GENERATE, make_celery, queue_lists
from shared.keys import UNACKED
from shared.settings import Settings
from tests.support import RedisServer, wait_until

PASSWORD = "s3cret"
JOB_TIMEOUT_S = 60  # a 4-token job on the tiny model takes well under a second


class TouchOnUnpickle:
    """A hostile task argument: unpickling it creates a file (observable, and harmless)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (pathlib.Path.touch, (self.path,))


class ConfiguredRedis(RedisServer):
    """A redis-server with extra arguments (a password, TLS) and the URL that reaches it.

    In both templates, {port} stands for the server's port.
    """

    def __init__(self, workdir: Path, args: list[str], url: str) -> None:
        super().__init__(workdir)
        self.extra = [a.format(port=self.port) for a in args]
        self._url = url.format(port=self.port)

    @property
    def url(self) -> str:
        """Return the URL of database 0, with credentials and TLS options."""
        return self._url

    def args(self) -> list[str]:
        """Return the extra arguments; in memory only (no AOF)."""
        return [*self.extra, "--maxmemory-policy", "noeviction"]


def tls_supported() -> bool:
    """Return True when this redis-server was built with TLS and the openssl CLI exists."""
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not (binary and openssl):
        return False
    # A build without TLS stops at the unknown directive; one with TLS stops for want of a certificate.
    out = subprocess.run(
        [binary, "--port", "0", "--tls-port", "1"], capture_output=True, text=True, timeout=10
    )
    return "Bad directive" not in out.stdout + out.stderr


def make_certs(target: Path) -> dict[str, Path]:
    """Write a throwaway CA and a server certificate for 127.0.0.1 it signed; return the file paths."""
    files = {name: target / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr")}
    (target / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        *["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=genq test CA"],
        *["-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"])],
    )
    openssl(
        *["req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", "/CN=127.0.0.1"],
        *["-keyout", str(files["server.key"]), "-out", str(files["server.csr"])],
    )
    openssl(
        *["x509", "-req", "-days", "1", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"])],
        *["-CAkey", str(files["ca.key"]), "-CAcreateserial", "-out", str(files["server.crt"])],
        *["-extfile", str(target / "san.ext")],
    )
    return files


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfiguredRedis]:
    """A redis-server that answers only clients that send its password."""
    server = ConfiguredRedis(
        tmp_path_factory.mktemp("redis-password"),
        ["--port", "{port}", "--requirepass", PASSWORD],
        f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfiguredRedis]:
    """A redis-server that speaks only TLS, with a certificate from a throwaway CA."""
    if not tls_supported():
        pytest.skip("this redis-server was built without TLS support (or the openssl CLI is missing)")
    workdir = tmp_path_factory.mktemp("redis-tls")
    certs = make_certs(workdir)
    server = ConfiguredRedis(
        workdir,
        [
            *["--port", "0", "--tls-port", "{port}", "--tls-auth-clients", "no"],
            *["--tls-cert-file", str(certs["server.crt"]), "--tls-key-file", str(certs["server.key"])],
            *["--tls-ca-cert-file", str(certs["ca.crt"])],
        ],
        f"rediss://127.0.0.1:{{port}}/0?ssl_cert_reqs=required&ssl_ca_certs={certs['ca.crt']}",
    )
    server.start()
    yield server
    server.stop()


# Which server each `redis_url` parameter names; 'wrong-password' reaches the password one with a bad one.
SERVERS = {
    "plain": "redis_server",
    "password": "password_redis",
    "wrong-password": "password_redis",
    "tls": "tls_redis",
}


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Redis this test names (the suite's by default), flushed before and after."""
    kind = getattr(request, "param", "plain")
    server = request.getfixturevalue(SERVERS[kind])
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield server.url.replace(PASSWORD, "wrong") if kind == "wrong-password" else server.url
    client.flushall()


def run_one_job(client: Client) -> dict:
    """Submit a short job through the API and return it once it has ended."""
    job = client.submit("The quick brown fox", model="tiny", max_new_tokens=4, temperature=0)
    return client.wait(job["id"], JOB_TIMEOUT_S)


def assert_logs_hold_no_password(log_dir: Path) -> None:
    """Fail if any API or worker log under log_dir shows a Redis password (right or wrong)."""
    logs = sorted(log_dir.glob("*.log"))
    assert logs, f"no logs in {log_dir}"
    for log in logs:
        text = log.read_text(errors="replace")
        assert PASSWORD not in text and ":wrong@" not in text, f"{log.name} shows the Redis password"


def test_pickled_message_is_refused_and_never_run(
    settings: Settings, start_worker, client: Client, tmp_path: Path
) -> None:
    marker, control = tmp_path / "pwned", tmp_path / "control"
    pickle.loads(pickle.dumps(TouchOnUnpickle(control)))  # the payload is live: unpickling runs it
    assert control.exists()
    hostile = make_celery(settings)
    hostile.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    queue = settings.model("tiny").queue
    hostile.send_task(TASK_GENERATE, args=[TouchOnUnpickle(marker)], queue=queue, task_id="pickled")
    r = redis.Redis.from_url(settings.redis_url)
    waiting = [json.loads(raw) for name in queue_lists(queue) for raw in r.lrange(name, 0, -1)]
    assert [m["content-type"] for m in waiting] == ["application/x-python-serialize"]

    worker = start_worker()
    done = run_one_job(client)  # queued behind the pickled message, so the worker got past it
    assert done["status"] == "succeeded", done

    def drained() -> bool:
        return not any(r.llen(name) for name in queue_lists(queue)) and not r.hlen(UNACKED)

    wait_until(drained, 10, "the queue and kombu's unacked hash to empty (nothing left to redeliver)")
    assert not marker.exists(), "the worker unpickled the message"
    assert worker.proc.poll() is None, worker.log()
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log(), worker.log()


@pytest.mark.parametrize("redis_url", ["password"], indirect=True)
def test_redis_with_password_runs_jobs_end_to_end(
    redis_url: str, start_worker, client: Client, tmp_path: Path
) -> None:
    assert f":{PASSWORD}@" in redis_url
    start_worker()
    assert run_one_job(client)["status"] == "succeeded"
    assert_logs_hold_no_password(tmp_path)


@pytest.mark.parametrize("redis_url", ["wrong-password"], indirect=True)
def test_wrong_redis_password_answers_503(api_server: str, tmp_path: Path) -> None:
    body = json.dumps({"prompt": "hi", "model": "tiny"}).encode()
    for method, path, data in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/jobs", body),
        ("GET", "/readyz", None),
    ]:
        req = urllib.request.Request(
            api_server + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=10)
        err = caught.value
        assert err.code == 503, (method, path, err.code, err.read())
        payload = json.loads(err.read())
        assert ":wrong@" not in json.dumps(payload)
        if path != "/readyz":
            assert payload["error"]["code"] == "service_unavailable", payload
            assert err.headers["Retry-After"], dict(err.headers)
    assert_logs_hold_no_password(tmp_path)


@pytest.mark.parametrize("redis_url", ["tls"], indirect=True)
def test_redis_over_tls_runs_jobs_end_to_end(redis_url: str, start_worker, client: Client) -> None:
    assert redis_url.startswith("rediss://")
    # Certificates are checked: the system's CAs do not vouch for the throwaway one.
    unverified = redis.Redis.from_url(redis_url.split("&ssl_ca_certs=")[0], socket_connect_timeout=5)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        unverified.ping()
    start_worker()
    assert run_one_job(client)["status"] == "succeeded"
