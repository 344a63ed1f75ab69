"""The platform scaled out in compose (infra/compose/compose.scale.yaml): several trainer workers;
replicas of inference, the trainer API and the gateway behind HAProxy.

Runs only against such a stack: infra/ci/compose-e2e.sh scales the compose stack out after the
other end-to-end tests and runs this module with E2E_SCALE_OUT=1, the counts it asked for
(E2E_INFERENCE_REPLICAS, E2E_TRAINER_WORKERS, E2E_API_REPLICAS) and E2E_COMPOSE. INFERENCE_URL,
TRAINER_URL and GATEWAY_URL are the proxy; the replica that answered is in its X-Served-By header.
The model is the served one, `demo`; the tests put its aliases back as they found them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mlops_common.http import wait_until
from sklearn.datasets import load_breast_cancer

from .conftest import StackUrls, train, wait_for_job

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("E2E_SCALE_OUT") != "1",
        reason="needs the scaled-out compose stack (E2E_SCALE_OUT=1, infra/ci/compose-e2e.sh)",
    ),
]

MODEL = "demo"
ROWS = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(20).to_dict("records")


@dataclass
class Scaled:
    stack: StackUrls
    http: httpx.Client
    replicas: int
    workers: int
    api_replicas: int
    compose: list[str]

    @property
    def model(self) -> str:
        return f"{self.stack.gateway}/v1/models/{MODEL}"

    def predict(
        self,
        client: httpx.Client | None = None,
        headers: dict[str, str] | None = None,
        row: int = 0,
    ) -> tuple[str, dict[str, Any]]:
        """(replica, the answer's model) of one prediction through the proxy."""
        response = (client or self.http).post(
            f"{self.stack.inference}/predict", json={"instances": [ROWS[row]]}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.headers["x-served-by"], response.json()["model"]

    def alias(self, alias: str) -> int | None:
        response = self.http.get(f"{self.model}/aliases/{alias}")
        return int(response.json()["version"]) if response.status_code == 200 else None

    def move(self, alias: str, version: int) -> None:
        response = self.http.put(
            f"{self.model}/aliases/{alias}", json={"version": version, "reason": "e2e scale-out"}
        )
        assert response.status_code == 200, response.text

    def every_replica(self, check: Any, timeout_s: float = 60) -> None:
        """Wait until ``check(response)`` holds on every replica (asked through the proxy)."""
        good: set[str] = set()
        seen: dict[str, Any] = {}

        def there() -> bool:
            response = self.http.get(f"{self.stack.inference}/health")
            replica = response.headers.get("x-served-by", "?")
            seen[replica] = response.json()
            (good.add if check(response) else good.discard)(replica)
            return len(good) == self.replicas

        assert wait_until(there, timeout_s, interval_s=0.05), f"not on every replica: {seen}"

    def containers(self, service: str) -> list[str]:
        listed = subprocess.run(
            [*self.compose, "ps", "-q", service], check=True, capture_output=True, text=True
        )
        return listed.stdout.split()


@pytest.fixture(scope="module")
def scaled(stack: StackUrls, http: httpx.Client) -> Scaled:
    compose = os.environ.get("E2E_COMPOSE")
    assert compose, "E2E_COMPOSE must name the scaled stack's compose command"
    return Scaled(
        stack,
        http,
        int(os.environ.get("E2E_INFERENCE_REPLICAS", "2")),
        int(os.environ.get("E2E_TRAINER_WORKERS", "3")),
        int(os.environ.get("E2E_API_REPLICAS", "2")),
        shlex.split(compose),
    )


@pytest.fixture(scope="module")
def versions(scaled: Scaled, stack: StackUrls, http: httpx.Client) -> Iterator[dict[str, int]]:
    """demo's champion, and a newer version trained as the demo is (not promoted); aliases
    restored afterwards."""
    champion = scaled.alias("champion")
    assert champion is not None, "the compose stack serves demo@champion"
    challenger = scaled.alias("challenger")
    job = train(
        http,
        stack,
        {
            "model_name": MODEL,
            "dataset": {"builtin": "breast_cancer"},
            "algorithm": "logistic_regression",
        },
    )
    assert job["status"] == "succeeded", job["error"]
    yield {"old": champion, "new": int(job["model_version"])}
    http.delete(f"{scaled.model}/rollout")
    if scaled.alias("champion") != champion:
        scaled.move("champion", champion)
    if challenger is not None:
        scaled.move("challenger", challenger)


def test_jobs_submitted_at_once_are_trained_by_several_workers_and_none_twice(
    scaled: Scaled, stack: StackUrls, http: httpx.Client, mlflow_env: None
) -> None:
    from mlflow import MlflowClient

    name = f"e2e-scale-{uuid.uuid4().hex[:8]}"
    count = 2 * scaled.workers
    submitted = [
        http.post(
            f"{stack.trainer}/v1/train", json={"model_name": name, "dataset": {"builtin": "iris"}}
        )
        for _ in range(count)
    ]
    assert all(r.status_code == 202 for r in submitted), [r.text for r in submitted]
    # Recorded by whichever API replica took it, dispatched by any of them, found by every one.
    assert len({r.headers["x-served-by"] for r in submitted}) == scaled.api_replicas
    jobs = [wait_for_job(http, stack, r.json()["job_id"]) for r in submitted]

    assert [j["status"] for j in jobs] == ["succeeded"] * count, [j["error"] for j in jobs]
    hosts = Counter(j["worker"].removeprefix("trainer@").split("/")[0] for j in jobs)
    assert len(hosts) >= 2, hosts
    # None twice: one attempt each, one registered version each, and the registry holds
    # exactly those versions, each from its job's own run.
    assert all(j["attempts"] == 1 for j in jobs)
    assert sorted(j["model_version"] for j in jobs) == list(range(1, count + 1))
    registered = MlflowClient().search_model_versions(f"name = '{name}'")
    assert {(int(v.version), v.run_id) for v in registered} == {
        (j["model_version"], j["run_id"]) for j in jobs
    }
    print(f"\n{count} jobs over {len(hosts)} of {scaled.workers} workers: {dict(hosts)}")


def test_every_replica_serves_through_the_proxy(scaled: Scaled) -> None:
    answers = [scaled.predict(row=i % len(ROWS)) for i in range(20 * scaled.replicas)]

    served = Counter(replica for replica, _ in answers)
    assert len(served) == scaled.replicas, served
    # Round robin over ready replicas: an even share each.
    assert max(served.values()) - min(served.values()) <= 2, served
    assert len({(m["name"], m["version"]) for _, m in answers}) == 1


def test_after_an_alias_move_every_replica_serves_the_new_version_within_2_s(
    scaled: Scaled, versions: dict[str, int]
) -> None:
    scaled.move("champion", versions["new"])
    moved = time.monotonic()
    first_new: dict[str, float] = {}
    last_old: dict[str, float] = {}
    with httpx.Client(timeout=10, headers=scaled.stack.auth) as client:
        while time.monotonic() - moved < 5:
            replica, model = scaled.predict(client)
            at = time.monotonic() - moved
            if model["version"] == versions["new"]:
                first_new.setdefault(replica, at)
            else:
                last_old[replica] = at
    scaled.move("champion", versions["old"])

    print(f"\nfirst answer of the new version per replica (s after the move): {first_new}")
    assert len(first_new) == scaled.replicas, first_new
    assert max(first_new.values()) <= 2.0, first_new
    # The swap is atomic on each replica: no old answer after its first new one.
    assert all(last_old.get(r, 0.0) < first_new[r] for r in first_new), (first_new, last_old)
    scaled.every_replica(lambda r: (r.json().get("model") or {}).get("version") == versions["old"])


@dataclass
class Load:
    """Predictions through the proxy from a few threads, each answer recorded."""

    scaled: Scaled
    threads: int = 4
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._running = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]
        for thread in self._running:
            thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers=self.scaled.stack.auth) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(
                        f"{self.scaled.stack.inference}/predict", json={"instances": [ROWS[0]]}
                    )
                    outcome = (response.status_code, response.headers.get("x-served-by", ""))
                except httpx.HTTPError as error:
                    outcome = (0, type(error).__name__)
                self.answers.append((time.monotonic() - started, *outcome))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(timeout=60)


