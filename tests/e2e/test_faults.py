"""Fault injection against the real local stack: every fault a production team meets, every run.

Each test injects one fault through the stack's supervisor (``mlops stop|start``) or a signal,
keeps a bounded load on the platform while it lasts, and checks what users depend on: no failed
request where the platform promised none, no accepted job lost, one model version per job, and
how long recovery took. The measured figures go into the table in docs/reliability.md (rewritten
by every run; the committed copy is the last one checked in).

These tests run last (they stop, freeze and kill components) and only against a local stack,
whose supervisor they drive; against compose they are skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from mlops_common.http import wait_until
from sklearn.datasets import load_breast_cancer, load_iris

from .conftest import ROOT, ExtraInference, StackUrls, train, wait_for_job
from .faults import FaultReport, FaultRow, Load, seconds
from .test_airflow import Airflow

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

MODEL = "fault-iris"
PORT = 18830
HOLD_S = 20.0  # how long PostgreSQL and S3 stay stopped
FREEZE_S = 30.0  # how long the broker stays frozen

IRIS_ROWS = load_iris(as_frame=True).frame.drop(columns=["target"]).head(3).to_dict("records")
DEMO_ROWS = (
    load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(2).to_dict("records")
)


@pytest.fixture(scope="module", autouse=True)
def local_only(stack: StackUrls) -> None:
    if stack.home is None:
        pytest.skip("fault injection drives a local stack's supervisor (MLOPS_HOME)")


@pytest.fixture(scope="module")
def report() -> Iterator[FaultReport]:
    collected = FaultReport()
    yield collected
    if collected.rows:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        collected.write(ROOT / "docs" / "reliability.md", f"{when}, {os.cpu_count()} cores")
        print("\n" + collected.table())


@pytest.fixture(scope="module")
def served(stack: StackUrls, http: httpx.Client, extra_inference: ExtraInference) -> dict[str, Any]:
    """Two versions of one model, the first promoted, served by an inference of the test's own."""
    first = train(
        http,
        stack,
        {"model_name": MODEL, "dataset": {"builtin": "iris"}, "promote": {"alias": "champion"}},
    )
    second = train(
        http,
        stack,
        {"model_name": MODEL, "dataset": {"builtin": "iris"}, "algorithm": "random_forest"},
    )
    assert first["status"] == second["status"] == "succeeded", (first["error"], second["error"])
    url = extra_inference(MODEL, PORT)
    return {"url": url, "versions": (first["model_version"], second["model_version"])}


def move_alias(http: httpx.Client, stack: StackUrls, name: str, version: int) -> None:
    moved = http.put(
        f"{stack.gateway}/v1/models/{name}/aliases/champion",
        json={"version": version, "reason": "fault drill"},
        headers={"X-Actor": "fault-test"},
    )
    assert moved.status_code == 200, moved.text


def serving(http: httpx.Client, url: str) -> int | None:
    response = http.get(f"{url}/model-info", timeout=2)
    return int(response.json()["version"]) if response.status_code == 200 else None


def versions_of(http: httpx.Client, stack: StackUrls, name: str) -> list[int]:
    model = http.get(f"{stack.gateway}/v1/models/{name}")
    assert model.status_code == 200, model.text
    return [v["version"] for v in model.json()["versions"]]


def alias_moves(http: httpx.Client, stack: StackUrls, name: str) -> int:
    audit = http.get(f"{stack.gateway}/v1/models/{name}/audit")
    assert audit.status_code == 200, audit.text
    return len(audit.json()["records"])


def failures_text(load: Load) -> str:
    failed = load.failures()
    if not failed:
        return "0"
    kinds = sorted({f"{o.status or o.error}" for o in failed})
    return f"{len(failed)} ({', '.join(kinds)[:120]})"


