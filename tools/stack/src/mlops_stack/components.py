"""The stack's components: how each starts, what it needs, and how we know it is healthy.

Each component names the components that must be healthy before it starts (``depends_on``);
the supervisor starts it as soon as they are. A dependency is what the start itself needs (a
database, a schema another component migrates, a broker, what its health probe asks), not
what a request needs later: the trainer's jobs need MLflow and the gateway, its start does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import httpx
from mlops_common.auth import TokenStore

from mlops_stack import binaries
from mlops_stack.access import grant_path
from mlops_stack.config import Paths, StackSecrets, StackSettings, write_private

PLATFORM_DATABASES = ("airflow", "mlflow_db", "mlflow_auth", "platform")
BUCKETS = ("mlflow", "data")
ERROR_TAIL_LINES = 20
# Where the gateway publishes alias moves and inference listens (the only channel either may use).
ALIAS_CHANNEL = "mlops:alias-moves"
# MLflow's own users of the platform's services (the local user is MLflow's admin).
MLFLOW_ADMIN = "admin"
MLFLOW_TRAINER = "trainer"
MLFLOW_GATEWAY = "model-gateway"
# What each MLflow user may do beyond the default READ (user, resource type, pattern, permission):
# the trainer writes runs and model versions into experiments and models others may have
# created; the gateway moves aliases (EDIT; deleting an alias or a model needs MANAGE).
MLFLOW_GRANTS = (
    (MLFLOW_TRAINER, "experiment", "*", "EDIT"),
    (MLFLOW_TRAINER, "registered_model", "*", "EDIT"),
    (MLFLOW_GATEWAY, "registered_model", "*", "EDIT"),
)
# What the profiles run (each with everything it depends on; None: every component).
# Serving: inference, and the trainer with its worker because inference serves only models the
# worker signed (the demo model among them); Airflow's five processes are left out.
SERVING = ("inference", "trainer-worker")
PROFILES: dict[str, tuple[str, ...] | None] = {"full": None, "serving": SERVING}
# Python writes no bytecode cache where PYTHONDONTWRITEBYTECODE is set (in many shells and
# images): every start would then compile each imported module of MLflow, Airflow, scikit-learn
# again, several CPU seconds per process. The stack's Python processes always cache it.
PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": ""}
# The platform's own API tokens: name -> scopes.
SERVICE_TOKENS: dict[str, tuple[str, ...]] = {
    "admin": ("admin",),
    "trainer": ("models:read", "models:promote"),
    "inference": ("models:read", "tokens:introspect", "rollouts:abort"),
    "airflow": ("train", "jobs:read", "models:read", "models:promote", "predict"),
}


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
    # Components that must be healthy (their after_healthy done) before this one starts.
    depends_on: tuple[str, ...] = ()
    user: pwd.struct_passwd | None = None
    # Seconds a healthy start may take (MLflow and the trainer import heavy libraries).
    start_timeout_s: float = 90.0
    # What asks it to stop cleanly (PostgreSQL's SIGTERM would wait for every client to leave).
    stop_signal: int = signal.SIGTERM


def with_dependencies(components: Mapping[str, Component], names: Iterable[str]) -> set[str]:
    """``names`` and every component they depend on, directly or not."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(components[name].depends_on)
    return found


def http_get(url: str, timeout_s: float = 2.0) -> Callable[[], httpx.Response | None]:
    """A probe's GET of ``url`` (None when it cannot be reached).

    One keep-alive client per probe, made on first use: probes run several times a second, and
    a new client per request costs more CPU than the request itself.
    """
    client: httpx.Client | None = None

    def get() -> httpx.Response | None:
        nonlocal client
        if client is None:
            client = httpx.Client(timeout=timeout_s)
        try:
            return client.get(url)
        except httpx.HTTPError:
            return None

    return get


def http_ok(url: str, accept: tuple[int, ...] = (200,)) -> Callable[[], bool]:
    get = http_get(url)

    def check() -> bool:
        response = get()
        return response is not None and response.status_code in accept

    return check


