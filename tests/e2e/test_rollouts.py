"""Rollouts on the real stack: the gateway states them, an inference instance of the test's own
serves them.

One model with four versions: v1 champion, v2 a healthy challenger, v3 a version trained on
another data set (it loads and checks fine, then refuses the iris rows champion serves) and v4
unsigned (inference refuses to load it).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mlops_common.http import wait_until

from .conftest import ExtraInference, StackUrls, train

pytestmark = pytest.mark.e2e

PORT = 18806
ROW = {
    "sepal length (cm)": 5.1,
    "sepal width (cm)": 3.5,
    "petal length (cm)": 1.4,
    "petal width (cm)": 0.2,
}


@dataclass
class Canary:
    name: str
    url: str
    gateway: str
    versions: dict[str, int]
    caller: httpx.Client
    admin: httpx.Client

    def model(self) -> str:
        return f"{self.gateway}/v1/models/{self.name}"

    def move(self, alias: str, version: int) -> None:
        response = self.admin.put(
            f"{self.model()}/aliases/{alias}", json={"version": version, "reason": "e2e"}
        )
        assert response.status_code == 200, response.text

    def start(self, variants: dict[str, int], **options: Any) -> dict[str, Any]:
        """Start or change the rollout; returns once the instance follows it and every variant
        has either loaded or been refused."""
        body = {"variants": [{"alias": a, "weight": w} for a, w in variants.items()], **options}
        response = self.admin.put(f"{self.model()}/rollout", json=body)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        self.followed(view["revision"])
        return view

    def followed(self, revision: int | None) -> dict[str, Any]:
        """The instance's /health once it serves ``revision`` (None: no rollout)."""
        seen: dict[str, Any] = {}

        def there() -> bool:
            seen.clear()
            seen.update(httpx.get(f"{self.url}/health", timeout=5).json())
            rollout = seen.get("rollout")
            if revision is None:
                return rollout is None
            if rollout is None or rollout["revision"] != revision:
                return False
            variants = [*rollout["variants"], *([rollout["mirror"]] if rollout["mirror"] else [])]
            return all(v["ready"] or v["last_error"] for v in variants)

        assert wait_until(there, 60, interval_s=0.2), f"revision {revision} not followed: {seen}"
        return seen

    def end(self) -> None:
        response = self.admin.delete(f"{self.model()}/rollout")
        assert response.status_code == 200, response.text
        self.followed(None)

    def predict(self, headers: dict[str, str] | None = None, row: Any = None) -> dict[str, Any]:
        body = {"instances": [ROW if row is None else row]}
        response = self.caller.post(f"{self.url}/predict", json=body, headers=headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


def unsigned_version(name: str) -> int:
    """A well-formed iris model registered without the platform's signature."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(features, target)
    mlflow.set_experiment("e2e-rollouts")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=features.head(2),
            serialization_format="skops",
            pip_requirements=["scikit-learn"],
        )
    return int(mlflow.register_model(info.model_uri, name).version)


@pytest.fixture(scope="module")
def canary(
    stack: StackUrls, http: httpx.Client, extra_inference: ExtraInference, mlflow_env: None
) -> Iterator[Canary]:
    name = f"e2e-canary-{uuid.uuid4().hex[:8]}"
    versions: dict[str, int] = {}
    for label, body in (
        ("champion", {"dataset": {"builtin": "iris"}, "promote": {"alias": "champion"}}),
        ("challenger", {"dataset": {"builtin": "iris"}, "algorithm": "random_forest"}),
        ("narrow", {"dataset": {"builtin": "wine"}}),
    ):
        job = train(http, stack, {"model_name": name, **body})
        assert job["status"] == "succeeded", job["error"]
        versions[label] = int(job["model_version"])
    versions["unsigned"] = unsigned_version(name)
    url = extra_inference(name, PORT)
    token = stack.create_token(f"e2e-canary-caller-{uuid.uuid4().hex[:6]}", "predict")
    with (
        httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as caller,
        httpx.Client(timeout=30, headers=stack.auth) as admin,
    ):
        served = Canary(name, url, stack.gateway, versions, caller, admin)
        for alias in ("challenger", "narrow", "unsigned"):
            served.move(alias, versions[alias])
        yield served


def test_a_90_10_split_over_2000_requests_lands_within_3_points(canary: Canary) -> None:
    canary.start({"champion": 90, "challenger": 10})
    answers = [canary.predict()["model"] for _ in range(2000)]
    metrics = httpx.get(f"{canary.url}/metrics", timeout=5).text
    canary.end()

    share = Counter(a["alias"] for a in answers)["challenger"] / len(answers)
    assert abs(share - 0.10) <= 0.03, share
    assert {(a["alias"], a["version"]) for a in answers} == {
        ("champion", canary.versions["champion"]),
        ("challenger", canary.versions["challenger"]),
    }
    assert 'inference_variant_requests_total{outcome="ok",variant="challenger"}' in metrics
    assert 'inference_variant_request_duration_seconds_bucket{le="0.01",variant="champion"}' in (
        metrics
    )


def test_a_sticky_key_never_changes_variant(canary: Canary) -> None:
    canary.start({"champion": 50, "challenger": 50}, sticky_header="X-User-Id")
    variants: dict[str, set[str]] = {f"user-{i}": set() for i in range(150)}
    for _ in range(4):
        for user, seen in variants.items():
            seen.add(canary.predict({"X-User-Id": user})["model"]["alias"])
    canary.end()

    assert all(len(seen) == 1 for seen in variants.values())
    on_challenger = sum(seen == {"challenger"} for seen in variants.values())
    assert 0.3 <= on_challenger / len(variants) <= 0.7


def test_a_mirror_never_changes_an_answer(canary: Canary) -> None:
    rows = [{**ROW, "petal length (cm)": 1.0 + i / 10} for i in range(50)]
    before = [canary.predict(row=row) for row in rows]
    metrics = canary.url + "/metrics"

    def scored() -> float:
        for line in httpx.get(metrics, timeout=5).text.splitlines():
            if line.startswith('inference_mirror_requests_total{outcome="scored"}'):
                return float(line.split()[-1])
        return 0.0

    already = scored()
    canary.start({"champion": 100}, mirror="challenger")
    during = [canary.predict(row=row) for row in rows]
    assert wait_until(lambda: scored() >= already + len(rows), 30, interval_s=0.2)
    canary.end()

    def answer(body: dict[str, Any]) -> tuple[Any, ...]:
        return (body["predictions"], body["probabilities"], body["model"])

    assert [answer(b) for b in during] == [answer(b) for b in before]


def test_a_challenger_that_fails_its_load_check_gets_no_traffic(canary: Canary) -> None:
    view = canary.start({"champion": 10, "unsigned": 90})
    health = canary.followed(view["revision"])
    answers = [canary.predict()["model"] for _ in range(300)]
    canary.end()

    unsigned = next(v for v in health["rollout"]["variants"] if v["alias"] == "unsigned")
    assert unsigned["ready"] is False and "sign" in unsigned["last_error"]
    assert {(a["alias"], a["version"]) for a in answers} == {
        ("champion", canary.versions["champion"])
    }


def test_the_guard_aborts_a_challenger_that_fails_requests_and_no_request_fails(
    canary: Canary,
) -> None:
    guard = {"max_error_rate": 0.01, "min_requests": 50}
    view = canary.start({"champion": 50, "narrow": 50}, guard=guard)
    answers: list[dict[str, Any]] = []

    def aborted() -> bool:
        answers.extend(canary.predict()["model"] for _ in range(20))
        state = canary.admin.get(f"{canary.model()}/rollout").json()
        return state["active"] is False

    assert wait_until(aborted, 60, interval_s=0.05), "the guard did not abort the rollout"
    canary.followed(None)
    history = canary.admin.get(f"{canary.model()}/rollout/history").json()["entries"]

    assert {(a["alias"], a["version"]) for a in answers} == {
        ("champion", canary.versions["champion"])
    }
    entry = history[0]
    assert entry["action"] == "aborted" and entry["revision"] > view["revision"]
    assert entry["actor"].startswith("e2e-inference-")  # the instance's own token
    assert entry["figures"]["error_rate"] == 1.0 and entry["figures"]["requests"] >= 50
    assert "guard tripped on narrow" in entry["reason"]


@dataclass
class Load:
    """Predictions from a few threads while the rollout changes."""

    canary: Canary
    answers: list[tuple[int, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        headers = dict(self.canary.caller.headers)
        with httpx.Client(timeout=10, headers=headers) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.canary.url}/predict", json={"instances": [ROW]})
                    version = response.json().get("model", {}).get("version")
                except (httpx.HTTPError, ValueError):
                    self.answers.append((0, None))
                    continue
                self.answers.append((response.status_code, version))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_no_request_fails_across_rollout_start_change_promote_and_abort_under_load(
    canary: Canary,
) -> None:
    v1, v2 = canary.versions["champion"], canary.versions["challenger"]
    with Load(canary) as load:
        canary.start({"champion": 90, "challenger": 10})
        canary.start({"champion": 50, "challenger": 50})
        promoted = canary.admin.post(f"{canary.model()}/rollout/promote", json={})
        assert promoted.status_code == 200, promoted.text
        canary.followed(None)
        assert wait_until(lambda: canary.predict()["model"]["version"] == v2, 30, interval_s=0.1)
        canary.move("challenger", v1)
        canary.start({"champion": 80, "challenger": 20})
        aborted = canary.admin.post(f"{canary.model()}/rollout/abort", json={"reason": "e2e"})
        assert aborted.status_code == 200, aborted.text
        canary.followed(None)
        canary.move("champion", v1)
        assert wait_until(lambda: canary.predict()["model"]["version"] == v1, 30, interval_s=0.1)

    statuses = Counter(status for status, _ in load.answers)
    assert len(load.answers) > 500 and statuses == {200: len(load.answers)}, statuses
    assert {version for _, version in load.answers} == {v1, v2}
