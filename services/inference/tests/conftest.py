"""In-process test harness: real MLflow sklearn model dirs, a fake object store, a fake gateway.

Nothing listens on a port: the gateway is an ``httpx.MockTransport`` and the app is called
through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import EndpointConnectionError
from fastapi import FastAPI
from inference.app import create_app
from inference.gateway import GatewayClient
from inference.manager import ModelManager
from inference.metrics import InferenceMetrics
from inference.rollout import Rollout
from inference.settings import InferenceSettings
from mlops_common.http import make_async_client
from mlops_common.settings import S3Settings
from mlops_common.signing import SIGNATURE_FILE, ManifestSigner, ManifestVerifier, generate_key_pair
from mlops_common.storage import ObjectTooLarge, S3Uri, StoredObject
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES
from pydantic import SecretStr

BUCKET = "mlflow"
# The platform's signing key for this test session: every served test model is signed with it.
SIGNING_KEY, SIGNING_PUBLIC_KEY = generate_key_pair()
VERIFIER = ManifestVerifier([SIGNING_PUBLIC_KEY])


def sign(model_dir: Path, model_name: str) -> Path:
    """Sign ``model_dir`` for ``model_name`` as the trainer does at registration."""
    (model_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    envelope = ManifestSigner(SIGNING_KEY).sign_dir(model_dir, model_name=model_name)
    (model_dir / SIGNATURE_FILE).write_bytes(envelope)
    return model_dir


TRUSTED = list(PLATFORM_TRUSTED_TYPES)
CATEGORICAL = ["city", "plan"]


# ---- models ------------------------------------------------------------------------------------
def churn_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    """Numeric, categorical and boolean columns with gaps, as a trainer would read them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "income": rng.normal(50_000, 12_000, n).round(2),
            "visits": rng.integers(0, 20, n),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "plan": rng.choice(["basic", "pro"], n),
            "member": rng.choice([True, False], n),
        }
    )
    # NaN in the first example rows too, so the saved input example carries nulls.
    frame.loc[[1, 7, 19], "age"] = np.nan
    frame.loc[[2, 11], "city"] = np.nan
    score = frame["visits"] * 0.2 - frame["age"].fillna(40) * 0.05 + (frame["plan"] == "pro")
    labels = np.where(score + rng.normal(0, 0.5, n) > 0, "stay", "churn")
    return frame, labels


def _pipeline(estimator: Any, numeric: list[str], categorical: list[str], flags: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric_steps = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    categorical_steps = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    pre = ColumnTransformer(
        [
            ("num", numeric_steps, numeric),
            ("cat", categorical_steps, categorical),
            ("flag", OneHotEncoder(handle_unknown="ignore"), flags),
        ]
    )
    return Pipeline([("pre", pre), ("model", estimator)])


def _save(model: Any, path: Path, frame: pd.DataFrame, target: Any, **kwargs: Any) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(frame, target) if kwargs.pop("signature", True) else None,
            input_example=frame.head(3) if kwargs.pop("example", True) else None,
            # Given explicitly: guessing requirements takes MLflow many seconds.
            pip_requirements=["scikit-learn"],
            # As the trainer saves them: skops, the only format inference loads.
            **{"serialization_format": "skops", "skops_trusted_types": TRUSTED, **kwargs},
        )


