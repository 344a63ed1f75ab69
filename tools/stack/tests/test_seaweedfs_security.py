"""SeaweedFS's inner servers (master, volume, filer) refuse anyone but the weed process itself.

The S3 identities guard only the S3 API; ``weed mini`` also listens with HTTP and gRPC ports of
its own. Started here on free ports the way ``mlops up`` starts it.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError
from mlops_stack import components
from mlops_stack.components import Stack, ensure_grpc_tls
from mlops_stack.config import Paths, StackSecrets, StackSettings
from mlops_stack.supervisor import Supervisor

# An HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """Ports free with their gRPC companion (port + 10000), away from the stack's defaults."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 55000)
        taken = {p for c in chosen for p in (c, c + 10000)}
        if {port, port + 10000} & taken or not (_free(port) and _free(port + 10000)):
            continue
        chosen.append(port)
    return chosen


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Supervisor]]:
    home = tmp_path_factory.mktemp("seaweedfs") / "state"
    s3, console, master, volume, filer = _ports(5)
    settings = StackSettings(
        home=home,
        s3_port=s3,
        s3_console_port=console,
        s3_master_port=master,
        s3_volume_port=volume,
        s3_filer_port=filer,
        profile="serving",
    )
    paths = Paths(home)
    paths.make()
    stack = Stack(settings, StackSecrets.load_or_create(home), paths)
    if stack.uses_minio:
        pytest.skip("a MinIO binary is configured: the stack runs MinIO, not SeaweedFS")
    supervisor = Supervisor.for_stack(stack, paths)
    comp = supervisor.components["s3"]
    supervisor.start(comp)
    try:
        yield stack, supervisor
    finally:
        supervisor.stop_one(comp)


def test_s3_identities_work_and_the_inner_servers_refuse_strangers(
    weed: tuple[Stack, Supervisor],
) -> None:
    stack, _ = weed
    st = stack.settings
    user, inference = stack._s3_client("user"), stack._s3_client("inference")
    user.put_object(Bucket="mlflow", Key="run/model.pkl", Body=b"weights")
    body = inference.get_object(Bucket="mlflow", Key="run/model.pkl")["Body"].read()
    assert body == b"weights"
    listed = inference.list_objects_v2(Bucket="mlflow")["Contents"]
    assert [o["Key"] for o in listed] == ["run/model.pkl"]
    with pytest.raises(ClientError, match="AccessDenied"):
        inference.put_object(Bucket="mlflow", Key="forged", Body=b"x")
    # Its prediction log and feedback, and nothing else in the data bucket (training data).
    inference.put_object(Bucket="data", Key="predictions/m/date=2026-12-02/a.parquet", Body=b"p")
    inference.put_object(Bucket="data", Key="feedback/m/date=2026-12-02/a.parquet", Body=b"f")
    for key in ("raw/train.csv", "processed/m/train.parquet", "predictionsX/a"):
        with pytest.raises(ClientError, match="AccessDenied"):
            inference.put_object(Bucket="data", Key=key, Body=b"x")

    filer = f"http://{stack.host}:{st.s3_filer_port}"
    volume = f"http://{stack.host}:{st.s3_volume_port}"
    master = f"http://{stack.host}:{st.s3_master_port}"
    refused = (401, 403, 404)
    # The filer's HTTP API: no reads, listings, writes or deletes without its JWT.
    for path in ("/buckets/mlflow/run/model.pkl", "/buckets/mlflow/", "/"):
        response = httpx.get(filer + path)
        assert response.status_code in refused, (path, response.status_code)
        assert b"weights" not in response.content
    assert httpx.put(f"{filer}/buckets/mlflow/evil", content=b"x").status_code in refused
    assert httpx.delete(f"{filer}/buckets/mlflow/run/model.pkl").status_code in refused
    # The master hands out no volume JWTs and deletes no collection (bucket) on request ...
    assert httpx.get(f"{master}/dir/assign").status_code in refused
    assert httpx.post(f"{master}/col/delete?collection=mlflow").status_code in refused
    # ... and the volume server takes no unsigned write.
    files = {"file": ("evil", b"x")}
    assert httpx.post(f"{volume}/1,0123456789", files=files).status_code in (401, 403)
    # All of it left the bucket as it was.
    with pytest.raises(ClientError):
        user.head_object(Bucket="mlflow", Key="evil")
    assert inference.get_object(Bucket="mlflow", Key="run/model.pkl")["Body"].read() == b"weights"


def _grpc_handshake(port: int, tls: Path | None, client_cert: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        if tls is None:
            sock.sendall(H2_PREFACE)
            return sock.recv(64)
        ctx = ssl.create_default_context(cafile=str(tls / components.GRPC_CA_FILE))
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["h2"])
        if client_cert:
            ctx.load_cert_chain(tls / components.GRPC_CERT_FILE, tls / components.GRPC_KEY_FILE)
        with ctx.wrap_socket(sock) as conn:
            conn.sendall(H2_PREFACE)
            return conn.recv(64)


def test_grpc_ports_need_the_stacks_client_certificate(
    weed: tuple[Stack, Supervisor], tmp_path: Path
) -> None:
    stack, _ = weed
    st = stack.settings
    tls = stack.paths.config("seaweedfs-tls")
    stranger = tmp_path / "stranger"
    assert ensure_grpc_tls(stranger)  # a certificate from another CA
    for http_port in (st.s3_filer_port, st.s3_master_port, st.s3_volume_port, st.s3_port):
        port = http_port + 10000
        # Plain HTTP/2 (an ordinary gRPC client such as `weed shell`): no answer.
        assert _grpc_handshake(port, None, client_cert=False) == b""
        with pytest.raises(ssl.SSLError):
            _grpc_handshake(port, tls, client_cert=False)
        with pytest.raises(ssl.SSLError):
            _grpc_handshake(port, stranger, client_cert=True)
        # The weed process's own certificate: an HTTP/2 SETTINGS frame comes back.
        assert _grpc_handshake(port, tls, client_cert=True)[3:4] == b"\x04"


def test_objects_survive_a_restart_and_the_certificate_is_kept(
    weed: tuple[Stack, Supervisor],
) -> None:
    stack, supervisor = weed
    tls = stack.paths.config("seaweedfs-tls")
    cert = (tls / components.GRPC_CERT_FILE).read_bytes()
    stack._s3_client("user").put_object(Bucket="data", Key="kept.csv", Body=b"a,b\n")
    comp = supervisor.components["s3"]
    supervisor.stop_one(comp)
    supervisor.start(comp)
    assert (tls / components.GRPC_CERT_FILE).read_bytes() == cert
    body = stack._s3_client("airflow").get_object(Bucket="data", Key="kept.csv")["Body"].read()
    assert body == b"a,b\n"
