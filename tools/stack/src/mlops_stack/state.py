"""The supervisor's state file: written atomically by the supervisor, read by the CLI."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ComponentState:
    name: str
    url: str
    status: str = "pending"  # pending|starting|healthy|restarting|failed|stopped
    pid: int | None = None
    restarts: int = 0
    since: float = field(default_factory=time.time)
    error: str | None = None
    # Seconds after the supervisor started: when this component's start began (its
    # dependencies healthy) and when it was first healthy.
    started_s: float | None = None
    healthy_s: float | None = None


@dataclass
class StackState:
    supervisor_pid: int
    profile: str = "full"
    phase: str = "starting"  # starting|running|stopping|stopped|failed
    error: str | None = None
    components: dict[str, ComponentState] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> StackState | None:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        comps = {k: ComponentState(**v) for k, v in raw.pop("components", {}).items()}
        return cls(**raw, components=comps)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file (reads at most its last 256 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            return b"\n".join(fh.read().splitlines()[-lines:]).decode(errors="replace")
    except FileNotFoundError:
        return ""