@dataclass
class Artifacts:
    dirs: dict[str, Path]
    pipelines: dict[str, Any]
    frames: dict[str, pd.DataFrame]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge

    root = tmp_path_factory.mktemp("models")
    frame, labels = churn_frame(120, seed=1)
    numeric, flags = ["age", "income", "visits"], ["member"]
    v1 = _pipeline(LogisticRegression(max_iter=500), numeric, CATEGORICAL, flags).fit(frame, labels)
    v2 = _pipeline(
        RandomForestClassifier(n_estimators=10, random_state=0), numeric, CATEGORICAL, flags
    )
    v2.fit(frame, labels)
    reg_frame = frame.drop(columns=["plan"])
    reg_target = (frame["income"] / 1000).to_numpy()
    regressor = _pipeline(Ridge(), numeric, ["city"], flags).fit(reg_frame, reg_target)

    # Numbers and strings only: the kind of pipeline the compiled path serves.
    mixed_frame = frame.drop(columns=flags)
    mixed = _pipeline(LogisticRegression(max_iter=500), numeric, CATEGORICAL, [])
    mixed.fit(mixed_frame, labels)

    names = ("churn-v1", "churn-v2", "prices-v1", "bare-v1", "mixed-v1", "churn-narrow")
    dirs = {name: root / name for name in names}
    _save(v1, dirs["churn-v1"], frame, labels)
    _save(v2, dirs["churn-v2"], frame, labels)
    _save(regressor, dirs["prices-v1"], reg_frame, reg_target, skops_trusted_types=["numpy.dtype"])
    _save(mixed, dirs["mixed-v1"], mixed_frame, labels)
    # A churn version that loads and checks fine but refuses rows with the ``member`` column: a
    # challenger that fails the traffic the champion serves.
    _save(mixed, dirs["churn-narrow"], mixed_frame, labels)
    _save(v1, dirs["bare-v1"], frame, labels, signature=False, example=False)
    # A version whose MLmodel is fine but whose model file is garbage.
    dirs["churn-broken"] = root / "churn-broken"
    shutil.copytree(dirs["churn-v1"], dirs["churn-broken"])
    (dirs["churn-broken"] / "model.skops").write_bytes(b"this is not a skops file")
    for name, path in dirs.items():
        sign(path, name.split("-")[0])
    return Artifacts(
        dirs=dirs,
        pipelines={"churn-v1": v1, "churn-v2": v2, "prices-v1": regressor, "mixed-v1": mixed},
        frames={"churn": frame, "prices": reg_frame, "mixed": mixed_frame},
    )


# ---- fakes -------------------------------------------------------------------------------------
class FakeStore:
    """The object store's listing and downloads, over local dirs registered under s3 URIs.

    While ``down`` every call fails as boto3 does when the endpoint cannot be reached;
    ``downloads_until_down`` lets that many more downloads through, then goes down.
    """

    def __init__(self) -> None:
        self.trees: dict[str, Path] = {}
        self.listings: list[str] = []
        self.downloaded_keys: list[str] = []
        self.down = False
        self.downloads_until_down: int | None = None

    def _reachable(self) -> None:
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://s3.test:9000/mlflow")

    @property
    def downloads(self) -> list[str]:
        """One entry per model copy downloaded: the URI of the version whose MLmodel came."""
        return [
            f"s3://{BUCKET}/{key.removesuffix('/MLmodel')}"
            for key in self.downloaded_keys
            if key.endswith("/MLmodel")
        ]

    def add(self, uri: str, local_dir: Path) -> None:
        self.trees[uri.rstrip("/")] = local_dir

    def _files(self, prefix: S3Uri) -> dict[str, Path]:
        for uri, root in self.trees.items():
            base = S3Uri.parse(uri)
            if base.bucket == prefix.bucket and prefix.key.rstrip("/") == base.key:
                return {
                    f"{base.key}/{path.relative_to(root).as_posix()}": path
                    for path in sorted(root.rglob("*"))
                    if path.is_file()
                }
        return {}

    def list_objects(self, prefix: S3Uri) -> list[StoredObject]:
        self.listings.append(f"s3://{prefix.bucket}/{prefix.key.rstrip('/')}")
        self._reachable()
        return [
            StoredObject(key, path.stat().st_size, hashlib.md5(path.read_bytes()).hexdigest())  # noqa: S324
            for key, path in self._files(prefix).items()
        ]

    def _path(self, uri: S3Uri) -> Path:
        prefix = S3Uri(uri.bucket, uri.key.rsplit("/", 1)[0])
        for key, path in self._files(prefix).items():
            if key == uri.key:
                return path
        # Nested keys: try every registered tree.
        for root_uri in self.trees:
            files = self._files(S3Uri.parse(root_uri))
            if uri.key in files:
                return files[uri.key]
        raise FileNotFoundError(str(uri))

    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes:
        self._reachable()
        data = self._path(uri).read_bytes()
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(uri, len(data))
        return data

    def download_file(self, uri: S3Uri, filename: str) -> None:
        if self.downloads_until_down is not None:
            if self.downloads_until_down <= 0:
                self.down, self.downloads_until_down = True, None
            else:
                self.downloads_until_down -= 1
        self._reachable()
        self.downloaded_keys.append(uri.key)
        shutil.copyfile(self._path(uri), filename)


