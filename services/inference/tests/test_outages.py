"""A dependency that is down is told apart from a version that is refused, and retried soon.

The object store being unreachable says nothing about the version: a swap that hits it leaves no
trace, the old model keeps serving, ``/health`` says the service is degraded, and the swap is
tried again within seconds until it succeeds. Calls to the gateway and the store end in bounded
time, and the errors real boto3 raises are classified as the fakes' are.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from inference.app import create_app
from inference.artifacts import ArtifactCache
from inference.errors import ModelLoadError, StoreUnavailable
from inference.gateway import GatewayClient, GatewayError
from mlops_common.http import make_async_client
from mlops_common.settings import S3Settings
from mlops_common.storage import ObjectStore
from pydantic import SecretStr

from .conftest import CALLER

pytestmark = pytest.mark.anyio

ROW = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}
V2 = "s3://mlflow/models/churn-v2/artifacts"


async def test_a_swap_while_the_store_is_down_leaves_nothing_half_done_and_retries_soon(
    service: Any, gateway: Any, store: Any, clock: Any, tmp_path: Path
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        info_before = (await svc.client.get("/model-info")).json()
        cached_before = sorted(p.name for p in (tmp_path / "cache" / "churn").iterdir())

        gateway.set_alias("churn", 2)
        store.downloads_until_down = 2  # the outage starts in the middle of the download
        assert not await svc.manager.poll_once()
        cached_during = sorted(p.name for p in (tmp_path / "cache" / "churn").iterdir())
        health = await svc.client.get("/health")
        info_during = (await svc.client.get("/model-info")).json()
        scored = await svc.post_json("/predict", {"instances": [ROW]})
        metrics = (await svc.client.get("/metrics")).text

        # Tried again after 1, 2, 4, 8, then every 10 s: not the minutes of a refused version.
        delays = []
        for _ in range(6):
            attempts = len(store.listings)
            waited = 0.0
            while len(store.listings) == attempts:
                clock.now += 0.5
                waited += 0.5
                assert not await svc.manager.poll_once()
            delays.append(waited)

        store.down = False
        clock.now += 10
        assert await svc.manager.poll_once()
        recovered = (await svc.client.get("/health")).json()
        info_after = (await svc.client.get("/model-info")).json()

    assert len(cached_before) == 3  # the copy, its listing record, current.json
    assert cached_during == cached_before  # no partial folder, no half of version 2
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["source"], body["pending_version"]) == ("degraded", "registry", 2)
    assert body["last_error"].startswith(
        f"churn version 2: download of {V2} failed: EndpointConnectionError: "
    )
    assert body["degraded"] == [f"s3: {body['last_error']}"]
    assert info_during == info_before
    assert scored.status_code == 200 and scored.json()["model"]["version"] == 1
    assert "inference_degraded 1.0" in metrics
    assert 'inference_model_events_total{event="load_failed"} 1.0' in metrics
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert (recovered["status"], recovered["degraded"], recovered["last_error"]) == ("ok", [], None)
    assert info_after["version"] == 2


async def test_a_refused_version_after_an_outage_waits_the_long_backoff(
    service: Any, gateway: Any, store: Any, clock: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        gateway.set_alias("churn", 3)  # its model file is garbage
        store.down = True
        assert not await svc.manager.poll_once()
        store.down = False
        clock.now += 1
        assert not await svc.manager.poll_once()  # reaches the store: the version is broken
        broken = (await svc.client.get("/health")).json()
        downloads = store.downloads.count("s3://mlflow/models/churn-broken/artifacts")
        clock.now += 29
        await svc.manager.poll_once()
        early = store.downloads.count("s3://mlflow/models/churn-broken/artifacts")
        clock.now += 2
        await svc.manager.poll_once()
        due = store.downloads.count("s3://mlflow/models/churn-broken/artifacts")
    assert (broken["status"], broken["degraded"]) == ("ok", [])
    assert "model.skops" in broken["last_error"]
    assert (downloads, early, due) == (1, 1, 2)


async def test_the_service_recovers_by_itself_soon_after_the_store_returns(
    settings_for: Any, gateway: Any, store: Any
) -> None:
    """The background loop wakes for a due retry: far sooner than the poll interval here."""
    gateway.set_alias("churn", 1)
    store.down = True
    settings = settings_for(poll_interval_s=600, store_retry_base_s=0.05, store_retry_max_s=0.2)
    app = create_app(settings, gateway_transport=httpx.MockTransport(gateway.handler), store=store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://inference.test", headers=CALLER
        ) as client,
    ):

        async def retried() -> bool:
            return len(store.listings) >= 3

        await _eventually(retried)
        down = await client.get("/health")
        store.down = False

        async def serving() -> bool:
            response = await client.get("/health")
            return response.status_code == 200 and response.json()["status"] == "ok"

        await _eventually(serving, timeout_s=10)

    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "unavailable"
    assert body["degraded"][0].startswith("s3: churn version 1: listing ")
    # Nothing was ever served here: the cache has nothing to offer, and says so.
    assert "the local cache cannot be served: no copy was served from" in body["message"]


async def test_health_bodies_match_the_documented_schema(service: Any, gateway: Any) -> None:
    """What schemathesis' response_schema_conformance checks, for each kind of answer."""
    async with service(auth_enabled=False) as svc:
        spec = (await svc.client.get("/openapi.json")).json()
        operation = schemathesis.openapi.from_dict(spec)["/health"]["GET"]
        answers = [await svc.client.get("/health")]  # loading
        gateway.set_alias("churn", 1)
        await svc.manager.poll_once()
        answers.append(await svc.client.get("/health"))  # ok
        gateway.down = True
        await svc.manager.poll_once()
        answers.append(await svc.client.get("/health"))  # degraded
    assert [a.json()["status"] for a in answers] == ["loading", "ok", "degraded"]
    assert [a.status_code for a in answers] == [503, 200, 200]
    for answer in answers:
        operation.validate_response(answer)
    statuses = spec["components"]["schemas"]["HealthResponse"]["properties"]["status"]["enum"]
    assert "degraded" in statuses


