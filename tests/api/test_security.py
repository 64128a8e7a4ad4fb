"""Nothing let in without a key, nothing leaked: API and admin keys, audit, Redis password and rediss://,
JSON-only broker, unguessable ids, idempotency keys, Flower behind auth, and no secret in any log.

The live part runs one stack on a password-protected redis-server (``--requirepass``) with API and
admin keys set and every process logging at DEBUG, then greps all its logs for the secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from api.errors import problem_type
from cli.local_redis import LocalRedis, free_port, server_command
from inferpool import keys, model_store
from inferpool.settings import Settings
from tests.support.jobs import wait_job

N_FEATURES = 20
REDIS_PASSWORD = "redis-pw-3f9a1c77d2"
ALICE, BOB, ADMIN = "sk-alice-51d0e2a9", "sk-bob-8c27f4e1", "sk-admin-c06b3d95"
WRONG_KEY = "sk-guess-000000"
FLOWER_PASSWORD = "flower-pw-77ab19"
SECRETS = (REDIS_PASSWORD, ALICE, BOB, ADMIN, WRONG_KEY, FLOWER_PASSWORD)

ROW = [0.5] * N_FEATURES


class PasswordRedis(LocalRedis):
    """A private redis-server that refuses every client without the password."""

    password: str = REDIS_PASSWORD

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> PasswordRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        argv = [*server_command(self.port, self.data_dir, self.aof), "--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("password redis-server did not start")


@pytest.fixture(scope="module")
def secure(tmp_path_factory, model_dir) -> Iterator:
    """API keys, admin key, Flower credentials and a Redis password, everything logging at DEBUG."""
    from conftest import Stack, base_env  # the shared fixtures' process helpers

    d = tmp_path_factory.mktemp("secure")
    (d / "metrics").mkdir()
    srv = PasswordRedis(d / "redis").start()
    env = base_env(
        srv.url, model_dir, d / "metrics",
        INFERPOOL_API_KEYS=f"alice:{ALICE},bob:{BOB}",
        INFERPOOL_ADMIN_KEYS=f"ops:{ADMIN}",
        INFERPOOL_FLOWER_USER="admin",
        INFERPOOL_FLOWER_PASSWORD=FLOWER_PASSWORD,
        INFERPOOL_LOG_LEVEL="DEBUG",
        INFERPOOL_LOG_TASK_EVENTS="true",
    )  # fmt: skip
    st = Stack(redis=srv, env=env, tmp=d)
    st.start_worker("all", concurrency=1)
    st.start_api()
    yield st
    st.stop()
    srv.stop(kill=True)


def _client(st, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=st.url, timeout=30, headers={"X-API-Key": key} if key else {})


DATA_ROUTES = [
    ("POST", "/v1/predict", {"json": {"instances": [ROW]}}),
    ("POST", "/predict", {"json": {"X": ROW}}),
    ("POST", "/v1/jobs", {"json": {"instances": [ROW]}}),
    ("GET", "/v1/jobs/" + "0" * 40, {}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/monitoring/status", {}),
    ("GET", "/v1/monitoring/drift", {}),
    ("GET", "/v1/monitoring/accuracy", {}),
    ("POST", "/v1/feedback", {"json": {"labels": [{"job_id": "x", "label": 1}]}}),
]
ADMIN_ROUTES = [("GET", "/v1/admin/audit", {}), ("POST", "/v1/admin/model/reload", {})]


def test_data_routes_need_a_valid_key(secure):
    for key in (None, WRONG_KEY, ""):
        with _client(secure, key) as c:
            for method, path, kw in DATA_ROUTES + ADMIN_ROUTES:
                r = c.request(method, path, **kw)
                assert r.status_code == 401, (key, path, r.text)
                assert r.json()["type"] == problem_type("unauthorized") and r.headers["www-authenticate"] == "ApiKey"
                # refused at the edge, before FastAPI: the same problem shape as a route's error
                assert r.headers["content-type"] == "application/problem+json"
                assert (r.json()["status"], r.json()["instance"]) == (401, path) and r.json()["detail"]
    with _client(secure) as c:  # liveness and readiness stay open for orchestrators
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


def test_a_key_opens_the_data_routes_but_not_the_admin_ones(secure, reference_model):
    X = np.random.default_rng(1).normal(size=(5, N_FEATURES))
    with _client(secure, ALICE) as c:
        r = c.post("/v1/predict", json={"instances": X.tolist()})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == reference_model.predict(X).tolist()
        assert c.post("/predict", json={"X": X[0].tolist()}).status_code == 200
        assert c.get("/v1/models").status_code == 200
        for method, path, kw in ADMIN_ROUTES:
            assert c.request(method, path, **kw).status_code == 401


def test_admin_routes_need_an_admin_key_even_without_api_keys(api):
    """The shared stack has no keys configured at all: admin routes stay closed."""
    for method, path, kw in ADMIN_ROUTES:
        r = api.request(method, path, **kw)
        assert r.status_code == 401 and "INFERPOOL_ADMIN_KEYS" in r.json()["detail"]
    assert api.post("/v1/predict", json={"instances": [ROW]}).status_code == 200  # data routes stay open


def test_audit_records_who_when_model_rows_outcome(secure):
    X = np.random.default_rng(2).normal(size=(37, N_FEATURES))
    before = time.time()
    with _client(secure, BOB) as c:
        r = c.post("/v1/jobs", json={"instances": X.tolist()})
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        assert wait_job(c, job_id)["status"] == "succeeded"
        version = c.get("/v1/models").json()["version"]
    with _client(secure, ADMIN) as admin:
        rows = admin.get("/v1/admin/audit", params={"since": before - 1}).json()["records"]
        assert admin.get("/v1/admin/audit", params={"since": "nan"}).status_code == 422
    rec = next(x for x in rows if x["job_id"] == job_id)
    assert rec["key_id"] == "bob" and rec["rows"] == 37 and rec["model_version"] == version
    assert rec["outcome"] == "succeeded" and before - 1 <= rec["submitted"] <= time.time()
    assert not any(secret in str(rows) for secret in SECRETS)
    assert secure.client.ttl(keys.audit(job_id)) > 6 * 24 * 3600  # kept a week by default


def test_idempotency_key_returns_the_same_job_per_api_key(secure):
    body = {"instances": np.random.default_rng(3).normal(size=(10, N_FEATURES)).tolist()}
    with _client(secure, ALICE) as alice, _client(secure, BOB) as bob:
        first = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        again = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        other = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-43"})
        bobs = bob.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        too_long = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 201})
    assert (first.status_code, again.status_code, other.status_code, bobs.status_code) == (202, 200, 202, 202)
    assert again.json()["job_id"] == first.json()["job_id"]
    assert len({first.json()["job_id"], other.json()["job_id"], bobs.json()["job_id"]}) == 3
    assert too_long.status_code == 422 and too_long.json()["field"] == "Idempotency-Key"


def test_idempotent_retry_finishes_a_submit_that_failed_half_way(secure, reference_model, model_dir):
    """A submit whose rows were stored but whose chunks were never published (Redis failed part way):
    the retry with the same key publishes them and the job completes, counted once."""
    from api.jobs import JobStore

    X = np.random.default_rng(4).normal(size=(6, N_FEATURES))
    job_id = JobStore.new_id()
    client = secure.client
    pipe = client.pipeline()
    pipe.set(keys.job_input(job_id, 0), X.astype(np.float32).tobytes(), ex=600)
    version = model_store.current_version(model_dir)  # the job runs the version it names
    pipe.hset(keys.job(job_id), mapping={"status": "queued", "n_rows": 6, "n_chunks": 1, "rows_done": 0,
                                         "chunks_done": 0, "submitted": time.time(), "work_ms": 0,
                                         "model_version": version, "key_id": "alice"})  # fmt: skip
    pipe.expire(keys.job(job_id), 600)
    pipe.set(keys.idempotency("alice", "half-way"), job_id, ex=600)
    pipe.execute()
    accepted_before = int(client.hget(keys.LEDGER, "accepted") or 0)
    with _client(secure, ALICE) as c:
        r = c.post("/v1/jobs", json={"instances": X.tolist()}, headers={"Idempotency-Key": "half-way"})
        assert r.status_code == 200 and r.json()["job_id"] == job_id
        assert wait_job(c, job_id)["predictions"] == reference_model.predict(X).tolist()
    assert int(client.hget(keys.LEDGER, "accepted")) == accepted_before + 1


def test_ids_are_unguessable(secure):
    from api.jobs import JobStore

    ids = {JobStore.new_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(i) == 40 and int(i, 16) >= 0 for i in ids)  # 160 bits each
    with _client(secure, ALICE) as c:
        job_id = c.post("/v1/jobs", json={"instances": [ROW]}).json()["job_id"]
        inline_id = c.post("/v1/predict", json={"instances": [ROW]}).json()["job_id"]
    assert len(job_id) == 40 and int(job_id, 16) >= 0
    task, offset, count, tag = inline_id.split(".")
    assert len(task) == 32 and int(task, 16) >= 0 and (offset, count) == ("0", "1")  # 128 bits
    assert len(tag) == 32 and int(tag, 16) >= 0  # and 128 more binding the slice to its caller


def test_results_read_only_with_the_key_that_submitted_them(secure, reference_model):
    X = np.random.default_rng(5).normal(size=(3, N_FEATURES))
    with _client(secure, ALICE) as alice, _client(secure, BOB) as bob:
        job_id = alice.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
        answer = alice.post("/v1/predict", json={"instances": X.tolist()}).json()
        assert wait_job(alice, job_id)["predictions"] == reference_model.predict(X).tolist()
        own = alice.get(f"/v1/jobs/{answer['job_id']}")
        assert own.status_code == 200 and own.json()["predictions"] == answer["predictions"]

        task, offset, count, tag = answer["job_id"].split(".")
        forged = [
            f"{task}.{offset}.1.{tag}",  # a narrower slice under the same tag
            f"{task}.1.1.{tag}",  # a neighbour's rows in the same batch
            f"{task}.{offset}.{count}",  # no tag
            f"{task}.{offset}.{count}.{'0' * 32}",
        ]
        for other in forged:
            r = alice.get(f"/v1/jobs/{other}")
            assert r.status_code == 404 and "predictions" not in r.text, other
        for other in (job_id, answer["job_id"]):  # another key learns nothing, not even that the job exists
            r = bob.get(f"/v1/jobs/{other}")
            assert r.status_code == 404 and r.json()["type"] == problem_type("not_found"), r.text
        fb = bob.post("/v1/feedback", json={"labels": [{"job_id": job_id, "row": 0, "label": 1}]})
        assert fb.status_code == 422 and fb.json()["field"] == "labels.0.job_id"


def test_broker_carries_json_only_and_a_worker_refuses_pickle(secure):
    from workers.app import make_app

    s = Settings(redis_url=secure.redis.url)
    app = make_app(s)
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.result_accept_content == ["json"] and app.conf.event_serializer == "json"
    client = secure.client
    # What our producer puts on the wire: JSON, read from a queue nobody consumes.
    app.send_task("inferpool.predict", args=[{"id": "probe", "n": 0}], queue="inferpool.test-json", ignore_result=True)
    raw = client.lrange("inferpool.test-json", 0, -1)
    assert len(raw) == 1 and b'"content-type": "application/json"' in raw[0]
    # A pickled message on a consumed queue is refused by the worker, never run.
    evil = make_app(s)
    evil.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    marker_id = "pickled-" + os.urandom(8).hex()
    spec = {"id": marker_id, "n": 0, "work_ms": 0, "queue": keys.QUEUE_ONLINE, "reqs": 1}
    evil.send_task("inferpool.predict", args=[spec], queue=keys.QUEUE_ONLINE, serializer="pickle", ignore_result=True)
    worker_log = next(p for p in secure.procs if p.name.startswith("worker")).log
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "untrusted content" not in worker_log.read_text():
        time.sleep(0.1)
    assert "untrusted content" in worker_log.read_text()
    assert client.get(keys.batch_result(marker_id)) is None
    client.delete("inferpool.test-json")


def test_wrong_redis_password_is_a_503_not_a_500(secure):
    url = secure.redis.url.replace(REDIS_PASSWORD, "not-the-password")
    good_api = secure.url
    api = secure.start_api(REDIS_URL=url)
    secure.url = good_api  # start_api records the newest API; this one is checked and stopped here
    try:
        with httpx.Client(base_url=api, timeout=10, headers={"X-API-Key": ALICE}) as c:
            assert c.get("/readyz").status_code == 503
            r = c.post("/v1/predict", json={"instances": [ROW]})
            assert r.status_code == 503 and r.json()["type"] == problem_type("unavailable"), r.text
            assert c.post("/v1/jobs", json={"instances": [ROW]}).status_code == 503
    finally:
        secure.procs[-1].stop()


def test_flower_always_behind_basic_auth(secure, monkeypatch):
    from inferpool import settings as settings_module
    from workers.flower import FlowerCredentialsMissing, flower_env

    monkeypatch.delenv("INFERPOOL_FLOWER_USER", raising=False)
    monkeypatch.delenv("INFERPOOL_FLOWER_PASSWORD", raising=False)
    settings_module.get_settings.cache_clear()
    try:
        with pytest.raises(FlowerCredentialsMissing):
            flower_env()
    finally:
        settings_module.get_settings.cache_clear()
    port = free_port()
    log = secure.tmp / "flower.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "flower", "--port", str(port), "--address", "127.0.0.1"],
        env=secure.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                anonymous = httpx.get(f"{url}/api/workers", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"flower did not start: {log.read_text()[-2000:]}")
        assert anonymous.status_code == 401
        assert httpx.get(f"{url}/", timeout=5).status_code == 401
        assert httpx.get(f"{url}/", auth=("admin", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{url}/api/workers", auth=("admin", FLOWER_PASSWORD), timeout=10).status_code == 200
        # Credentials travel in the environment, not in argv where `ps` shows them.
        assert FLOWER_PASSWORD.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    finally:
        # Flower may still be answering a broadcast when told to stop; this test is about its door, not its exit.
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_rediss_urls_verify_certificates_by_default():
    from inferpool.celery_config import tls_options
    from workers.app import make_app

    url = "rediss://:pw@redis.example:6380/0"
    assert tls_options("redis://:pw@127.0.0.1:6379/0") == {}
    assert tls_options(url)["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert tls_options(url + "?ssl_cert_reqs=CERT_NONE") == {}  # the URL's own choice wins
    app = make_app(Settings(redis_url=url))
    with app.connection_for_write() as conn:
        assert conn.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.backend is not None  # Celery refuses a rediss:// backend without a cert policy
    from inferpool.redis_client import async_client, sync_client

    for client in (sync_client(url), async_client(url)):
        kwargs = client.connection_pool.connection_kwargs
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"
        assert kwargs.get("ssl_cert_reqs", "required") in ("required", ssl.CERT_REQUIRED)
        assert kwargs["password"] == "pw"


class TlsProxy:
    """A TLS front for a plain redis-server (the bundled one has no TLS), on a thread of its own."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.port = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self.loop.run_until_complete, args=(self._serve(ready),), daemon=True).start()
        ready.wait(5)

    async def _serve(self, ready: threading.Event) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await server.serve_forever()

    async def _handle(self, tls_r: asyncio.StreamReader, tls_w: asyncio.StreamWriter) -> None:
        try:
            plain_r, plain_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            tls_w.close()
            return

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pump(tls_r, plain_w), pump(plain_r, tls_w))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_stack_runs_over_rediss_and_refuses_an_untrusted_server(stack_factory, tmp_path, reference_model):
    from workers.app import make_app

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    st = stack_factory()
    proxy = TlsProxy(st.redis.port, cert, key)
    tls_url = f"rediss://127.0.0.1:{proxy.port}/0"
    # Without the CA the certificate is refused by every client: nothing falls back to unverified TLS.
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(tls_url, socket_connect_timeout=2).ping()
    broker = make_app(Settings(redis_url=tls_url)).connection_for_write()
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"), broker as conn:
        conn.ensure_connection(max_retries=1)
    # With it, the whole stack runs over TLS: API, worker, broker, results.
    trusted = f"{tls_url}?ssl_ca_certs={cert}"
    st.env["REDIS_URL"] = trusted
    st.start_worker("all", concurrency=1)
    X = np.random.default_rng(5).normal(size=(3, N_FEATURES))
    with httpx.Client(base_url=st.start_api(), timeout=30) as c:
        r = c.post("/v1/predict", json={"instances": X.tolist()})
        assert r.status_code == 200 and r.json()["predictions"] == reference_model.predict(X).tolist()
        job = c.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
        assert wait_job(c, job)["predictions"] == reference_model.predict(X).tolist()


def test_no_secret_in_any_log(secure):
    """Runs last in this module: every process of the secure stack has logged at DEBUG by now."""
    logs = sorted(secure.tmp.glob("*.log"))
    assert logs and sum(p.stat().st_size for p in logs) > 1000
    for path in logs:
        text = path.read_text(errors="replace")
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, f"{path.name} logs {leaked}"
    assert "untrusted content" in "".join(p.read_text(errors="replace") for p in logs)  # logs were really read
