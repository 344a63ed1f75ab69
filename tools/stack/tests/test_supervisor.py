"""The supervisor's start order, restarts, backoff and stop, on fake processes and a fake clock.

Nothing here starts a process or really waits: a fake process exits when the test (or a
signal) says so, and the fake clock's time moves only when the supervisor sleeps.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from mlops_common.http import wait_until
from mlops_stack.components import Component
from mlops_stack.config import Paths
from mlops_stack.state import StackState
from mlops_stack.supervisor import (
    MAX_RESTARTS,
    PROBE_INTERVAL_S,
    RESTART_WINDOW_S,
    Clock,
    StartFailed,
    Supervisor,
)

# A guard against a hanging test, never a wait for something to be ready.
GUARD_S = 5.0


class FakeProcess:
    def __init__(self, name: str, pid: int, signals: list[tuple[str, int]], ignores_sigterm: bool):
        self.name, self.pid = name, pid
        self.returncode: int | None = None
        self.exited = threading.Event()
        # Set once someone waits for the exit without a timeout (the component's watcher).
        self.watched = threading.Event()
        self._signals = signals
        self._ignores_sigterm = ignores_sigterm

    def exit(self, code: int) -> None:
        self.returncode = code
        self.exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            self.watched.set()
            self.exited.wait()
        elif not self.exited.is_set():
            raise subprocess.TimeoutExpired(self.name, timeout)  # fake time: the grace is over
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signal_group(sig)  # the fake has no children

    def signal_group(self, signum: int) -> None:
        self._signals.append((self.name, signum))
        if self.returncode is None and (signum == signal.SIGKILL or not self._ignores_sigterm):
            self.exit(-signum)


class Launcher:
    """Launches fake processes and remembers each one, and every signal they were sent."""

    def __init__(self, ignores_sigterm: tuple[str, ...] = ()) -> None:
        self.launched: list[FakeProcess] = []
        self.signals: list[tuple[str, int]] = []
        self.changed = threading.Condition()
        self._ignores_sigterm = ignores_sigterm

    def __call__(
        self, comp: Component, env: dict[str, str], logfile: IO[bytes], cwd: Path
    ) -> FakeProcess:
        with self.changed:
            proc = FakeProcess(
                comp.name,
                1000 + len(self.launched),
                self.signals,
                comp.name in self._ignores_sigterm,
            )
            self.launched.append(proc)
            self.changed.notify_all()
        return proc

    def of(self, name: str) -> list[FakeProcess]:
        return [p for p in self.launched if p.name == name]

    def process(self, name: str, nth: int = 1) -> FakeProcess:
        """The ``nth`` process launched for ``name``, once it has been launched."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.of(name)) >= nth, GUARD_S)
        return self.of(name)[nth - 1]


class FakeClock(Clock):
    """Time passes only when the supervisor sleeps, and at once. Sleeps longer than a probe
    interval are restart backoffs: recorded, and held while ``release`` is clear."""

    def __init__(self) -> None:
        self.time = 0.0
        self.backoffs: list[float] = []
        self.release = threading.Event()
        self.release.set()
        self.changed = threading.Condition()

    def now(self) -> float:
        with self.changed:
            return self.time

    def sleep(self, seconds: float, interrupt: threading.Event) -> bool:
        if seconds > PROBE_INTERVAL_S:
            with self.changed:
                self.backoffs.append(seconds)
                self.changed.notify_all()
            self.release.wait()
        with self.changed:
            self.time += seconds
        return interrupt.is_set()

    def advance(self, seconds: float) -> None:
        with self.changed:
            self.time += seconds

    def until_backoffs(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.backoffs) >= count, GUARD_S)


def fake(
    name: str,
    depends_on: tuple[str, ...] = (),
    healthy: Callable[[], bool] = lambda: True,
    prepare: Callable[[], None] = lambda: None,
) -> Component:
    return Component(
        name=name,
        url=f"fake://{name}",
        ports=(),
        command=lambda: [name],
        healthy=healthy,
        prepare=prepare,
        depends_on=depends_on,
        start_timeout_s=5.0,
    )


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path / "state")
    paths.make()
    return paths


@pytest.fixture
def launcher() -> Launcher:
    return Launcher()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def supervise(
    paths: Paths, launcher: Launcher, clock: FakeClock, *components: Component
) -> Supervisor:
    return Supervisor(components, paths, inherited={}, launch=launcher, clock=clock)


def watch(supervisor: Supervisor, name: str) -> threading.Thread:
    """Start ``name`` and watch it in a thread of the test's own, as ``bring_up`` does."""
    supervisor.start(supervisor.components[name])
    watcher = threading.Thread(target=supervisor.watch, args=(supervisor.components[name],))
    watcher.start()
    return watcher


