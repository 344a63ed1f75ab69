"""The stack's components: how each starts, what it needs, and how we know it is healthy.

Order matters: each component starts only when the ones before it are healthy.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlops_stack import binaries
from mlops_stack.access import grant_path
from mlops_stack.config import Paths, StackSecrets, StackSettings

PLATFORM_DATABASES = ("airflow", "mlflow_db", "platform")
BUCKETS = ("mlflow", "data")
ERROR_TAIL_LINES = 20


class StepFailed(RuntimeError):
    """A preparation step of a component failed; the message carries the step's own output."""


def run_step(
    what: str, command: list[str], log: Path, *, tail: int = ERROR_TAIL_LINES, **kwargs: Any
) -> None:
    """Run a one-time step (initdb, a migration) with its output appended to the component's log.

    On failure the last lines of that output are in the exception's message, so whoever reads
    the error (``mlops up``, the state file) sees the tool's own explanation.
    """
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, **kwargs
    )
    output = result.stdout.decode(errors="replace").rstrip()
    with open(log, "a") as fh:
        fh.write(f"[mlops] {what}: {' '.join(command[:2])} ...\n")
        if output:
            fh.write(output + "\n")
        fh.write(f"[mlops] {what}: exit code {result.returncode}\n")
    if result.returncode != 0:
        last = "\n".join(output.splitlines()[-tail:]) or "(no output)"
        raise StepFailed(f"{what} failed with exit code {result.returncode}:\n{last}")


def note(log: Path, line: str) -> None:
    with open(log, "a") as fh:
        fh.write(f"[mlops] {line}\n")


