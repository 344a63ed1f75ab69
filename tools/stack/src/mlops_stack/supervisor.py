"""The supervisor: starts the components in order, restarts the ones that die, stops them all.

It runs detached from the terminal (``mlops up`` spawns it) and is the single process that
``mlops down`` signals.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from mlops_stack.components import Component, Stack, inherited_env
from mlops_stack.config import PRIVATE_UMASK, Paths, StackSecrets, StackSettings
from mlops_stack.state import ComponentState, StackState, pid_alive, tail

log = logging.getLogger("mlops.supervisor")

STOP_GRACE_S = 20.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0


class StartFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(self, stack: Stack, paths: Paths) -> None:
        self.stack = stack
        self.paths = paths
        self.components = stack.components()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.restart_times: dict[str, list[float]] = {}
        self.state = StackState(
            supervisor_pid=os.getpid(),
            components={c.name: ComponentState(c.name, c.url) for c in self.components},
        )
        self.stopping = False
        self.inherited = inherited_env(os.environ, stack)

    # ---- state ---------------------------------------------------------------------------
    def _set(self, name: str, status: str, error: str | None = None) -> None:
        comp = self.state.components[name]
        comp.status, comp.error, comp.since = status, error, time.time()
        proc = self.procs.get(name)
        comp.pid = proc.pid if proc else None
        self.state.write(self.paths.state_file)
        log.info("%s: %s%s", name, status, f" ({error})" if error else "")

    def _phase(self, phase: str, error: str | None = None) -> None:
        self.state.phase, self.state.error = phase, error
        self.state.write(self.paths.state_file)

    # ---- processes -----------------------------------------------------------------------
    def _spawn(self, comp: Component) -> None:
        logfile = self.logs.get(comp.name)
        if logfile is None:
            logfile = open(self.paths.log(comp.name), "ab")  # noqa: SIM115 - kept open while it runs
            self.logs[comp.name] = logfile
        env = {**self.inherited, **comp.env}
        self.procs[comp.name] = subprocess.Popen(
            comp.command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            # Own process group: stopping it also stops its children (uvicorn/celery workers).
            start_new_session=True,
            user=comp.user.pw_uid if comp.user else None,
            group=comp.user.pw_gid if comp.user else None,
            cwd=self.paths.home,
        )

    def _wait_healthy(self, comp: Component) -> None:
        deadline = time.monotonic() + comp.start_timeout_s
        proc = self.procs[comp.name]
        while time.monotonic() < deadline and not self.stopping:
            if proc.poll() is not None:
                last = tail(self.paths.log(comp.name), 15)
                raise StartFailed(
                    f"{comp.name} exited with code {proc.returncode} while starting"
                    + (f"; its last output:\n{last}" if last else "")
                )
            if comp.healthy():
                return
            time.sleep(0.3)
        if self.stopping:
            raise StartFailed("stop requested")
        raise StartFailed(f"{comp.name} not healthy after {comp.start_timeout_s:.0f}s")

    def start(self, comp: Component) -> None:
        self._set(comp.name, "starting")
        comp.prepare()
        self._spawn(comp)
        self._set(comp.name, "starting")
        self._wait_healthy(comp)
        comp.after_healthy()
        self._set(comp.name, "healthy")

    def stop_one(self, comp: Component) -> None:
        proc = self.procs.get(comp.name)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", comp.name, STOP_GRACE_S)
        # Children that ignored SIGTERM (or outlived their parent) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._set(comp.name, "stopped")

    def stop_all(self) -> None:
        self._phase("stopping")
        for comp in reversed(self.components):
            self.stop_one(comp)
        self._phase("stopped")

    # ---- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            for comp in self.components:
                self.start(comp)
        except Exception as exc:
            if self.stopping:
                self.stop_all()
                return 0
            name = next(
                (
                    c.name
                    for c in self.components
                    if self.state.components[c.name].status == "starting"
                ),
                None,
            )
            if name:
                self._set(name, "failed", str(exc))
                with open(self.paths.log(name), "a") as fh:
                    fh.write(f"[mlops] start-up failed: {exc}\n")
            log.error("start failed: %s", exc)
            self.stop_all()
            self._phase("failed", str(exc))
            return 1
        self._phase("running")
        while not self.stopping:
            self._watch()
            time.sleep(1.0)
        self.stop_all()
        return 0

    def _watch(self) -> None:
        for comp in self.components:
            proc = self.procs.get(comp.name)
            status = self.state.components[comp.name].status
            if proc is None or proc.poll() is None or status == "failed":
                continue
            recent = [
                t
                for t in self.restart_times.get(comp.name, [])
                if time.time() - t < RESTART_WINDOW_S
            ]
            if len(recent) >= MAX_RESTARTS:
                self._set(
                    comp.name, "failed", f"exited {MAX_RESTARTS} times in {RESTART_WINDOW_S:.0f}s"
                )
                continue
            self._set(comp.name, "restarting", f"exited with code {proc.returncode}")
            time.sleep(min(2 ** len(recent), 30))
            recent.append(time.time())
            self.restart_times[comp.name] = recent
            self.state.components[comp.name].restarts += 1
            try:
                self._spawn(comp)
                self._wait_healthy(comp)
                self._set(comp.name, "healthy")
            except StartFailed as exc:
                self._set(comp.name, "restarting", str(exc))

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received signal %d; stopping", signum)
        self.stopping = True
        if self.state.phase == "starting":
            # Interrupt start-up; run() stops what is already running.
            raise StartFailed("stop requested")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops-supervisor")
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    # Files the stack and its components create are private to their owner.
    os.umask(PRIVATE_UMASK)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = StackSettings(home=args.home)
    paths = Paths(args.home)
    paths.make()
    if pid_alive(_read_pid(paths.supervisor_pid)):
        log.error("a supervisor is already running for %s", args.home)
        return 1
    paths.supervisor_pid.write_text(str(os.getpid()))
    try:
        stack = Stack(settings, StackSecrets.load_or_create(args.home), paths)
        return Supervisor(stack, paths).run()
    finally:
        paths.supervisor_pid.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
