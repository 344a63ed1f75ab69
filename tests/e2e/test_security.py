"""Secure by default, against the real stack: what an attacker with a network path meets.

Tokens per service and scope, model patterns, revocation, the audit actor, MLflow's login,
Valkey's passwords, inference's read-only S3 key, and (local stack) no secret on a command line,
in a process environment that does not need it, in a log, or in a file others may read.
docs/security.md says which test proves what.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from botocore.exceptions import ClientError
from mlops_common.http import wait_until

from .conftest import ROOT, StackUrls

pytestmark = pytest.mark.e2e

SCOPES = ("train", "jobs:read", "models:read", "models:promote", "predict", "admin")
REVOCATION_S = 10.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_text(response: httpx.Response) -> str:
    """The error's field and message; V2 (Open Inference Protocol) errors are one string."""
    error = response.json()["error"]
    if isinstance(error, str):
        return error
    return f"{error.get('field')}: {error['message']}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tokens(stack: StackUrls) -> Iterator[dict[str, str]]:
    """One token per scope (every model), made through the gateway's token API; revoked after."""
    made = {
        scope: stack.create_token(unique(f"e2e-sec-{scope.replace(':', '-')}"), scope)
        for scope in SCOPES
    }
    yield made
    for listing in httpx.get(f"{stack.gateway}/v1/tokens", headers=stack.auth).json()["tokens"]:
        if listing["name"].startswith("e2e-sec-") and listing["active"]:
            httpx.delete(f"{stack.gateway}/v1/tokens/{listing['name']}", headers=stack.auth)


@pytest.fixture(scope="module")
def champion(stack: StackUrls) -> int:
    response = httpx.get(f"{stack.gateway}/v1/models/demo/aliases/champion", headers=stack.auth)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def _requests(stack: StackUrls, champion: int) -> list[tuple[str, str, str, Any, tuple[int, ...]]]:
    """(scope needed, method, url, body, statuses that mean "let in")."""
    row = {"instances": [[0.0] * 30]}
    return [
        # A body the trainer refuses (unknown data set): 422 proves the token was let in, and
        # nothing trains.
        (
            "train",
            "POST",
            f"{stack.trainer}/v1/train",
            {"model_name": "e2e-sec", "dataset": {"builtin": "nope"}},
            (422,),
        ),
        ("jobs:read", "GET", f"{stack.trainer}/v1/jobs?limit=1", None, (200,)),
        ("models:read", "GET", f"{stack.gateway}/v1/models/demo", None, (200,)),
        ("models:read", "GET", f"{stack.gateway}/v1/models/demo/aliases/champion", None, (200,)),
        (
            "models:promote",
            "PUT",
            f"{stack.gateway}/v1/models/demo/aliases/e2e-security",
            {"version": champion},
            (200,),
        ),
        ("admin", "GET", f"{stack.gateway}/v1/tokens", None, (200,)),
        ("predict", "POST", f"{stack.inference}/predict", row, (200,)),
        ("predict", "GET", f"{stack.inference}/model-info", None, (200,)),
        ("predict", "GET", f"{stack.inference}/v2/models/demo", None, (200,)),
    ]


