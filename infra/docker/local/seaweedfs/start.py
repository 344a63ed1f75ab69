"""Entry point of the SeaweedFS stand-in: writes what must not be on a command line, runs weed.

From the environment it writes, readable by this user only (mode 0600, in a 0700 folder):
  - the S3 identities file (-s3.config): for each name in S3_IDENTITIES (comma-separated),
    S3_<NAME>_ACCESS_KEY, S3_<NAME>_SECRET_KEY and S3_<NAME>_ACTIONS (comma-separated SeaweedFS
    actions such as Read:mlflow, Write:mlflow, List:mlflow or Admin);
  - an options file (-options) with the admin UI's login, SEAWEEDFS_ADMIN_USER and
    SEAWEEDFS_ADMIN_PASSWORD (when set).
Those variables are then removed from the environment and `weed` is executed with the arguments
given (e.g. `mini -dir=/data ...`) plus -s3.config and -options.
"""

from __future__ import annotations

import json
import os
import re
import sys

CONF_DIR = os.environ.get("SEAWEEDFS_CONF_DIR", "/run/seaweedfs")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def identities(env: dict[str, str]) -> list[dict[str, object]]:
    out = []
    for name in filter(None, (n.strip() for n in env.get("S3_IDENTITIES", "").split(","))):
        if not _NAME.match(name):
            raise SystemExit(f"bad identity name {name!r} in S3_IDENTITIES")
        key = name.upper().replace("-", "_")
        try:
            access, secret = env[f"S3_{key}_ACCESS_KEY"], env[f"S3_{key}_SECRET_KEY"]
            actions = [a.strip() for a in env[f"S3_{key}_ACTIONS"].split(",") if a.strip()]
        except KeyError as exc:
            raise SystemExit(f"identity {name}: {exc.args[0]} is not set") from None
        if not access or not secret or not actions:
            raise SystemExit(f"identity {name}: empty access key, secret key or actions")
        out.append(
            {
                "name": name,
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": actions,
            }
        )
    if not out:
        raise SystemExit("S3_IDENTITIES names no identity: the S3 API would accept anyone")
    return out


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def main() -> None:
    env = dict(os.environ)
    os.umask(0o077)
    os.makedirs(CONF_DIR, mode=0o700, exist_ok=True)
    config = os.path.join(CONF_DIR, "s3-identities.json")
    options = os.path.join(CONF_DIR, "weed.options")
    write_private(config, json.dumps({"identities": identities(env)}, indent=2) + "\n")
    lines = []
    if env.get("SEAWEEDFS_ADMIN_PASSWORD"):
        lines.append(f"admin.user={env.get('SEAWEEDFS_ADMIN_USER') or 'admin'}")
        lines.append(f"admin.password={env['SEAWEEDFS_ADMIN_PASSWORD']}")
    write_private(options, "".join(line + "\n" for line in lines))
    for key in list(os.environ):
        if key.startswith(("S3_", "SEAWEEDFS_ADMIN_", "AWS_")):
            del os.environ[key]
    args = sys.argv[1:] or ["mini", "-dir=/data"]
    os.execvp("weed", ["weed", *args, f"-options={options}", f"-s3.config={config}"])  # noqa: S606 - exec, not a subprocess


if __name__ == "__main__":
    main()