def test_losing_a_replica_under_load_loses_no_request(scaled: Scaled) -> None:
    victim = scaled.containers("inference")[0]
    try:
        with Load(scaled) as load:
            assert wait_until(lambda: len(load.answers) >= 200, 30, interval_s=0.05)
            subprocess.run(
                ["docker", "kill", "--signal", "SIGKILL", victim], check=True, capture_output=True
            )
            killed_at = len(load.answers)
            assert wait_until(lambda: len(load.answers) >= killed_at + 500, 60, interval_s=0.05)
    finally:
        # Docker's restart policy does not apply to a container killed through its API.
        subprocess.run(["docker", "start", victim], check=True, capture_output=True)

    statuses = Counter(status for _, status, _ in load.answers)
    assert statuses == {200: len(load.answers)}, statuses
    after = Counter(replica for _, _, replica in load.answers[killed_at + 100 :])
    assert len(after) == scaled.replicas - 1, after  # the dead one was taken out
    slowest = max(seconds for seconds, _, _ in load.answers)
    print(f"\n{len(load.answers)} requests, replica killed after {killed_at}: all 200;")
    print(f"slowest answer {slowest * 1000:.0f} ms; after the kill: {dict(after)}")
    scaled.every_replica(lambda r: r.status_code == 200, 120)