def test_every_endpoint_refuses_missing_and_invalid_tokens(stack: StackUrls, champion: int) -> None:
    for _scope, method, url, body, _ok in _requests(stack, champion):
        for headers in (
            {},
            bearer("mlops_" + "0" * 43),
            {"Authorization": "Basic YWRtaW46YWRtaW4="},
        ):
            response = httpx.request(method, url, json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (method, url, headers, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), url
            assert error_text(response).startswith("Authorization: "), url


def test_each_scope_opens_its_endpoints_and_no_other(
    stack: StackUrls, tokens: dict[str, str], champion: int
) -> None:
    for needed, method, url, body, ok in _requests(stack, champion):
        for scope, token in tokens.items():
            response = httpx.request(method, url, json=body, headers=bearer(token), timeout=10)
            if scope in (needed, "admin"):
                assert response.status_code in ok, (scope, method, url, response.text)
            else:
                assert response.status_code == 403, (scope, method, url, response.text)
                assert needed in error_text(response), url


def test_probes_and_metrics_stay_open(stack: StackUrls) -> None:
    for url in (stack.trainer, stack.gateway, stack.inference):
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200, url
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200, url
    assert httpx.get(f"{stack.inference}/v2/health/ready", timeout=10).status_code == 200


def test_a_token_limited_to_a_model_pattern_cannot_touch_other_models(
    stack: StackUrls, champion: int
) -> None:
    token = stack.create_token(
        unique("e2e-sec-churn-team"),
        "models:read",
        "models:promote",
        "train",
        "jobs:read",
        "predict",
        models="e2e-sec-churn*",
    )
    moved = httpx.put(
        f"{stack.gateway}/v1/models/demo/aliases/champion",
        json={"version": champion},
        headers=bearer(token),
    )
    trained = httpx.post(
        f"{stack.trainer}/v1/train",
        json={"model_name": "demo", "dataset": {"builtin": "iris"}},
        headers=bearer(token),
    )
    predicted = httpx.get(f"{stack.inference}/model-info", headers=bearer(token))
    jobs = httpx.get(f"{stack.trainer}/v1/jobs?limit=500", headers=bearer(token))

    assert moved.status_code == 403 and "'demo'" in moved.json()["error"]["message"]
    assert trained.status_code == 403
    assert predicted.status_code == 403
    assert jobs.status_code == 200
    assert all(job["model_name"].startswith("e2e-sec-churn") for job in jobs.json())
    current = httpx.get(f"{stack.gateway}/v1/models/demo/aliases/champion", headers=stack.auth)
    assert current.json()["version"] == champion


def test_a_revoked_token_stops_working_everywhere_within_ten_seconds(stack: StackUrls) -> None:
    name = unique("e2e-sec-revoked")
    token = stack.create_token(name, "predict", "jobs:read", "models:read")
    urls = [
        f"{stack.trainer}/v1/jobs?limit=1",
        f"{stack.gateway}/v1/models/demo",
        f"{stack.inference}/model-info",
    ]
    for url in urls:
        assert httpx.get(url, headers=bearer(token), timeout=10).status_code == 200, url

    assert httpx.delete(f"{stack.gateway}/v1/tokens/{name}", headers=stack.auth).status_code == 200

    for url in urls:
        assert wait_until(
            lambda u=url: httpx.get(u, headers=bearer(token), timeout=5).status_code == 401,
            REVOCATION_S,
            0.25,
        ), f"{url} still accepts the revoked token after {REVOCATION_S:.0f}s"


def test_the_audit_names_the_token_not_a_forged_actor(stack: StackUrls, champion: int) -> None:
    name = unique("e2e-sec-promoter")
    token = stack.create_token(name, "models:promote", models="demo")
    moved = httpx.put(
        f"{stack.gateway}/v1/models/demo/aliases/e2e-audit",
        json={"version": champion, "reason": "forged actor"},
        headers={**bearer(token), "X-Actor": "admin"},
    )
    assert moved.status_code == 200, moved.text
    history = httpx.get(
        f"{stack.gateway}/v1/models/demo/aliases/e2e-audit/history", headers=stack.auth
    ).json()["records"]
    mine = [r for r in history if r["actor"] == name]
    assert mine and mine[0]["on_behalf_of"] == "admin"
    assert all(r["actor"] != "admin" for r in history)


def test_mlflow_asks_for_a_login(stack: StackUrls) -> None:
    url = stack.env["MLFLOW_TRACKING_URI"]
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    anonymous = httpx.get(api, timeout=10)
    wrong = httpx.get(api, auth=(stack.env["MLFLOW_TRACKING_USERNAME"], "not-it"), timeout=10)
    ui = httpx.get(f"{url}/", timeout=10)
    right = httpx.get(
        api,
        auth=(stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"]),
        timeout=10,
    )
    assert (anonymous.status_code, wrong.status_code, ui.status_code) == (401, 401, 401)
    assert ui.headers["WWW-Authenticate"].lower().startswith("basic")
    assert right.status_code == 200


def _redis_address(stack: StackUrls) -> tuple[str, int]:
    url = httpx.URL(stack.env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return url.host, url.port or 6379


def test_the_broker_refuses_anonymous_clients(stack: StackUrls) -> None:
    host, port = _redis_address(stack)
    client = redis.Redis(host=host, port=port, socket_timeout=5)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.get("_kombu.binding.celery")
        with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
            client.execute_command("AUTH", "default", "guess")
    finally:
        client.close()


def test_the_local_broker_is_valkey_not_end_of_life_redis(stack: StackUrls) -> None:
    pid = _component_pids(_home(stack))["redis"]
    assert Path(f"/proc/{pid}/exe").resolve().name == "valkey-server"


def _inference_s3_credentials(stack: StackUrls) -> tuple[str, str]:
    if "E2E_INFERENCE_S3_ACCESS_KEY_ID" in stack.env:
        return stack.env["E2E_INFERENCE_S3_ACCESS_KEY_ID"], stack.env[
            "E2E_INFERENCE_S3_SECRET_ACCESS_KEY"
        ]
    environ = _process_environ(stack, "inference")
    return environ["S3_ACCESS_KEY_ID"], environ["S3_SECRET_ACCESS_KEY"]


def test_inference_s3_key_can_read_models_but_not_write_or_delete(stack: StackUrls) -> None:
    key, secret = _inference_s3_credentials(stack)
    assert key != stack.env["S3_ACCESS_KEY_ID"], "inference must not use the user's S3 key"
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["S3_ENDPOINT_URL"],
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )
    served = httpx.get(f"{stack.inference}/model-info", headers=stack.auth).json()["artifact_uri"]
    bucket, _, prefix = served.removeprefix("s3://").partition("/")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    some_key = listed["Contents"][0]["Key"]
    assert s3.get_object(Bucket=bucket, Key=some_key)["Body"].read() is not None

    for attempt in (
        lambda: s3.put_object(Bucket=bucket, Key=f"{prefix}/planted.txt", Body=b"x"),
        lambda: s3.delete_object(Bucket=bucket, Key=some_key),
        lambda: s3.put_object(Bucket="data", Key="e2e/planted.txt", Body=b"x"),
        lambda: s3.create_bucket(Bucket=unique("e2e-sec-bucket")),
    ):
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["Error"]["Code"] in ("AccessDenied", "Forbidden", "403")
    # Still there, unchanged.
    assert s3.head_object(Bucket=bucket, Key=some_key)["ContentLength"] >= 0


# ---- local stack only: processes, environments, files and logs ------------------------------------
def _home(stack: StackUrls) -> Path:
    if stack.home is None:
        pytest.skip("a local stack's state directory is needed (MLOPS_HOME)")
    return stack.home


def _secrets(home: Path) -> list[str]:
    """Every generated secret of the stack (values of secrets.json long enough to be one)."""
    stored: dict[str, Any] = json.loads((home / "secrets.json").read_text())
    values = [str(v) for v in _leaves(stored)]
    return [v for v in values if len(v) >= 12]


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _component_pids(home: Path) -> dict[str, int]:
    state = json.loads((home / "run" / "state.json").read_text())
    return {name: int(c["pid"]) for name, c in state["components"].items() if c.get("pid")}


def _process_environ(stack: StackUrls, component: str) -> dict[str, str]:
    pid = _component_pids(_home(stack))[component]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
    )


def test_no_secret_on_any_command_line(stack: StackUrls) -> None:
    secrets = _secrets(_home(stack))
    assert len(secrets) >= 10
    leaks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        leaks += [f"pid {proc.name}: {cmdline[:80]}" for s in secrets if s in cmdline]
    assert leaks == []


def test_each_service_environment_holds_only_what_it_needs(stack: StackUrls) -> None:
    home = _home(stack)
    secrets = json.loads((home / "secrets.json").read_text())
    inference = _process_environ(stack, "inference")
    assert "PLATFORM_DB_URL" not in inference
    assert not any("AIRFLOW" in key for key in inference)
    joined = "\n".join(inference.values())
    assert secrets["postgres_password"] not in joined
    # Not the user's key nor any other identity's: its own, read-only one.
    assert inference["S3_ACCESS_KEY_ID"] != stack.env["S3_ACCESS_KEY_ID"]
    gateway = _process_environ(stack, "model-gateway")
    assert "AIRFLOW_PASSWORD" not in gateway and "TRAINER_GATEWAY_TOKEN" not in gateway


def test_no_secret_in_a_file_others_can_read_or_in_a_log(stack: StackUrls) -> None:
    home = _home(stack)
    secrets = _secrets(home)
    assert home.stat().st_mode & 0o044 == 0, "the state directory is readable by others"
    exposed, logged = [], []
    for path in home.rglob("*"):
        if not path.is_file() or path.is_symlink() or "postgres" in path.relative_to(home).parts:
            continue
        try:
            if path.stat().st_size > 4 * 1024 * 1024:
                continue
            text = path.read_bytes().decode(errors="replace")
        except OSError:
            continue
        found = [s for s in secrets if s in text]
        if found and path.stat().st_mode & 0o077:
            exposed.append(f"{path} ({path.stat().st_mode & 0o777:o})")
        if found and path.suffix == ".log":
            logged.append(str(path))
    assert exposed == []
    assert logged == []


def test_mlops_token_cli_creates_lists_and_revokes(stack: StackUrls) -> None:
    home = _home(stack)
    name = unique("e2e-sec-cli")

    def mlops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mlops_stack.cli", "--home", str(home), "token", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = mlops("create", name, "--scope", "predict", "--models", "demo", "--expires", "1d")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert re.fullmatch(r"mlops_[A-Za-z0-9_-]{43}", token), created.stdout
    assert httpx.get(f"{stack.inference}/model-info", headers=bearer(token)).status_code == 200

    listing = mlops("list")
    assert name in listing.stdout and token not in listing.stdout + listing.stderr

    assert mlops("revoke", name).returncode == 0
    assert wait_until(
        lambda: (
            httpx.get(f"{stack.inference}/model-info", headers=bearer(token)).status_code == 401
        ),
        REVOCATION_S,
        0.25,
    )
