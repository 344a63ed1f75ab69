#!/bin/sh
# Entry point of the MLflow image. With MLFLOW_AUTH_DATABASE_URI set (the database of MLflow's
# basic-auth app, `mlflow server --app-name basic-auth`), it writes the auth app's ini from the
# environment before running the command, so no password is baked into the image or put on a
# command line:
#   MLFLOW_AUTH_DATABASE_URI      its users and permissions (e.g. postgresql+psycopg2://.../mlflow_auth)
#   MLFLOW_ADMIN_USERNAME         the admin MLflow creates on the first start (default admin)
#   MLFLOW_ADMIN_PASSWORD         that admin's password (only used while the admin does not exist)
#   MLFLOW_DEFAULT_PERMISSION     what every user may do without a grant (default READ)
#   MLFLOW_AUTH_CONFIG_PATH       where the ini goes (default /tmp/mlflow-auth/basic_auth.ini),
#                                 mode 0600 in a 0700 folder; MLflow reads it from this variable.
# The server also needs MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF), the same in every worker. The
# `mlflow server` process initialises the auth database and the admin once, before it starts its
# workers, so they never race on a first start.
set -eu

if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
    : "${MLFLOW_ADMIN_PASSWORD:?MLFLOW_ADMIN_PASSWORD must be set with MLFLOW_AUTH_DATABASE_URI}"
    MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-/tmp/mlflow-auth/basic_auth.ini}
    export MLFLOW_AUTH_CONFIG_PATH
    umask 077
    mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
    python - "$MLFLOW_AUTH_CONFIG_PATH" <<'PY'
import os, sys

# MLflow reads the file with configparser's interpolation: a literal % is written %%.
def value(name, default=None):
    raw = os.environ.get(name) or default
    if raw is None or "\n" in raw or "\r" in raw:
        raise SystemExit(f"{name} is missing or holds a line break")
    return raw.replace("%", "%%")

lines = [
    "[mlflow]",
    f"default_permission = {value('MLFLOW_DEFAULT_PERMISSION', 'READ')}",
    f"database_uri = {value('MLFLOW_AUTH_DATABASE_URI')}",
    f"admin_username = {value('MLFLOW_ADMIN_USERNAME', 'admin')}",
    f"admin_password = {value('MLFLOW_ADMIN_PASSWORD')}",
    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    # Each password check is a scrypt hash (~95 ms of CPU): cache good ones for 10 s.
    f"auth_cache_ttl_seconds = {value('MLFLOW_AUTH_CACHE_TTL_SECONDS', '10')}",
]
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as fh:
    fh.write("\n".join(lines) + "\n")
PY
    umask 022
fi
# Written to the ini: the server processes do not need them in their environment.
unset MLFLOW_AUTH_DATABASE_URI MLFLOW_ADMIN_PASSWORD

exec "$@"
