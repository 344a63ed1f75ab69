"""Rollouts in one instance: the split, sticky keys, champion standing in, the mirror, the guard."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from inference.rollout import Plan

from .conftest import CHURN_V2_INPUTS

pytestmark = pytest.mark.anyio

ROW = {"age": 30.0, "income": 42000.0, "visits": 3, "city": "lyon", "plan": "pro", "member": True}
PREDICTIONS = "s3://data/predictions/"


async def follow(svc: Any, gateway: Any, variants: dict[str, int], **options: Any) -> None:
    """Start or change the rollout at the gateway, and have the instance follow it with every
    variant's version loaded (or failed) first."""
    gateway.set_rollout("churn", variants, **options)
    await svc.rollout.refresh()
    plan = svc.rollout.plan
    assert plan is not None and plan.revision == gateway.rollouts["churn"]["revision"]
    for alias in sorted(plan.aliases - {"champion"}):
        await svc.rollout.variant(alias).manager.poll_once()


def sample(svc: Any, name: str, **labels: str) -> float:
    return float(svc.metrics.registry.get_sample_value(name, labels) or 0.0)


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def predict(svc: Any, headers: dict[str, str] | None = None) -> Any:
    response = await svc.client.post("/predict", json={"instances": [ROW]}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def two_versions(gateway: Any) -> Any:
    gateway.set_alias("churn", 1)
    gateway.set_alias("churn", 2, "challenger")
    return gateway


async def test_a_90_10_split_lands_within_2_5_points_over_2000_requests(
    service: Any, two_versions: Any
) -> None:
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 90, "challenger": 10})
        answers = [(await predict(svc))["model"] for _ in range(2000)]
        health = (await svc.client.get("/health")).json()

    by_alias = Counter(a["alias"] for a in answers)
    assert abs(by_alias["challenger"] / len(answers) - 0.10) <= 0.025
    assert {(a["alias"], a["version"]) for a in answers} == {("champion", 1), ("challenger", 2)}
    requests = sample(svc, "inference_variant_requests_total", variant="challenger", outcome="ok")
    assert requests == by_alias["challenger"]
    assert sample(svc, "inference_variant_version", variant="challenger") == 2
    assert (
        sample(svc, "inference_variant_request_duration_seconds_count", variant="champion")
        == (by_alias["champion"])
    )
    predicted = sum(
        sample(svc, "inference_variant_predictions_total", variant="challenger", prediction=label)
        for label in ("churn", "stay")
    )
    assert predicted == by_alias["challenger"]
    rollout = health["rollout"]
    assert rollout["revision"] == 1 and rollout["tripped"] is None
    assert [(v["alias"], v["weight"], v["version"], v["ready"]) for v in rollout["variants"]] == [
        ("champion", 90, 1, True),
        ("challenger", 10, 2, True),
    ]


async def test_a_sticky_key_keeps_its_variant_and_a_bigger_share_only_moves_keys_to_it(
    service: Any, two_versions: Any
) -> None:
    users = [f"user-{i}" for i in range(300)]
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(
            svc, two_versions, {"champion": 50, "challenger": 50}, sticky_header="X-User-Id"
        )
        first: dict[str, set[str]] = {u: set() for u in users}
        for _ in range(3):
            for user in users:
                answer = await predict(svc, {"X-User-Id": user})
                first[user].add(answer["model"]["alias"])
        await follow(
            svc, two_versions, {"champion": 30, "challenger": 70}, sticky_header="X-User-Id"
        )
        second = {u: (await predict(svc, {"x-user-id": u}))["model"]["alias"] for u in users}

    assert all(len(aliases) == 1 for aliases in first.values())
    on_challenger = {u for u, aliases in first.items() if aliases == {"challenger"}}
    assert 0.4 <= len(on_challenger) / len(users) <= 0.6
    # A ramp from 50 to 70 takes keys to the challenger, never back.
    assert on_challenger <= {u for u, alias in second.items() if alias == "challenger"}
    assert 0.6 <= Counter(second.values())["challenger"] / len(users) <= 0.8