def json_probe(url: str, passes: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
    """Healthy when ``url`` answers with a JSON object that ``passes``."""
    get = http_get(url, timeout_s=5.0)

    def check() -> bool:
        response = get()
        try:
            body = response.json() if response is not None else None
        except ValueError:
            return False
        return isinstance(body, dict) and passes(body)

    return check


def _resp(*args: str) -> bytes:
    """One command in the Redis protocol (binary safe: any password goes through as it is)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def redis_auth_ping(host: str, port: int, user: str, password: str) -> bool:
    """AUTH as ``user`` then PING: true only when both succeed."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(_resp("AUTH", user, password) + _resp("PING"))
            reply = b""
            deadline = time.monotonic() + 2.0
            while reply.count(b"\r\n") < 2 and time.monotonic() < deadline:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+OK\r\n+PONG")
    except OSError:
        return False


def acl_hash(password: str) -> str:
    """How a Valkey ACL file stores a password: ``#`` and its SHA-256 in hex."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


@dataclass(frozen=True)
class S3Identity:
    """An S3 access key pair and what SeaweedFS lets it do (``Action`` or ``Action:bucket``)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


# SeaweedFS's gRPC mutual TLS: every [grpc.*] section of security.toml gets the one certificate
# (SeaweedFS checks no host names), issued by a CA made for this stack.
SEAWEEDFS_GRPC_SECTIONS = (
    "master",
    "volume",
    "filer",
    "s3",
    "admin",
    "worker",
    "msg_broker",
    "msg_agent",
    "mq",
    "client",
)
GRPC_CA_FILE = "ca.crt"
GRPC_CERT_FILE = "weed.crt"
GRPC_KEY_FILE = "weed.key"
GRPC_CERT_DAYS = 3650
GRPC_RENEW_DAYS = 30


def ensure_grpc_tls(folder: Path) -> bool:
    """Make the CA certificate and weed's key and certificate when missing or about to expire.

    The CA's own key is only used to sign here and is never stored: no one can issue another
    certificate the servers would accept. Returns whether new files were made.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_path, cert_path, key_path = (
        folder / GRPC_CA_FILE,
        folder / GRPC_CERT_FILE,
        folder / GRPC_KEY_FILE,
    )
    now = datetime.datetime.now(datetime.UTC)
    if ca_path.exists() and key_path.exists() and cert_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.not_valid_after_utc > now + datetime.timedelta(days=GRPC_RENEW_DAYS):
                return False
        except ValueError:
            pass  # unreadable: made again below
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=GRPC_CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlops stack SeaweedFS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    write_private(key_path, key_pem)
    write_private(cert_path, cert.public_bytes(pem).decode())
    write_private(ca_path, ca.public_bytes(pem).decode())
    return True


def _rwl(*buckets: str, write: bool = True) -> tuple[str, ...]:
    kinds = ("Read", "Write", "List") if write else ("Read", "List")
    return tuple(f"{kind}:{bucket}" for bucket in buckets for kind in kinds)


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

    # ---- credentials, one set per component --------------------------------------------
    def redis_url(self, user: str, db: int = 0) -> str:
        password = getattr(self.secrets, f"redis_{user}_password")
        return f"redis://{user}:{password}@{self.host}:{self.settings.redis_port}/{db}"

    @property
    def uses_minio(self) -> bool:
        return binaries.minio(self.settings.minio_bin) is not None

    def s3_identities(self) -> dict[str, S3Identity]:
        """Who may do what in the object store (SeaweedFS enforces these per request)."""
        sec = self.secrets

        def ident(name: str, actions: tuple[str, ...]) -> S3Identity:
            return S3Identity(
                name,
                getattr(sec, f"s3_{name}_access_key"),
                getattr(sec, f"s3_{name}_secret_key"),
                actions,
            )

        return {
            # Bucket creation and health probes: only the stack holds this identity.
            "stack": S3Identity(
                "stack",
                sec.s3_access_key,
                sec.s3_secret_key,
                ("Admin", "Read", "Write", "List", "Tagging"),
            ),
            # The MLflow server proxies every artifact upload and download.
            "mlflow": ident("mlflow", _rwl("mlflow")),
            "trainer": ident("trainer", _rwl("data", write=False) + _rwl("mlflow")),
            "gateway": ident("gateway", _rwl("mlflow", write=False)),
            # Reads models; writes only its prediction log and the feedback beside it.
            "inference": ident(
                "inference",
                (*_rwl("mlflow", write=False), "Write:data/predictions/*", "Write:data/feedback/*"),
            ),
            "airflow": ident("airflow", _rwl("data")),
            # The local user (`mlops env`): everything in both buckets, no bucket administration.
            "user": ident("user", _rwl("data", "mlflow")),
        }

    def s3_identity(self, name: str) -> S3Identity:
        if self.uses_minio:
            # MinIO users are made with `mc admin user add`, which this stack does not ship:
            # with a MinIO binary every client uses its root identity.
            return self.s3_identities()["stack"]
        return self.s3_identities()[name]

    def s3_env(self, identity: str, *, aws: bool = False) -> dict[str, str]:
        ident = self.s3_identity(identity)
        env = {
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_ACCESS_KEY_ID": ident.access_key,
            "S3_SECRET_ACCESS_KEY": ident.secret_key,
        }
        if aws:
            # boto3's own variables, for MLflow (its S3 artifact repository reads these).
            env |= {
                "AWS_ACCESS_KEY_ID": ident.access_key,
                "AWS_SECRET_ACCESS_KEY": ident.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            }
        return env

    def mlflow_client_env(self, user: str, password: str) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
        }

    def client_env(self) -> dict[str, str]:
        """What the local user (a notebook, a test, `mlops env`) needs, as env variables."""
        st, sec = self.settings, self.secrets
        return {
            **self.s3_env("user", aws=True),
            **self.mlflow_client_env(MLFLOW_ADMIN, sec.mlflow_admin_password),
            "PLATFORM_DB_URL": self.db_url("platform"),
            "TRAINER_URL": self.service_url(st.trainer_port),
            "GATEWAY_URL": self.service_url(st.gateway_port),
            "INFERENCE_URL": self.service_url(st.inference_port),
            # The local user's API token (scope admin) for the services' APIs.
            "MLOPS_TOKEN": sec.token_admin,
            # Public: what an inference server of one's own needs to trust the platform's models.
            "INFERENCE_TRUSTED_SIGNING_KEYS": ",".join(sec.trusted_signing_keys),
            **(
                {
                    "AIRFLOW_URL": self.service_url(st.airflow_port),
                    "AIRFLOW_USERNAME": sec.airflow_username,
                    "AIRFLOW_PASSWORD": sec.airflow_password,
                }
                if "airflow-api" in self.component_names()
                else {}
            ),
        }

    @staticmethod
    def _base_env() -> dict[str, str]:
        # Components get only their own credentials: nothing of `mlops env` is passed on.
        return dict(PYTHON_ENV)

    # ---- components ----------------------------------------------------------------------
    def all_components(self) -> dict[str, Component]:
        """Every component of the platform, whatever the profile."""
        every = [
            self.postgres(),
            self.redis(),
            self.s3(),
            self.mlflow(),
            self.gateway(),
            self.trainer_api(),
            self.trainer_worker(),
            self.inference(),
            *self.airflow(),
        ]
        return {c.name: c for c in every}

    def components(self) -> list[Component]:
        """The profile's components, each after those it depends on."""
        every = self.all_components()
        goals = PROFILES[self.settings.profile]
        wanted = with_dependencies(every, goals) if goals else set(every)
        graph = {name: every[name].depends_on for name in every if name in wanted}
        return [every[name] for name in TopologicalSorter(graph).static_order()]

    def component_names(self) -> list[str]:
        return [c.name for c in self.components()]

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
            # Fast shutdown: clients are disconnected, the data is left consistent.
            stop_signal=signal.SIGINT,
        )

    # ---- Valkey ----------------------------------------------------------------------------------
    def valkey_config(self) -> str:
        """valkey.conf: every setting, and the ACL users with only their passwords' SHA-256."""
        st, sec = self.settings, self.secrets
        client = "+client|setinfo +client|setname"
        lines = [
            f"bind {self.host}",
            f"port {st.redis_port}",
            f"dir {self.paths.data('redis')}",
            # The Celery queues live here: an append-only file keeps queued jobs across restarts.
            "appendonly yes",
            "protected-mode yes",
            "daemonize no",
            # Anonymous clients get NOAUTH; each client has its own user.
            "user default off resetpass resetkeys resetchannels -@all",
            f"user stack on {acl_hash(sec.redis_stack_password)} ~* &* +@all",
            # Celery brokers (db 0: trainer, db 1: Airflow); no KEYS/CONFIG/DEBUG/FLUSHALL...
            f"user trainer on {acl_hash(sec.redis_trainer_password)} ~* &* +@all -@dangerous",
            f"user airflow on {acl_hash(sec.redis_airflow_password)} ~* &* +@all -@dangerous",
            # Alias moves: the gateway may only publish on their channel, inference only listen.
            f"user gateway on {acl_hash(sec.redis_gateway_password)} resetkeys resetchannels "
            f"&{ALIAS_CHANNEL} -@all +publish +ping {client}",
            f"user inference on {acl_hash(sec.redis_inference_password)} resetkeys resetchannels "
            f"&{ALIAS_CHANNEL} -@all +subscribe +unsubscribe +ping {client}",
        ]
        return "\n".join(lines) + "\n"

    def redis(self) -> Component:
        st = self.settings
        data = self.paths.data("redis")
        conf = self.paths.config("valkey.conf")

        def prepare() -> None:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Rewritten on every start: a changed secrets.json takes effect with the next `up`.
            write_private(conf, self.valkey_config())

        return Component(
            name="redis",
            url=f"redis://{self.host}:{st.redis_port}",
            ports=(st.redis_port,),
            # Nothing but the configuration file on the command line.
            command=lambda: [binaries.redis_server(st.redis_bin), str(conf)],
            env=self._base_env(),
            healthy=lambda: redis_auth_ping(
                self.host, st.redis_port, "stack", self.secrets.redis_stack_password
            ),
            prepare=prepare,
        )

    # ---- S3 --------------------------------------------------------------------------------------
    def seaweedfs_identities(self) -> str:
        """The -s3.config file: every identity with its keys and allowed actions."""
        return json.dumps(
            {
                "identities": [
                    {
                        "name": ident.name,
                        "credentials": [
                            {"accessKey": ident.access_key, "secretKey": ident.secret_key}
                        ],
                        "actions": list(ident.actions),
                    }
                    for ident in self.s3_identities().values()
                ]
            },
            indent=2,
        )

    def seaweedfs_options(self) -> str:
        """The -options file: what must not be on the command line (the admin UI's login)."""
        return f"admin.user=admin\nadmin.password={self.secrets.s3_console_password}\n"

    def seaweedfs_security_env(self, tls: Path) -> dict[str, str]:
        """security.toml as WEED_* variables: locks SeaweedFS's inner servers.

        Besides the S3 API, ``weed mini`` runs a master, a volume server and a filer with HTTP
        and gRPC ports of their own, which know nothing of the S3 identities. JWTs signed with
        these keys guard the volume server's HTTP (the master signs every write and read) and the
        filer's HTTP; every gRPC port requires a client certificate of the stack's private CA
        (mutual TLS), which only the weed process holds.
        """
        sec = self.secrets
        env = {
            "WEED_JWT_SIGNING_KEY": sec.s3_jwt_signing_key,
            "WEED_JWT_SIGNING_READ_KEY": sec.s3_jwt_signing_read_key,
            "WEED_JWT_FILER_SIGNING_KEY": sec.s3_jwt_filer_signing_key,
            "WEED_JWT_FILER_SIGNING_READ_KEY": sec.s3_jwt_filer_signing_read_key,
            # No volume server UI, and no directory listings from the filer.
            "WEED_ACCESS_UI": "false",
            "WEED_FILER_EXPOSE_DIRECTORY_METADATA_ENABLED": "false",
            "WEED_GRPC_CA": str(tls / GRPC_CA_FILE),
        }
        for section in SEAWEEDFS_GRPC_SECTIONS:
            env[f"WEED_GRPC_{section.upper()}_CERT"] = str(tls / GRPC_CERT_FILE)
            env[f"WEED_GRPC_{section.upper()}_KEY"] = str(tls / GRPC_KEY_FILE)
        return env

    def s3(self) -> Component:
        st = self.settings
        data = self.paths.data("s3")
        minio = binaries.minio(st.minio_bin)
        identities = self.paths.config("s3-identities.json")
        options = self.paths.config("seaweedfs.options")
        # Its local sockets live with the stack's state, not in the shared /tmp.
        sockets = (self.paths.run / "seaweedfs-s3.sock", self.paths.run / "seaweedfs-filer.sock")
        tls = self.paths.config("seaweedfs-tls")
        env = self._base_env()
        if minio:
            env |= {
                "MINIO_ROOT_USER": self.secrets.s3_access_key,
                "MINIO_ROOT_PASSWORD": self.secrets.s3_secret_key,
            }
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
            env |= self.seaweedfs_security_env(tls)
            command = [
                binaries.seaweedfs(),
                "mini",
                f"-options={options}",
                f"-s3.config={identities}",
                f"-dir={data}",
                f"-ip={self.host}",
                f"-ip.bind={self.host}",
                f"-s3.port={p}",
                f"-s3.port.grpc={p + 10000}",
                f"-s3.localSocket={sockets[0]}",
                f"-filer.localSocket={sockets[1]}",
                f"-admin.port={st.s3_console_port}",
                f"-admin.port.grpc={st.s3_console_port + 10000}",
                "-admin.ui=true",
                f"-master.port={st.s3_master_port}",
                f"-master.port.grpc={st.s3_master_port + 10000}",
                f"-volume.port={st.s3_volume_port}",
                f"-volume.port.grpc={st.s3_volume_port + 10000}",
                f"-filer.port={st.s3_filer_port}",
                f"-filer.port.grpc={st.s3_filer_port + 10000}",
                # The master's and the filer's HTTP APIs take no JWT for much (the master's hands
                # out volume JWTs and deletes collections): off. The S3 gateway and the admin UI
                # use gRPC; the volume server's HTTP (the data path) checks the master's JWTs.
                "-disableHttp",
                "-filer.exposeDirectoryData=false",
                "-master.telemetry=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ]

        def prepare() -> None:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not minio:
                write_private(identities, self.seaweedfs_identities())
                write_private(options, self.seaweedfs_options())
                ensure_grpc_tls(tls)
                for sock in sockets:  # left by a previous run
                    sock.unlink(missing_ok=True)

        client: Any = None

        def healthy() -> bool:
            nonlocal client
            try:
                # One client for every probe: making one costs more than the request.
                client = client or self._s3_client()
                client.list_buckets()
            except Exception:
                return False
            return True

        def create_buckets() -> None:
            client = self._s3_client()
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in BUCKETS:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)

        extra: tuple[int, ...] = ()
        if not minio:
            inner = (st.s3_master_port, st.s3_volume_port, st.s3_filer_port)
            # gRPC: the inner servers', the S3 gateway's and the admin UI's (its worker always
            # dials the admin UI's port + 10000).
            grpc = (*inner, st.s3_port, st.s3_console_port)
            extra = (*inner, *(port + 10000 for port in grpc))
        return Component(
            name="s3",
            url=f"{self.s3_endpoint} (console http://{self.host}:{st.s3_console_port})",
            ports=(st.s3_port, st.s3_console_port, *extra),
            command=lambda: command,
            env=env,
            healthy=healthy,
            prepare=prepare,
            after_healthy=create_buckets,
            start_timeout_s=60,
        )

    def _s3_client(self, identity: str = "stack") -> Any:
        import boto3
        from botocore.config import Config

        ident = self.s3_identity(identity)
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=ident.access_key,
            aws_secret_access_key=ident.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )

    # ---- MLflow ----------------------------------------------------------------------------------
    def mlflow_auth_config(self) -> str:
        """The basic-auth ini (MLFLOW_AUTH_CONFIG_PATH): its database and its admin."""
        return (
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {self.db_url('mlflow_auth')}\n"
            f"admin_username = {MLFLOW_ADMIN}\n"
            f"admin_password = {self.secrets.mlflow_admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Each password check is a scrypt hash (~95 ms of CPU here): without this cache every
            # call of the gateway and the trainer pays it. A changed password bites within 10 s.
            "auth_cache_ttl_seconds = 10\n"
        )

    def mlflow(self) -> Component:
        st = self.settings
        ini = self.paths.config("mlflow-auth.ini")
        env = {
            **self._base_env(),
            # Passed by environment so the database password never shows in `ps`.
            "MLFLOW_BACKEND_STORE_URI": self.db_url("mlflow_db"),
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow",
            # Otherwise MLflow 3 starts a job runner of several processes (about 3 GB).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secrets.mlflow_flask_secret_key,
            **self.s3_env("mlflow", aws=True),
        }
        # MLflow's own S3 client reads only the AWS_* variables.
        for key in ("S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
            env.pop(key)

        def prepare() -> None:
            # `mlflow server` migrates the auth database and creates the admin once, before it
            # starts its workers (MLflow >= 3.17), so two workers never race on a first start.
            write_private(ini, self.mlflow_auth_config())

        return Component(
            name="mlflow",
            url=self.mlflow_uri,
            ports=(st.mlflow_port,),
            command=lambda: [
                binaries.venv_bin("mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--host",
                self.host,
                "--port",
                str(st.mlflow_port),
                # One uvicorn worker serves the stack's few clients; each more imports all of
                # MLflow again (CPU seconds on every start) and holds its own memory.
                "--workers",
                "1",
            ],
            env=env,
            healthy=http_ok(f"{self.mlflow_uri}/health"),
            prepare=prepare,
            after_healthy=self.ensure_mlflow_users,
            # Its backend and auth databases (made by postgres's after_healthy).
            depends_on=("postgres",),
            start_timeout_s=150,
        )

    def ensure_mlflow_users(self) -> None:
        """The services' MLflow users, with the passwords in secrets.json, and their grants."""
        sec = self.secrets
        admin = httpx.Client(
            base_url=self.mlflow_uri, auth=(MLFLOW_ADMIN, sec.mlflow_admin_password), timeout=30
        )
        with admin:
            users = {
                MLFLOW_TRAINER: sec.mlflow_trainer_password,
                MLFLOW_GATEWAY: sec.mlflow_gateway_password,
            }
            for username, password in users.items():
                body = {"username": username, "password": password}
                created = admin.post("/api/2.0/mlflow/users/create", json=body)
                if _already_exists(created):
                    # Keep the stored password equal to secrets.json (a rotated secret).
                    updated = admin.patch("/api/2.0/mlflow/users/update-password", json=body)
                    _raise_for_mlflow(updated, f"setting the password of MLflow user {username}")
                else:
                    _raise_for_mlflow(created, f"creating MLflow user {username}")
            for username, resource_type, pattern, permission in MLFLOW_GRANTS:
                granted = admin.post(
                    "/api/3.0/mlflow/users/permissions/grant",
                    json={
                        "username": username,
                        "resource_type": resource_type,
                        "resource_id": pattern,
                        "permission": permission,
                    },
                )
                if not _already_exists(granted):
                    _raise_for_mlflow(
                        granted, f"granting {username} {permission} on {resource_type} {pattern}"
                    )

    # ---- the platform's services ----------------------------------------------------------------
    def gateway(self) -> Component:
        st = self.settings
        url = self.service_url(st.gateway_port)
        return Component(
            name="model-gateway",
            url=url,
            ports=(st.gateway_port,),
            command=lambda: [binaries.venv_bin("model-gateway")],
            env={
                **self._base_env(),
                "GATEWAY_PORT": str(st.gateway_port),
                "GATEWAY_HOST": self.host,
                "PLATFORM_DB_URL": self.db_url("platform"),
                **self.mlflow_client_env(MLFLOW_GATEWAY, self.secrets.mlflow_gateway_password),
                **self.s3_env("gateway"),
                # Alias moves are published here; inference subscribes and swaps within seconds.
                "GATEWAY_REDIS_URL": self.redis_url("gateway"),
                # Lineage reports whether each version's signature verifies.
                "GATEWAY_TRUSTED_SIGNING_KEYS": ",".join(self.secrets.trusted_signing_keys),
            },
            healthy=http_ok(f"{url}/health"),
            # The gateway's migrations made the api_tokens table: the services' tokens go in.
            after_healthy=self.ensure_tokens,
            # It migrates the platform database; its health asks MLflow, as its MLflow user
            # (made by mlflow's after_healthy).
            depends_on=("postgres", "mlflow"),
        )

    def token_store(self) -> TokenStore:
        from sqlalchemy import create_engine

        return TokenStore(create_engine(self.db_url("platform"), pool_pre_ping=True))

    def ensure_tokens(self) -> None:
        store = self.token_store()
        try:
            for name, scopes in SERVICE_TOKENS.items():
                store.ensure(name, getattr(self.secrets, f"token_{name}"), scopes)
        finally:
            store.engine.dispose()

    def _trainer_env(self, *, worker: bool) -> dict[str, str]:
        st = self.settings
        env = {
            **self._base_env(),
            "TRAINER_PORT": str(st.trainer_port),
            "TRAINER_HOST": self.host,
            "TRAINER_BROKER_URL": self.redis_url("trainer", 0),
            "TRAINER_GATEWAY_URL": self.service_url(st.gateway_port),
            "TRAINER_GATEWAY_TOKEN": self.secrets.token_trainer,
            "PLATFORM_DB_URL": self.db_url("platform"),
            # Data sets are read from S3 (the API checks them, the worker loads them).
            **self.s3_env("trainer"),
        }
        if worker:
            # Only the worker talks to MLflow (runs, models, versions), and signs what it
            # registers.
            env |= self.mlflow_client_env(MLFLOW_TRAINER, self.secrets.mlflow_trainer_password)
            env["TRAINER_SIGNING_KEY"] = self.secrets.model_signing_key
        return env

    def trainer_api(self) -> Component:
        st = self.settings
        url = self.service_url(st.trainer_port)
        return Component(
            name="trainer",
            url=url,
            ports=(st.trainer_port,),
            command=lambda: [binaries.venv_bin("trainer-api")],
            env=self._trainer_env(worker=False),
            healthy=http_ok(f"{url}/health"),
            # It migrates the platform database (its own tables); its health asks the broker.
            depends_on=("postgres", "redis"),
        )

    def trainer_worker(self) -> Component:
        st = self.settings
        url = self.service_url(st.trainer_port)
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
            env=self._trainer_env(worker=True),
            # Healthy once the API sees it answer on the broker.
            healthy=json_probe(f"{url}/health", lambda body: bool(body.get("workers"))),
            # The API migrates the tables the worker migrates too: on a first start they would
            # race to create them.
            depends_on=("redis", "trainer"),
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
                **self._base_env(),
                "INFERENCE_PORT": str(st.inference_port),
                "INFERENCE_HOST": self.host,
                "INFERENCE_MODEL_NAME": st.demo_model,
                "INFERENCE_GATEWAY_URL": self.service_url(st.gateway_port),
                "INFERENCE_GATEWAY_TOKEN": self.secrets.token_inference,
                "INFERENCE_CACHE_DIR": str(self.paths.data("inference-cache")),
                "INFERENCE_TRUSTED_SIGNING_KEYS": ",".join(self.secrets.trusted_signing_keys),
                "INFERENCE_REDIS_URL": self.redis_url("inference"),
                **self.s3_env("inference"),
            },
            # Up means answering; serving (200) needs a model, which the demo training provides.
            healthy=http_ok(f"{url}/health", accept=(200, 503)),
            # It resolves its model through the gateway with its token (which the gateway's
            # after_healthy stores), loads it from S3, and listens for alias moves on Redis.
            depends_on=("redis", "s3", "model-gateway"),
        )

    # ---- Airflow ---------------------------------------------------------------------------------
    def airflow_env(self) -> dict[str, str]:
        """Shared by every Airflow process: secrets come from the stack, not from Airflow's files."""
        st, sec = self.settings, self.secrets
        home = self.paths.data("airflow")
        api = self.service_url(st.airflow_port)

        def http_conn(port: int) -> str:
            # The DAGs send a connection's password as a bearer token: Airflow's API token.
            return json.dumps(
                {
                    "conn_type": "http",
                    "host": self.host,
                    "port": port,
                    "schema": "http",
                    "password": sec.token_airflow,
                }
            )

        s3 = self.s3_identity("airflow")
        return {
            **self._base_env(),
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
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url("airflow", 1),
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
            # A task whose worker died is failed (and retried) after 30 s, not the default 5 min;
            # a live task heartbeats every 5 s.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(st.airflow_worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(st.airflow_trigger_log_port),
            "AIRFLOW_CONN_TRAINER_API": http_conn(st.trainer_port),
            "AIRFLOW_CONN_MODEL_GATEWAY": http_conn(st.gateway_port),
            "AIRFLOW_CONN_INFERENCE_API": http_conn(st.inference_port),
            "AIRFLOW_CONN_S3_DATA": json.dumps(
                {
                    "conn_type": "generic",
                    "login": s3.access_key,
                    "password": s3.secret_key,
                    "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
                }
            ),
        }

    def airflow_health(self, part: str) -> Callable[[], bool]:
        """Healthy when Airflow's API server reports ``part`` healthy (its heartbeat is recent)."""
        url = f"{self.service_url(self.settings.airflow_port)}/api/v2/monitor/health"
        return json_probe(url, lambda body: body.get(part, {}).get("status") == "healthy")

    def airflow(self) -> list[Component]:
        st = self.settings
        env = self.airflow_env()
        home = self.paths.data("airflow")
        airflow = binaries.venv_bin("airflow")

        def prepare() -> None:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(
                home / "passwords.json",
                json.dumps({self.secrets.airflow_username: self.secrets.airflow_password}),
            )
            run_step(
                "airflow db migrate",
                [airflow, "db", "migrate"],
                self.paths.log("airflow-api"),
                env={**inherited_env(os.environ, self), **env},
                cwd=home,
            )

        def part(
            name: str,
            args: list[str],
            health: Callable[[], bool],
            depends_on: tuple[str, ...],
            ports: tuple[int, ...] = (),
        ) -> Component:
            return Component(
                name=name,
                url="-",
                ports=ports,
                command=lambda: [airflow, *args],
                env=env,
                healthy=health,
                depends_on=depends_on,
            )

        api = self.service_url(st.airflow_port)
        # The other parts need the database the API server's prepare migrated, and the API
        # server itself: their health is what it reports.
        return [
            Component(
                name="airflow-api",
                url=api,
                ports=(st.airflow_port,),
                command=lambda: [
                    airflow,
                    "api-server",
                    "--port",
                    str(st.airflow_port),
                    "--host",
                    self.host,
                ],
                env=env,
                healthy=http_ok(f"{api}/api/v2/monitor/health"),
                prepare=prepare,
                # Its prepare migrates the airflow database.
                depends_on=("postgres",),
                start_timeout_s=180,
            ),
            # The scheduler and the worker also use the broker (Valkey db 1).
            part(
                "airflow-scheduler",
                ["scheduler"],
                self.airflow_health("scheduler"),
                ("airflow-api", "redis"),
            ),
            part(
                "airflow-dag-processor",
                ["dag-processor"],
                self.airflow_health("dag_processor"),
                ("airflow-api",),
            ),
            part(
                "airflow-triggerer",
                ["triggerer"],
                self.airflow_health("triggerer"),
                ("airflow-api",),
                ports=(st.airflow_trigger_log_port,),
            ),
            part(
                "airflow-worker",
                ["celery", "worker", "--concurrency", str(st.airflow_worker_concurrency)],
                lambda: _listening(self.host, st.airflow_worker_log_port),
                ("airflow-api", "redis"),
                ports=(st.airflow_worker_log_port,),
            ),
        ]


_CREDENTIAL_PREFIXES = ("AWS_", "S3_", "MINIO_", "MLFLOW_TRACKING_", "AIRFLOW_CONN_")
_CREDENTIAL_WORDS = ("PASSWORD", "SECRET", "TOKEN", "_KEY", "_URL", "_URI")


def inherited_env(environ: dict[str, str] | os._Environ[str], stack: Stack) -> dict[str, str]:
    """The part of the supervisor's own environment a component may inherit.

    A shell that ran ``eval "$(mlops env)"`` holds the local user's credentials; those, and
    anything else that looks like a credential or names a setting some component gets from the
    stack, stay out: each component receives only its own, in ``Component.env``.
    """
    managed = set(stack.client_env())
    for comp in stack.all_components().values():
        managed |= set(comp.env)
    return {
        key: value
        for key, value in environ.items()
        if key not in managed
        and not key.startswith(_CREDENTIAL_PREFIXES)
        and not any(word in key for word in _CREDENTIAL_WORDS)
    }


def _already_exists(response: httpx.Response) -> bool:
    return response.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in response.text


def _raise_for_mlflow(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise StepFailed(f"{what} failed: HTTP {response.status_code} {response.text[:300]}")


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