def test_components_start_once_their_dependencies_are_healthy_and_side_by_side(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    seen: dict[str, dict[str, str]] = {}

    def note(name: str) -> Callable[[], None]:
        def prepare() -> None:
            seen[name] = {n: c.status for n, c in supervisor.state.components.items()}

        return prepare

    meet = threading.Barrier(2, timeout=GUARD_S)

    def together() -> bool:
        # b's and c's first probes meet here: started one after the other, they never would.
        meet.wait()
        return True

    supervisor = supervise(
        paths,
        launcher,
        clock,
        fake("d", ("b", "c"), prepare=note("d")),
        fake("b", ("a",), together, note("b")),
        fake("c", ("a",), together, note("c")),
        fake("a", prepare=note("a")),
    )
    supervisor.bring_up()

    assert seen["b"]["a"] == seen["c"]["a"] == "healthy"
    assert seen["d"]["b"] == seen["d"]["c"] == "healthy"
    state = StackState.read(paths.state_file)
    assert state is not None
    assert {c.status for c in state.components.values()} == {"healthy"}
    for comp in state.components.values():
        assert comp.started_s is not None and comp.healthy_s is not None
        assert comp.pid == launcher.process(comp.name).pid
    supervisor.stop_all()


def test_a_failed_start_stops_the_start_and_names_the_component(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    supervisor = supervise(
        paths,
        launcher,
        clock,
        fake("db"),
        fake("api", ("db",), healthy=lambda: False),
        fake("worker", ("api",)),
    )
    with pytest.raises(StartFailed, match="api not healthy after 5s"):
        supervisor.bring_up()
    components = supervisor.state.components
    assert components["api"].status == "failed"
    assert "not healthy after 5s" in (components["api"].error or "")
    assert not launcher.of("worker")
    assert "start-up failed: api not healthy" in paths.log("api").read_text()

    supervisor.stop_all()
    # Stopped too, though it never became healthy.
    assert launcher.process("api").returncode == -signal.SIGTERM
    assert components["db"].status == "stopped"


def test_an_exit_while_starting_is_a_failed_start(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    def crashed() -> bool:
        launcher.process("api").exit(3)
        return False

    supervisor = supervise(paths, launcher, clock, fake("api", healthy=crashed))
    with pytest.raises(StartFailed, match="api exited with code 3 while starting"):
        supervisor.bring_up()


def test_an_exited_component_comes_back_after_a_doubling_backoff_until_it_exits_too_often(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    supervisor = supervise(paths, launcher, clock, fake("api"))
    watcher = watch(supervisor, "api")
    for attempt in range(1, MAX_RESTARTS + 2):
        proc = launcher.process("api", attempt)
        assert proc.watched.wait(GUARD_S)
        assert supervisor.state.components["api"].status == "healthy"
        proc.exit(1)
    watcher.join(GUARD_S)
    assert not watcher.is_alive()

    assert clock.backoffs == [1, 2, 4, 8, 16]
    api = supervisor.state.components["api"]
    assert api.status == "failed"
    assert api.error == f"exited {MAX_RESTARTS} times in {RESTART_WINDOW_S:.0f}s"
    assert api.restarts == MAX_RESTARTS
    assert len(launcher.of("api")) == MAX_RESTARTS + 1


def test_restarts_longer_ago_than_the_window_do_not_count(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    supervisor = supervise(paths, launcher, clock, fake("api"))
    watch(supervisor, "api")
    for attempt in range(1, 2 * MAX_RESTARTS):
        proc = launcher.process("api", attempt)
        assert proc.watched.wait(GUARD_S)
        clock.advance(RESTART_WINDOW_S)
        proc.exit(1)
    assert launcher.process("api", 2 * MAX_RESTARTS).watched.wait(GUARD_S)
    assert clock.backoffs == [1] * (2 * MAX_RESTARTS - 1)
    assert supervisor.state.components["api"].status == "healthy"
    supervisor.stop_all()


def test_a_restart_that_never_gets_healthy_is_killed_and_counts(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    # The second process never gets healthy.
    supervisor = supervise(
        paths, launcher, clock, fake("api", healthy=lambda: len(launcher.launched) != 2)
    )
    watch(supervisor, "api")
    assert launcher.process("api").watched.wait(GUARD_S)
    launcher.process("api").exit(1)
    # Killed after its start timeout; a third comes after the next backoff.
    assert launcher.process("api", 3).watched.wait(GUARD_S)
    assert launcher.process("api", 2).returncode == -signal.SIGKILL
    assert clock.backoffs == [1, 2]
    assert supervisor.state.components["api"].restarts == 2
    assert supervisor.state.components["api"].status == "healthy"
    supervisor.stop_all()


def test_one_components_backoff_does_not_delay_noticing_anothers_exit(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    supervisor = supervise(paths, launcher, clock, fake("api"), fake("worker"))
    supervisor.bring_up()
    for name in ("api", "worker"):
        assert launcher.process(name).watched.wait(GUARD_S)
    clock.release.clear()  # backoffs last until released
    launcher.process("api").exit(1)
    clock.until_backoffs(1)
    launcher.process("worker").exit(1)
    # Noticed while api's backoff still runs.
    clock.until_backoffs(2)
    assert supervisor.state.components["worker"].status == "restarting"
    assert len(launcher.launched) == 2
    clock.release.set()
    for name in ("api", "worker"):
        assert launcher.process(name, 2).watched.wait(GUARD_S)
        assert supervisor.state.components[name].status == "healthy"
    supervisor.stop_all()


def test_stop_takes_dependents_first_and_kills_what_ignores_sigterm(
    paths: Paths, clock: FakeClock
) -> None:
    launcher = Launcher(ignores_sigterm=("api",))
    supervisor = supervise(
        paths, launcher, clock, fake("db"), fake("api", ("db",)), fake("worker", ("api",))
    )
    supervisor.bring_up()
    for name in ("db", "api", "worker"):
        assert launcher.process(name).watched.wait(GUARD_S)

    supervisor.stop_all()

    term, kill = signal.SIGTERM, signal.SIGKILL
    assert launcher.signals == [
        ("worker", term),
        ("worker", kill),  # its group: children that outlived it
        ("api", term),
        ("api", kill),
        ("db", term),
        ("db", kill),
    ]
    assert launcher.process("api").returncode == -kill
    assert launcher.process("worker").returncode == -term
    # Watched processes that exit because of the stop are not restarted.
    assert len(launcher.launched) == 3
    state = StackState.read(paths.state_file)
    assert state is not None and state.phase == "stopped"
    assert {c.status for c in state.components.values()} == {"stopped"}


def test_a_stop_during_a_backoff_ends_it_without_a_restart(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    supervisor = supervise(paths, launcher, clock, fake("api"))
    watcher = watch(supervisor, "api")
    assert launcher.process("api").watched.wait(GUARD_S)
    clock.release.clear()
    launcher.process("api").exit(1)
    clock.until_backoffs(1)
    supervisor.stop_all()
    clock.release.set()
    watcher.join(GUARD_S)
    assert not watcher.is_alive()
    assert len(launcher.launched) == 1


def test_a_held_component_stays_stopped_until_released_and_costs_no_restart(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    supervisor = supervise(paths, launcher, clock, fake("db"))
    watcher = watch(supervisor, "db")
    assert launcher.process("db").watched.wait(GUARD_S)

    # What `mlops stop db` does: hold it, then ask it to stop.
    paths.held("db").parent.mkdir(exist_ok=True)
    paths.held("db").touch()
    launcher.process("db").exit(0)

    def status() -> str:
        state = StackState.read(paths.state_file)
        assert state is not None
        return state.components["db"].status

    assert wait_until(lambda: status() == "stopped", GUARD_S, interval_s=0.01)
    # Held for a while of the supervisor's time (it polls for the release on its clock).
    assert wait_until(lambda: clock.now() >= 60.0, GUARD_S, interval_s=0.01)
    assert status() == "stopped"
    assert "mlops start db" in (supervisor.state.components["db"].error or "")
    assert len(launcher.of("db")) == 1

    paths.held("db").unlink()  # `mlops start db`
    assert launcher.process("db", 2).watched.wait(GUARD_S)
    assert status() == "healthy"
    db = supervisor.state.components["db"]
    assert db.restarts == 0 and clock.backoffs == []
    supervisor.stop_all()
    watcher.join(GUARD_S)
    assert not watcher.is_alive()


def test_a_hold_left_by_an_earlier_run_is_cleared_at_start(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    paths.held("db").parent.mkdir(exist_ok=True)
    paths.held("db").touch()
    supervisor = supervise(paths, launcher, clock, fake("db"))
    runner = threading.Thread(target=supervisor.run)
    # run() installs signal handlers, which only the main thread may do.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(signal, "signal", lambda *_: None)
        runner.start()
        assert launcher.process("db").watched.wait(GUARD_S)
        assert not paths.held("db").exists()
        supervisor.stopping.set()
        runner.join(GUARD_S)
    assert not runner.is_alive()


def test_stop_uses_the_components_own_stop_signal(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    postgres = fake("postgres")
    postgres.stop_signal = signal.SIGINT
    supervisor = supervise(paths, launcher, clock, postgres)
    supervisor.bring_up()
    supervisor.stop_all()
    assert launcher.signals[0] == ("postgres", signal.SIGINT)


def test_the_state_names_a_restarted_process_before_it_is_healthy(
    paths: Paths, launcher: Launcher, clock: FakeClock
) -> None:
    ready = threading.Event()

    def healthy() -> bool:
        # The first process is healthy at once; the second's probe blocks until released.
        return len(launcher.launched) == 1 or ready.wait(GUARD_S)

    supervisor = supervise(paths, launcher, clock, fake("worker", healthy=healthy))
    watch(supervisor, "worker")
    assert launcher.process("worker").watched.wait(GUARD_S)
    launcher.process("worker").exit(-9)
    second = launcher.process("worker", 2)

    def named() -> bool:
        state = StackState.read(paths.state_file)
        return state is not None and state.components["worker"].pid == second.pid

    # Still starting (not healthy), yet a signal sent by pid reaches the new process.
    assert wait_until(named, GUARD_S, interval_s=0.01)
    assert supervisor.state.components["worker"].status == "restarting"
    ready.set()
    assert second.watched.wait(GUARD_S)
    supervisor.stop_all()
