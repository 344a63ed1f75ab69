"""The servers under test, each started pinned to one core with one worker, and stopped for sure.

Every process is started in its own session (process group), so stopping it also stops what it
spawned (uvicorn workers, MLServer's inference pool). ``Processes`` stops all of them when the
benchmark leaves its ``with`` block, also on Ctrl-C and exceptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import IO, Any

import httpx
from common import BENCH_DIR, BenchError, free_port, log, venv_bin
from payloads import Protocol
from prepare import RegisteredModel

MLSERVER_VENV = BENCH_DIR / ".venv-mlserver"
# uvloop 0.22 broke MLServer 1.7.1's workers ("There is no current event loop", SeldonIO/MLServer
# issue 2286, unfixed in 1.7.1): keep the last 0.21.x.
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1", "uvloop<0.22")
# Kept equal to the workspace's versions (read at run time) so every server loads the same bytes
# with the same library code.
MLSERVER_MATCHED = ("mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy")


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    _log_file: IO[bytes]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def memory(self) -> dict[str, float]:
        """Memory of the whole process group (the server and any workers it forked), in MiB.

        ``pss``: proportional set size summed over the group (shared pages counted once);
        ``rss``: resident set size summed; ``peak_rss``: the largest process's lifetime peak.
        """
        totals = {"pss": 0.0, "rss": 0.0, "peak_rss": 0.0, "processes": 0.0}
        for pid in _group_members(self.popen.pid):
            try:
                status = _kib_fields(Path(f"/proc/{pid}/status"), ("VmRSS", "VmHWM"))
                rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup"), ("Pss",))
            except OSError:  # exited meanwhile
                continue
            totals["pss"] += rollup.get("Pss", 0) / 1024
            totals["rss"] += status.get("VmRSS", 0) / 1024
            totals["peak_rss"] = max(totals["peak_rss"], status.get("VmHWM", 0) / 1024)
            totals["processes"] += 1
        return {key: round(value, 1) for key, value in totals.items()}

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Children that outlived the leader (same process group) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log_file.close()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The comm field may hold spaces and parentheses: split after its closing one.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp, ...
            members.append(int(entry.name))
    return members


def _kib_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            values[key] = int(rest.split()[0])
    return values


@dataclass
class Processes:
    """Every process the benchmark started; ``stop_all`` is idempotent."""

    items: list[ManagedProcess] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = ManagedProcess(name, argv, log_path, popen, log_file)
        self.items.append(proc)
        return proc

    def stop(self, proc: ManagedProcess) -> None:
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        while self.items:
            proc = self.items.pop()
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {proc.name} (pid {proc.popen.pid}): {exc}")

    @contextlib.contextmanager
    def guard(self) -> Iterator[Processes]:
        # SIGTERM (e.g. `timeout`, CI) unwinds like Ctrl-C, so the finally below runs.
        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield self
        finally:
            if self.items:
                log(f"stopping {len(self.items)} process(es)")
            self.stop_all()
            signal.signal(signal.SIGTERM, previous)


@dataclass
class Server:
    """One server configuration under test (two MLServer configs share one process)."""

    key: str  # inference | mlflow | mlserver | mlserver-batching
    label: str
    protocol: Protocol
    url: str  # where requests are POSTed
    process: ManagedProcess
    details: dict[str, Any] = field(default_factory=dict)


SERVER_LABELS = {
    "inference": "this platform's inference",
    "inference-v2": "this platform's inference, V2 API",
    "inference-noauth": "this platform's inference, token check off",
    "inference-nolog": "this platform's inference, prediction log off",
    "inference-norollout": "this platform's inference, rollouts not followed",
    "mlflow": "mlflow models serve",
    "mlserver": "MLServer (mlflow runtime)",
    "mlserver-batching": "MLServer + adaptive batching",
}


def taskset(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv]


def wait_ready(proc: ManagedProcess, urls: list[str], timeout_s: float) -> float:
    """Wait until every URL answers 200; fail with the log's tail if the process dies first."""
    started = time.monotonic()
    deadline = started + timeout_s
    pending = list(urls)
    with httpx.Client(timeout=5) as client:
        while pending:
            if not proc.alive():
                raise BenchError(
                    f"{proc.name} exited ({proc.popen.returncode}) before it was ready; "
                    f"log {proc.log_path}:\n{proc.tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{proc.name} not ready after {timeout_s:.0f}s ({pending[0]}); "
                    f"log {proc.log_path}:\n{proc.tail()}"
                )
            try:
                if client.get(pending[0]).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    return time.monotonic() - started


