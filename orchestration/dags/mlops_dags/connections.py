"""Service endpoints and credentials come from Airflow connections, which the stack sets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from mlops_common.storage import ObjectStore

TRAINER = "trainer_api"
GATEWAY = "model_gateway"
INFERENCE = "inference_api"
S3 = "s3_data"


def _connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


def base_url(conn: Any) -> str:
    host = str(conn.host)
    if "://" in host:
        return host.rstrip("/")
    scheme = conn.schema or "http"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def service_client(conn_id: str, timeout_s: float = 30.0) -> httpx.Client:
    """HTTP client for a service; a password on the connection is sent as a bearer token."""
    conn = _connection(conn_id)
    headers = {"X-Actor": "airflow"}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    return httpx.Client(
        base_url=base_url(conn),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=5.0),
        transport=httpx.HTTPTransport(retries=3),
    )


def object_store() -> ObjectStore:
    from mlops_common.settings import S3Settings
    from mlops_common.storage import ObjectStore

    conn = _connection(S3)
    extra = conn.extra_dejson
    return ObjectStore.from_settings(
        S3Settings(
            endpoint_url=extra.get("endpoint_url"),
            access_key_id=conn.login,
            secret_access_key=conn.password,
            region=extra.get("region_name", "us-east-1"),
        )
    )
