"""A start while the registry or the store is down serves the last verified copy from the cache.

Each test first serves a version normally (which records it in ``current.json``), then starts a
second service over the same cache with a dependency down. The cached copy is served only after
its signature and files check out again; ``/health`` says the service is degraded and why, and
once the registry answers, the copy is confirmed, replaced or withdrawn.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inference.model import ModelVersion, ServedModel, load_served_model
from mlops_common.signing import SIGNATURE_FILE, ManifestSigner, generate_key_pair

from .conftest import BUCKET, sign

pytestmark = pytest.mark.anyio

ROW = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}
CACHED = (
    "cache: serving churn version 1 from the local cache; the registry has not confirmed it yet"
)
URI = f"s3://{BUCKET}/models/attempt/artifacts"


async def _serve_once(service: Any, gateway: Any, version: int = 1, **overrides: Any) -> Any:
    """Serve ``churn`` ``version`` normally: the copy every later start finds in the cache."""
    gateway.set_alias("churn", version)
    async with service(**overrides) as svc:
        assert await svc.manager.poll_once()
        return svc.manager.current


async def test_a_start_while_the_gateway_is_down_serves_the_cached_copy(
    service: Any, gateway: Any, store: Any
) -> None:
    served = await _serve_once(service, gateway)
    listings, downloads = len(store.listings), len(store.downloads)
    gateway.down = True
    # Callers' tokens are checked at the gateway too: without auth, only serving is observed.
    async with service(auth_enabled=False) as svc:
        assert await svc.manager.poll_once()
        health = await svc.client.get("/health")
        answer = await svc.post_json("/predict", {"instances": [ROW]})
        info = (await svc.client.get("/model-info")).json()
        metrics = (await svc.client.get("/metrics")).text
        untouched = len(store.listings) == listings

        gateway.down = False
        # The alias names the version served: confirmed against the store, nothing swapped.
        assert not await svc.manager.poll_once()
        confirmed = (await svc.client.get("/health")).json()
        confirmed_metrics = (await svc.client.get("/metrics")).text

    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded"
    assert body["source"] == "cache"
    assert body["model"] == {"name": "churn", "version": 1, "alias": "champion"}
    assert body["degraded"] == [
        "gateway: cannot resolve churn@champion: cannot reach the gateway: ConnectError: "
        "[Errno 111] Connection refused",
        CACHED,
    ]
    assert answer.status_code == 200 and answer.json()["model"]["version"] == 1
    # What the cache recorded, with the digest of the manifest verified again.
    assert info["run_id"] == "run-churn-1"
    assert info["artifact_uri"] == "s3://mlflow/models/churn-v1/artifacts"
    assert info["manifest_sha256"] == served.meta.manifest_sha256
    assert "inference_degraded 1.0" in metrics
    assert untouched  # the cached copy needed neither the gateway nor the store

    assert confirmed["status"] == "ok"
    assert confirmed["source"] == "registry"
    assert confirmed["degraded"] == []
    assert confirmed["last_error"] is None
    assert "inference_degraded 0.0" in confirmed_metrics
    # Confirmed from the listing alone.
    assert len(store.listings) == listings + 1
    assert len(store.downloads) == downloads


async def test_mlflow_failing_behind_the_gateway_serves_the_cached_copy(
    service: Any, gateway: Any
) -> None:
    await _serve_once(service, gateway)
    gateway.fail_with, gateway.fail_upstream = 502, "mlflow"
    async with service() as svc:
        assert await svc.manager.poll_once()
        health = await svc.client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["source"]) == ("degraded", "cache")
    assert body["degraded"] == [
        "mlflow: cannot resolve churn@champion: gateway answered 502 for "
        "/v1/models/churn/aliases/champion: mlflow broke",
        CACHED,
    ]


@pytest.mark.parametrize("answer", ["alias missing", "token refused"])
async def test_the_registry_s_answer_is_not_overridden_by_the_cache(
    service: Any, gateway: Any, answer: str
) -> None:
    """Only a registry that cannot be asked is replaced by the cache, not one that says no."""
    await _serve_once(service, gateway)
    if answer == "alias missing":
        gateway.aliases.clear()
    else:
        gateway.fail_with = 401
    async with service(auth_enabled=False) as svc:
        assert not await svc.manager.poll_once()
        health = await svc.client.get("/health")
        scored = await svc.post_json("/predict", {"instances": [ROW]})
    assert health.status_code == 503
    assert health.json()["source"] is None
    assert scored.status_code == 503
    assert scored.json()["error"]["message"].startswith("no model loaded")


async def test_the_cache_does_not_stand_in_once_the_registry_has_said_there_is_no_alias(
    service: Any, gateway: Any
) -> None:
    await _serve_once(service, gateway)
    gateway.aliases.clear()
    async with service(auth_enabled=False) as svc:
        assert not await svc.manager.poll_once()
        gateway.down = True  # an outage after the registry's answer changes nothing
        assert not await svc.manager.poll_once()
        health = await svc.client.get("/health")
    assert health.status_code == 503
    assert health.json()["model"] is None


async def test_a_start_while_the_store_is_down_serves_the_cached_copy(
    service: Any, gateway: Any, store: Any, clock: Any
) -> None:
    await _serve_once(service, gateway)
    downloads = len(store.downloads)
    store.down = True
    async with service() as svc:
        assert await svc.manager.poll_once()
        degraded = (await svc.client.get("/health")).json()
        store.down = False
        assert not await svc.manager.poll_once()  # the next attempt is due in 1 s
        waiting = (await svc.client.get("/health")).json()
        clock.now += 1
        assert not await svc.manager.poll_once()
        confirmed = (await svc.client.get("/health")).json()

    assert (degraded["status"], degraded["source"]) == ("degraded", "cache")
    s3, cached = degraded["degraded"]
    assert s3.startswith(
        "s3: churn version 1: listing s3://mlflow/models/churn-v1/artifacts failed: "
        "EndpointConnectionError: Could not connect to the endpoint URL"
    )
    assert cached == CACHED
    # The alias names the version served: nothing is pending, nothing failed to load.
    assert degraded["pending_version"] is None
    assert degraded["last_error"] is None
    assert waiting["degraded"] == degraded["degraded"]
    assert (confirmed["status"], confirmed["source"], confirmed["degraded"]) == (
        "ok",
        "registry",
        [],
    )
    assert len(store.downloads) == downloads


async def test_the_store_down_after_an_alias_move_serves_the_cached_version_until_it_returns(
    service: Any, gateway: Any, store: Any, clock: Any, tmp_path: Path
) -> None:
    await _serve_once(service, gateway, version=1)
    gateway.set_alias("churn", 2)
    store.down = True
    async with service() as svc:
        assert await svc.manager.poll_once()
        stale = (await svc.client.get("/health")).json()
        store.down = False
        clock.now += 1
        assert await svc.manager.poll_once()
        moved = (await svc.client.get("/health")).json()
        new = svc.manager.current

    assert stale["model"]["version"] == 1
    assert (stale["status"], stale["source"], stale["pending_version"]) == ("degraded", "cache", 2)
    assert stale["last_error"].startswith("churn version 2: listing ")
    assert [reason.split(":")[0] for reason in stale["degraded"]] == ["s3", "cache"]
    assert moved["model"]["version"] == 2
    assert (moved["status"], moved["source"], moved["degraded"]) == ("ok", "registry", [])
    # The new version is the one a later start falls back on.
    record = json.loads((tmp_path / "cache" / "churn" / "current.json").read_text())
    assert record["folder"] == new.meta.manifest_sha256
    assert record["model"]["version"] == 2


# ---- a cache that cannot be trusted is not served ------------------------------------------------
def _pointer(cache: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((cache / "current.json").read_text())
    return result


def _write_pointer(cache: Path, record: dict[str, Any]) -> None:
    (cache / "current.json").write_text(json.dumps(record))


def _nothing_cached(cache: Path) -> None:
    shutil.rmtree(cache)


def _flip_a_byte(model: Path) -> None:
    data = bytearray((model / "model.skops").read_bytes())
    data[-100] ^= 0xFF  # same size: only the hash tells
    (model / "model.skops").write_bytes(bytes(data))


def _changed_on_disk(cache: Path) -> None:
    _flip_a_byte(cache / _pointer(cache)["folder"])


def _file_added(cache: Path) -> None:
    (cache / _pointer(cache)["folder"] / "extra.py").write_text("print('hello')\n")


def _unsigned(cache: Path) -> None:
    (cache / _pointer(cache)["folder"] / SIGNATURE_FILE).unlink()


def _unknown_key(cache: Path) -> None:
    folder = cache / _pointer(cache)["folder"]
    other_key, _ = generate_key_pair()
    (folder / SIGNATURE_FILE).unlink()
    envelope = ManifestSigner(other_key).sign_dir(folder, model_name="churn")
    (folder / SIGNATURE_FILE).write_bytes(envelope)


def _other_model(cache: Path) -> None:
    sign(cache / _pointer(cache)["folder"], "prices")


def _other_alias(cache: Path) -> None:
    record = _pointer(cache)
    record["model"]["alias"] = "challenger"
    _write_pointer(cache, record)


def _outside(cache: Path) -> None:
    record = _pointer(cache)
    (cache.parent / "elsewhere").mkdir()
    record["folder"] = "../elsewhere"
    _write_pointer(cache, record)


def _other_digest(cache: Path) -> None:
    record = _pointer(cache)
    record["manifest_sha256"] = "0" * 64
    _write_pointer(cache, record)


def _garbled(cache: Path) -> None:
    (cache / "current.json").write_text("{not json")


UNTRUSTED: dict[str, tuple[Callable[[Path], None], str]] = {
    "nothing cached": (_nothing_cached, "no copy was served from"),
    "file changed on disk": (_changed_on_disk, "model.skops changed after it was signed"),
    "file added on disk": (_file_added, "extra.py is not in the signed manifest"),
    "signature removed": (_unsigned, "the cached copy is not signed by the platform"),
    "unknown key": (_unknown_key, "which is not a trusted key"),
    "signed for another model": (_other_model, "signed for model 'prices', not 'churn'"),
    "served for another alias": (_other_alias, "served as churn@challenger, not churn@champion"),
    "folder outside the cache": (_outside, "current.json names no copy"),
    "record of another copy": (_other_digest, "current.json names manifest 0000"),
    "record unreadable": (_garbled, "cannot read"),
}


@pytest.mark.parametrize("case", list(UNTRUSTED))
async def test_a_cached_copy_that_does_not_check_out_is_not_served(
    service: Any, gateway: Any, tmp_path: Path, caplog: Any, case: str
) -> None:
    tamper, reason = UNTRUSTED[case]
    await _serve_once(service, gateway)
    tamper(tmp_path / "cache" / "churn")
    gateway.down = True
    async with service(auth_enabled=False) as svc:
        assert not await svc.manager.poll_once()
        assert not await svc.manager.poll_once()
        health = await svc.client.get("/health")
        scored = await svc.post_json("/predict", {"instances": [ROW]})
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unavailable"
    assert body["message"].startswith(
        "no model loaded: cannot resolve churn@champion: cannot reach the gateway"
    )
    assert "; the local cache cannot be served: " in body["message"]
    assert reason in body["message"]
    assert scored.status_code == 503
    assert scored.json()["error"]["message"] == body["message"]
    # Tried once, not at every poll.
    said = [r for r in caplog.records if "from the local cache either" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR


class _FailsItsExample:
    """A model that loads, but whose every prediction fails (as on a machine it does not suit)."""

    def __init__(self, model: ServedModel) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, frame: Any) -> Any:
        raise ValueError("broken on this machine")


def _failing_loader(path: Path, meta: ModelVersion) -> Any:
    return _FailsItsExample(load_served_model(path, meta))


async def test_the_cached_copy_must_pass_the_input_example_check(
    service: Any, gateway: Any
) -> None:
    await _serve_once(service, gateway)
    gateway.down = True
    async with service(loader=_failing_loader) as svc:
        assert not await svc.manager.poll_once()
        body = (await svc.client.get("/health")).json()
    assert body["status"] == "unavailable"
    assert body["message"].endswith(
        "the local cache cannot be served: prediction on its input example failed: "
        "ValueError: broken on this machine"
    )


async def test_a_version_whose_store_copy_was_tampered_is_withdrawn(
    service: Any, gateway: Any, store: Any, artifacts: Any, tmp_path: Path
) -> None:
    """Served from the cache, then the registry answers, and the store's copy is not as signed:
    the version is refused as a first version would be, and never served from the cache again."""
    model = tmp_path / "attempt"
    shutil.copytree(artifacts.dirs["churn-v2"], model)
    store.add(URI, model)
    gateway.versions[("churn", 9)] = URI
    await _serve_once(service, gateway, version=9)
    gateway.down = True
    async with service() as svc:
        assert await svc.manager.poll_once()
        from_cache = (await svc.client.get("/health")).json()
        _flip_a_byte(model)  # in the object store, after signing
        gateway.down = False
        assert not await svc.manager.poll_once()
        health = await svc.client.get("/health")
        scored = await svc.post_json("/predict", {"instances": [ROW]})
        metrics = (await svc.client.get("/metrics")).text
    gateway.down = True
    async with service() as svc:
        assert not await svc.manager.poll_once()
        restarted = (await svc.client.get("/health")).json()

    assert (from_cache["source"], from_cache["model"]["version"]) == ("cache", 9)
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unavailable"
    assert body["model"] is None
    assert body["pending_version"] == 9
    assert body["last_error"].startswith("churn version 9: refused: ")
    assert "model.skops changed after it was signed" in body["last_error"]
    assert scored.status_code == 503
    assert scored.json()["error"]["message"] == f"no model loaded: {body['last_error']}"
    assert 'inference_model_events_total{event="rejected"} 1.0' in metrics
    assert not (tmp_path / "cache" / "churn" / "current.json").exists()
    assert "no copy was served from" in restarted["message"]


async def test_an_unsigned_cached_copy_is_served_only_when_signatures_are_not_required(
    service: Any, gateway: Any, store: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="inference")
    await _serve_once(service, gateway, require_signed_models=False)
    downloads = len(store.downloads)
    gateway.down = True
    async with service(require_signed_models=False, auth_enabled=False) as svc:
        assert await svc.manager.poll_once()
        health = (await svc.client.get("/health")).json()
        info = (await svc.client.get("/model-info")).json()
        gateway.down = False
        assert not await svc.manager.poll_once()
        confirmed = (await svc.client.get("/health")).json()
    assert (health["status"], health["source"]) == ("degraded", "cache")
    assert info["manifest_sha256"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "INFERENCE_REQUIRE_SIGNED_MODELS is false: the cached copy of churn version 1" in message
        for message in warnings
    )
    assert (confirmed["status"], confirmed["source"]) == ("ok", "registry")
    assert len(store.downloads) == downloads
