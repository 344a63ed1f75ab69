"""infra/compose/gen-env.sh: the env file compose runs on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mlops_common.signing import public_key_of

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "infra" / "compose"


def _generated() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(COMPOSE / "gen-env.sh")], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if line and line[0] != "#")


def test_the_public_signing_key_is_the_private_keys_own() -> None:
    """gen-env.sh derives it without the cryptography package; this checks it with it."""
    for _ in range(3):
        env = _generated()
        assert env["MODEL_SIGNING_PUBLIC_KEYS"] == public_key_of(env["MODEL_SIGNING_KEY"])


def test_every_variable_compose_requires_is_generated() -> None:
    text = "\n".join(
        line
        for line in (COMPOSE / "compose.yaml").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert "MODEL_SIGNING_KEY" in required
    example = set(re.findall(r"^(\w+)=", (COMPOSE / ".env.example").read_text(), re.M))
    generated = set(_generated())
    assert required <= generated, sorted(required - generated)
    assert required <= example, sorted(required - example)
