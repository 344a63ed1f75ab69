from __future__ import annotations

import shlex
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlops_stack.cli import Cli, main
from mlops_stack.components import Stack
from mlops_stack.config import Paths, StackSecrets, StackSettings, find_project_root
from mlops_stack.state import ComponentState, StackState


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_secrets_are_generated_once_and_private(home: Path) -> None:
    first = StackSecrets.load_or_create(home)
    again = StackSecrets.load_or_create(home)
    assert first == again
    assert len(first.s3_secret_key) >= 30
    assert (home / "secrets.json").stat().st_mode & 0o777 == 0o600


def test_relative_home_is_anchored_at_the_project_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    (project / "sub" / "deeper").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = []\n")
    monkeypatch.chdir(project / "sub" / "deeper")
    assert find_project_root() == project
    assert StackSettings().resolved_home() == project / ".mlops"


def test_env_prints_shell_exports_a_client_can_eval(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(home), "env"]) == 0
    exported = {}
    for line in capsys.readouterr().out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        exported[key] = shlex.split(value)[0]
    secrets = StackSecrets.load_or_create(home)
    assert exported["S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    # The local user's own S3 identity and MLflow login, never the stack's admin keys.
    assert exported["S3_SECRET_ACCESS_KEY"] == secrets.s3_user_secret_key
    assert secrets.s3_secret_key not in exported.values()
    assert exported["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert exported["MLFLOW_TRACKING_PASSWORD"] == secrets.mlflow_admin_password
    assert exported["MLOPS_TOKEN"] == secrets.token_admin
    assert exported["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5050"
    assert exported["INFERENCE_URL"] == "http://127.0.0.1:8800"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_refused_naming_the_port_and_holder(home: Path, taken_port: int) -> None:
    settings = StackSettings(home=home, redis_port=taken_port)
    cli = Cli(settings)
    stack = Stack(settings, StackSecrets.load_or_create(home), Paths(home))
    # Only our port: a stack running on this machine may hold the default ones.
    busy = [line for line in cli._busy_ports(stack) if f"port {taken_port} " in line]
    assert len(busy) == 1
    assert f"port {taken_port} (redis) is already in use" in busy[0]
    assert "pid" in busy[0]


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    state = StackState(
        supervisor_pid=42, components={"redis": ComponentState("redis", "redis://x")}
    )
    state.components["redis"].status = "healthy"
    state.write(tmp_path / "state.json")
    again = StackState.read(tmp_path / "state.json")
    assert again is not None and again.components["redis"].status == "healthy"
    assert StackState.read(tmp_path / "missing.json") is None


def test_each_component_comes_after_what_its_start_needs(home: Path) -> None:
    settings = StackSettings(home=home)
    stack = Stack(settings, StackSecrets.load_or_create(home), Paths(home))
    components = stack.components()
    names = [c.name for c in components]
    assert len(names) == 13
    for position, comp in enumerate(components):
        assert set(comp.depends_on) <= set(names[:position]), comp.name
    needs = {c.name: set(c.depends_on) for c in components}
    # Migrations: the trainer API's before its worker's, Airflow's (in airflow-api's prepare)
    # before the other Airflow parts start; the gateway's api_tokens table (and the tokens
    # stored after it is healthy) before inference asks it anything.
    assert "trainer" in needs["trainer-worker"]
    for part in ("scheduler", "dag-processor", "triggerer", "worker"):
        assert "airflow-api" in needs[f"airflow-{part}"]
    assert "model-gateway" in needs["inference"]
    assert {"postgres", "mlflow"} <= needs["model-gateway"]
    assert needs["mlflow"] == {"postgres"}
    # Side by side: nothing waits for what it does not need.
    assert not needs["postgres"] | needs["redis"] | needs["s3"]
    assert "mlflow" not in needs["trainer"] and "inference" not in needs["airflow-api"]
    mlflow = next(c for c in components if c.name == "mlflow")
    # The database password reaches MLflow by environment, not on its command line.
    assert StackSecrets.load_or_create(home).postgres_password not in " ".join(mlflow.command())


def test_the_serving_profile_runs_no_airflow(home: Path) -> None:
    settings = StackSettings(home=home, profile="serving")
    stack = Stack(settings, StackSecrets.load_or_create(home), Paths(home))
    assert set(stack.component_names()) == {
        "postgres",
        "redis",
        "s3",
        "mlflow",
        "model-gateway",
        "inference",
        # Inference serves only models the trainer's worker signed.
        "trainer",
        "trainer-worker",
    }
    assert "AIRFLOW_URL" not in stack.client_env()
    full = Stack(StackSettings(home=home), stack.secrets, stack.paths)
    assert "AIRFLOW_URL" in full.client_env()


def test_commands_follow_the_profile_of_the_stack_last_started(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = Paths(home)
    paths.make()
    StackState(supervisor_pid=1, profile="serving").write(paths.state_file)
    assert main(["--home", str(home), "env"]) == 0
    exported = capsys.readouterr().out
    assert "INFERENCE_URL" in exported and "AIRFLOW_URL" not in exported
