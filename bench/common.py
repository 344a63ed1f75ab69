"""Small helpers shared by the benchmark modules: progress lines, ports, the stack's env."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
_STARTED = time.monotonic()


class BenchError(RuntimeError):
    """A failure the benchmark reports in one line and exits on (no traceback)."""


def log(message: str) -> None:
    """One progress line, with the time since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


def elapsed() -> float:
    return time.monotonic() - _STARTED


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin(name: str) -> Path:
    """A console script of the workspace venv (the one running this benchmark)."""
    return Path(sys.executable).parent / name


def require_tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} is not installed; install it with: {how}")
    return path


def parse_exports(text: str) -> dict[str, str]:
    """``export K=V`` lines (as printed by ``mlops env``) as a dict."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, sep, value = line[len("export ") :].partition("=")
        if not sep:
            continue
        parts = shlex.split(value) if value else [""]
        env[key.strip()] = parts[0] if parts else ""
    return env


def stack_env() -> dict[str, str]:
    """What ``mlops env`` prints: S3 endpoint and keys, MLflow URI, service URLs."""
    mlops = venv_bin("mlops")
    argv = [str(mlops), "env"] if mlops.exists() else ["uv", "run", "--frozen", "mlops", "env"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BenchError(f"`mlops env` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    env = parse_exports(proc.stdout)
    missing = [k for k in ("TRAINER_URL", "GATEWAY_URL", "MLFLOW_TRACKING_URI") if k not in env]
    if missing:
        raise BenchError(f"`mlops env` printed no {', '.join(missing)}")
    return env


def _cpu_times() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(x) for x in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        out[name.removeprefix("cpu")] = (sum(values) - idle, sum(values))
    return out


def cpu_busy(seconds: float = 2.0) -> dict[str, float]:
    """How busy each CPU is (percent) over ``seconds`` while nothing of ours runs: background."""
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except OSError:
        return {}
    busy = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        busy[cpu] = round(100.0 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
    return busy


def git_state() -> dict[str, str | list[str]]:
    """The commit benchmarked and what differs from it under the code that is served."""

    dirty = _git("status", "--porcelain", "--", *SERVED_CODE)
    return {
        "commit": _git("rev-parse", "--short=10", "HEAD").strip(),
        "subject": _git("log", "-1", "--format=%s").strip(),
        "uncommitted": [line[3:] for line in dirty.splitlines() if line.strip()],
    }


# The code the inference service runs (the rest of the venv is the lock's).
SERVED_CODE = ("services/inference/src", "libs/common/src")


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def export_served_code(ref: str, dest: Path) -> tuple[dict[str, str | list[str]], str]:
    """Extract the inference service's code at git ``ref`` into ``dest``; return its PYTHONPATH.

    Put first on PYTHONPATH, it shadows the workspace's editable install, so a run can measure
    one fixed commit (or an older one, for a before/after) while the working tree moves on.
    """
    sha = _git("rev-parse", "--short=10", f"{ref}^{{commit}}").strip()
    if not sha:
        raise BenchError(f"--inference-ref {ref}: not a commit in {ROOT}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha, *SERVED_CODE], cwd=ROOT, capture_output=True
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {sha}: {archive.stderr.decode(errors='replace').strip()}")
    target = dest / f"inference-{sha}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    pythonpath = os.pathsep.join(str(target / part) for part in SERVED_CODE)
    probe = subprocess.run(
        [sys.executable, "-c", "import inference, mlops_common; print(inference.__file__)"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
    )
    if not probe.stdout.strip().startswith(str(target)):
        raise BenchError(
            f"the code of {sha} does not shadow the installed inference package: "
            f"{probe.stdout.strip()} {probe.stderr.strip()[-500:]}"
        )
    state: dict[str, str | list[str]] = {
        "commit": sha,
        "subject": _git("log", "-1", "--format=%s", sha).strip(),
        "uncommitted": [],
        "source": f"git archive {sha} (--inference-ref {ref})",
    }
    return state, pythonpath


def auth_headers(env: dict[str, str]) -> dict[str, str]:
    """The local user's token (``MLOPS_TOKEN`` from ``mlops env``) as request headers."""
    token = env.get("MLOPS_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}