# ---- serving --------------------------------------------------------------------------------------
def test_alias_moved_ten_times_under_load_at_32_connections(
    stack: StackUrls, http: httpx.Client, served: dict[str, Any], report: FaultReport
) -> None:
    url, (v1, v2) = served["url"], served["versions"]
    took: list[float] = []  # from the gateway's 200 to the new version answering
    moves: list[float] = []  # the PUT itself
    with Load(url, stack.auth, {"instances": IRIS_ROWS}, connections=32) as load:
        assert wait_until(lambda: load.total > 100, 30, 0.05), "no load"
        for i in range(10):
            target = v2 if i % 2 == 0 else v1
            began = time.monotonic()
            move_alias(http, stack, MODEL, target)
            moved = time.monotonic()
            assert wait_until(lambda t=target: serving(http, url) == t, 10, 0.02), (
                f"v{target} not served 10 s after the move"
            )
            took.append(time.monotonic() - moved)
            moves.append(moved - began)
    report.add(
        FaultRow(
            "alias moved 10 times under load",
            "`PUT .../aliases/champion` alternating two versions, each once the last is served",
            load.describe(),
            failures_text(load),
            "-",
            "-",
            f"each move served within {seconds(max(took))} of the gateway's answer (mean "
            f"{seconds(sum(took) / 10)}; the PUT took {seconds(sum(moves) / 10)} on average); "
            f"slowest request {seconds(load.slowest_s())}",
        )
    )
    # What the issue asks: no failed request, each answered within 2 s.
    assert load.failures() == []
    assert load.slowest_s() <= 2.0
    assert set(load.versions()) == {v1, v2}
    # A regression guard on the swap itself (about 1.3 s on 2 busy cores).
    assert max(took) <= 5.0, took


# ---- training ----------------------------------------------------------------------------------
def _slow_job(name: str) -> dict[str, Any]:
    return {
        "model_name": name,
        "dataset": {"builtin": "digits"},
        "algorithm": "random_forest",
        "params": {"n_estimators": 300},
        "promote": {"alias": "champion"},
    }


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_trainer_worker_stopped_mid_job(
    stack: StackUrls, http: httpx.Client, report: FaultReport, signum: signal.Signals
) -> None:
    name = f"fault-worker-{signum.name.lower()}"
    job_id = http.post(f"{stack.trainer}/v1/train", json=_slow_job(name)).json()["job_id"]
    assert wait_until(
        lambda: http.get(f"{stack.trainer}/v1/jobs/{job_id}").json()["status"] == "running", 60
    )
    began = time.monotonic()
    # SIGKILL takes every process of the worker at once, as a lost machine would; SIGTERM goes
    # to its main process, as `docker stop` or Kubernetes send it.
    stack.signal("trainer-worker", signum, group=signum == signal.SIGKILL)
    final = wait_for_job(http, stack, job_id, timeout_s=300)
    recovered = time.monotonic() - began
    versions = versions_of(http, stack, name) if final["status"] == "succeeded" else []
    moves = alias_moves(http, stack, name) if versions else 0
    report.add(
        FaultRow(
            f"trainer worker {signum.name} mid-job",
            f"{signum.name} to the Celery worker "
            f"({'every process' if signum == signal.SIGKILL else 'its main process'}) "
            "while it trains",
            "1 job",
            "0" if final["status"] == "succeeded" else f"job {final['status']}: {final['error']}",
            "0" if final["status"] == "succeeded" else "1",
            str(max(len(versions) - 1, 0)),
            f"job succeeded {seconds(recovered)} after the signal (attempts: "
            f"{final['attempts']}); alias moves: {moves}",
        )
    )
    assert final["status"] == "succeeded", final["error"]
    assert len(versions) == 1 and moves == 1
    # A stop asked for politely lets the job finish (warm shutdown); a kill retries it.
    assert final["attempts"] == (2 if signum == signal.SIGKILL else 1)
    # Whatever the signal, the worker is back (the supervisor restarts it) for the next job.
    assert wait_until(lambda: http.get(f"{stack.trainer}/health").json()["workers"], 60)


