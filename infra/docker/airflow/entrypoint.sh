#!/bin/sh
# Entry point of every Airflow container (api-server, scheduler, dag-processor, triggerer, celery
# worker, db migrate). It only writes the simple auth manager's passwords file from the
# environment, so the login is the one in the deployment's .env and not a password Airflow
# generates and prints; then it runs the command.
set -eu

# Where the simple auth manager reads passwords: its setting, else its default file name.
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-${AIRFLOW_HOME:-/opt/airflow}/simple_auth_manager_passwords.json.generated}"
if [ -n "${AIRFLOW_PASSWORD:-}" ]; then
    : "${AIRFLOW_USERNAME:?AIRFLOW_USERNAME must be set with AIRFLOW_PASSWORD}"
    umask 077
    # json.dumps escapes whatever the password holds.
    python - "$passwords_file" <<'PY'
import json, os, sys
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump({os.environ["AIRFLOW_USERNAME"]: os.environ["AIRFLOW_PASSWORD"]}, fh)
PY
    umask 022
fi
# The password has done its work: the Airflow processes do not need it in their environment.
unset AIRFLOW_PASSWORD

exec "$@"
