"""A model file cannot run code, and only what the platform signed is served (real stack).

The attacker has a registry account: MLflow's own client with a login that may log and register
models and move aliases, and an S3 identity that may write model artifacts. They register
versions of a model an inference instance serves and point its ``champion`` alias at them:

(a) a pickle whose unpickling would create a marker file, (b) a skops model whose MLmodel
trusts ``builtins.eval``, (c) an MLmodel with a ``code:`` path, (e) a well-formed skops model
without the platform's signature (and one signed with a key of the attacker's own). Each is
refused while a load generator keeps predicting: every answer comes from the old version, and
the marker never appears. (a)-(c) also run signed with the platform's own key, as if it had
leaked: the loader refuses them all the same. (d) changes ``model.skops`` of a served, signed
version in S3 and restarts inference: it refuses the version rather than serve the file.

docs/security.md ("What the tests prove") maps each test to the threat it covers.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlops_common.http import wait_until
from mlops_common.signing import SIGNATURE_FILE, ManifestSigner, generate_key_pair
from mlops_common.storage import S3Uri
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES

from .conftest import ExtraInference, StackUrls, train

pytestmark = pytest.mark.e2e

ROW = [[5.1, 3.5, 1.4, 0.2]]
EXPERIMENT = "e2e-attacker"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def platform_signing_key(stack: StackUrls) -> str | None:
    """The platform's private key, to play a leak: the local stack's secrets or compose's env."""
    if stack.home is not None:
        secrets = json.loads((stack.home / "secrets.json").read_text())
        return str(secrets["model_signing_key"])
    return stack.env.get("E2E_MODEL_SIGNING_KEY")


def train_champion(http: httpx.Client, stack: StackUrls, name: str) -> dict[str, Any]:
    """Version 1 of ``name``, trained (and signed) by the platform and made champion."""
    body = {"model_name": name, "dataset": {"builtin": "iris"}, "promote": {"alias": "champion"}}
    job = train(http, stack, body)
    assert job["status"] == "succeeded", job["error"]
    return job


@dataclass
class Load:
    """Predictions sent back to back from a thread while the attacks happen."""

    url: str
    headers: dict[str, str]
    answers: list[tuple[int, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10, headers=self.headers) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/predict", json={"instances": ROW})
                    version = response.json().get("model", {}).get("version")
                except (httpx.HTTPError, ValueError):
                    self.answers.append((0, None))  # counted: the assertion names it
                    continue
                self.answers.append((response.status_code, version))
                # Steady load rather than a flood: this thread shares the test's interpreter,
                # and the attacker's MLflow calls in the main thread need their turn too.
                self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@dataclass
class Served:
    name: str
    url: str
    version: int
    headers: dict[str, str]
    load: Load


@pytest.fixture(scope="module")
def served(
    stack: StackUrls, http: httpx.Client, extra_inference: ExtraInference, mlflow_env: None
) -> Iterator[Served]:
    name = unique("e2e-integrity")
    job = train_champion(http, stack, name)
    url = extra_inference(name, 18803)
    headers = {"Authorization": f"Bearer {stack.create_token(unique('e2e-int'), 'predict')}"}
    load = Load(url, headers)
    load.start()
    yield Served(name, url, int(job["model_version"]), headers, load)
    load.stop()


# ---- what the attacker registers, through MLflow's own client -------------------------------------
class Boom:
    """Unpickling this creates ``marker``: what any code run by a pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _iris_pipeline() -> Any:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    return LogisticRegression(max_iter=500).fit(features, target), features


def _log(model: Any, **kwargs: Any) -> Any:
    import mlflow.sklearn

    return mlflow.sklearn.log_model(
        model, name="model", pip_requirements=["scikit-learn"], **kwargs
    )


def pickled(marker: Path) -> Any:
    return _log(Boom(marker), serialization_format="pickle")


def trusts_eval(marker: Path) -> Any:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    ridge = Ridge().fit(np.ones((3, 1)), [1.0, 2.0, 3.0])
    pipeline = Pipeline([("run", FunctionTransformer(func=eval)), ("model", ridge)])
    trusted = [*PLATFORM_TRUSTED_TYPES, "builtins.eval"]
    return _log(pipeline, serialization_format="skops", skops_trusted_types=trusted)


def ships_code(marker: Path) -> Any:
    code = marker.parent / "evil_code"
    code.mkdir()
    (code / "evil_mod.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    return well_formed(marker, code_paths=[str(code)])


def well_formed(marker: Path, **extra: Any) -> Any:
    """A skops model as the trainer saves it (``extra``: what an attacker adds to it)."""
    model, features = _iris_pipeline()
    return _log(
        model,
        input_example=features.head(2),
        serialization_format="skops",
        skops_trusted_types=list(PLATFORM_TRUSTED_TYPES),
        **extra,
    )


def register(name: str, build: Callable[[Path], Any], marker: Path, sign_with: str | None) -> int:
    """Log, optionally sign as the trainer does, register and point ``champion`` at it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run():
        info = build(marker)
    if sign_with is not None:
        location = client.get_logged_model(info.model_id).artifact_location
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=scratch)
            )
            envelope = ManifestSigner(sign_with).sign_dir(local, model_name=name)
            (local / SIGNATURE_FILE).write_bytes(envelope)
            client.log_model_artifact(info.model_id, str(local / SIGNATURE_FILE))
    version = int(mlflow.register_model(info.model_uri, name).version)
    client.set_registered_model_alias(name, "champion", str(version))
    return version


