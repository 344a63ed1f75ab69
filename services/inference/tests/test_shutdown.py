"""SIGTERM drains: the real service, run as its console script runs it, finishes what it started.

``python -m inference.main`` runs under uvicorn in a subprocess. It needs no other service: the
gateway and the store are unreachable, and it serves a copy prepared in its cache (the start
"served from cache" path). A request is held in flight by sending its headers with
``Expect: 100-continue`` and its body only once the shutdown has begun: the "100 Continue" says
the app is reading the body, and refused connections say the listener is closed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from inference.artifacts import ArtifactCache
from inference.model import ModelVersion

from .conftest import BUCKET, SIGNING_PUBLIC_KEY, VERIFIER, rows_as_json

URI = f"s3://{BUCKET}/models/mixed-v1/artifacts"
START_TIMEOUT_S = 90.0


@dataclass
class Inference:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _prepare_cache(store: Any, cache_dir: Path) -> None:
    """What an earlier run that served mixed@champion version 1 left in the cache."""
    cache = ArtifactCache(store, cache_dir / "mixed", VERIFIER)
    fetched = cache.fetch("mixed", URI)
    assert fetched.manifest is not None
    meta = ModelVersion(
        name="mixed",
        version=1,
        alias="champion",
        artifact_uri=URI,
        manifest_sha256=fetched.manifest.digest,
    )
    cache.remember(fetched.path, meta)


@pytest.fixture
def start_inference(tmp_path: Path, store: Any) -> Iterator[Callable[[float], Inference]]:
    started: list[Inference] = []

    def start(grace_s: float) -> Inference:
        _prepare_cache(store, tmp_path / "cache")
        nowhere = f"http://127.0.0.1:{_free_port()}"
        port = _free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("INFERENCE_", "S3_", "AWS_"))
        }
        env.update(
            {
                "INFERENCE_MODEL_NAME": "mixed",
                "INFERENCE_HOST": "127.0.0.1",
                "INFERENCE_PORT": str(port),
                "INFERENCE_CACHE_DIR": str(tmp_path / "cache"),
                "INFERENCE_TRUSTED_SIGNING_KEYS": SIGNING_PUBLIC_KEY,
                "INFERENCE_GATEWAY_URL": nowhere,
                # Tokens are checked at the gateway, which is down here.
                "INFERENCE_AUTH_ENABLED": "false",
                # The request goes through the batcher, whose worker lives in the lifespan.
                "INFERENCE_BATCHING": "on",
                "INFERENCE_SHUTDOWN_GRACE_S": str(grace_s),
                "S3_ENDPOINT_URL": nowhere,
                "S3_ACCESS_KEY_ID": "test",
                "S3_SECRET_ACCESS_KEY": "test-secret",
                "S3_MAX_ATTEMPTS": "1",
            }
        )
        log = tmp_path / "inference.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "inference.main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Inference(process, port, log)
        started.append(server)
        _wait_until_served_from_cache(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def _wait_until_served_from_cache(server: Inference) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"inference exited at start:\n{server.output()}")
        try:
            health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=2)
        except httpx.TransportError:
            health = None
        if health is not None and health.status_code == 200:
            assert health.json()["source"] == "cache", health.text
            return
        time.sleep(0.1)
    raise AssertionError(f"inference did not serve within {START_TIMEOUT_S}s:\n{server.output()}")


def _hold_request_in_flight(port: int, body: bytes) -> socket.socket:
    """Send a /predict request's headers; return once the app is waiting for its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: inference\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Expect: 100-continue\r\n\r\n"
    )
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before 100 Continue"
        received += chunk
    assert received.startswith(b"HTTP/1.1 100 Continue"), received
    return sock


def _wait_until_refusing(port: int, timeout_s: float = 10.0) -> None:
    """Until new connections are refused: the shutdown has begun."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError(f"port {port} still accepts connections {timeout_s}s after SIGTERM")


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes the connection (it answers with Connection: close)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    start_inference: Callable[[float], Inference], artifacts: Any
) -> None:
    grace_s = 20.0
    server = start_inference(grace_s)
    rows = rows_as_json(artifacts.frames["mixed"].head(2))
    body = json.dumps({"instances": rows}).encode()
    sock = _hold_request_in_flight(server.port, body)
    with sock:
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        _wait_until_refusing(server.port)
        sock.sendall(body)
        status, headers, answer = _read_response(sock)
    code = server.process.wait(timeout=grace_s + 10)
    took = time.monotonic() - signalled

    assert status == 200, answer
    assert headers["connection"] == "close"
    assert len(json.loads(answer)["predictions"]) == 2
    assert code == 0, server.output()
    # Nothing was left to wait for once the request was answered.
    assert took < grace_s, server.output()
    assert "Application shutdown complete" in server.output()


def test_sigterm_exits_0_after_the_grace_when_a_request_never_finishes(
    start_inference: Callable[[float], Inference],
) -> None:
    grace_s = 2.0
    server = start_inference(grace_s)
    with _hold_request_in_flight(server.port, b'{"instances": []}'):
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=grace_s + 15)
        took = time.monotonic() - signalled
    assert code == 0, server.output()
    # The request was given its grace, and not much more.
    assert grace_s <= took < grace_s + 10, server.output()
    assert "timeout graceful shutdown exceeded" in server.output()