class FakeS3:
    """An S3 endpoint on 127.0.0.1 that keeps PutObject bodies: what a writer process uploads.

    Only PutObject is answered; enough for the prediction log's writer (boto3, path style).
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                body = self._body()
                with owner._lock:
                    owner.objects["s3:/" + unquote(self.path.split("?", 1)[0])] = body
                self.send_response(200)
                self.send_header("ETag", '"0"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    return self._chunked()
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if "aws-chunked" in self.headers.get("Content-Encoding", ""):
                    return _aws_chunks(data)
                return data

            def _chunked(self) -> bytes:
                raw = b""
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    raw += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass  # trailers (checksums)
                return raw

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def table(self, prefix: str) -> pa.Table:
        with self._lock:
            bodies = [data for uri, data in self.objects.items() if uri.startswith(prefix)]
        assert bodies, f"nothing written under {prefix}"
        return pa.concat_tables([pq.read_table(io.BytesIO(data)) for data in bodies])


def _aws_chunks(data: bytes) -> bytes:
    """The payload of an ``aws-chunked`` body (size;chunk-signature CRLF data CRLF ...)."""
    out, pos = b"", 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


@pytest.fixture
def fake_s3() -> Iterator[FakeS3]:
    server = FakeS3()
    yield server
    server.close()


class RecordingStore:
    """The object store's uploads (prediction log, feedback), kept in memory by URI.

    While ``down`` every upload fails as boto3 does when the endpoint cannot be reached; while
    ``gate`` is set to an unset Event, uploads wait for it (a slow store).
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.attempts = 0
        self.down = False
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def put_bytes(self, uri: S3Uri, data: bytes) -> None:
        with self._lock:
            self.attempts += 1
        gate = self.gate
        if gate is not None:
            gate.wait(30)
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://s3.test:9000/data")
        with self._lock:
            self.objects[str(uri)] = data

    def keys(self, prefix: str) -> list[str]:
        """URIs under ``prefix`` (``s3://data/predictions/``), in the order they were written."""
        with self._lock:
            return [uri for uri in self.objects if uri.startswith(prefix)]

    def table(self, prefix: str) -> pa.Table:
        """Every Parquet file under ``prefix`` read back and concatenated, in write order."""
        tables = [pq.read_table(io.BytesIO(self.objects[uri])) for uri in self.keys(prefix)]
        assert tables, f"nothing written under {prefix}: {sorted(self.objects)}"
        return pa.concat_tables(tables)


