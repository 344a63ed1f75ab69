"""`mlops token` against the stack's real PostgreSQL, and the service tokens `up` ensures."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlops_common.auth import metadata
from mlops_stack.cli import main
from mlops_stack.components import SERVICE_TOKENS, Stack
from mlops_stack.config import Paths, StackSecrets, StackSettings
from mlops_stack.supervisor import Supervisor


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A throwaway PostgreSQL started by the stack's own component, with its databases."""
    home = tmp_path_factory.mktemp("tokens") / "state"
    port = _free_port()
    paths = Paths(home)
    paths.make()
    stack = Stack(
        StackSettings(home=home, postgres_port=port, profile="serving"),
        StackSecrets.load_or_create(home),
        paths,
    )
    supervisor = Supervisor.for_stack(stack, paths)
    postgres = supervisor.components["postgres"]
    supervisor.start(postgres)
    try:
        yield stack
    finally:
        supervisor.stop_one(postgres)


@pytest.fixture
def cli(database: Stack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("MLOPS_POSTGRES_PORT", str(database.settings.postgres_port))
    return ["--home", str(database.paths.home), "token"]


def test_without_the_table_the_command_says_the_gateway_makes_it(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*cli, "list"]) == 2
    assert "the model gateway creates it" in capsys.readouterr().err


def test_create_list_revoke(
    database: Stack, cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = database.token_store()
    # The gateway's migrations make this table when it starts; the same definition here.
    metadata.create_all(store.engine)
    database.ensure_tokens()
    database.ensure_tokens()  # idempotent on every `up`
    principal = store.lookup(database.secrets.token_inference)
    assert principal is not None
    assert principal.scopes == frozenset(SERVICE_TOKENS["inference"])

    assert main([*cli, "create", "ci", "--scope", "predict", "--scope", "models:read",
                 "--models", "fraud-*", "--expires", "30d"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n" and token.startswith("mlops_")
    ci = store.lookup(token)
    assert ci is not None and ci.models == "fraud-*" and ci.has("predict")

    assert main([*cli, "create", "ci", "--scope", "predict"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*cli, "create", "x", "--scope", "root"]) == 2
    assert "unknown scope" in capsys.readouterr().err
    assert main([*cli, "create", "x", "--scope", "predict", "--expires", "soon"]) == 2
    assert "duration" in capsys.readouterr().err

    assert main([*cli, "revoke", "ci"]) == 0
    assert store.lookup(token) is None
    assert main([*cli, "revoke", "nobody"]) == 2
    assert "no token named" in capsys.readouterr().err

    assert main([*cli, "list"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "SCOPES", "MODELS", "CREATED", "EXPIRES", "LAST", "USED",
                                "STATE"]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"ci", *SERVICE_TOKENS}
    assert rows["ci"].rstrip().endswith("revoked") and "fraud-*" in rows["ci"]
    assert rows["inference"].rstrip().endswith("active")
    # Never a secret.
    assert token not in table and database.secrets.token_admin not in table
    store.engine.dispose()


def test_a_stopped_database_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "state"
    StackSecrets.load_or_create(home)
    monkeypatch.setenv("MLOPS_POSTGRES_PORT", str(_free_port()))
    assert main(["--home", str(home), "token", "list"]) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL is not reachable" in err and "mlops up" in err