@dataclass
class Launch:
    """A started server process, ready once every URL in ``ready_urls`` answers 200."""

    name: str
    proc: ManagedProcess
    ready_urls: list[str]
    servers: list[Server]
    note: str = ""

    def wait(self, timeout_s: float) -> list[Server]:
        took = wait_ready(self.proc, self.ready_urls, timeout_s)
        for server in self.servers:
            server.details["ready_s"] = round(took, 1)
        base = self.ready_urls[0].split("/", 3)[:3]
        log(f"  {self.name:<16} {'/'.join(base)}  ready in {took:.1f}s {self.note}")
        return self.servers


def launch_inference(
    procs: Processes,
    model: RegisteredModel,
    env: dict[str, str],
    workdir: Path,
    core: str,
    extra_env: dict[str, str],
    keys: list[str],
    instance: str = "",
) -> Launch:
    """This platform's inference service (its console script), serving ``model@champion``.

    ``keys``: ``inference`` (``POST /predict``) and/or ``inference-v2`` (its Open Inference
    Protocol endpoint), both answered by the one process; ``inference-noauth``,
    ``inference-nolog`` and ``inference-norollout`` are ``/predict`` of a second process started
    with ``INFERENCE_AUTH_ENABLED=false``, ``INFERENCE_PREDICTION_LOG_ENABLED=false`` or
    ``INFERENCE_FOLLOW_ROLLOUTS=false`` (``instance`` names it).
    """
    port = free_port()
    suffix = f"{model.key}{instance}"
    cache = workdir / f"inference-cache-{suffix}"
    cache.mkdir(parents=True, exist_ok=True)
    child_env = {
        **env,
        "INFERENCE_MODEL_NAME": model.name,
        "INFERENCE_PORT": str(port),
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_GATEWAY_URL": env["GATEWAY_URL"],
        "INFERENCE_CACHE_DIR": str(cache),
        # The local user's token resolves the alias and checks callers' tokens at the gateway.
        "INFERENCE_GATEWAY_TOKEN": env.get("MLOPS_TOKEN", ""),
        **extra_env,
    }
    argv = taskset(core, [str(venv_bin("inference"))])
    proc = procs.start(
        f"inference{instance}[{model.name}]",
        argv,
        child_env,
        workdir / f"inference-{suffix}.log",
        workdir,
    )
    base = f"http://127.0.0.1:{port}"
    urls = {
        "inference": f"{base}/predict",
        "inference-noauth": f"{base}/predict",
        "inference-nolog": f"{base}/predict",
        "inference-norollout": f"{base}/predict",
        "inference-v2": f"{base}/v2/models/{model.name}/infer",
    }
    servers = [
        Server(
            key,
            SERVER_LABELS[key],
            "v2" if key == "inference-v2" else "inference",
            urls[key],
            proc,
            {"port": port, "extra_env": extra_env},
        )
        for key in keys
    ]
    return Launch("inference", proc, [f"{base}/health"], servers, f"({model.name}@champion)")


def check_inference_version(
    server: Server, model: RegisteredModel, headers: dict[str, str]
) -> None:
    """The inference service resolves the alias itself: it must serve the version we compare."""
    base = server.url.split("/v2/", 1)[0].removesuffix("/predict")
    info = httpx.get(f"{base}/model-info", headers=headers, timeout=10).json()
    if int(info.get("version", -1)) != model.version:
        raise BenchError(
            f"inference serves {model.name} v{info.get('version')}, expected v{model.version} "
            "(did the alias move during the benchmark?)"
        )


def launch_mlflow(
    procs: Processes, model: RegisteredModel, env: dict[str, str], workdir: Path, core: str
) -> Launch:
    """``mlflow models serve`` from the registry (uvicorn + FastAPI, one worker)."""
    port = free_port()
    uri = f"models:/{model.name}/{model.version}"
    argv = taskset(
        core,
        [
            str(venv_bin("mlflow")),
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "--port",
            str(port),
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
        ],
    )
    proc = procs.start(
        f"mlflow-serve[{model.name}]", argv, dict(env), workdir / f"mlflow-{model.key}.log", workdir
    )
    base = f"http://127.0.0.1:{port}"
    server = Server(
        "mlflow",
        SERVER_LABELS["mlflow"],
        "mlflow",
        f"{base}/invocations",
        proc,
        {"port": port, "model_uri": uri},
    )
    return Launch("mlflow serve", proc, [f"{base}/health"], [server], f"({uri})")