# ---- the gateway ---------------------------------------------------------------------------------
async def test_a_gateway_that_never_answers_is_given_up_on_in_bounded_time() -> None:
    async def frozen(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()  # accepts the request, never answers
        raise AssertionError("unreachable")

    client = make_async_client("http://gateway.test", transport=httpx.MockTransport(frozen))
    async with client:
        gateway = GatewayClient(client, resolve_timeout_s=0.2)
        with pytest.raises(GatewayError) as raised:
            # The outer bound only keeps a broken timeout from hanging the test run.
            await asyncio.wait_for(gateway.resolve("churn", "champion"), 10)
    assert str(raised.value) == "no answer from the gateway within 0.2s"
    assert raised.value.unavailable


@pytest.mark.parametrize(
    ("status", "body", "unavailable", "dependency"),
    [
        (502, {"error": {"message": "m", "details": {"upstream": "mlflow"}}}, True, "mlflow"),
        (503, {"error": {"message": "m"}}, True, "gateway"),
        (500, "not json", True, "gateway"),
        (401, {"error": {"message": "unknown token"}}, False, "gateway"),
        (403, {"error": {"message": "no models:read"}}, False, "gateway"),
    ],
)
async def test_gateway_errors_say_whether_a_dependency_is_down_and_which(
    status: int, body: Any, unavailable: bool, dependency: str
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    transport = httpx.MockTransport(answer)
    async with make_async_client("http://gateway.test", transport=transport, retries=0) as client:
        with pytest.raises(GatewayError) as raised:
            await GatewayClient(client).resolve("churn", "champion")
    assert (raised.value.unavailable, raised.value.dependency) == (unavailable, dependency)


# ---- the object store, through real boto3 ------------------------------------------------------
LISTING = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>mlflow</Name><Prefix>models/m/artifacts/</Prefix><KeyCount>1</KeyCount>
<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>
<Contents><Key>models/m/artifacts/MLmodel</Key><Size>5</Size><ETag>"e1"</ETag>
<LastModified>2026-01-01T00:00:00.000Z</LastModified><StorageClass>STANDARD</StorageClass>
</Contents></ListBucketResult>"""


class _S3(ThreadingHTTPServer):
    """Answers a listing of one object, and each request with the status set for its kind."""

    listing: tuple[int, str] = (200, "")
    objects: tuple[int, str] = (200, "")


class _S3Handler(BaseHTTPRequestHandler):
    server: _S3

    def do_GET(self) -> None:
        is_listing = "list-type=2" in self.path
        status, code = self.server.listing if is_listing else self.server.objects
        if status != 200:
            self._answer(status, f"<Error><Code>{code}</Code><Message>m</Message></Error>")
        else:
            self._answer(200, LISTING if is_listing else "hello")

    def do_HEAD(self) -> None:
        status, _ = self.server.objects
        self.send_response(status)
        self.send_header("Content-Length", "5")
        self.send_header("ETag", '"e1"')
        self.end_headers()

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def s3_server() -> Iterator[_S3]:
    server = _S3(("127.0.0.1", 0), _S3Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _object_store(endpoint: str) -> ObjectStore:
    settings = S3Settings(
        endpoint_url=endpoint,
        access_key_id="k",
        secret_access_key=SecretStr("test-secret"),
        connect_timeout_s=2,
        read_timeout_s=2,
        max_attempts=1,
    )
    return ObjectStore.from_settings(settings)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


FAULTS = {
    # name: (listing answer, object answer, expected error, message start)
    "nothing listens": (None, None, StoreUnavailable, "listing "),
    "listing throttled": ((503, "SlowDown"), (200, ""), StoreUnavailable, "listing "),
    "listing fails": ((500, "InternalError"), (200, ""), StoreUnavailable, "listing "),
    "listing refused": ((403, "AccessDenied"), (200, ""), ModelLoadError, "listing "),
    "download throttled": ((200, ""), (503, "SlowDown"), StoreUnavailable, "download "),
    "download refused": ((200, ""), (403, "AccessDenied"), ModelLoadError, "download "),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_boto3_errors_are_told_apart(s3_server: _S3, tmp_path: Path, fault: str) -> None:
    listing, objects, expected, start = FAULTS[fault]
    if listing is None or objects is None:
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    else:
        s3_server.listing, s3_server.objects = listing, objects
        endpoint = f"http://127.0.0.1:{s3_server.server_address[1]}"
    cache = ArtifactCache(_object_store(endpoint), tmp_path / "m", verifier=None)
    with pytest.raises(ModelLoadError) as raised:
        cache.fetch("m", "s3://mlflow/models/m/artifacts")
    assert type(raised.value) is expected
    assert str(raised.value).startswith(start)
    assert not list(tmp_path.glob("m/.partial-*"))


def test_a_download_gives_up_before_its_next_file_when_the_service_stops(
    store: Any, tmp_path: Path
) -> None:
    """The process's exit waits for the download thread: it must not fetch a whole model."""
    cache = ArtifactCache(store, tmp_path / "churn", verifier=None)
    real_download = store.download_file

    def download_then_stop(uri: Any, filename: str) -> None:
        real_download(uri, filename)
        cache.stop()  # SIGTERM arrives while the first file downloads

    store.download_file = download_then_stop
    with pytest.raises(ModelLoadError, match="stopped: shutting down"):
        cache.fetch("churn", "s3://mlflow/models/churn-v1/artifacts")
    assert len(store.downloaded_keys) == 1
    assert list((tmp_path / "churn").iterdir()) == []


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Poll a condition with a deadline (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s}s")