@dataclass
class Component:
    name: str
    url: str
    ports: tuple[int, ...]
    command: Callable[[], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    healthy: Callable[[], bool] = lambda: True
    # One-time work before the process starts (initdb) and after it is healthy (databases, buckets).
    prepare: Callable[[], None] = lambda: None
    after_healthy: Callable[[], None] = lambda: None
    user: pwd.struct_passwd | None = None
    # Seconds a healthy start may take (MLflow and the trainer import heavy libraries).
    start_timeout_s: float = 90.0
    kind: str = "server"


def http_ok(url: str, accept: tuple[int, ...] = (200,)) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code in accept
        except httpx.HTTPError:
            return False

    return check


def tcp_ping_redis(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Stack:
    """Builds every component from the stack settings and the generated secrets."""

    def __init__(self, settings: StackSettings, secrets: StackSecrets, paths: Paths) -> None:
        self.settings = settings
        self.secrets = secrets
        self.paths = paths
        self.host = settings.host

    # ---- what clients need -------------------------------------------------------------
    def db_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        s = self.secrets
        return (
            f"{driver}://{s.postgres_user}:{s.postgres_password}"
            f"@{self.host}:{self.settings.postgres_port}/{database}"
        )

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.settings.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.settings.mlflow_port}"

    def service_url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def client_env(self) -> dict[str, str]:
        """What a client of the stack (a notebook, a test, a service) needs, as env variables."""
        st = self.settings
        return {
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_ACCESS_KEY_ID": self.secrets.s3_access_key,
            "S3_SECRET_ACCESS_KEY": self.secrets.s3_secret_key,
            "AWS_ACCESS_KEY_ID": self.secrets.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.secrets.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "PLATFORM_DB_URL": self.db_url("platform"),
            "TRAINER_URL": self.service_url(st.trainer_port),
            "GATEWAY_URL": self.service_url(st.gateway_port),
            "INFERENCE_URL": self.service_url(st.inference_port),
            "REDIS_URL": f"redis://{self.host}:{st.redis_port}/0",
            **(
                {
                    "AIRFLOW_URL": self.service_url(st.airflow_port),
                    "AIRFLOW_USERNAME": self.secrets.airflow_username,
                    "AIRFLOW_PASSWORD": self.secrets.airflow_password,
                }
                if st.with_airflow
                else {}
            ),
        }

    def _service_env(self) -> dict[str, str]:
        env = self.client_env()
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ---- components ----------------------------------------------------------------------
    def components(self) -> list[Component]:
        return [
            self.postgres(),
            self.redis(),
            self.s3(),
            self.mlflow(),
            self.gateway(),
            self.trainer_api(),
            self.trainer_worker(),
            self.inference(),
            *(self.airflow() if self.settings.with_airflow else []),
        ]

    def postgres(self) -> Component:
        st = self.settings
        bindir = binaries.postgres_bin_dir(st.postgres_bin_dir)
        data = self.paths.data("postgres")
        sockets = self.paths.run / "pg"
        user = binaries.unprivileged_user()

        def prepare() -> None:
            log = self.paths.log("postgres")
            sockets.mkdir(parents=True, exist_ok=True)
            data.mkdir(parents=True, exist_ok=True)
            if user:
                # As root the server runs as `user`, who must reach both folders (even below a
                # private parent such as root's home) and own them.
                for folder in grant_path(data, user) + grant_path(sockets, user):
                    note(log, f"granted {user.pw_name} search (x) on {folder} (POSIX ACL)")
                data.chmod(0o700)
                _chown_tree(sockets, user)
            if (data / "PG_VERSION").exists():
                return
            pwfile = self.paths.run / "pg.pw"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.secrets.postgres_password)
            if user:
                for path in (data, pwfile):
                    _chown_tree(path, user)
            try:
                run_step(
                    "initdb",
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(data),
                        "--username",
                        self.secrets.postgres_user,
                        "--pwfile",
                        str(pwfile),
                        "--auth",
                        "scram-sha-256",
                        "--encoding",
                        "UTF8",
                        "--no-instructions",
                    ],
                    log,
                    user=user.pw_uid if user else None,
                    group=user.pw_gid if user else None,
                )
            finally:
                pwfile.unlink(missing_ok=True)

        def healthy() -> bool:
            import psycopg2

            try:
                psycopg2.connect(
                    self.db_url("postgres").replace("+psycopg2", ""), connect_timeout=2
                ).close()
            except psycopg2.Error:
                return False
            return True

        def create_databases() -> None:
            import psycopg2

            conn = psycopg2.connect(self.db_url("postgres").replace("+psycopg2", ""))
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in PLATFORM_DATABASES:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
            conn.close()

        return Component(
            name="postgres",
            url=f"postgresql://{self.host}:{st.postgres_port}",
            ports=(st.postgres_port,),
            command=lambda: [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(st.postgres_port),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"unix_socket_directories={sockets}",
                "-c",
                "max_connections=200",
            ],
            healthy=healthy,
            prepare=prepare,
            after_healthy=create_databases,
            user=user,
        )

    def redis(self) -> Component:
        st = self.settings
        data = self.paths.data("redis")
        return Component(
            name="redis",
            url=f"redis://{self.host}:{st.redis_port}",
            ports=(st.redis_port,),
            command=lambda: [
                binaries.redis_server(st.redis_bin),
                "--bind",
                self.host,
                "--port",
                str(st.redis_port),
                "--dir",
                str(data),
                # The Celery queue lives here: an append-only file keeps queued jobs across restarts.
                "--appendonly",
                "yes",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            healthy=lambda: tcp_ping_redis(self.host, st.redis_port),
            prepare=lambda: data.mkdir(parents=True, exist_ok=True),
        )

    def s3(self) -> Component:
        st = self.settings
        data = self.paths.data("s3")
        minio = binaries.minio(st.minio_bin)
        env = {
            "AWS_ACCESS_KEY_ID": self.secrets.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.secrets.s3_secret_key,
            "MINIO_ROOT_USER": self.secrets.s3_access_key,
            "MINIO_ROOT_PASSWORD": self.secrets.s3_secret_key,
        }
        if minio:
            command = [
                minio,
                "server",
                str(data),
                "--address",
                f"{self.host}:{st.s3_port}",
                "--console-address",
                f"{self.host}:{st.s3_console_port}",
            ]
        else:
            # SeaweedFS keeps objects on disk across restarts; its admin UI stands in for the console.
            p = st.s3_port
            command = [
                binaries.seaweedfs(),
                "mini",
                f"-dir={data}",
                f"-ip={self.host}",
                f"-ip.bind={self.host}",
                f"-s3.port={p}",
                f"-s3.port.grpc={p + 10000}",
                f"-admin.port={st.s3_console_port}",
                f"-admin.port.grpc={st.s3_console_port + 10000}",
                "-admin.ui=true",
                f"-admin.user={self.secrets.s3_access_key}",
                f"-admin.password={self.secrets.s3_secret_key}",
                "-master.port=9333",
                "-master.port.grpc=19333",
                "-volume.port=9340",
                "-volume.port.grpc=19340",
                "-filer.port=8888",
                "-filer.port.grpc=18888",
                "-master.telemetry=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ]

        def healthy() -> bool:
            try:
                self._s3_client().list_buckets()
            except Exception:
                return False
            return True

        def create_buckets() -> None:
            client = self._s3_client()
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in BUCKETS:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)

        extra = () if minio else (9333, 9340, 8888)
        return Component(
            name="s3",
            url=f"{self.s3_endpoint} (console http://{self.host}:{st.s3_console_port})",
            ports=(st.s3_port, st.s3_console_port, *extra),
            command=lambda: command,
            env=env,
            healthy=healthy,
            prepare=lambda: data.mkdir(parents=True, exist_ok=True),
            after_healthy=create_buckets,
            start_timeout_s=60,
        )

    def _s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.secrets.s3_access_key,
            aws_secret_access_key=self.secrets.s3_secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )

    def mlflow(self) -> Component:
        st = self.settings
        env = {
            **self._service_env(),
            # Passed by environment so the database password never shows in `ps`.
            "MLFLOW_BACKEND_STORE_URI": self.db_url("mlflow_db"),
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow",
            # Otherwise MLflow 3 starts a job runner of several processes (about 3 GB).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        return Component(
            name="mlflow",
            url=self.mlflow_uri,
            ports=(st.mlflow_port,),
            command=lambda: [
                binaries.venv_bin("mlflow"),
                "server",
                "--host",
                self.host,
                "--port",
                str(st.mlflow_port),
                "--workers",
                "2",
            ],
            env=env,
            healthy=http_ok(f"{self.mlflow_uri}/health"),
            start_timeout_s=150,
        )

    def gateway(self) -> Component:
        st = self.settings
        url = self.service_url(st.gateway_port)
        return Component(
            name="model-gateway",
            url=url,
            ports=(st.gateway_port,),
            command=lambda: [binaries.venv_bin("model-gateway")],
            env={
                **self._service_env(),
                "GATEWAY_PORT": str(st.gateway_port),
                "GATEWAY_HOST": self.host,
                # Alias moves are published here; inference subscribes and swaps within seconds.
                "GATEWAY_REDIS_URL": f"redis://{self.host}:{st.redis_port}/0",
            },
            healthy=http_ok(f"{url}/health"),
        )

    def _trainer_env(self) -> dict[str, str]:
        st = self.settings
        return {
            **self._service_env(),
            "TRAINER_PORT": str(st.trainer_port),
            "TRAINER_HOST": self.host,
            "TRAINER_BROKER_URL": f"redis://{self.host}:{st.redis_port}/0",
            "TRAINER_GATEWAY_URL": self.service_url(st.gateway_port),
        }

    def trainer_api(self) -> Component:
        st = self.settings
        url = self.service_url(st.trainer_port)
        return Component(
            name="trainer",
            url=url,
            ports=(st.trainer_port,),
            command=lambda: [binaries.venv_bin("trainer-api")],
            env=self._trainer_env(),
            healthy=http_ok(f"{url}/health"),
        )

    def trainer_worker(self) -> Component:
        st = self.settings
        url = self.service_url(st.trainer_port)

        def healthy() -> bool:
            try:
                body = httpx.get(f"{url}/health", timeout=5.0).json()
            except (httpx.HTTPError, ValueError):
                return False
            return bool(body.get("workers"))

        return Component(
            name="trainer-worker",
            url="celery worker on redis",
            ports=(),
            command=lambda: [
                binaries.venv_bin("celery"),
                "--app",
                "trainer.worker:celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(st.trainer_workers),
                "--hostname",
                "trainer@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env=self._trainer_env(),
            healthy=healthy,
            kind="worker",
        )

    def inference(self) -> Component:
        st = self.settings
        url = self.service_url(st.inference_port)
        return Component(
            name="inference",
            url=url,
            ports=(st.inference_port,),
            command=lambda: [binaries.venv_bin("inference")],
            env={
                **self._service_env(),
                "INFERENCE_PORT": str(st.inference_port),
                "INFERENCE_HOST": self.host,
                "INFERENCE_MODEL_NAME": st.demo_model,
                "INFERENCE_GATEWAY_URL": self.service_url(st.gateway_port),
                "INFERENCE_CACHE_DIR": str(self.paths.data("inference-cache")),
                "INFERENCE_REDIS_URL": f"redis://{self.host}:{st.redis_port}/0",
            },
            # Up means answering; serving (200) needs a model, which the demo training provides.
            healthy=http_ok(f"{url}/health", accept=(200, 503)),
        )

    # ---- Airflow ---------------------------------------------------------------------------------
    def airflow_env(self) -> dict[str, str]:
        """Shared by every Airflow process: secrets come from the stack, not from Airflow's files."""
        st, sec = self.settings, self.secrets
        home = self.paths.data("airflow")
        api = self.service_url(st.airflow_port)

        def http_conn(port: int) -> str:
            return json.dumps(
                {"conn_type": "http", "host": self.host, "port": port, "schema": "http"}
            )

        return {
            **self._service_env(),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(st.resolved_dags_folder()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": sec.airflow_fernet_key,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{sec.airflow_username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.db_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{self.host}:{st.redis_port}/1",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.db_url("airflow", driver="postgresql"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(st.airflow_worker_concurrency),
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(st.airflow_port),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__SECRET_KEY": sec.airflow_api_secret_key,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": sec.airflow_jwt_secret,
            # New DAG files show up within seconds, not the default five minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(st.airflow_worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(st.airflow_trigger_log_port),
            "AIRFLOW_CONN_TRAINER_API": http_conn(st.trainer_port),
            "AIRFLOW_CONN_MODEL_GATEWAY": http_conn(st.gateway_port),
            "AIRFLOW_CONN_INFERENCE_API": http_conn(st.inference_port),
            "AIRFLOW_CONN_S3_DATA": json.dumps(
                {
                    "conn_type": "generic",
                    "login": sec.s3_access_key,
                    "password": sec.s3_secret_key,
                    "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
                }
            ),
        }

    def airflow_health(self, part: str) -> Callable[[], bool]:
        url = f"{self.service_url(self.settings.airflow_port)}/api/v2/monitor/health"

        def check() -> bool:
            try:
                body = httpx.get(url, timeout=3.0).json()
            except (httpx.HTTPError, ValueError):
                return False
            return bool(body.get(part, {}).get("status") == "healthy")

        return check

    def airflow(self) -> list[Component]:
        st = self.settings
        env = self.airflow_env()
        home = self.paths.data("airflow")
        airflow = binaries.venv_bin("airflow")

        def prepare() -> None:
            home.mkdir(parents=True, exist_ok=True)
            passwords = home / "passwords.json"
            fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({self.secrets.airflow_username: self.secrets.airflow_password}, fh)
            run_step(
                "airflow db migrate",
                [airflow, "db", "migrate"],
                self.paths.log("airflow-api"),
                env={**os.environ, **env},
                cwd=home,
            )

        def component(
            name: str, args: list[str], health: Callable[[], bool], **kw: Any
        ) -> Component:
            return Component(
                name=name,
                url=kw.pop("url", "-"),
                ports=kw.pop("ports", ()),
                command=lambda: [airflow, *args],
                env=env,
                healthy=health,
                kind="airflow",
                **kw,
            )

        api = self.service_url(st.airflow_port)
        return [
            component(
                "airflow-api",
                ["api-server", "--port", str(st.airflow_port), "--host", self.host],
                http_ok(f"{api}/api/v2/monitor/health"),
                url=api,
                ports=(st.airflow_port,),
                prepare=prepare,
                start_timeout_s=180,
            ),
            component("airflow-scheduler", ["scheduler"], self.airflow_health("scheduler")),
            component(
                "airflow-dag-processor", ["dag-processor"], self.airflow_health("dag_processor")
            ),
            component(
                "airflow-triggerer",
                ["triggerer"],
                self.airflow_health("triggerer"),
                ports=(st.airflow_trigger_log_port,),
            ),
            component(
                "airflow-worker",
                ["celery", "worker", "--concurrency", str(st.airflow_worker_concurrency)],
                lambda: _listening(self.host, st.airflow_worker_log_port),
                ports=(st.airflow_worker_log_port,),
            ),
        ]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    if path.is_dir():
        for child in path.rglob("*"):
            os.chown(child, user.pw_uid, user.pw_gid, follow_symlinks=False)