async def test_a_challenger_that_fails_its_load_check_gets_no_traffic(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("churn", 1)
    gateway.set_alias("churn", 3, "challenger")  # its model file is garbage
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, gateway, {"champion": 10, "challenger": 90})
        answers = [(await predict(svc))["model"] for _ in range(200)]
        health = (await svc.client.get("/health")).json()

    assert {(a["alias"], a["version"]) for a in answers} == {("champion", 1)}
    challenger = health["rollout"]["variants"][1]
    assert challenger["ready"] is False and challenger["version"] is None
    assert "version 3" in challenger["last_error"]
    assert health["status"] == "ok"


async def test_a_failing_challenger_is_answered_for_by_champion_until_the_guard_aborts(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("churn", 1)
    gateway.set_alias("churn", 4, "challenger")  # refuses the `member` column champion takes
    guard = {"max_error_rate": 0.05, "max_p99_ms": None, "min_requests": 40}
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, gateway, {"champion": 50, "challenger": 50}, guard=guard)
        answers = [(await predict(svc))["model"] for _ in range(40)]
        await svc.rollout.check_guard()
        failed = svc.rollout.variant("challenger").errors
        tripped_before = list(gateway.aborts)
        answers += [(await predict(svc))["model"] for _ in range(80)]
        await svc.rollout.check_guard()
        after_trip = [(await predict(svc))["model"] for _ in range(50)]
        health = (await svc.client.get("/health")).json()
        await svc.rollout.refresh()
        ended = svc.rollout.plan

    # Every request answered, by champion, whatever the challenger did.
    assert {(a["alias"], a["version"]) for a in answers + after_trip} == {("champion", 1)}
    assert 0 < failed < 40 and tripped_before == []  # not judged before min_requests
    [abort] = gateway.aborts
    figures = abort["figures"]
    assert figures["error_rate"] == 1.0 and figures["requests"] >= 40
    assert figures["errors"] == figures["requests"]
    assert "guard tripped on challenger" in abort["reason"] and "error rate" in abort["reason"]
    assert health["rollout"]["tripped"].startswith("challenger: error rate 1.0000 > 0.05")
    assert ended is None  # the gateway's abort reached the instance
    errors = sample(svc, "inference_variant_requests_total", variant="challenger", outcome="error")
    assert errors == figures["errors"]
    assert sample(svc, "inference_rollout_guard_trips_total", variant="challenger") == 1


async def test_the_guard_trips_on_latency_too(service: Any, two_versions: Any) -> None:
    guard = {"max_error_rate": 0.5, "max_p99_ms": 0.000001, "min_requests": 5}
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 0, "challenger": 100}, guard=guard)
        for _ in range(5):
            await predict(svc)
        await svc.rollout.check_guard()
    [abort] = two_versions.aborts
    assert "p99" in abort["reason"] and abort["figures"]["p99_ms"] > 0.000001


async def test_the_callers_own_bad_input_is_no_variants_error(
    service: Any, two_versions: Any
) -> None:
    bad = {"instances": [{**ROW, "colour": "red"}]}
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 50, "challenger": 50})
        responses = [await svc.client.post("/predict", json=bad) for _ in range(40)]
    assert {r.status_code for r in responses} == {422}
    assert all("colour" in r.json()["error"]["message"] for r in responses)
    assert svc.rollout.variant("challenger").errors == 0


async def test_the_mirror_scores_a_copy_of_every_request_and_changes_no_answer(
    service: Any, two_versions: Any, artifacts: Any, to_rows: Any
) -> None:
    two_versions.set_alias("churn", 2, "shadow")
    frame = artifacts.frames["churn"].head(40)
    rows = to_rows(frame)
    expected = list(artifacts.pipelines["churn-v1"].predict(frame))
    async with service(prediction_log_flush_rows=1000) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 100}, mirror="shadow")
        answers = [(await svc.post_json("/predict", {"instances": [row]})).json() for row in rows]
        await until(lambda: sample(svc, "inference_mirror_requests_total", outcome="scored") == 40)
    table = svc.records.table(PREDICTIONS).to_pandas()

    assert [a["predictions"][0] for a in answers] == expected
    assert {(a["model"]["alias"], a["model"]["version"]) for a in answers} == {("champion", 1)}
    served, mirrored = table[~table["mirror"]], table[table["mirror"]]
    ids = [a["request_id"] for a in answers]
    assert list(served["request_id"]) == ids and set(served["version"]) == {1}
    assert sorted(mirrored["request_id"]) == sorted(ids)
    assert set(mirrored["alias"]) == {"shadow"} and set(mirrored["version"]) == {2}
    assert sample(svc, "inference_variant_requests_total", variant="shadow", outcome="ok") == 40


