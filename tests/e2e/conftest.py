"""One stack per test session, started the way `mlops up` starts it (or one already running).

By default a fresh stack is started in a temporary state directory and stopped at the end.
Set E2E_STACK=external to test a running stack (local or compose) instead; its URLs and S3
credentials are then read from the environment (`eval "$(uv run mlops env)"` prints them).
The tests that kill a component need to reach what restarts it: MLOPS_HOME for a local stack
(its supervisor), or E2E_COMPOSE, the compose command line of a compose stack.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from mlops_common.http import wait_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StackUrls:
    env: dict[str, str]
    home: Path | None

    @property
    def trainer(self) -> str:
        return self.env["TRAINER_URL"]

    @property
    def gateway(self) -> str:
        return self.env["GATEWAY_URL"]

    @property
    def inference(self) -> str:
        return self.env["INFERENCE_URL"]

    @property
    def auth(self) -> dict[str, str]:
        """Headers of the local user's admin token (``MLOPS_TOKEN`` from ``mlops env``)."""
        return {"Authorization": f"Bearer {self.env['MLOPS_TOKEN']}"}

    def create_token(self, name: str, *scopes: str, models: str = "*") -> str:
        """A new token made through the gateway's token API, as an admin would."""
        response = httpx.post(
            f"{self.gateway}/v1/tokens",
            json={"name": name, "scopes": list(scopes), "models": models},
            headers=self.auth,
            timeout=10,
        )
        if response.status_code == 409:  # a rerun against the same stack
            httpx.delete(f"{self.gateway}/v1/tokens/{name}", headers=self.auth, timeout=10)
            raise AssertionError(f"token {name} existed; revoked it, run again")
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def kill(self, component: str) -> None:
        """SIGKILL one component, as a crash would; what runs the stack brings it back."""
        if self.home is not None:
            state = json.loads((self.home / "run" / "state.json").read_text())
            os.killpg(int(state["components"][component]["pid"]), signal.SIGKILL)
            return  # the supervisor restarts it
        compose = self.env.get("E2E_COMPOSE")
        if not compose:
            pytest.skip("set MLOPS_HOME (local stack) or E2E_COMPOSE (compose) to kill components")
        command = shlex.split(compose)
        subprocess.run([*command, "kill", "--signal", "SIGKILL", component], check=True)
        # Docker's restart policy does not apply to a container killed through its API, so
        # compose plays the supervisor's part here.
        subprocess.run([*command, "start", component], check=True)

    def pid(self, component: str) -> int:
        """The process (group) id of a local stack's component."""
        if self.home is None:
            pytest.skip("fault injection drives a local stack's supervisor (MLOPS_HOME)")
        state = json.loads((self.home / "run" / "state.json").read_text())
        return int(state["components"][component]["pid"])

    def signal(self, component: str, signum: int, *, group: bool = True) -> None:
        """Send ``signum`` to every process of a local stack's component, or (``group=False``)
        to its main process only, as Docker and Kubernetes deliver a stop."""
        if group:
            os.killpg(self.pid(component), signum)
        else:
            os.kill(self.pid(component), signum)

    def mlops(self, *args: str) -> None:
        """``mlops --home <stack> ARGS`` against the local stack (stop/start/restart COMPONENT)."""
        if self.home is None:
            pytest.skip("fault injection drives a local stack's supervisor (MLOPS_HOME)")
        _mlops(self.home, *args)

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.env["S3_ENDPOINT_URL"],
            aws_access_key_id=self.env["S3_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["S3_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )


def _mlops(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mlops_stack.cli", "--home", str(home), *args]
    return subprocess.run(
        cmd, cwd=ROOT, check=check, text=True, stdout=None if args[0] == "up" else subprocess.PIPE
    )


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fault injection stops, freezes and kills components: it runs after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[StackUrls]:
    if os.environ.get("E2E_STACK") == "external":
        # With MLOPS_HOME set, the restart tests can reach that local stack's supervisor state.
        home = os.environ.get("MLOPS_HOME")
        yield StackUrls(dict(os.environ), Path(home) if home else None)
        return
    # mkdtemp makes a private (0700) folder: as root (CI), this is also the test that the stack
    # starts below a directory its PostgreSQL user could not traverse on its own.
    home = Path(tempfile.mkdtemp(prefix="mlops-e2e-")) / "state"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        # Show `up`'s progress lines as they come: starting the stack takes about a minute.
        with capture.global_and_fixture_disabled():
            print()
            _mlops(home, "up")
        env = _parse_exports(_mlops(home, "env").stdout)
        env["MLOPS_HOME"] = str(home)
        yield StackUrls(env, home)
    finally:
        result = _mlops(home, "down", check=False)
        print(result.stdout)
        if os.environ.get("E2E_KEEP_STATE") != "1":
            shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_env(stack: StackUrls) -> Iterator[None]:
    """Lets the test read registered models with MLflow's own client, as a user would."""
    keys = (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    import mlflow

    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: stack.env[k] for k in keys})
    # Also the process-wide URI, which wins over the variable: anything that set one earlier in
    # this process (a unit test's own tracking store) must not redirect these calls.
    mlflow.set_tracking_uri(stack.env["MLFLOW_TRACKING_URI"])
    yield
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def http(stack: StackUrls) -> Iterator[httpx.Client]:
    """A client holding the local user's admin token."""
    with httpx.Client(timeout=30.0, headers=stack.auth) as client:
        yield client


