"""Starting PostgreSQL the way `mlops up` does: below a private directory, and when it fails."""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlops_stack import binaries
from mlops_stack.access import can_traverse
from mlops_stack.cli import Cli
from mlops_stack.components import Stack, inherited_env
from mlops_stack.config import Paths, StackSecrets, StackSettings
from mlops_stack.state import StackState
from mlops_stack.supervisor import Supervisor


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stack(home: Path) -> tuple[Stack, Paths]:
    settings = StackSettings(home=home, postgres_port=_free_port(), profile="serving")
    paths = Paths(home)
    paths.make()
    return Stack(settings, StackSecrets.load_or_create(home), paths), paths


@pytest.mark.skipif(os.geteuid() != 0, reason="the private-parent case only arises as root")
def test_postgres_starts_below_a_private_directory_as_root(tmp_path: Path) -> None:
    # Short names: PostgreSQL's socket path (below the home) must stay under 108 bytes.
    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    home = private / "c" / ".mlops"
    stack, paths = _stack(home)
    supervisor = Supervisor.for_stack(stack, paths)
    postgres = supervisor.components["postgres"]
    try:
        supervisor.start(postgres)
        assert supervisor.state.components["postgres"].status == "healthy"
    finally:
        supervisor.stop_one(postgres)
    user = binaries.unprivileged_user()
    assert user is not None
    # The database user may pass through the private directory, and no one else gained anything.
    assert can_traverse(private, user)
    assert stat.S_IMODE(private.stat().st_mode) & 0o007 == 0
    data = paths.data("postgres")
    assert data.stat().st_uid == user.pw_uid
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    # The second start finds the cluster again.
    try:
        supervisor.start(postgres)
        assert supervisor.state.components["postgres"].status == "healthy"
    finally:
        supervisor.stop_one(postgres)


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """``Supervisor.run`` installs its own handlers; pytest's come back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("signal_handlers")
def test_a_failing_initdb_shows_its_own_message_to_the_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "state"
    stack, paths = _stack(home)
    # A data directory that is not empty but holds no cluster: initdb refuses it.
    data = paths.data("postgres")
    data.mkdir(parents=True)
    (data / "stray-file").write_text("left over\n")

    # PostgreSQL alone: its failure is the test, not what other components' ports hold.
    postgres = stack.all_components()["postgres"]
    assert Supervisor([postgres], paths, inherited=inherited_env(os.environ, stack)).run() == 1

    state = StackState.read(paths.state_file)
    assert state is not None and state.phase == "failed"
    assert state.components["postgres"].status == "failed"
    assert "initdb failed" in (state.error or "")
    assert "is not empty" in (state.error or "")
    assert "is not empty" in paths.log("postgres").read_text()

    Cli(stack.settings)._report_failure(state)
    shown = capsys.readouterr().out
    assert "start-up failed: initdb failed with exit code 1" in shown
    assert "is not empty" in shown
