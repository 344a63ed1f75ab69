"""The supervisor: starts each component as soon as those it depends on are healthy, restarts the
ones that die, and stops them all, dependents first.

It runs detached from the terminal (``mlops up`` spawns it) and is the single process that
``mlops down`` signals. Each component has a thread of its own, from its start to its stop, so
one component's start-up or restart backoff never delays another's start or noticing its exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from graphlib import TopologicalSorter
from pathlib import Path
from typing import IO, Protocol

from mlops_stack.components import Component, Stack, inherited_env
from mlops_stack.config import PRIVATE_UMASK, Paths, StackSecrets, StackSettings
from mlops_stack.state import ComponentState, StackState, pid_alive, tail

log = logging.getLogger("mlops.supervisor")

STOP_GRACE_S = 20.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0
MAX_BACKOFF_S = 30.0
# How often a starting component is probed: every interval is latency on the way to healthy,
# and a probe is one cheap local request.
PROBE_INTERVAL_S = 0.2


class StartFailed(RuntimeError):
    pass


class Process(Protocol):
    """What the supervisor needs of a component's running process."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def signal_group(self, signum: int) -> None: ...


class Child(subprocess.Popen[bytes]):
    """A component's process: the leader of its own process group, which holds its children
    (uvicorn and Celery workers) too."""

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


Launch = Callable[[Component, dict[str, str], IO[bytes], Path], Process]


def launch_process(comp: Component, env: dict[str, str], logfile: IO[bytes], cwd: Path) -> Child:
    return Child(
        comp.command(),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        # Own process group: stopping it also stops its children.
        start_new_session=True,
        user=comp.user.pw_uid if comp.user else None,
        group=comp.user.pw_gid if comp.user else None,
        cwd=cwd,
    )