def _refusal(url: str, version: int, reason: str, timeout_s: float = 90) -> dict[str, Any]:
    """The /health answer once inference has refused ``version`` for ``reason``."""
    seen: dict[str, Any] = {}

    def refused() -> bool:
        seen.clear()
        seen.update(httpx.get(f"{url}/health", timeout=5).json())
        return seen.get("pending_version") == version and reason in (seen.get("last_error") or "")

    assert wait_until(refused, timeout_s, interval_s=0.5), f"not refused for {reason!r}: {seen}"
    return seen


def _rejected(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith('inference_model_events_total{event="rejected"}'):
            return float(line.split()[-1])
    return 0.0


NOT_SIGNED = "not signed by the platform"
ATTACKS: dict[str, tuple[Callable[[Path], Any], str, str]] = {
    # name: (what is registered, why it is refused unsigned, why when signed with the leaked key)
    "a-pickle": (pickled, NOT_SIGNED, "serialization_format 'pickle'"),
    "b-skops-trusts-eval": (trusts_eval, NOT_SIGNED, "trusts types the platform does not"),
    "c-code-path": (ships_code, NOT_SIGNED, "ships code"),
    "e-no-platform-signature": (well_formed, NOT_SIGNED, ""),
}
CASES = [
    pytest.param(attack, signed, id=f"{attack}-{'leaked-key' if signed else 'unsigned'}")
    for attack in ATTACKS
    for signed in (False, True)
    if not (attack.startswith("e-") and signed)
]


@pytest.mark.parametrize(("attack", "signed"), CASES)
def test_an_attack_version_is_refused_and_the_old_one_keeps_serving(
    served: Served, stack: StackUrls, tmp_path: Path, attack: str, signed: bool
) -> None:
    build, unsigned_reason, signed_reason = ATTACKS[attack]
    key = platform_signing_key(stack) if signed else None
    if signed and key is None:
        pytest.skip("the platform's signing key is not reachable from this test run")
    marker = tmp_path / "pwned"
    rejected_before = _rejected(served.url)
    answers_before = len(served.load.answers)

    version = register(served.name, build, marker, key)
    health = _refusal(served.url, version, signed_reason if signed else unsigned_reason)

    assert not marker.exists(), "code from the artifact ran"
    assert health["status"] == "ok" and health["model"]["version"] == served.version
    assert health["last_error"].startswith(f"{served.name} version {version}: refused: ")
    assert _rejected(served.url) > rejected_before
    during = served.load.answers[answers_before:]
    assert during, "the load generator sent nothing during the attack"
    assert {answer for answer in during} == {(200, served.version)}


def test_a_version_signed_with_another_key_is_refused(served: Served, tmp_path: Path) -> None:
    attacker_key, _ = generate_key_pair()
    version = register(served.name, well_formed, tmp_path / "unused", attacker_key)
    health = _refusal(served.url, version, "which is not a trusted key")
    assert health["model"]["version"] == served.version


def test_a_model_file_changed_in_s3_is_refused_after_a_restart(
    stack: StackUrls, http: httpx.Client, extra_inference: ExtraInference
) -> None:
    """(d): the served version's model.skops changed in the object store after registration."""
    name = unique("e2e-tampered")
    job = train_champion(http, stack, name)
    port = 18804
    url = extra_inference(name, port)
    token = stack.create_token(unique("e2e-tampered"), "predict", models=name)
    predict = {"headers": {"Authorization": f"Bearer {token}"}, "timeout": 10}
    assert httpx.post(f"{url}/predict", json={"instances": ROW}, **predict).status_code == 200

    resolved = http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion").json()
    artifacts = S3Uri.parse(resolved["artifact_uri"])
    key = f"{artifacts.key.rstrip('/')}/model.skops"
    s3 = stack.s3()
    original = s3.get_object(Bucket=artifacts.bucket, Key=key)["Body"].read()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF  # the same size: only the content differs
    s3.put_object(Bucket=artifacts.bucket, Key=key, Body=bytes(changed))

    url = extra_inference.restart(port, serving=False)
    health = _refusal(url, int(job["model_version"]), "model.skops changed after it was signed")
    answer = httpx.post(f"{url}/predict", json={"instances": ROW}, **predict)

    assert health["status"] == "unavailable" and health["model"] is None
    assert answer.status_code == 503
    assert "changed after it was signed" in answer.json()["error"]["message"]
