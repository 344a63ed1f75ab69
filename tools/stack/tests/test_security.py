"""Secure by default: private files, one set of credentials per component, nothing in `ps`."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from mlops_common.signing import public_key_of
from mlops_stack.cli import main
from mlops_stack.components import Stack, acl_hash, inherited_env
from mlops_stack.config import Paths, StackSecrets, StackSettings, make_private

# Which generated secrets each component may hold (StackSecrets field names).
ALLOWED: dict[str, set[str]] = {
    "postgres": set(),
    "redis": set(),
    # SeaweedFS's internal JWT keys, for the weed process alone.
    "s3": {
        "s3_jwt_signing_key",
        "s3_jwt_signing_read_key",
        "s3_jwt_filer_signing_key",
        "s3_jwt_filer_signing_read_key",
    },
    "mlflow": {
        "postgres_password",
        "s3_mlflow_secret_key",
        "mlflow_flask_secret_key",
    },
    "model-gateway": {
        "postgres_password",
        "s3_gateway_secret_key",
        "mlflow_gateway_password",
        "redis_gateway_password",
    },
    "trainer": {
        "postgres_password",
        "s3_trainer_secret_key",
        "redis_trainer_password",
        "token_trainer",
    },
    "trainer-worker": {
        "postgres_password",
        "s3_trainer_secret_key",
        "redis_trainer_password",
        "token_trainer",
        "mlflow_trainer_password",
        "model_signing_key",
    },
    "inference": {"s3_inference_secret_key", "redis_inference_password", "token_inference"},
}
AIRFLOW_ALLOWED = {
    "postgres_password",
    "airflow_fernet_key",
    "airflow_jwt_secret",
    "airflow_api_secret_key",
    "redis_airflow_password",
    "s3_airflow_secret_key",
    "token_airflow",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    home = tmp_path / "state"
    paths = Paths(home)
    paths.make()
    return Stack(StackSettings(home=home), StackSecrets.load_or_create(home), paths)


def _secret_fields(secrets: StackSecrets) -> dict[str, str]:
    values = secrets.secret_values()
    return {name: value for name, value in vars(secrets).items() if value in values}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_component_holds_only_its_own_secrets(stack: Stack) -> None:
    secrets = _secret_fields(stack.secrets)
    for comp in stack.components():
        env_text = "\n".join(f"{k}={v}" for k, v in comp.env.items())
        held = {name for name, value in secrets.items() if value in env_text}
        allowed = AIRFLOW_ALLOWED if comp.name.startswith("airflow") else ALLOWED[comp.name]
        assert held <= allowed, f"{comp.name} holds {sorted(held - allowed)}"


def test_inference_has_no_database_nor_admin_keys(stack: Stack) -> None:
    inference = next(c for c in stack.components() if c.name == "inference")
    assert "PLATFORM_DB_URL" not in inference.env
    assert stack.secrets.s3_secret_key not in inference.env.values()
    assert inference.env["S3_ACCESS_KEY_ID"] == stack.secrets.s3_inference_access_key
    assert inference.env["INFERENCE_GATEWAY_TOKEN"] == stack.secrets.token_inference
    assert inference.env["INFERENCE_REDIS_URL"].startswith("redis://inference:")


def test_only_the_worker_signs_and_inference_trusts_the_public_keys(stack: Stack) -> None:
    comps = {c.name: c for c in stack.components()}
    sec = stack.secrets
    public = public_key_of(sec.model_signing_key)
    assert comps["trainer-worker"].env["TRAINER_SIGNING_KEY"] == sec.model_signing_key
    assert "TRAINER_SIGNING_KEY" not in comps["trainer"].env
    assert comps["inference"].env["INFERENCE_TRUSTED_SIGNING_KEYS"] == public
    assert stack.client_env()["INFERENCE_TRUSTED_SIGNING_KEYS"] == public


def test_rotating_the_signing_key_keeps_trusting_the_old_one(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    home = stack.paths.home
    before = stack.secrets
    old_public = public_key_of(before.model_signing_key)
    assert main(["--home", str(home), "signing-key", "rotate"]) == 0
    rotated = StackSecrets.load_or_create(home)
    assert rotated.model_signing_key != before.model_signing_key
    assert rotated.trusted_signing_keys == [public_key_of(rotated.model_signing_key), old_public]
    after = Stack(stack.settings, rotated, stack.paths)
    inference = next(c for c in after.components() if c.name == "inference")
    assert (
        inference.env["INFERENCE_TRUSTED_SIGNING_KEYS"].split(",") == rotated.trusted_signing_keys
    )
    out = capsys.readouterr().out
    assert "retired, still trusted" in out and rotated.model_signing_key not in out
    assert _mode(home / "secrets.json") == 0o600

    assert main(["--home", str(home), "signing-key", "retire"]) == 0
    assert StackSecrets.load_or_create(home).trusted_signing_keys == [
        public_key_of(rotated.model_signing_key)
    ]


def test_clients_get_the_urls_and_tokens_they_need(stack: Stack) -> None:
    comps = {c.name: c for c in stack.components()}
    sec = stack.secrets
    assert comps["trainer"].env["TRAINER_BROKER_URL"] == (
        f"redis://trainer:{sec.redis_trainer_password}@127.0.0.1:6379/0"
    )
    assert "MLFLOW_TRACKING_PASSWORD" not in comps["trainer"].env
    assert comps["trainer-worker"].env["MLFLOW_TRACKING_USERNAME"] == "trainer"
    assert comps["model-gateway"].env["MLFLOW_TRACKING_USERNAME"] == "model-gateway"
    assert comps["model-gateway"].env["GATEWAY_REDIS_URL"].startswith("redis://gateway:")
    airflow = comps["airflow-worker"].env
    assert airflow["AIRFLOW__CELERY__BROKER_URL"] == (
        f"redis://airflow:{sec.redis_airflow_password}@127.0.0.1:6379/1"
    )
    for conn in ("TRAINER_API", "MODEL_GATEWAY", "INFERENCE_API"):
        assert json.loads(airflow[f"AIRFLOW_CONN_{conn}"])["password"] == sec.token_airflow
    assert json.loads(airflow["AIRFLOW_CONN_S3_DATA"])["login"] == sec.s3_airflow_access_key
    mlflow = comps["mlflow"].env
    assert mlflow["AWS_ACCESS_KEY_ID"] == sec.s3_mlflow_access_key
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"


def test_no_secret_on_any_command_line(stack: Stack) -> None:
    values = stack.secrets.secret_values()
    for comp in stack.components():
        command = " ".join(comp.command())
        leaked = [v for v in values if v in command]
        assert not leaked, f"{comp.name}'s command line holds a secret"


def test_configuration_files_are_private_and_hold_no_plain_valkey_password(
    stack: Stack,
) -> None:
    comps = {c.name: c for c in stack.components()}
    for name in ("redis", "s3", "mlflow"):
        comps[name].prepare()
    sec = stack.secrets
    valkey = stack.paths.config("valkey.conf")
    text = valkey.read_text()
    for user in ("stack", "trainer", "airflow", "gateway", "inference"):
        password = getattr(sec, f"redis_{user}_password")
        assert password not in text
        assert f"user {user} on {acl_hash(password)} " in text
    assert "user default off" in text
    assert f"bind {stack.host}" in text
    identities = json.loads(stack.paths.config("s3-identities.json").read_text())["identities"]
    actions = {i["name"]: i["actions"] for i in identities}
    # Models read-only; its own logs are the only thing it may write.
    assert actions["inference"] == [
        "Read:mlflow",
        "List:mlflow",
        "Write:data/predictions/*",
        "Write:data/feedback/*",
    ]
    assert "Admin" in actions["stack"]
    assert not any("Admin" in a for n, a in actions.items() if n != "stack")
    ini = stack.paths.config("mlflow-auth.ini").read_text()
    assert "mlflow_auth" in ini and sec.mlflow_admin_password in ini
    for path in (
        valkey,
        stack.paths.config("s3-identities.json"),
        stack.paths.config("seaweedfs.options"),
        stack.paths.config("mlflow-auth.ini"),
        stack.paths.home / "secrets.json",
        *stack.paths.config("seaweedfs-tls").iterdir(),
    ):
        assert _mode(path) == 0o600, path
    assert _mode(stack.paths.home) == 0o700
    assert _mode(stack.paths.config("seaweedfs-tls")) == 0o700


def test_older_state_is_made_private(tmp_path: Path) -> None:
    home = tmp_path / "state"
    (home / "logs").mkdir(parents=True, mode=0o755)
    log = home / "logs" / "redis.log"
    log.write_text("x")
    log.chmod(0o644)
    make_private(home)
    assert _mode(log) == 0o600
    assert _mode(home / "logs") == 0o700


def test_a_shell_that_evaluated_mlops_env_does_not_leak_into_components(stack: Stack) -> None:
    environ = {**stack.client_env(), "PATH": "/usr/bin", "HOME": "/root", "GITHUB_TOKEN": "x"}
    inherited = inherited_env(environ, stack)
    assert inherited == {"PATH": "/usr/bin", "HOME": "/root"}


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Stack]:
    from mlops_stack.supervisor import Supervisor

    home = tmp_path / "state"
    paths = Paths(home)
    paths.make()
    stack = Stack(
        StackSettings(home=home, redis_port=_free_port(), profile="serving"),
        StackSecrets.load_or_create(home),
        paths,
    )
    supervisor = Supervisor.for_stack(stack, paths)
    comp = supervisor.components["redis"]
    supervisor.start(comp)
    try:
        yield stack
    finally:
        supervisor.stop_one(comp)


def test_valkey_refuses_anonymous_clients_and_limits_each_user(valkey: Stack) -> None:
    port = valkey.settings.redis_port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    trainer = redis.Redis.from_url(valkey.redis_url("trainer"))
    trainer.lpush("celery", "job")
    with pytest.raises(redis.exceptions.NoPermissionError):
        trainer.keys("*")
    gateway = redis.Redis.from_url(valkey.redis_url("gateway"))
    assert gateway.ping()
    gateway.publish("mlops:alias-moves", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        gateway.publish("other", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        gateway.get("celery")
    inference = redis.Redis.from_url(valkey.redis_url("inference"))
    pubsub = inference.pubsub()
    pubsub.subscribe("mlops:alias-moves")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
    gateway.publish("mlops:alias-moves", "moved")
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"moved"
    with pytest.raises(redis.exceptions.NoPermissionError):
        inference.publish("mlops:alias-moves", "forged")
    pubsub.close()
    # The password is in no process's command line.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert valkey.secrets.redis_stack_password.encode() not in cmdline