@dataclass
class FakeGateway:
    """The model-gateway's alias and token-introspection endpoints; tests move aliases by
    changing ``aliases`` and issue caller tokens through ``tokens``."""

    versions: dict[tuple[str, int], str] = field(default_factory=dict)
    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    # Caller token -> the introspection answer for it (as the gateway's /v1/tokens/introspect).
    tokens: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            CALLER_TOKEN: {"active": True, "name": "caller", "scopes": ["predict"], "models": "*"}
        }
    )
    fail_with: int | None = None
    # With fail_with: the dependency the gateway blames (``details.upstream``), as for MLflow.
    fail_upstream: str | None = None
    # Nothing listens: every request fails to connect.
    down: bool = False
    calls: int = 0
    introspections: int = 0
    # Introspection requests to drop as a closed kept-alive connection would.
    dropped_introspections: int = 0
    # Headers of every alias resolve, oldest first.
    resolve_headers: list[httpx.Headers] = field(default_factory=list)
    # The rollout of each model, as GET /v1/models/{name}/rollout answers (RolloutView).
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Bodies of POST /v1/models/{name}/rollout/abort, oldest first.
    aborts: list[dict[str, Any]] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if "/aliases/" in request.url.path:
            self.resolve_headers.append(request.headers)
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.fail_with is not None:
            error: dict[str, Any] = {"message": "gateway broke"}
            if self.fail_upstream is not None:
                error = {
                    "code": "upstream_error",
                    "message": f"{self.fail_upstream} broke",
                    "details": {"upstream": self.fail_upstream},
                }
            return httpx.Response(self.fail_with, json={"error": error})
        if request.url.path == "/v1/tokens/introspect" and request.method == "POST":
            self.introspections += 1
            if self.dropped_introspections > 0:
                self.dropped_introspections -= 1
                raise httpx.RemoteProtocolError("Server disconnected", request=request)
            token = json.loads(request.content)["token"]
            return httpx.Response(200, json=self.tokens.get(token, {"active": False}))
        parts = request.url.path.split("/")
        if len(parts) >= 5 and parts[4] == "rollout":
            return self._rollout(request, parts[3], parts[5:])
        # /v1/models/{name}/aliases/{alias}
        if request.method != "GET" or len(parts) != 6 or parts[4] != "aliases":
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route"}})
        name, alias = parts[3], parts[5]
        version = self.aliases.get((name, alias))
        if version is None:
            message = f"model {name!r} has no alias {alias!r}"
            return httpx.Response(404, json={"error": {"code": "not_found", "message": message}})
        uri = self.versions[(name, version)]
        return httpx.Response(
            200,
            json={
                "name": name,
                "version": version,
                "alias": alias,
                "run_id": f"run-{name}-{version}",
                "artifact_uri": uri,
                "flavor": "sklearn",
                "flavors": ["python_function", "sklearn"],
                "signature": None,
                "model_id": f"m-{version}",
                "source": f"models:/m-{version}",
                "created_at": "2026-11-27T07:00:00Z",
            },
        )

    def set_alias(self, name: str, version: int, alias: str = "champion") -> None:
        self.aliases[(name, alias)] = version

    def set_rollout(
        self,
        name: str,
        variants: dict[str, int],
        *,
        mirror: str | None = None,
        sticky_header: str | None = None,
        guard: dict[str, Any] | None = None,
    ) -> None:
        """Start or change ``name``'s rollout ({alias: weight}), a new revision."""
        revision = self.rollouts.get(name, {}).get("revision", 0) + 1
        self.rollouts[name] = {
            "name": name,
            "active": True,
            "revision": revision,
            "variants": [
                {"alias": a, "weight": w, "version": self.aliases.get((name, a))}
                for a, w in variants.items()
            ],
            "mirror": None if mirror is None else {"alias": mirror, "weight": 0, "version": None},
            "sticky_header": sticky_header,
            "guard": guard,
        }

    def end_rollout(self, name: str) -> None:
        revision = self.rollouts.get(name, {}).get("revision", 0) + 1
        self.rollouts[name] = {"name": name, "active": False, "revision": revision, "variants": []}

    def _rollout(self, request: httpx.Request, name: str, rest: list[str]) -> httpx.Response:
        if request.method == "GET" and not rest:
            view = self.rollouts.get(name) or {"name": name, "active": False, "revision": 0}
            return httpx.Response(200, json=view)
        if request.method == "POST" and rest == ["abort"]:
            if not self.rollouts.get(name, {}).get("active"):
                return httpx.Response(404, json={"error": {"message": "no rollout"}})
            self.aborts.append(json.loads(request.content))
            self.end_rollout(name)
            return httpx.Response(200, json=self.rollouts[name])
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route"}})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(artifacts: Artifacts) -> FakeStore:
    fake = FakeStore()
    for name, path in artifacts.dirs.items():
        fake.add(f"s3://{BUCKET}/models/{name}/artifacts", path)
    return fake


@pytest.fixture
def gateway() -> FakeGateway:
    fake = FakeGateway()
    layout = {
        ("churn", 1): "churn-v1",
        ("churn", 2): "churn-v2",
        ("churn", 3): "churn-broken",
        ("churn", 4): "churn-narrow",
        ("prices", 1): "prices-v1",
        ("bare", 1): "bare-v1",
        ("mixed", 1): "mixed-v1",
        ("ghost", 1): "missing",
    }
    for key, dirname in layout.items():
        fake.versions[key] = f"s3://{BUCKET}/models/{dirname}/artifacts"
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# The churn models' inputs as V2 tensors: name and datatype, in signature order.
CHURN_V2_INPUTS = (
    ("age", "FP64"),
    ("income", "FP64"),
    ("visits", "INT64"),
    ("city", "BYTES"),
    ("plan", "BYTES"),
    ("member", "BOOL"),
)

CALLER_TOKEN = "mlops_" + "c" * 43
CALLER = {"Authorization": f"Bearer {CALLER_TOKEN}"}


