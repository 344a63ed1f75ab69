"""GET /v1/models/{name}/versions/{version}/lineage and the served-version reports it reads."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from botocore.exceptions import EndpointConnectionError
from fastapi.testclient import TestClient
from mlops_common.auth import TokenStore
from mlops_common.signing import (
    SIGNATURE_FILE,
    ManifestSigner,
    ManifestVerifier,
    generate_key_pair,
    public_key_of,
)
from model_gateway.db import served_versions

from .conftest import AUTH, SKLEARN_MLMODEL, FakeMlflow, FakeStore

CHURN_ARTIFACTS = "s3://mlflow/2/models/m-churn-1/artifacts"
CHURN_V2_ARTIFACTS = "s3://mlflow/2/models/m-churn-2/artifacts"
DATASET = "s3://datasets/churn/2026-12-01/data.parquet"
ETL_MANIFEST = "s3://datasets/churn/2026-12-01/manifest.json"
STARTED, ENDED = 1_764_600_000_000, 1_764_600_042_000
INSTANCE = "inference-0:8800"
LINEAGE = "/v1/models/churn/versions/{}/lineage"


@dataclass(frozen=True)
class Signed:
    public_key: str
    key_id: str
    digest: str
    signed_at: str
    envelope: bytes


def sign(tmp_path: Path, model_name: str, run_id: str | None, private_key: str) -> Signed:
    folder = tmp_path / f"sign-{model_name}-{run_id}"
    folder.mkdir(exist_ok=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model.skops").write_bytes(b"model bytes")
    envelope = ManifestSigner(private_key).sign_dir(folder, model_name=model_name, run_id=run_id)
    public = public_key_of(private_key)
    manifest = ManifestVerifier([public]).verify(envelope, model_name=model_name)
    return Signed(public, manifest.key_id, manifest.digest, manifest.signed_at, envelope)


@pytest.fixture
def key_pair() -> tuple[str, str]:
    return generate_key_pair()


@pytest.fixture
def signed(tmp_path: Path, key_pair: tuple[str, str]) -> Signed:
    return sign(tmp_path, "churn", "run-churn", key_pair[0])


@pytest.fixture
def churn(registry: FakeMlflow, store: FakeStore, signed: Signed) -> FakeMlflow:
    """churn v1: trained by the trainer from ETL data in a DAG run, signed; v2: no tags at all."""
    registry.add_model("churn")
    registry.add_run(
        "run-churn",
        {"accuracy": 0.91, "f1": 0.89},
        {
            "task": "classification",
            "algorithm": "logistic_regression",
            "dataset_source": DATASET,
            "dataset_digest": "d1g35t",
            "dataset_rows": "1200",
            "test_size": "0.2",
            "random_state": "42",
            "param.C": "0.5",
        },
        tags={
            "trainer.job_id": "job-123",
            "model_name": "churn",
            "mlops.trainer_version": "0.4.0",
            "mlops.image": "ghcr.io/acme/trainer:0.4.0",
            "mlops.dag_id": "train_and_promote",
            "mlops.dag_run_id": "manual__2026-12-01T10:00:00+00:00",
            "mlops.etl_manifest": ETL_MANIFEST,
        },
        experiment_id="7",
        start_time=STARTED,
        end_time=ENDED,
    )
    registry.add_version(
        "churn",
        download_uri="mlflow-artifacts:/2/models/m-churn-1/artifacts",
        run_id="run-churn",
        tags={
            "mlops.manifest_sha256": signed.digest,
            "mlops.signed_by": signed.key_id,
            "mlops.job_id": "job-123",
        },
    )
    registry.add_version("churn", download_uri="mlflow-artifacts:/2/models/m-churn-2/artifacts")
    for uri, number in ((CHURN_ARTIFACTS, 1), (CHURN_V2_ARTIFACTS, 2)):
        mlmodel = SKLEARN_MLMODEL.format(model_id=f"m-churn-{number}", run_id="run-churn")
        store.objects[f"{uri}/MLmodel"] = mlmodel.encode()
    store.objects[f"{CHURN_ARTIFACTS}/{SIGNATURE_FILE}"] = signed.envelope
    return registry


@pytest.fixture
def trusting(build_app: Any, engine: sa.Engine, signed: Signed) -> Iterator[TestClient]:
    """A gateway trusting the key churn v1 was signed with."""
    app = build_app(engine=engine, trusted_signing_keys=[signed.public_key])
    with TestClient(app, headers=AUTH) as client:
        yield client


def settle(client: TestClient) -> None:
    """Wait for the served-version writes the gateway does in the background."""
    assert client.portal is not None
    client.portal.call(client.app.state.handler.settle)  # type: ignore[attr-defined]


def served_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = sa.select(served_versions).order_by(served_versions.c.instance)
        return [dict(r) for r in conn.execute(query).mappings().all()]


def report(instance: str | bytes, version: str | None) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Inference-Instance": instance}
    if version is not None:
        headers["X-Served-Version"] = version
    return headers


def counter(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exposed")


# -- the whole chain ---------------------------------------------------------------------------


def test_the_lineage_of_a_trained_version_names_every_link(
    churn: FakeMlflow, trusting: TestClient, signed: Signed, store: FakeStore
) -> None:
    moves = [("champion", 1, "first"), ("challenger", 1, None), ("champion", 2, "retrained")]
    for alias, version, reason in moves:
        moved = trusting.put(
            f"/v1/models/churn/aliases/{alias}",
            json={"version": version, "reason": reason},
            headers={"X-Actor": "alice"},
        )
        assert moved.status_code == 200, moved.text
    resolved = trusting.get("/v1/models/churn/aliases/challenger", headers=report(INSTANCE, "1"))
    assert resolved.status_code == 200
    settle(trusting)

    response = trusting.get(LINEAGE.format(1))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dataset"] == {
        "source": DATASET,
        "builtin": False,
        "digest": "d1g35t",
        "rows": 1200,
        "etl_manifest": ETL_MANIFEST,
    }
    assert body["etl"] == {
        "dag_id": "train_and_promote",
        "dag_run_id": "manual__2026-12-01T10:00:00+00:00",
    }
    assert body["training_run"] == {
        "run_id": "run-churn",
        "experiment_id": "7",
        "run_name": "run-run-churn",
        "status": "FINISHED",
        "params": {
            "algorithm": "logistic_regression",
            "dataset_digest": "d1g35t",
            "dataset_rows": "1200",
            "dataset_source": DATASET,
            "param.C": "0.5",
            "random_state": "42",
            "task": "classification",
            "test_size": "0.2",
        },
        "metrics": {"accuracy": 0.91, "f1": 0.89},
        "started_at": "2025-12-01T14:40:00Z",
        "ended_at": "2025-12-01T14:40:42Z",
        "code_version": "0.4.0",
        "image": "ghcr.io/acme/trainer:0.4.0",
        "job_id": "job-123",
    }
    version = body["version"]
    assert version.pop("created_at").startswith("2025-11-24T")
    assert version == {
        "name": "churn",
        "version": 1,
        "status": "READY",
        "artifact_uri": CHURN_ARTIFACTS,
        "run_id": "run-churn",
        "source": "models:/m-churn-1",
        "job_id": "job-123",
        "signature": {
            "status": "verified",
            "reason": None,
            "manifest_sha256": signed.digest,
            "signed_by": signed.key_id,
            "signed_at": signed.signed_at,
        },
    }
    assert [
        (m["alias"], m["from_version"], m["to_version"], m["actor"], m["on_behalf_of"], m["reason"])
        for m in body["alias_moves"]
    ] == [
        ("champion", None, 1, "test-admin", "alice", "first"),
        ("challenger", None, 1, "test-admin", "alice", None),
        ("champion", 1, 2, "test-admin", "alice", "retrained"),
    ]
    times = [m["moved_at"] for m in body["alias_moves"]]
    assert times == sorted(times)
    assert body["alias_moves_truncated"] is False
    assert body["aliases_now"] == ["challenger"]
    [served] = body["served_by"]
    assert (served["instance"], served["alias"], served["reported_by"]) == (
        INSTANCE,
        "challenger",
        "test-admin",
    )
    seen = datetime.fromisoformat(served["last_seen"])
    assert datetime.now(UTC) - seen < timedelta(seconds=10)
    assert body["served_by_window_s"] == 30
    # The signature was read with the envelope's size limit, like every gateway read.
    signature_read = store.reads.index(f"{CHURN_ARTIFACTS}/{SIGNATURE_FILE}")
    assert store.limits[signature_read] == 1024 * 1024


def test_the_lineage_documents_its_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    route = spec["paths"]["/v1/models/{name}/versions/{version}/lineage"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Lineage"
    }
    assert {"401", "403", "404", "422", "503"} <= set(route["responses"])
    lineage = spec["components"]["schemas"]["Lineage"]
    assert set(lineage["required"]) >= {"dataset", "etl", "training_run", "version", "served_by"}
    status = spec["components"]["schemas"]["SignatureCheck"]["properties"]["status"]
    assert status["enum"] == ["verified", "unverified", "invalid", "missing"]
    resolve = spec["paths"]["/v1/models/{name}/aliases/{alias}"]["get"]["parameters"]
    headers = {p["name"]: p["schema"] for p in resolve if p["in"] == "header"}
    assert headers["X-Inference-Instance"]["maxLength"] == 255
    assert "pattern" in headers["X-Served-Version"]


# -- optional parts missing --------------------------------------------------------------------


def test_a_builtin_dataset_outside_a_dag_has_no_etl_parts(
    client: TestClient, registry: FakeMlflow, store: FakeStore
) -> None:
    registry.add_run(
        "run-builtin",
        {"accuracy": 0.97},
        {"dataset_source": "sklearn:iris", "dataset_digest": "abc", "dataset_rows": "150"},
        tags={"trainer.job_id": "job-9"},
    )
    number = registry.add_version(
        "iris", download_uri="s3://mlflow/1/models/m-iris-4/artifacts", run_id="run-builtin"
    )
    store.objects["s3://mlflow/1/models/m-iris-4/artifacts/MLmodel"] = b"flavors: {sklearn: {}}"

    body = client.get(f"/v1/models/iris/versions/{number}/lineage").json()

    assert body["dataset"] == {
        "source": "sklearn:iris",
        "builtin": True,
        "digest": "abc",
        "rows": 150,
        "etl_manifest": None,
    }
    assert body["etl"] is None
    run = body["training_run"]
    assert (run["code_version"], run["image"], run["job_id"]) == (None, None, "job-9")
    assert (run["started_at"], run["ended_at"]) == (None, None)
    assert body["version"]["job_id"] is None
    assert body["version"]["signature"] == {
        "status": "missing",
        "reason": None,
        "manifest_sha256": None,
        "signed_by": None,
        "signed_at": None,
    }
    assert (body["alias_moves"], body["aliases_now"], body["served_by"]) == ([], [], [])


def test_a_version_whose_run_is_gone_still_has_a_lineage(client: TestClient) -> None:
    # iris v3's run was deleted from the tracking server; v2's run recorded no dataset.
    gone = client.get("/v1/models/iris/versions/3/lineage").json()
    no_data = client.get("/v1/models/iris/versions/2/lineage").json()

    assert (gone["training_run"], gone["dataset"], gone["etl"]) == (None, None, None)
    assert gone["version"]["run_id"] == "run3"
    assert gone["aliases_now"] == ["challenger"]
    assert no_data["dataset"] is None
    assert no_data["training_run"]["params"] == {"C": "0.5", "max_iter": "200"}
    assert no_data["training_run"]["metrics"] == {"accuracy": 0.95, "f1": None}
    assert no_data["version"]["artifact_uri"] == "s3://models-bucket/direct/m-iris-2/artifacts"


def test_a_version_without_a_run_has_no_training_run(
    client: TestClient, registry: FakeMlflow, store: FakeStore
) -> None:
    number = registry.add_version("iris", download_uri="s3://mlflow/1/models/m-iris-x/artifacts")

    body = client.get(f"/v1/models/iris/versions/{number}/lineage").json()

    assert body["training_run"] is None and body["version"]["run_id"] is None
    assert registry.path_calls("/runs/get") == 0


# -- 404, 422, 503 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "field"),
    [
        ("/v1/models/nope/versions/1/lineage", 404, "name"),
        ("/v1/models/iris/versions/9/lineage", 404, "version"),
        ("/v1/models/empty/versions/1/lineage", 404, "version"),
        ("/v1/models/iris/versions/0/lineage", 422, "version"),
        ("/v1/models/iris/versions/x/lineage", 422, "version"),
        ("/v1/models/iris/versions/2147483648/lineage", 422, "version"),
        ("/v1/models/a%00b/versions/1/lineage", 422, "name"),
    ],
)
def test_unknown_or_invalid_models_and_versions_name_the_field(
    client: TestClient, url: str, status: int, field: str
) -> None:
    response = client.get(url)

    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_mlflow_down_is_the_usual_503(client: TestClient, registry: FakeMlflow) -> None:
    registry.down = True

    response = client.get("/v1/models/iris/versions/1/lineage")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert response.headers["Retry-After"]


def test_an_object_store_failure_on_the_signature_is_a_502(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, store: FakeStore
) -> None:
    def broken(uri: Any, max_bytes: int | None = None) -> bytes:
        raise EndpointConnectionError(endpoint_url="http://s3.test")

    monkeypatch.setattr(store, "get_bytes", broken)

    response = client.get("/v1/models/iris/versions/1/lineage")

    assert response.status_code == 502
    assert response.json()["error"]["details"]["upstream"] == "s3"


# -- signature status --------------------------------------------------------------------------


def test_without_trusted_keys_a_signature_is_unverified(
    churn: FakeMlflow, client: TestClient
) -> None:
    signature = client.get(LINEAGE.format(1)).json()["version"]["signature"]

    assert signature["status"] == "unverified"
    assert signature["reason"] is None and signature["signed_at"] is None


def test_a_version_without_a_signature_file_is_missing(
    churn: FakeMlflow, trusting: TestClient
) -> None:
    signature = trusting.get(LINEAGE.format(2)).json()["version"]["signature"]

    assert signature == {
        "status": "missing",
        "reason": None,
        "manifest_sha256": None,
        "signed_by": None,
        "signed_at": None,
    }


def _tamper_tag(registry: FakeMlflow, key: str, value: str | None) -> None:
    mv = registry.models["churn"]["versions"][1]
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    if value is None:
        tags.pop(key)
    else:
        tags[key] = value
    mv["tags"] = [{"key": k, "value": v} for k, v in tags.items()]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("digest tag differs", "is not the version's mlops.manifest_sha256 tag"),
        ("no digest tag", "has no mlops.manifest_sha256 tag"),
        ("signed_by tag differs", "mlops.signed_by tag says"),
        ("signed for another model", "signed for model 'fraud', not 'churn'"),
        ("signed for another run", "signed for run run-other"),
        ("untrusted key", "not a trusted key"),
        ("altered payload", "is not valid"),
        ("not json", "is not JSON"),
        ("too large", "is larger than 1048576 bytes"),
    ],
)
def test_a_signature_that_does_not_hold_is_invalid_with_a_reason(
    churn: FakeMlflow,
    store: FakeStore,
    trusting: TestClient,
    tmp_path: Path,
    key_pair: tuple[str, str],
    case: str,
    reason: str,
) -> None:
    uri = f"{CHURN_ARTIFACTS}/{SIGNATURE_FILE}"
    if case == "digest tag differs":
        _tamper_tag(churn, "mlops.manifest_sha256", "0" * 64)
    elif case == "no digest tag":
        _tamper_tag(churn, "mlops.manifest_sha256", None)
    elif case == "signed_by tag differs":
        _tamper_tag(churn, "mlops.signed_by", "ed25519:0000000000000000")
    elif case == "signed for another model":
        store.objects[uri] = sign(tmp_path, "fraud", "run-churn", key_pair[0]).envelope
    elif case == "signed for another run":
        other = sign(tmp_path, "churn", "run-other", key_pair[0])
        store.objects[uri] = other.envelope
        _tamper_tag(churn, "mlops.manifest_sha256", other.digest)
    elif case == "untrusted key":
        stranger = sign(tmp_path, "churn", "run-churn", generate_key_pair()[0])
        store.objects[uri] = stranger.envelope
        _tamper_tag(churn, "mlops.manifest_sha256", stranger.digest)
    elif case == "altered payload":
        envelope = json.loads(store.objects[uri])
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["files"]["model.skops"]["size"] += 1
        raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        envelope["payload"] = base64.b64encode(raw).decode()
        store.objects[uri] = json.dumps(envelope).encode()
    elif case == "not json":
        store.objects[uri] = b"\x00not json"
    elif case == "too large":
        store.objects[uri] = b" " * (1024 * 1024 + 1)

    response = trusting.get(LINEAGE.format(1))

    assert response.status_code == 200, response.text
    signature = response.json()["version"]["signature"]
    assert signature["status"] == "invalid"
    assert reason in signature["reason"], signature["reason"]
    assert signature["signed_at"] is None


def test_a_key_rotation_trusts_every_configured_key(
    churn: FakeMlflow, build_app: Any, engine: sa.Engine, signed: Signed
) -> None:
    other = generate_key_pair()[1]
    app = build_app(engine=engine, trusted_signing_keys=[other, signed.public_key])
    with TestClient(app, headers=AUTH) as client:
        signature = client.get(LINEAGE.format(1)).json()["version"]["signature"]

    assert signature["status"] == "verified"


# -- served_by ---------------------------------------------------------------------------------


def test_resolves_with_instance_headers_are_recorded_per_instance_and_alias(
    client: TestClient, engine: sa.Engine
) -> None:
    client.get("/v1/models/iris/aliases/champion", headers=report("inference-0:8800", "2"))
    client.get("/v1/models/iris/aliases/champion", headers=report("10.0.0.7:8800", ""))
    client.get("/v1/models/iris/aliases/challenger", headers=report("[fd00::7]:8800", "3"))
    client.get("/v1/models/iris/aliases/champion")  # no report
    settle(client)

    rows = served_rows(engine)
    assert [(r["instance"], r["model_name"], r["alias"], r["served_version"]) for r in rows] == [
        ("10.0.0.7:8800", "iris", "champion", None),
        ("[fd00::7]:8800", "iris", "challenger", 3),
        ("inference-0:8800", "iris", "champion", 2),
    ]
    assert {r["reported_by"] for r in rows} == {"test-admin"}
    served = client.get("/v1/models/iris/versions/2/lineage").json()["served_by"]
    assert [s["instance"] for s in served] == ["inference-0:8800"]


def test_an_unchanged_report_is_written_at_most_once_per_interval(
    client: TestClient, engine: sa.Engine
) -> None:
    for _ in range(5):
        client.get("/v1/models/iris/aliases/champion", headers=report(INSTANCE, "2"))
        settle(client)
    [first] = served_rows(engine)

    client.get("/v1/models/iris/aliases/champion", headers=report(INSTANCE, "2"))
    settle(client)
    assert served_rows(engine) == [first]

    # A new version is written at once: the lineage follows a rollout immediately.
    client.get("/v1/models/iris/aliases/champion", headers=report(INSTANCE, "3"))
    settle(client)
    [changed] = served_rows(engine)
    assert changed["served_version"] == 3 and changed["last_seen"] >= first["last_seen"]


def test_reports_older_than_the_window_drop_out_of_served_by(
    build_app: Any, engine: sa.Engine
) -> None:
    app = build_app(engine=engine, served_by_window_s=10, served_by_write_interval_s=0)
    with TestClient(app, headers=AUTH) as client:
        for instance in ("fresh:1", "stale:1"):
            client.get("/v1/models/iris/aliases/champion", headers=report(instance, "2"))
        settle(client)
        with engine.begin() as conn:
            conn.execute(
                served_versions.update()
                .where(served_versions.c.instance == "stale:1")
                .values(last_seen=datetime.now(UTC) - timedelta(seconds=11))
            )

        body = client.get("/v1/models/iris/versions/2/lineage").json()

    assert [s["instance"] for s in body["served_by"]] == ["fresh:1"]
    assert body["served_by_window_s"] == 10


def test_reports_past_the_retention_are_deleted(build_app: Any, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            served_versions.insert().values(
                instance="gone:1",
                model_name="iris",
                alias="champion",
                served_version=1,
                reported_by="old-token",
                last_seen=datetime.now(UTC) - timedelta(hours=2),
            )
        )
    app = build_app(engine=engine, served_by_window_s=30, served_by_retention_s=3600)
    with TestClient(app, headers=AUTH) as client:
        client.get("/v1/models/iris/aliases/champion", headers=report(INSTANCE, "2"))
        settle(client)

    assert [r["instance"] for r in served_rows(engine)] == [INSTANCE]


def test_a_database_failure_never_fails_a_resolve(client: TestClient, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE served_versions"))

    response = client.get("/v1/models/iris/aliases/champion", headers=report(INSTANCE, "2"))
    settle(client)

    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert counter(client, "gateway_served_reports_failed_total") == 1


def test_a_failed_resolve_records_nothing(client: TestClient, engine: sa.Engine) -> None:
    missing = client.get("/v1/models/nope/aliases/champion", headers=report(INSTANCE, "1"))
    unset = client.get("/v1/models/iris/aliases/staging", headers=report(INSTANCE, "1"))
    settle(client)

    assert (missing.status_code, unset.status_code) == (404, 404)
    assert served_rows(engine) == []


def test_reports_are_recorded_under_the_token_that_sent_them(
    client: TestClient, engine: sa.Engine
) -> None:
    secret, _ = TokenStore(engine).create("inference-eu", ["models:read"], "iris")

    response = client.get(
        "/v1/models/iris/aliases/champion",
        headers={**report(INSTANCE, "2"), "Authorization": f"Bearer {secret}"},
    )
    settle(client)

    assert response.status_code == 200
    assert [r["reported_by"] for r in served_rows(engine)] == ["inference-eu"]


# -- header validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "version"),
    [
        ("a" * 256, "2"),
        ("host name:80", "2"),
        ("host;drop table:80", "2"),
        ("-leading-dash:80", "2"),
        ("host/path:80", "2"),
        ("h%00:80", "2"),
        ("<script>:80", "2"),
        ("caf\xe9:80".encode("latin-1"), "2"),
        (INSTANCE, "abc"),
        (INSTANCE, "0"),
        (INSTANCE, "-1"),
        (INSTANCE, "2.0"),
        (INSTANCE, "2147483648"),
        (INSTANCE, "1" * 11),
        (INSTANCE, "v2"),
    ],
)
def test_malformed_reports_are_counted_not_recorded_and_the_resolve_still_answers(
    client: TestClient, engine: sa.Engine, instance: str | bytes, version: str
) -> None:
    response = client.get("/v1/models/iris/aliases/champion", headers=report(instance, version))
    settle(client)

    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    assert served_rows(engine) == []
    assert counter(client, "gateway_served_reports_refused_total") == 1


@pytest.mark.parametrize(
    "instance",
    ["inference-0:8800", "10.0.0.7:8800", "[fd00::7]:8800", "pod_7.ns.svc:80", "a" * 255, "h"],
)
def test_wellformed_instances_are_recorded(
    client: TestClient, engine: sa.Engine, instance: str
) -> None:
    client.get("/v1/models/iris/aliases/champion", headers=report(instance, "2"))
    settle(client)

    assert [r["instance"] for r in served_rows(engine)] == [instance]
    assert counter(client, "gateway_served_reports_refused_total") == 0


def test_a_served_version_without_an_instance_is_ignored(
    client: TestClient, engine: sa.Engine
) -> None:
    for headers in (
        {"X-Served-Version": "2"},
        {"X-Inference-Instance": "  ", "X-Served-Version": "2"},
    ):
        assert client.get("/v1/models/iris/aliases/champion", headers=headers).status_code == 200
    settle(client)

    assert served_rows(engine) == []
    assert counter(client, "gateway_served_reports_refused_total") == 0


# -- auth --------------------------------------------------------------------------------------


def test_the_lineage_needs_a_token(client: TestClient) -> None:
    del client.headers["Authorization"]

    response = client.get("/v1/models/iris/versions/1/lineage")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_lineage_needs_models_read_for_that_model(
    client: TestClient, engine: sa.Engine, registry: FakeMlflow
) -> None:
    tokens = TokenStore(engine)
    promoter, _ = tokens.create("promoter", ["models:promote"])
    churn_reader, _ = tokens.create("churn-reader", ["models:read"], "churn*")
    reader, _ = tokens.create("reader", ["models:read"], "iris")

    def get(secret: str) -> Any:
        return client.get(
            "/v1/models/iris/versions/1/lineage", headers={"Authorization": f"Bearer {secret}"}
        )

    no_scope, other_model, allowed = get(promoter), get(churn_reader), get(reader)

    assert no_scope.status_code == 403 and "models:read" in no_scope.json()["error"]["message"]
    assert other_model.status_code == 403 and "'iris'" in other_model.json()["error"]["message"]
    assert allowed.status_code == 200