class Clock:
    """The supervisor's time; tests pass one in which waiting takes no time."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, interrupt: threading.Event) -> bool:
        """Wait ``seconds``, or less when ``interrupt`` is set; whether it was."""
        return interrupt.wait(seconds)


def in_dependency_order(graph: Mapping[str, Collection[str]], visit: Callable[[str], None]) -> None:
    """Call ``visit(node)`` in a thread of its own once it has returned for every node that
    ``node`` depends on, so independent nodes are visited at the same time.

    After a visit raises, no new visit begins; the exception is raised again once the visits
    under way have returned.
    """
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    finished: queue.SimpleQueue[tuple[str, Exception | None]] = queue.SimpleQueue()

    def run(node: str) -> None:
        try:
            visit(node)
        except Exception as exc:  # raised again in the caller's thread
            finished.put((node, exc))
        else:
            finished.put((node, None))

    running = 0
    failure: Exception | None = None
    while failure is None and sorter.is_active():
        for node in sorter.get_ready():
            threading.Thread(target=run, args=(node,), name=node, daemon=True).start()
            running += 1
        node, failure = finished.get()
        running -= 1
        if failure is None:
            sorter.done(node)
    for _ in range(running):
        finished.get()
    if failure is not None:
        raise failure


class Supervisor:
    def __init__(
        self,
        components: Iterable[Component],
        paths: Paths,
        *,
        inherited: Mapping[str, str],
        profile: str = "full",
        launch: Launch = launch_process,
        clock: Clock | None = None,
    ) -> None:
        self.components = {c.name: c for c in components}
        self.paths = paths
        self.inherited = inherited
        self.launch = launch
        self.clock = clock or Clock()
        self.began = self.clock.now()
        self.procs: dict[str, Process] = {}
        self.logs: dict[str, IO[bytes]] = {}
        # Guards procs, logs and state (and the state file) across the components' threads.
        self.lock = threading.RLock()
        self.state = StackState(
            supervisor_pid=os.getpid(),
            profile=profile,
            components={c.name: ComponentState(c.name, c.url) for c in self.components.values()},
        )
        # Set when the stack is to stop; every wait of every component's thread ends on it.
        self.stopping = threading.Event()
        self.stop_requested = False  # by a signal, rather than by a failed start

    @classmethod
    def for_stack(cls, stack: Stack, paths: Paths) -> Supervisor:
        return cls(
            stack.components(),
            paths,
            inherited=inherited_env(os.environ, stack),
            profile=stack.settings.profile,
        )

    # ---- state ---------------------------------------------------------------------------
    def _set(self, name: str, status: str, error: str | None = None) -> None:
        with self.lock:
            comp = self.state.components[name]
            comp.status, comp.error, comp.since = status, error, time.time()
            proc = self.procs.get(name)
            comp.pid = proc.pid if proc else None
            self.state.write(self.paths.state_file)
        log.info("%s: %s%s", name, status, f" ({error})" if error else "")

    def _phase(self, phase: str, error: str | None = None) -> None:
        with self.lock:
            self.state.phase, self.state.error = phase, error
            self.state.write(self.paths.state_file)

    def _elapsed(self) -> float:
        return round(self.clock.now() - self.began, 2)

    # ---- one component -------------------------------------------------------------------
    def _spawn(self, comp: Component) -> Process:
        with self.lock:
            # Checked under the lock stop_one takes: nothing is spawned that it would miss.
            if self.stopping.is_set():
                raise StartFailed("stop requested")
            logfile = self.logs.get(comp.name)
            if logfile is None:
                logfile = open(self.paths.log(comp.name), "ab")  # noqa: SIM115 - kept open while it runs
                self.logs[comp.name] = logfile
            proc = self.launch(comp, {**self.inherited, **comp.env}, logfile, self.paths.home)
            self.procs[comp.name] = proc
        return proc

    def _until_healthy(self, comp: Component, proc: Process) -> None:
        deadline = self.clock.now() + comp.start_timeout_s
        while True:
            if proc.poll() is not None:
                last = tail(self.paths.log(comp.name), 15)
                raise StartFailed(
                    f"{comp.name} exited with code {proc.poll()} while starting"
                    + (f"; its last output:\n{last}" if last else "")
                )
            if comp.healthy():
                return
            if self.clock.now() >= deadline:
                raise StartFailed(f"{comp.name} not healthy after {comp.start_timeout_s:.0f}s")
            if self.clock.sleep(PROBE_INTERVAL_S, self.stopping):
                raise StartFailed("stop requested")

    def start(self, comp: Component) -> None:
        """Prepare, spawn, wait until healthy, then the after-healthy step."""
        with self.lock:
            self.state.components[comp.name].started_s = self._elapsed()
        self._set(comp.name, "starting")
        comp.prepare()
        proc = self._spawn(comp)
        self._set(comp.name, "starting")
        self._until_healthy(comp, proc)
        comp.after_healthy()
        with self.lock:
            self.state.components[comp.name].healthy_s = self._elapsed()
        self._set(comp.name, "healthy")

    def watch(self, comp: Component) -> None:
        """Restart ``comp`` whenever it exits, after a backoff that doubles with each restart
        in the last RESTART_WINDOW_S; after MAX_RESTARTS of them it is left failed. Returns
        once the stack is stopping."""
        recent: list[float] = []
        while True:
            code = self.procs[comp.name].wait()
            if self.stopping.is_set():
                return
            if self.paths.held(comp.name).exists():
                # Stopped on purpose (`mlops stop`): back when released, outside the crash budget.
                if not self._hold(comp):
                    return
                continue
            now = self.clock.now()
            recent = [t for t in recent if now - t < RESTART_WINDOW_S]
            if len(recent) >= MAX_RESTARTS:
                self._set(
                    comp.name, "failed", f"exited {MAX_RESTARTS} times in {RESTART_WINDOW_S:.0f}s"
                )
                return
            self._set(comp.name, "restarting", f"exited with code {code}")
            if self.clock.sleep(min(2.0 ** len(recent), MAX_BACKOFF_S), self.stopping):
                return
            recent.append(self.clock.now())
            with self.lock:
                self.state.components[comp.name].restarts += 1
            try:
                proc = self._spawn(comp)
                # The state names the new process at once: whoever signals it must not hit the
                # one that exited.
                self._set(comp.name, "restarting", f"exited with code {code}; starting again")
                self._until_healthy(comp, proc)
            except Exception as exc:
                if self.stopping.is_set():
                    return
                self._set(comp.name, "restarting", str(exc))
                # Not healthy in time (or not started): that attempt counts, and it goes.
                self.procs[comp.name].signal_group(signal.SIGKILL)
                continue
            self._set(comp.name, "healthy")

    def _hold(self, comp: Component) -> bool:
        """Keep ``comp`` stopped while it is held, then start it again. False once the stack
        is stopping."""
        self._set(comp.name, "stopped", f"held by `mlops stop`; `mlops start {comp.name}`")
        while self.paths.held(comp.name).exists():
            if self.clock.sleep(PROBE_INTERVAL_S, self.stopping):
                return False
        try:
            proc = self._spawn(comp)
            self._set(comp.name, "starting")
            self._until_healthy(comp, proc)
        except Exception as exc:
            if self.stopping.is_set():
                return False
            # From here on an ordinary failed restart: the next exit goes through the backoff.
            self._set(comp.name, "restarting", str(exc))
            self.procs[comp.name].signal_group(signal.SIGKILL)
            return True
        self._set(comp.name, "healthy")
        return True

    def stop_one(self, comp: Component) -> None:
        with self.lock:
            proc = self.procs.get(comp.name)
        if proc is None or proc.poll() is not None:
            return
        # To the leader only, as Docker and Kubernetes do: a Celery worker then finishes the
        # task it runs (warm shutdown) instead of its pool processes dying mid-task.
        proc.send_signal(comp.stop_signal)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", comp.name, STOP_GRACE_S)
        # Children that ignored SIGTERM (or outlived their parent) go too.
        proc.signal_group(signal.SIGKILL)
        proc.wait()
        self._set(comp.name, "stopped")

    # ---- the whole stack -----------------------------------------------------------------
    def bring_up(self) -> None:
        """Start every component as soon as those it depends on are healthy; from then on it
        is watched. Raises the first start-up failure, once the other starts have given up."""
        graph = {name: comp.depends_on for name, comp in self.components.items()}
        in_dependency_order(graph, self._bring_up_one)

    def _bring_up_one(self, name: str) -> None:
        comp = self.components[name]
        try:
            self.start(comp)
        except Exception as exc:
            # A start that gave up because of another's failure (or a stop) did not fail.
            if not self.stopping.is_set():
                self._set(name, "failed", str(exc))
                with open(self.paths.log(name), "a") as fh:
                    fh.write(f"[mlops] start-up failed: {exc}\n")
            self.stopping.set()
            raise
        threading.Thread(target=self.watch, args=(comp,), name=f"watch {name}", daemon=True).start()

    def stop_all(self) -> None:
        """Stop every component once those that depend on it have stopped."""
        self.stopping.set()
        self._phase("stopping")
        dependents: dict[str, set[str]] = {name: set() for name in self.components}
        for name, comp in self.components.items():
            for dependency in comp.depends_on:
                dependents[dependency].add(name)
        in_dependency_order(dependents, lambda name: self.stop_one(self.components[name]))
        self._phase("stopped")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # A hold left by an earlier run would keep a component down after its first exit.
        for held in self.paths.held_dir.glob("*"):
            held.unlink(missing_ok=True)
        self._phase("starting")
        try:
            self.bring_up()
        except Exception as exc:
            self.stop_all()
            if self.stop_requested:
                return 0
            log.error("start failed: %s", exc)
            self._phase("failed", str(exc))
            return 1
        self._phase("running")
        self.stopping.wait()
        self.stop_all()
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received signal %d; stopping", signum)
        self.stop_requested = True
        self.stopping.set()


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
        return Supervisor.for_stack(stack, paths).run()
    finally:
        paths.supervisor_pid.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