async def test_mirror_copies_past_the_queue_bound_are_dropped_and_counted(
    service: Any, two_versions: Any
) -> None:
    two_versions.set_alias("churn", 2, "shadow")
    body = {"instances": [ROW] * 20}  # about 2 KiB: more than the bound
    async with service(prediction_log_enabled=False, mirror_max_queued_bytes=1024) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 100}, mirror="shadow")
        responses = [await svc.post_json("/predict", body) for _ in range(5)]
    assert {r.status_code for r in responses} == {200}
    assert sample(svc, "inference_mirror_requests_total", outcome="dropped") == 5
    assert sample(svc, "inference_mirror_requests_total", outcome="scored") == 0


async def test_v2_follows_the_rollout_and_a_version_asked_for_answers_itself(
    service: Any, two_versions: Any
) -> None:
    body = {
        "inputs": [
            {"name": name, "shape": [1], "datatype": kind, "data": [ROW[name]]}
            for name, kind in CHURN_V2_INPUTS
        ]
    }
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 0, "challenger": 100})
        routed = await svc.post_json("/v2/models/churn/infer", body)
        pinned = await svc.post_json("/v2/models/churn/versions/1/infer", body)
        ready = await svc.client.get("/v2/models/churn/versions/2/ready")
        unknown = await svc.client.get("/v2/models/churn/versions/3/ready")

    assert routed.status_code == 200, routed.text
    assert routed.json()["model_version"] == "2"
    assert routed.json()["parameters"] == {"alias": "challenger"}
    assert pinned.json()["model_version"] == "1"
    assert ready.status_code == 200
    assert unknown.status_code == 404


async def test_no_request_fails_while_a_rollout_starts_changes_and_ends_under_load(
    service: Any, two_versions: Any
) -> None:
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        statuses: list[int] = []
        seen: set[tuple[str, int]] = set()
        stop = asyncio.Event()
        answered = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                response = await svc.post_json("/predict", {"instances": [ROW]})
                statuses.append(response.status_code)
                answered.set()
                if response.status_code == 200:
                    model = response.json()["model"]
                    seen.add((model["alias"], model["version"]))

        async def then_requests(count: int) -> None:
            before = len(statuses)
            while len(statuses) < before + count:
                answered.clear()
                await answered.wait()

        clients = [asyncio.create_task(client()) for _ in range(8)]
        # Not loaded first: the share stays with champion until the challenger has loaded.
        two_versions.set_rollout("churn", {"champion": 90, "challenger": 10})
        await svc.rollout.refresh()
        await then_requests(50)
        await svc.rollout.variant("challenger").manager.poll_once()
        await then_requests(200)
        two_versions.set_rollout("churn", {"champion": 20, "challenger": 80})
        await svc.rollout.refresh()
        await then_requests(100)
        two_versions.end_rollout("churn")
        await svc.rollout.refresh()
        await then_requests(100)
        stop.set()
        await asyncio.gather(*clients)

    assert statuses and set(statuses) == {200}
    assert seen == {("champion", 1), ("challenger", 2)}
    assert svc.rollout.plan is None and svc.rollout.variant("challenger") is None


async def test_the_last_rollout_stays_while_the_gateway_cannot_be_asked(
    service: Any, two_versions: Any
) -> None:
    async with service(prediction_log_enabled=False) as svc:
        await svc.manager.poll_once()
        await follow(svc, two_versions, {"champion": 0, "challenger": 100})
        await predict(svc)  # the caller's token is checked while the gateway answers
        two_versions.down = True
        await svc.rollout.refresh()
        answer = await predict(svc)
        state = svc.rollout.state()
    assert answer["model"]["alias"] == "challenger"
    assert state is not None and "cannot reach the gateway" in state["last_error"]


@pytest.mark.parametrize(
    ("view", "problem"),
    [
        ({"active": True, "revision": 1, "variants": [{"alias": "a", "weight": 60}]}, "sum"),
        ({"active": True, "revision": 1}, "not a rollout"),
    ],
)
def test_a_malformed_rollout_is_refused(view: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Plan.from_view(view)


def test_an_inactive_rollout_is_no_plan() -> None:
    assert Plan.from_view({"active": False, "revision": 4, "variants": []}) is None