def test_a_rollout_splits_the_same_way_on_every_replica(
    scaled: Scaled, versions: dict[str, int]
) -> None:
    scaled.move("challenger", versions["new"])
    body = {
        "variants": [{"alias": "champion", "weight": 90}, {"alias": "challenger", "weight": 10}],
        "sticky_header": "X-User-Id",
    }
    started = scaled.http.put(f"{scaled.model}/rollout", json=body)
    assert started.status_code == 200, started.text
    revision = started.json()["revision"]

    def follows(response: httpx.Response) -> bool:
        rollout = response.json().get("rollout")
        return (
            bool(rollout)
            and rollout["revision"] == revision
            and all(v["ready"] for v in rollout["variants"])
        )

    scaled.every_replica(follows)
    try:
        by_replica: dict[str, Counter[str]] = defaultdict(Counter)
        with httpx.Client(timeout=10, headers=scaled.stack.auth) as client:
            for _ in range(2000):
                replica, model = scaled.predict(client)
                by_replica[replica][model["alias"]] += 1
            keyed: dict[str, set[tuple[str, str]]] = defaultdict(set)
            # A key's requests one after another: round robin sends them to different replicas.
            for user in range(200):
                for _ in range(3):
                    replica, model = scaled.predict(client, {"X-User-Id": f"user-{user}"})
                    keyed[f"user-{user}"].add((replica, model["alias"]))
    finally:
        ended = scaled.http.delete(f"{scaled.model}/rollout")
        assert ended.status_code == 200, ended.text

    shares = {r: c["challenger"] / sum(c.values()) for r, c in by_replica.items()}
    print(f"\nchallenger share per replica over 2000 requests: {shares}")
    assert len(shares) == scaled.replicas
    assert all(abs(share - 0.10) <= 0.03 for share in shares.values()), shares
    # A sticky key lands on the same variant whichever replica answers it.
    assert all(len({alias for _, alias in seen}) == 1 for seen in keyed.values())
    across = sum(len({replica for replica, _ in seen}) > 1 for seen in keyed.values())
    assert across >= len(keyed) // 2, across
    on_challenger = sum({a for _, a in seen} == {"challenger"} for seen in keyed.values())
    print(f"{len(keyed)} sticky keys x 3: {across} answered by both replicas, none changed variant")
    print(f"keys on challenger: {on_challenger}")
    assert 0.03 <= on_challenger / len(keyed) <= 0.2, on_challenger


def test_every_gateway_replica_sees_tokens_and_alias_moves_and_revocations_bite_within_5_s(
    scaled: Scaled, stack: StackUrls, versions: dict[str, int]
) -> None:
    name = f"e2e-scale-reader-{uuid.uuid4().hex[:6]}"
    token = stack.create_token(name, "models:read")
    url = f"{scaled.model}/aliases/challenger"

    def read(client: httpx.Client) -> tuple[str, httpx.Response]:
        response = client.get(url)
        return response.headers["x-served-by"], response

    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        # A token made through one replica works at once on every replica.
        scaled.move("challenger", versions["new"])
        answers = [read(client) for _ in range(10 * scaled.api_replicas)]
        assert len({replica for replica, _ in answers}) == scaled.api_replicas
        # An alias moved through one replica: every replica resolves the new version at once.
        assert {(r.status_code, r.json()["version"]) for _, r in answers} == {
            (200, versions["new"])
        }

        revoked = scaled.http.delete(f"{stack.gateway}/v1/tokens/{name}")
        assert revoked.status_code in (200, 204), revoked.text
        at = time.monotonic()
        last_accepted: dict[str, float] = {}
        refused: set[str] = set()
        while time.monotonic() - at < 8:
            replica, response = read(client)
            if response.status_code == 200:
                last_accepted[replica] = time.monotonic() - at
            else:
                assert response.status_code == 401, response.text
                refused.add(replica)

    print(f"\nrevoked token last accepted (s after the revocation, per replica): {last_accepted}")
    assert len(refused) == scaled.api_replicas
    # The token cache of the other replicas holds a checked token for at most 5 s.
    assert all(seconds <= 5.5 for seconds in last_accepted.values()), last_accepted
