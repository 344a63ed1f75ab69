"""``mlops``: run the platform as supervised local processes.

mlops up | down | status | logs COMPONENT | env
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from mlops_stack.components import Stack
from mlops_stack.config import Paths, StackSecrets, StackSettings
from mlops_stack.demo import ensure_demo_model
from mlops_stack.state import StackState, pid_alive, tail


def _out(line: str = "") -> None:
    print(line, flush=True)


class Cli:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = settings.resolved_home()
        self.paths = Paths(self.home)

    def stack(self) -> Stack:
        return Stack(self.settings, StackSecrets.load_or_create(self.home), self.paths)

    def supervisor_pid(self) -> int | None:
        try:
            pid = int(self.paths.supervisor_pid.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    # ---- up --------------------------------------------------------------------------------
    def up(self, skip_demo: bool) -> int:
        self.paths.make()
        stack = self.stack()
        if self.supervisor_pid():
            _out(f"the stack is already running (state in {self.home})")
        else:
            busy = self._busy_ports(stack)
            if busy:
                for line in busy:
                    _out(line)
                _out(
                    "stop what holds these ports, or set MLOPS_<COMPONENT>_PORT, then run `mlops up` again"
                )
                return 1
            if not self._start_supervisor(stack):
                return 1
        if not skip_demo and not ensure_demo_model(stack, self.home, _out):
            return 1
        _out()
        self._table(stack)
        _out()
        _out(
            f'state: {self.home}   logs: mlops logs COMPONENT   client settings: eval "$(uv run mlops env)"'
        )
        return 0

    def _busy_ports(self, stack: Stack) -> list[str]:
        wanted = {port: comp.name for comp in stack.components() for port in comp.ports}
        holders: dict[int, str] = {}
        try:
            for conn in psutil.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in wanted:
                    holders[conn.laddr.port] = _describe(conn.pid)
        except psutil.AccessDenied:
            pass
        import socket

        lines = []
        for port, name in sorted(wanted.items()):
            if port in holders:
                lines.append(f"port {port} ({name}) is already in use by {holders[port]}")
                continue
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.settings.host, port))
                except OSError:
                    lines.append(f"port {port} ({name}) is already in use")
        return lines

    def _start_supervisor(self, stack: Stack) -> bool:
        names = [c.name for c in stack.components()]
        self.paths.state_file.unlink(missing_ok=True)
        with open(self.paths.log("supervisor"), "ab") as logfile:
            subprocess.Popen(
                [sys.executable, "-m", "mlops_stack.supervisor", "--home", str(self.home)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "MLOPS_HOME": str(self.home)},
            )
        _out(f"starting the stack ({len(names)} components, state in {self.home})")
        started = time.monotonic()
        reported: set[str] = set()
        announced: set[str] = set()
        deadline = started + sum(c.start_timeout_s for c in stack.components()) + 30
        while time.monotonic() < deadline:
            state = StackState.read(self.paths.state_file)
            if state:
                for i, name in enumerate(names, 1):
                    comp = state.components[name]
                    if comp.status == "starting" and name not in announced:
                        announced.add(name)
                        _out(f"[{i}/{len(names)}] {name:<15} starting")
                    if comp.status == "healthy" and name not in reported:
                        reported.add(name)
                        elapsed = time.monotonic() - started
                        _out(
                            f"[{i}/{len(names)}] {name:<15} healthy  {comp.url}  (+{elapsed:.1f}s)"
                        )
                if state.phase == "running":
                    return True
                if state.phase in ("failed", "stopped"):
                    self._report_failure(state)
                    return False
            time.sleep(0.3)
        _out("the stack did not come up in time; stopping it")
        self.down()
        return False

    def _report_failure(self, state: StackState) -> None:
        _out(f"start-up failed: {state.error}")
        failed = [c for c in state.components.values() if c.status == "failed"]
        for comp in failed:
            _out(f"--- last lines of {self.paths.log(comp.name)} ---")
            _out(tail(self.paths.log(comp.name), 25))

    # ---- down / status / logs / env -----------------------------------------------------------
    def down(self) -> int:
        pid = self.supervisor_pid()
        if pid is None:
            _out("the stack is not running")
            return 0
        os.kill(pid, signal.SIGTERM)
        _out(f"stopping the stack (supervisor pid {pid})")
        deadline = time.monotonic() + 120
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            _out("the supervisor did not stop in 120s; killing what is left")
            os.kill(pid, signal.SIGKILL)
            state = StackState.read(self.paths.state_file)
            for comp in state.components.values() if state else []:
                if comp.pid and pid_alive(comp.pid):
                    os.killpg(comp.pid, signal.SIGKILL)
        _out("stopped")
        return 0

    def status(self) -> int:
        stack = self.stack()
        self._table(stack)
        return 0 if self.supervisor_pid() else 3

    def _table(self, stack: Stack) -> None:
        state = StackState.read(self.paths.state_file)
        running = self.supervisor_pid() is not None
        rows = [("COMPONENT", "URL", "STATUS", "PID", "RESTARTS")]
        for comp in stack.components():
            cs = state.components.get(comp.name) if state else None
            status = cs.status if cs and running else "stopped"
            if running and cs and status == "healthy" and not comp.healthy():
                status = "unhealthy"
            if comp.name == "inference" and status == "healthy":
                status = "serving" if _serving(comp.url) else "no model yet"
            pid = str(cs.pid) if cs and cs.pid and running else "-"
            restarts = str(cs.restarts) if cs else "0"
            rows.append((comp.name, comp.url, status, pid, restarts))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    def logs(self, component: str, lines: int, follow: bool) -> int:
        names = [c.name for c in self.stack().components()] + ["supervisor"]
        if component not in names:
            _out(f"unknown component {component!r}; choose one of: {', '.join(names)}")
            return 2
        path = self.paths.log(component)
        if not path.exists():
            _out(f"no log yet at {path}")
            return 1
        if follow:
            return subprocess.call(["tail", "-n", str(lines), "-F", str(path)])
        _out(tail(path, lines))
        return 0

    def env(self) -> int:
        for key, value in self.stack().client_env().items():
            _out(f"export {key}={_shell_quote(value)}")
        return 0


def _describe(pid: int | None) -> str:
    if not pid:
        return "another process"
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({proc.name()}: {' '.join(proc.cmdline()[:3])})"
    except psutil.Error:
        return f"pid {pid}"


def _serving(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops", description="Run the MLOps platform locally.")
    parser.add_argument("--home", type=Path, help="state directory (default .mlops in the project)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start every component and wait until each is healthy")
    up.add_argument("--no-demo", action="store_true", help="do not train the demo model")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="show each component with its URL and status")
    logs = sub.add_parser("logs", help="show a component's log")
    logs.add_argument("component")
    logs.add_argument("-n", "--lines", type=int, default=100)
    logs.add_argument("-f", "--follow", action="store_true")
    sub.add_parser("env", help="print export lines a client needs")
    args = parser.parse_args(argv)

    settings = StackSettings(home=args.home) if args.home else StackSettings()
    cli = Cli(settings)
    if args.command == "up":
        return cli.up(skip_demo=args.no_demo)
    if args.command == "down":
        return cli.down()
    if args.command == "status":
        return cli.status()
    if args.command == "logs":
        return cli.logs(args.component, args.lines, args.follow)
    return cli.env()


if __name__ == "__main__":
    sys.exit(main())