def test_broker_frozen_then_killed_and_restarted(
    stack: StackUrls, http: httpx.Client, report: FaultReport
) -> None:
    submits: list[tuple[float, int, str]] = []
    health: list[tuple[float, int, dict[str, Any]]] = []
    names = [f"fault-broker-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
    with Load(stack.inference, stack.auth, {"instances": DEMO_ROWS}) as load:
        stack.signal("redis", signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            for name in names:
                began = time.monotonic()
                response = http.post(
                    f"{stack.trainer}/v1/train",
                    json={"model_name": name, "dataset": {"builtin": "iris"}},
                    timeout=10,
                )
                job_id = response.json().get("job_id", "") if response.status_code == 202 else ""
                submits.append((time.monotonic() - began, response.status_code, job_id))
                began = time.monotonic()
                probe = http.get(f"{stack.trainer}/health", timeout=10)
                health.append((time.monotonic() - began, probe.status_code, probe.json()))
            # The broker stays frozen for the whole FREEZE_S, submissions or not.
            wait_until(lambda: time.monotonic() - frozen_at >= FREEZE_S, FREEZE_S + 1, 0.5)
        finally:
            # Killed while frozen (SIGKILL ends a stopped process): the supervisor restarts it.
            stack.signal("redis", signal.SIGKILL)
        killed_at = time.monotonic()
        finals = [wait_for_job(http, stack, job_id, 240) for _, _, job_id in submits if job_id]
        recovered = time.monotonic() - killed_at
    succeeded = [f for f in finals if f["status"] == "succeeded"]
    duplicates = sum(max(len(versions_of(http, stack, n)) - 1, 0) for n in names[: len(finals)])
    slowest_submit = max(s[0] for s in submits)
    slowest_health = max(h[0] for h in health)
    report.add(
        FaultRow(
            "broker frozen (SIGSTOP) 30 s, then killed and restarted",
            f"SIGSTOP to Valkey for {FREEZE_S:.0f} s, then SIGKILL; the supervisor restarts it",
            f"{len(submits)} jobs submitted while frozen; {load.describe()}",
            f"{failures_text(load)} predictions; slowest submit {seconds(slowest_submit)} "
            f"(all {sorted({s[1] for s in submits})}), slowest /health {seconds(slowest_health)}",
            str(len(submits) - len(succeeded)),
            str(duplicates),
            f"every accepted job succeeded {seconds(recovered)} after the restart",
        )
    )
    assert all(status == 202 for _, status, _ in submits), submits
    assert slowest_submit <= 2.0, submits
    assert slowest_health <= 1.0, health
    assert any("broker" in " ".join(h[2].get("degraded", [])) for h in health), health
    assert len(succeeded) == len(names), [f["error"] for f in finals]
    assert duplicates == 0
    assert load.failures() == []


def test_postgres_stopped_and_restarted(
    stack: StackUrls, http: httpx.Client, report: FaultReport
) -> None:
    answers: list[tuple[str, float, float, int | None]] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(headers=stack.auth, timeout=10) as client:
            while not stop.is_set():
                for service, url in (
                    ("trainer", f"{stack.trainer}/v1/jobs?limit=1"),
                    ("gateway", f"{stack.gateway}/v1/models/demo"),
                ):
                    began = time.monotonic()
                    try:
                        status: int | None = client.get(url).status_code
                    except httpx.HTTPError:
                        status = None
                    answers.append((service, began, time.monotonic(), status))
                stop.wait(0.25)

    before = http.post(
        f"{stack.trainer}/v1/train",
        json={"model_name": "fault-postgres", "dataset": {"builtin": "iris"}},
    )
    assert before.status_code == 202, before.text
    prober = threading.Thread(target=probe)
    with Load(stack.inference, stack.auth, {"instances": DEMO_ROWS}) as load:
        prober.start()
        try:
            stack.mlops("stop", "postgres")
            down_at = time.monotonic()
            wait_until(lambda: time.monotonic() - down_at >= HOLD_S, HOLD_S + 1, 0.5)
            up_at = time.monotonic()
        finally:
            stack.mlops("start", "postgres")
        back_at = time.monotonic()

        def both_answer() -> bool:
            latest = {s: st for s, _, _, st in answers}
            return latest.get("trainer") == 200 and latest.get("gateway") == 200

        assert wait_until(both_answer, 60, 0.1), answers[-4:]
        recovered = time.monotonic() - back_at
        stop.set()
        prober.join()
    during = [a for a in answers if down_at <= a[1] and a[2] <= up_at]
    statuses = sorted({str(a[3]) for a in during})
    slowest = max((a[2] - a[1] for a in during), default=0.0)
    job = wait_for_job(http, stack, before.json()["job_id"], 240)
    after = train(http, stack, {"model_name": "fault-postgres", "dataset": {"builtin": "iris"}})
    lost = sum(f["status"] != "succeeded" for f in (job, after))
    report.add(
        FaultRow(
            "PostgreSQL stopped 20 s and restarted",
            f"`mlops stop postgres` (fast shutdown), {HOLD_S:.0f} s, `mlops start postgres`",
            f"{load.describe()}; trainer and gateway probed every 0.25 s; 1 job in flight",
            f"{failures_text(load)} predictions; trainer/gateway answered {', '.join(statuses)} "
            f"during (slowest {seconds(slowest)})",
            str(lost),
            str(max(len(versions_of(http, stack, "fault-postgres")) - 2, 0)),
            f"trainer and gateway answer {seconds(recovered)} after PostgreSQL is back; "
            "no service restarted",
        )
    )
    assert during, "nothing probed while PostgreSQL was down"
    assert {a[3] for a in during} == {503}, statuses
    assert slowest <= 5.0
    assert load.failures() == []
    assert lost == 0, (job["error"], after["error"])


def test_s3_stopped_during_a_swap(
    stack: StackUrls,
    http: httpx.Client,
    served: dict[str, Any],
    extra_inference: ExtraInference,
    report: FaultReport,
) -> None:
    url, versions = served["url"], served["versions"]
    current = serving(http, url)
    target = next(v for v in versions if v != current)
    with Load(url, stack.auth, {"instances": IRIS_ROWS}) as load:
        stack.mlops("stop", "s3")
        down_at = time.monotonic()
        try:
            move_alias(http, stack, MODEL, target)
            # The swap is attempted (and fails) while S3 is down; the old version keeps serving.
            assert wait_until(
                lambda: "s3" in " ".join(http.get(f"{url}/health").json().get("degraded") or []),
                HOLD_S,
                0.2,
            ), http.get(f"{url}/health").json()
            held_version = serving(http, url)
            wait_until(lambda: time.monotonic() - down_at >= HOLD_S, HOLD_S + 1, 0.5)
        finally:
            stack.mlops("start", "s3")
        back_at = time.monotonic()
        swapped = wait_until(lambda: serving(http, url) == target, 60, 0.1)
        recovered = time.monotonic() - back_at
    partial = list(extra_inference.cache_dir(PORT).rglob(".partial-*"))
    report.add(
        FaultRow(
            "S3 stopped 20 s, alias moved meanwhile",
            f"`mlops stop s3`, alias moved to another version, {HOLD_S:.0f} s, `mlops start s3`",
            load.describe(),
            failures_text(load),
            "-",
            "-",
            f"old version served throughout; new version served {seconds(recovered)} after S3 "
            f"is back; {len(partial)} partial downloads left",
        )
    )
    assert held_version == current
    assert swapped, http.get(f"{url}/health").json()
    assert load.failures() == []
    assert partial == []


def test_gateway_down_and_inference_restarted(
    stack: StackUrls,
    http: httpx.Client,
    served: dict[str, Any],
    extra_inference: ExtraInference,
    report: FaultReport,
) -> None:
    url = served["url"]
    before = serving(http, url)
    stack.mlops("stop", "model-gateway")
    try:
        began = time.monotonic()
        extra_inference.restart(PORT)
        started = time.monotonic() - began
        health = http.get(f"{url}/health").json()
        with Load(url, stack.auth, {"instances": IRIS_ROWS}) as load:
            assert wait_until(lambda: load.total >= 200, 30, 0.05)
    finally:
        stack.mlops("start", "model-gateway")
    back_at = time.monotonic()
    caught_up = wait_until(lambda: http.get(f"{url}/health").json()["status"] == "ok", 30, 0.1)
    recovered = time.monotonic() - back_at
    report.add(
        FaultRow(
            "gateway down, inference restarted",
            "`mlops stop model-gateway`, inference restarted on its cache, then the gateway back",
            load.describe(),
            failures_text(load),
            "-",
            "-",
            f"serving v{before} from its cache {seconds(started)} after the restart; "
            f"healthy again {seconds(recovered)} after the gateway is back",
        )
    )
    assert health["status"] == "degraded" and health.get("source") == "cache", health
    assert any("gateway" in reason for reason in health["degraded"]), health
    assert load.failures() == [] and set(load.versions()) == {before}
    assert caught_up, http.get(f"{url}/health").json()


# ---- orchestration -----------------------------------------------------------------------------
def test_airflow_worker_killed_mid_run(
    stack: StackUrls, http: httpx.Client, report: FaultReport
) -> None:
    if "AIRFLOW_URL" not in stack.env:
        pytest.skip("this stack runs without Airflow")
    airflow = Airflow(stack)
    name = f"fault-airflow-{uuid.uuid4().hex[:4]}"
    conf = {
        "model_name": name,
        "source": "breast_cancer",
        "dataset_name": name,
        "algorithm": "random_forest",
        "algorithm_params": {"n_estimators": 200},
    }
    airflow.http.patch("/api/v2/dags/train_and_promote", json={"is_paused": False})
    created = airflow.http.post(
        "/api/v2/dags/train_and_promote/dagRuns", json={"logical_date": None, "conf": conf}
    )
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    runs = f"/api/v2/dags/train_and_promote/dagRuns/{run_id}"
    killed_in: list[str] = []

    def task_running() -> bool:
        tis = airflow.http.get(f"{runs}/taskInstances").json()["task_instances"]
        running = [ti["task_id"] for ti in tis if ti["state"] == "running"]
        killed_in.extend(running)
        return bool(running)

    assert wait_until(task_running, 120, 0.1), "no task of the run started"
    stack.signal("airflow-worker", signal.SIGKILL)
    began = time.monotonic()
    run: dict[str, Any] = {}

    def finished() -> bool:
        run.update(airflow.http.get(runs).json())
        return run["state"] in ("success", "failed")

    assert wait_until(finished, 400, 1.0), f"run still {run.get('state')}"
    recovered = time.monotonic() - began
    jobs = http.get(f"{stack.trainer}/v1/jobs", params={"model_name": name}).json()
    versions = versions_of(http, stack, name) if jobs else []
    moves = alias_moves(http, stack, name) if versions else 0
    airflow.http.close()
    report.add(
        FaultRow(
            "Airflow Celery worker killed mid-run of `train_and_promote`",
            f"SIGKILL to the Airflow worker while `{killed_in[0]}` ran",
            "1 DAG run",
            "0" if run["state"] == "success" else f"run {run['state']}",
            "0" if run["state"] == "success" else "1",
            str(max(len(versions) - 1, 0)),
            f"run succeeded {seconds(recovered)} after the kill; {len(jobs)} training job, "
            f"{moves} alias move",
        )
    )
    assert run["state"] == "success"
    assert len(jobs) == 1 and len(versions) == 1 and moves == 1


# ---- inference shutdown -----------------------------------------------------------------------
def test_inference_sigterm_under_load(
    stack: StackUrls,
    served: dict[str, Any],
    extra_inference: ExtraInference,
    report: FaultReport,
) -> None:
    url = served["url"]
    proc: subprocess.Popen[bytes] = extra_inference.process(PORT)
    # Large requests, so several are being answered at the moment the signal arrives.
    rows = load_iris(as_frame=True).frame.drop(columns=["target"]).to_dict("records") * 20
    with Load(url, stack.auth, {"instances": rows}, connections=8, keepalive=False) as load:
        assert wait_until(lambda: load.total >= 50, 30, 0.05)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        exited = time.monotonic() - signalled
    # A request refused or reset before the server asked for its body never reached the app
    # (its listener had closed): a proxy sends it elsewhere. Every request it took is answered.
    taken = [o for o in load.outcomes if o.taken]
    in_flight = [o for o in taken if o.started < signalled < o.ended]
    before = [o for o in taken if o.started < signalled]
    http_errors = [o for o in load.outcomes if o.status is not None and o.status != 200]
    report.add(
        FaultRow(
            "inference SIGTERM under load",
            "SIGTERM to an inference process answering 3,000-row requests (a connection each)",
            f"{load.describe()}; {len(in_flight)} in flight at the signal",
            f"{sum(o.status != 200 for o in before)} of the requests it had taken; "
            f"{len(http_errors)} HTTP errors; "
            f"{sum(not o.taken for o in load.outcomes)} requests refused before it took them "
            "(listener closed)",
            "-",
            "-",
            f"exited with status {proc.returncode} {seconds(exited)} after the signal",
        )
    )
    assert proc.returncode == 0
    assert in_flight, "no request was in flight at the signal: the test proved nothing"
    assert all(o.status == 200 for o in before), [o for o in before if o.status != 200][:3]
    assert http_errors == []