def mlserver_requirements() -> list[str]:
    return [*MLSERVER_PINS, *(f"{name}=={dist_version(name)}" for name in MLSERVER_MATCHED)]


def ensure_mlserver_venv(requirements: list[str], venv: Path = MLSERVER_VENV) -> dict[str, str]:
    """Create (once) the separate venv with MLServer; returns the installed versions."""
    marker = venv / "bench-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    mlserver = venv / "bin" / "mlserver"
    if not (mlserver.exists() and marker.exists() and marker.read_text() == wanted):
        log(f"creating the MLServer venv {venv} ({', '.join(requirements)})")
        started = time.monotonic()
        created = subprocess.run(
            ["uv", "venv", "--clear", "--quiet", "--python", "3.11", str(venv)],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            raise BenchError(f"uv venv {venv} failed: {created.stderr.strip()[-2000:]}")
        proc = subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "--quiet",
                "--python",
                str(venv / "bin" / "python"),
                *requirements,
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BenchError(
                "could not install MLServer's venv with these pins (adjust --mlserver-requirement):"
                f"\n{proc.stderr.strip()[-3000:]}"
            )
        marker.write_text(wanted)
        log(f"MLServer venv ready in {time.monotonic() - started:.0f}s")
    listing = subprocess.run(
        ["uv", "pip", "list", "--format", "json", "--python", str(venv / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {
        "mlserver",
        "mlserver-mlflow",
        "mlflow",
        "scikit-learn",
        "skops",
        "pandas",
        "numpy",
        "fastapi",
        "uvicorn",
        "pydantic",
        "uvloop",
    }
    return {p["name"]: p["version"] for p in json.loads(listing.stdout) if p["name"] in names}


def download_model(model: RegisteredModel, dest: Path) -> Path:
    """The registered version's MLflow model directory, downloaded from the registry."""
    import mlflow.artifacts

    target = dest / f"{model.name}-v{model.version}"
    if (target / "MLmodel").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model.name}/{model.version}", dst_path=str(target)
    )
    path = Path(local)
    if not (path / "MLmodel").exists():
        raise BenchError(f"no MLmodel in the download of models:/{model.name}/{model.version}")
    return path


def launch_mlserver(
    procs: Processes,
    model: RegisteredModel,
    model_dir: Path,
    env: dict[str, str],
    workdir: Path,
    core: str,
    variants: list[str],
    parallel_workers: int,
    batch_size: int,
    batch_time_s: float,
) -> Launch:
    """One MLServer process hosting the model once per variant (plain and/or batching)."""
    repo = workdir / f"mlserver-{model.key}"
    repo.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": parallel_workers,
        "load_models_at_startup": True,
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    names: dict[str, str] = {}
    for variant in variants:
        name = model.name if variant == "mlserver" else f"{model.name}-batching"
        names[variant] = name
        model_settings: dict[str, Any] = {
            "name": name,
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir), "version": str(model.version)},
        }
        if variant == "mlserver-batching":
            model_settings["max_batch_size"] = batch_size
            model_settings["max_batch_time"] = batch_time_s
        (repo / name).mkdir(exist_ok=True)
        (repo / name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    argv = taskset(core, [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(repo)])
    # MLServer's venv is separate: keep the workspace venv out of what it inherits.
    child_env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    child_env["PATH"] = f"{MLSERVER_VENV / 'bin'}:{child_env.get('PATH', '')}"
    proc = procs.start(
        f"mlserver[{model.name}]", argv, child_env, workdir / f"mlserver-{model.key}.log", repo
    )
    base = f"http://127.0.0.1:{http_port}"
    ready = [f"{base}/v2/health/ready"] + [f"{base}/v2/models/{n}/ready" for n in names.values()]
    servers = []
    for variant, name in names.items():
        details: dict[str, Any] = {
            "port": http_port,
            "settings": settings,
            "model_settings": json.loads((repo / name / "model-settings.json").read_text()),
        }
        servers.append(
            Server(
                variant,
                SERVER_LABELS[variant],
                "v2",
                f"{base}/v2/models/{name}/infer",
                proc,
                details,
            )
        )
    note = f"({', '.join(names.values())}; parallel_workers={parallel_workers})"
    return Launch("MLServer", proc, ready, servers, note)
