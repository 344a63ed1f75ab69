"""``mlops``: run the platform as supervised local processes.

mlops up | down | status | logs COMPONENT | env | token create|list|revoke
      | signing-key show|rotate|retire | stop|start|restart COMPONENT
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil
from mlops_common.auth import TokenInfo, TokenStore
from mlops_common.http import wait_until

from mlops_stack.components import PROFILES, PYTHON_ENV, Component, Stack
from mlops_stack.config import PRIVATE_UMASK, Paths, StackSecrets, StackSettings, make_private
from mlops_stack.demo import ensure_demo_model
from mlops_stack.state import StackState, pid_alive, tail
from mlops_stack.supervisor import STOP_GRACE_S


def _out(line: str = "") -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class TokenCommandError(RuntimeError):
    """A ``mlops token`` command cannot be done; the message says why (exit code 2)."""


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
        began = time.monotonic()
        self.paths.make()
        # State left by older versions (logs, configuration) becomes private too.
        make_private(self.home, skip=(self.paths.data("postgres"),))
        started: StackState | None = None
        if self.supervisor_pid():
            self.use_running_profile()
            _out(f"the stack is already running ({self.settings.profile}, state in {self.home})")
            stack = self.stack()
        else:
            stack = self.stack()
            busy = self._busy_ports(stack)
            if busy:
                for line in busy:
                    _out(line)
                _out(
                    "stop what holds these ports, or set MLOPS_<COMPONENT>_PORT, then run `mlops up` again"
                )
                return 1
            started = self._start_supervisor(stack, began)
            if started is None:
                return 1
        if not skip_demo and not ensure_demo_model(stack, _out):
            return 1
        _out()
        self._table(stack)
        if started is not None:
            _out()
            self._timings(started, time.monotonic() - began)
        _out()
        _out(
            f'state: {self.home}   logs: mlops logs COMPONENT   client settings: eval "$(uv run mlops env)"'
        )
        return 0

    def use_running_profile(self) -> None:
        """Commands other than a first ``up`` are about the stack last started here."""
        state = StackState.read(self.paths.state_file)
        if state is not None:
            self.settings = self.settings.model_copy(update={"profile": state.profile})

    def _busy_ports(self, stack: Stack) -> list[str]:
        wanted = {port: comp.name for comp in stack.components() for port in comp.ports}
        holders: dict[int, str] = {}
        try:
            for conn in psutil.net_connections(kind="inet"):
                if (
                    conn.status == psutil.CONN_LISTEN
                    and conn.laddr
                    and conn.laddr.port in wanted
                    # Another address's listener (127.0.0.2, a container's) does not clash.
                    and conn.laddr.ip in (self.settings.host, "0.0.0.0", "::")
                ):
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

    def _start_supervisor(self, stack: Stack, began: float) -> StackState | None:
        """Start the supervisor and report each component's progress; the final state once
        every component is healthy, None when the start failed."""
        components = stack.components()
        names = [c.name for c in components]
        width = max(map(len, names))
        self.paths.state_file.unlink(missing_ok=True)
        with open(self.paths.log("supervisor"), "ab") as logfile:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "mlops_stack.supervisor", "--home", str(self.home)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={
                    **os.environ,
                    **PYTHON_ENV,
                    "MLOPS_HOME": str(self.home),
                    "MLOPS_PROFILE": self.settings.profile,
                },
            )
        _out(
            f"starting the stack ({self.settings.profile}: {len(names)} components, "
            f"state in {self.home})"
        )
        reported: set[str] = set()
        announced: set[str] = set()
        # Each component's own timeout ends a start that hangs; this only guards the guard.
        deadline = time.monotonic() + sum(c.start_timeout_s for c in components) + 30
        while time.monotonic() < deadline:
            # Asked before reading the state, which then holds whatever it wrote last.
            exited = supervisor.poll() is not None
            state = StackState.read(self.paths.state_file)
            if state:
                for i, name in enumerate(names, 1):
                    comp = state.components[name]
                    step = f"[{i}/{len(names)}] {name:<{width}}"
                    if comp.status != "pending" and name not in announced:
                        announced.add(name)
                        _out(f"{step} starting")
                    if comp.healthy_s is not None and name not in reported:
                        reported.add(name)
                        elapsed = time.monotonic() - began
                        _out(f"{step} healthy  {comp.url}  (+{elapsed:.1f}s)")
                if state.phase == "running":
                    return state
                if state.phase in ("failed", "stopped"):
                    self._report_failure(state)
                    return None
            if exited:
                _out(
                    f"the supervisor exited with code {supervisor.returncode}; "
                    f"see {self.paths.log('supervisor')}"
                )
                return None
            time.sleep(0.1)
        _out("the stack did not come up in time; stopping it")
        self.down()
        return None

    def _timings(self, state: StackState, total_s: float) -> None:
        """When each component began to start (its dependencies healthy) and became healthy,
        in seconds after the supervisor started."""
        rows = [("COMPONENT", "STARTED", "HEALTHY", "TOOK")]
        timed = [c for c in state.components.values() if c.started_s is not None]
        for comp in sorted(timed, key=lambda c: c.healthy_s or 0.0):
            start, healthy = comp.started_s or 0.0, comp.healthy_s or 0.0
            rows.append(
                (comp.name, f"+{start:.1f}s", f"+{healthy:.1f}s", f"{healthy - start:.1f}s")
            )
        _rows(rows)
        last = max((c.healthy_s or 0.0 for c in timed), default=0.0)
        _out(
            f"all healthy {last:.1f}s after the supervisor started; `mlops up` took {total_s:.1f}s"
        )

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
        _rows(rows)

    # ---- one component -----------------------------------------------------------------------
    def hold(self, name: str) -> int:
        """Stop one component cleanly and keep it stopped (maintenance, or a fault drill)."""
        comp = self._running_component(name)
        if comp is None:
            return 2
        held = self.paths.held(name)
        held.parent.mkdir(mode=0o700, exist_ok=True)
        held.touch()
        pid = self._component_pid(name)
        if pid is not None:
            # The leader only, as the supervisor stops it (its children go with it).
            os.kill(pid, comp.stop_signal)
        if not self._until_status(name, "stopped", STOP_GRACE_S):
            pid = self._component_pid(name)
            _out(f"{name} did not stop in {STOP_GRACE_S:.0f}s; killing it")
            if pid is not None:
                os.killpg(pid, signal.SIGKILL)
            if not self._until_status(name, "stopped", 10):
                _err(f"{name} is still running; see `mlops logs {name}`")
                return 1
        _out(f"{name} stopped; `mlops start {name}` starts it again")
        return 0

    def release(self, name: str) -> int:
        """Start a component ``hold`` stopped, and wait until it is healthy."""
        comp = self._running_component(name)
        if comp is None:
            return 2
        self.paths.held(name).unlink(missing_ok=True)
        if not self._until_status(name, "healthy", comp.start_timeout_s + 5):
            _err(f"{name} is not healthy; see `mlops logs {name}`")
            return 1
        _out(f"{name} healthy")
        return 0

    def restart(self, name: str) -> int:
        status = self.hold(name)
        return status if status else self.release(name)

    def _running_component(self, name: str) -> Component | None:
        components = self.stack().components()
        names = [c.name for c in components]
        if name not in names:
            _err(f"unknown component {name!r}; choose one of: {', '.join(names)}")
            return None
        if self.supervisor_pid() is None:
            _err("the stack is not running")
            return None
        return next(c for c in components if c.name == name)

    def _component_pid(self, name: str) -> int | None:
        state = StackState.read(self.paths.state_file)
        pid = state.components[name].pid if state and name in state.components else None
        return pid if pid_alive(pid) else None

    def _until_status(self, name: str, status: str, timeout_s: float) -> bool:
        def reached() -> bool:
            state = StackState.read(self.paths.state_file)
            return state is not None and state.components[name].status == status

        return wait_until(reached, timeout_s, interval_s=0.1)

    def logs(self, component: str, lines: int, follow: bool) -> int:
        names = [*self.stack().all_components(), "supervisor"]
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

    # ---- the model signing key ------------------------------------------------------------------
    def signing_key(self, action: str) -> int:
        from mlops_common.signing import ManifestVerifier, public_key_of

        if not (self.home / "secrets.json").exists():
            _err(f"no stack state in {self.home}: run `mlops up` first")
            return 2
        secrets = StackSecrets.load_or_create(self.home)
        if action == "rotate":
            secrets = secrets.rotate_signing_key()
        elif action == "retire":
            secrets = secrets.retire_signing_keys()
        if action != "show":
            secrets.save(self.home)
        current = public_key_of(secrets.model_signing_key)
        for key in secrets.trusted_signing_keys:
            role = "signs new models" if key == current else "retired, still trusted"
            _out(f"{ManifestVerifier([key]).key_ids[0]}  {key}  ({role})")
        if action != "show":
            _out("restart the stack (`mlops down && mlops up`) for it to take effect")
        return 0

    # ---- tokens ---------------------------------------------------------------------------------
    def _token_store(self) -> TokenStore:
        import psycopg2

        if not (self.home / "secrets.json").exists():
            raise TokenCommandError(f"no stack state in {self.home}: run `mlops up` first")
        stack = self.stack()
        try:
            psycopg2.connect(
                stack.db_url("platform").replace("+psycopg2", ""), connect_timeout=3
            ).close()
        except psycopg2.Error as exc:
            raise TokenCommandError(
                f"the stack's PostgreSQL is not reachable at {stack.host}:"
                f"{self.settings.postgres_port} ({str(exc).strip().splitlines()[0]}); "
                "tokens live in its platform database: start the stack with `mlops up`"
            ) from exc
        import sqlalchemy as sa

        store = stack.token_store()
        if not sa.inspect(store.engine).has_table("api_tokens"):
            store.engine.dispose()
            raise TokenCommandError(
                "the platform database has no api_tokens table yet: the model gateway creates "
                "it when it first starts (`mlops up`)"
            )
        return store

    def token(self, args: argparse.Namespace) -> int:
        from mlops_common.auth import parse_duration
        from mlops_common.errors import PlatformError

        try:
            expires = parse_duration(args.expires) if getattr(args, "expires", None) else None
            store = self._token_store()
            try:
                if args.action == "create":
                    secret, _ = store.create(args.name, args.scope, args.models, expires)
                    # The token alone on stdout: TOKEN=$(mlops token create ...) works.
                    print(secret, flush=True)
                elif args.action == "revoke":
                    info = store.revoke(args.name)
                    _err(f"revoked token {info.name!r}")
                else:
                    self._token_table(store.list())
            finally:
                store.engine.dispose()
        except (TokenCommandError, ValueError) as exc:
            _err(f"mlops token {args.action}: {exc}")
            return 2
        except PlatformError as exc:
            _err(f"mlops token {args.action}: {exc.message}")
            return 2
        return 0

    @staticmethod
    def _token_table(tokens: list[TokenInfo]) -> None:
        def when(value: datetime | None) -> str:
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"

        now = datetime.now(UTC)
        rows = [("NAME", "SCOPES", "MODELS", "CREATED", "EXPIRES", "LAST USED", "STATE")]
        for t in tokens:
            if t.revoked_at is not None:
                state = "revoked"
            elif t.expires_at is not None and t.expires_at <= now:
                state = "expired"
            else:
                state = "active"
            rows.append(
                (
                    t.name,
                    ",".join(t.scopes),
                    t.models,
                    when(t.created_at),
                    when(t.expires_at),
                    when(t.last_used_at),
                    state,
                )
            )
        _rows(rows)


def _rows(rows: Sequence[Sequence[str]]) -> None:
    """Print rows as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


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
    up.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="full: every component (default, or MLOPS_PROFILE); serving: no Airflow",
    )
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="show each component with its URL and status")
    logs = sub.add_parser("logs", help="show a component's log")
    logs.add_argument("component")
    logs.add_argument("-n", "--lines", type=int, default=100)
    logs.add_argument("-f", "--follow", action="store_true")
    sub.add_parser("env", help="print export lines a client needs")
    for verb, text in (
        ("stop", "stop one component and keep it stopped until `mlops start`"),
        ("start", "start a component `mlops stop` stopped; waits until it is healthy"),
        ("restart", "stop one component cleanly and start it again"),
    ):
        sub.add_parser(verb, help=text).add_argument("component")
    token = sub.add_parser("token", help="create, list or revoke API tokens")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (only once)")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a scope the token carries (repeat for several): "
        "train, jobs:read, models:read, models:promote, predict, admin, tokens:introspect, "
        "rollouts:abort",
    )
    create.add_argument("--models", default="*", help="model names it may use (a glob; * = all)")
    create.add_argument("--expires", help="lifetime such as 30d, 12h, 90m or 2w (default never)")
    token_sub.add_parser("list", help="list tokens (never their secrets)")
    revoke = token_sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    signing = sub.add_parser("signing-key", help="show or rotate the key that signs models")
    signing.add_argument(
        "action",
        choices=["show", "rotate", "retire"],
        help="show the trusted public keys; rotate: sign with a new key, keep trusting the "
        "old one; retire: trust only the current key",
    )
    args = parser.parse_args(argv)
    # Nothing this process creates (state, secrets, configuration) is readable by others.
    os.umask(PRIVATE_UMASK)

    settings = StackSettings(home=args.home) if args.home else StackSettings()
    if args.command == "up" and args.profile:
        settings = settings.model_copy(update={"profile": args.profile})
    cli = Cli(settings)
    if args.command == "up":
        return cli.up(skip_demo=args.no_demo)
    cli.use_running_profile()
    if args.command == "down":
        return cli.down()
    if args.command == "status":
        return cli.status()
    if args.command == "stop":
        return cli.hold(args.component)
    if args.command == "start":
        return cli.release(args.component)
    if args.command == "restart":
        return cli.restart(args.component)
    if args.command == "logs":
        return cli.logs(args.component, args.lines, args.follow)
    if args.command == "token":
        return cli.token(args)
    if args.command == "signing-key":
        return cli.signing_key(args.action)
    return cli.env()


if __name__ == "__main__":
    sys.exit(main())
