"""One-shot `mlflow-users` job of the compose stack: MLflow's users for the platform's services.

Runs in the MLflow image once the tracking server (basic-auth app) is healthy. As MLflow's admin
(HTTP basic auth), it creates the users `trainer` and `model-gateway` with the passwords from the
env file (an existing user gets its password set again, so a rotated secret takes effect) and
grants them what they need beyond the default READ, the same grants `mlops up` makes:
the trainer EDIT on experiments and registered models (it writes runs and versions into ones
others may have created), the gateway EDIT on registered models (it moves aliases).

Standard library only. Settings (environment): MLFLOW_TRACKING_URI, MLFLOW_ADMIN_USERNAME,
MLFLOW_ADMIN_PASSWORD, MLFLOW_TRAINER_PASSWORD, MLFLOW_GATEWAY_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

USERS = {"trainer": "MLFLOW_TRAINER_PASSWORD", "model-gateway": "MLFLOW_GATEWAY_PASSWORD"}
# (user, resource type, pattern, permission)
GRANTS = (
    ("trainer", "experiment", "*", "EDIT"),
    ("trainer", "registered_model", "*", "EDIT"),
    ("model-gateway", "registered_model", "*", "EDIT"),
)


def call(
    base: str, auth: str, method: str, path: str, body: dict[str, Any] | None
) -> tuple[int, str]:
    request = urllib.request.Request(  # noqa: S310 - the URL comes from the compose file
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"content-type": "application/json", "authorization": auth},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def exists(status: int, text: str) -> bool:
    return status == 400 and "RESOURCE_ALREADY_EXISTS" in text


def main() -> int:
    base = os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5050").rstrip("/")
    admin = os.environ.get("MLFLOW_ADMIN_USERNAME", "admin")
    pair = f"{admin}:{os.environ['MLFLOW_ADMIN_PASSWORD']}".encode()
    auth = "Basic " + base64.b64encode(pair).decode()
    for _ in range(30):  # healthy may come before every worker answers
        status, text = call(base, auth, "GET", "/api/2.0/mlflow/users/get?username=" + admin, None)
        if status == 200:
            break
        print(f"mlflow-users: MLflow not ready (HTTP {status} {text[:200]}); retrying", flush=True)
        time.sleep(2)
    else:
        return 1
    for username, var in USERS.items():
        body = {"username": username, "password": os.environ[var]}
        status, text = call(base, auth, "POST", "/api/2.0/mlflow/users/create", body)
        if exists(status, text):
            status, text = call(base, auth, "PATCH", "/api/2.0/mlflow/users/update-password", body)
            what = "password set again"
        else:
            what = "created"
        if status != 200:
            print(f"mlflow-users: user {username}: HTTP {status} {text[:300]}", file=sys.stderr)
            return 1
        print(f"mlflow-users: {username} {what}", flush=True)
    for username, resource_type, pattern, permission in GRANTS:
        body = {
            "username": username,
            "resource_type": resource_type,
            "resource_id": pattern,
            "permission": permission,
        }
        status, text = call(base, auth, "POST", "/api/3.0/mlflow/users/permissions/grant", body)
        if status != 200 and not exists(status, text):
            print(f"mlflow-users: grant {body}: HTTP {status} {text[:300]}", file=sys.stderr)
            return 1
        print(f"mlflow-users: {username} {permission} on {resource_type} {pattern}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