def make_settings(tmp_path: Path, **overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "model_name": "churn",
        "cache_dir": tmp_path / "cache",
        "s3": S3Settings(access_key_id="test", secret_access_key=SecretStr("test-secret")),
        "max_batch_rows": 50,
        "trusted_signing_keys": [SIGNING_PUBLIC_KEY],
        # On in the ``service`` fixture, which gives the app a RecordingStore: elsewhere an app
        # would write to a real S3 client.
        "prediction_log_enabled": False,
        "instance_id": "inference-test:8800",
    }
    values.update(overrides)
    return InferenceSettings(**values)


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., InferenceSettings]:
    def factory(**overrides: Any) -> InferenceSettings:
        return make_settings(tmp_path, **overrides)

    return factory


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    manager: ModelManager
    settings: InferenceSettings
    metrics: InferenceMetrics
    records: RecordingStore

    @property
    def rollout(self) -> Rollout:
        rollout: Rollout = self.app.state.rollout
        return rollout

    async def post_json(self, path: str, body: Any) -> httpx.Response:
        return await self.client.post(path, json=body)

    async def post_raw(self, path: str, content: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return await self.client.post(path, content=content, headers=headers)


ServiceFactory = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture
def service(
    tmp_path: Path, store: FakeStore, gateway: FakeGateway, clock: FakeClock, anyio_backend: str
) -> ServiceFactory:
    """``async with service("churn") as svc``: an app whose manager the test drives by hand.

    ``artifact_store`` replaces the ``FakeStore`` the manager downloads from, ``loader`` the
    function that loads a model version, ``record_store`` the ``RecordingStore`` the prediction
    log (on unless overridden) and the feedback are written to. ``writer_process=True`` has the
    log written by its real writer process instead, to the S3 endpoint in ``s3`` (a ``FakeS3``).
    """

    @asynccontextmanager
    async def factory(
        model_name: str = "churn",
        artifact_store: Any = None,
        loader: Any = None,
        record_store: RecordingStore | None = None,
        writer_process: bool = False,
        **overrides: Any,
    ) -> AsyncIterator[Service]:
        overrides.setdefault("prediction_log_enabled", True)
        settings = make_settings(tmp_path, model_name=model_name, **overrides)
        records = RecordingStore() if record_store is None else record_store
        # A gateway that is down fails at once: the transport's retries (mlops_common's to
        # test) would only slow these tests down.
        gateway_client = make_async_client(
            "http://gateway.test", transport=httpx.MockTransport(gateway.handler), retries=0
        )
        metrics = InferenceMetrics()

        def make_manager(alias: str, variant: bool = True) -> ModelManager:
            return ModelManager(
                model_name=settings.model_name,
                alias=alias,
                gateway=GatewayClient(gateway_client, instance=settings.instance),
                store=store if artifact_store is None else artifact_store,
                cache_dir=settings.cache_dir / "@variants" / alias
                if variant
                else settings.cache_dir,
                verifier=settings.manifest_verifier(),
                store_retry_base_s=settings.store_retry_base_s,
                store_retry_max_s=settings.store_retry_max_s,
                **({"loader": loader} if loader is not None else {}),
                clock=clock,
                on_event=metrics.model_event,
                variant=variant,
            )

        manager = make_manager(settings.model_alias, variant=False)
        app = create_app(
            settings,
            manager=manager,
            variant_manager=make_manager,
            metrics=metrics,
            gateway_transport=httpx.MockTransport(gateway.handler),
            # The log's own writer process uploads to settings.s3; the feedback still to records.
            record_store=None if writer_process else records,
        )
        async with (
            gateway_client,
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://inference.test",
                headers=CALLER,
            ) as client,
        ):
            yield Service(
                app=app,
                client=client,
                manager=manager,
                settings=settings,
                metrics=metrics,
                records=records,
            )

    return factory


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs per request: ``request_id`` (``/predict``), ``id`` (V2)."""
    return {key: value for key, value in body.items() if key not in ("request_id", "id")}


def rows_as_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as a client would send them: NaN -> null, numpy scalars -> JSON."""
    return list(json.loads(frame.to_json(orient="records")))


@pytest.fixture
def to_rows() -> Callable[[pd.DataFrame], list[dict[str, Any]]]:
    return rows_as_json