def wait_for_job(
    http: httpx.Client, stack: StackUrls, job_id: str, timeout_s: float = 300
) -> dict[str, Any]:
    final: dict[str, Any] = {}

    def done() -> bool:
        final.update(http.get(f"{stack.trainer}/v1/jobs/{job_id}").json())
        return final["status"] in ("succeeded", "failed")

    assert wait_until(done, timeout_s, interval_s=0.5), f"job {job_id} still {final.get('status')}"
    return final


def train(
    http: httpx.Client, stack: StackUrls, body: dict[str, Any], timeout_s: float = 300
) -> dict[str, Any]:
    response = http.post(f"{stack.trainer}/v1/train", json=body)
    assert response.status_code in (200, 202), response.text
    return wait_for_job(http, stack, response.json()["job_id"], timeout_s)


class ExtraInference:
    """Inference instances of the test's own (one per model, as a team would run them).

    Called with (name, port), returns its URL once it serves; ``restart(port)`` stops it and starts
    it again with the same cache folder, as a restarted container would.
    """

    def __init__(self, stack: StackUrls) -> None:
        self._stack = stack
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._envs: dict[int, dict[str, str]] = {}

    def __call__(self, model_name: str, port: int, *, serving: bool = True) -> str:
        # A second instance on a port would fail to bind while the first one answers its checks.
        assert port not in self._procs, f"port {port} already serves another model in this session"
        token = self._stack.create_token(
            f"e2e-inference-{model_name}-{port}-{uuid.uuid4().hex[:6]}",
            "models:read",
            "tokens:introspect",
            "rollouts:abort",
            models=model_name,
        )
        self._envs[port] = {
            **os.environ,
            **self._stack.env,
            "INFERENCE_GATEWAY_TOKEN": token,
            "INFERENCE_MODEL_NAME": model_name,
            "INFERENCE_PORT": str(port),
            "INFERENCE_GATEWAY_URL": self._stack.gateway,
            "INFERENCE_POLL_INTERVAL_S": "1",
            # Their predictions are logged (the default), flushed within seconds for the tests.
            "INFERENCE_PREDICTION_LOG_ENABLED": "true",
            "INFERENCE_PREDICTION_LOG_FLUSH_INTERVAL_S": "2",
            "INFERENCE_CACHE_DIR": tempfile.mkdtemp(prefix=f"inference-{model_name}-"),
        }
        return self._launch(port, serving=serving)

    def restart(self, port: int, *, serving: bool = True) -> str:
        self._stop(port)
        return self._launch(port, serving=serving)

    def process(self, port: int) -> subprocess.Popen[bytes]:
        return self._procs[port]

    def cache_dir(self, port: int) -> Path:
        return Path(self._envs[port]["INFERENCE_CACHE_DIR"])

    def log(self, port: int) -> Path:
        return Path(tempfile.gettempdir()) / f"e2e-inference-{port}.log"

    def _launch(self, port: int, *, serving: bool) -> str:
        log = self.log(port).open("ab")
        executable = str(Path(sys.executable).parent / "inference")
        self._procs[port] = subprocess.Popen(
            [executable], env=self._envs[port], stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        # Serving is a 200; a process that refuses its model answers 503 with the reason.
        wanted = (200,) if serving else (200, 503)

        def up() -> bool:
            return httpx.get(f"{url}/health", timeout=2).status_code in wanted

        assert wait_until(up, 90), f"inference on {port} did not start; see {log.name}"
        return url

    def _stop(self, port: int) -> None:
        proc = self._procs.pop(port, None)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    def close(self) -> None:
        for port in list(self._procs):
            self._stop(port)


@pytest.fixture(scope="session")
def extra_inference(stack: StackUrls) -> Iterator[ExtraInference]:
    """Starts another inference instance (one per model, as a team would) for a named model."""
    instances = ExtraInference(stack)
    yield instances
    instances.close()
