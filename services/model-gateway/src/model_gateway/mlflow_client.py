"""The few MLflow REST calls the gateway makes: MLflow unreachable, slow or failing is a 503
(retry later), a malformed or refused answer a 502."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from mlops_common.errors import BadRequest, UpstreamError, UpstreamUnavailable

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"


class MlflowApiError(Exception):
    """A 4xx answer from MLflow; the caller knows which request field it is about."""

    def __init__(self, status_code: int, error_code: str, message: str) -> None:
        super().__init__(f"{status_code} {error_code}: {message}")
        self.status_code = status_code
        self.error_code = error_code
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status_code == 404 or self.error_code == "RESOURCE_DOES_NOT_EXIST"


class MlflowClient:
    """Thin async wrapper over MLflow's model registry and tracking REST API."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        url = http.base_url
        # Only scheme, host and port: the tracking URI may carry credentials.
        self.origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")

    async def health(self) -> None:
        response = await self._send("GET", "/health")
        if response.status_code != 200:
            raise UpstreamError(
                f"MLflow health check answered HTTP {response.status_code}", upstream="mlflow"
            )

    async def get_registered_model(self, name: str) -> dict[str, Any]:
        body = await self._call("GET", "/registered-models/get", params={"name": name})
        return _object(body, "registered_model")

    async def get_version_by_alias(self, name: str, alias: str) -> dict[str, Any]:
        body = await self._call(
            "GET", "/registered-models/alias", params={"name": name, "alias": alias}
        )
        return _object(body, "model_version")

    async def get_model_version(self, name: str, version: int) -> dict[str, Any]:
        body = await self._call(
            "GET", "/model-versions/get", params={"name": name, "version": str(version)}
        )
        return _object(body, "model_version")

    async def get_download_uri(self, name: str, version: int) -> str:
        body = await self._call(
            "GET",
            "/model-versions/get-download-uri",
            params={"name": name, "version": str(version)},
        )
        uri = body.get("artifact_uri")
        if not isinstance(uri, str) or not uri:
            raise UpstreamError(
                "MLflow returned no artifact_uri for the model version", upstream="mlflow"
            )
        return uri

    async def set_alias(self, name: str, alias: str, version: int) -> None:
        # MLflow's proto declares the version as a string.
        await self._call(
            "POST",
            "/registered-models/alias",
            json={"name": name, "alias": alias, "version": str(version)},
        )

    async def search_versions(self, name: str, page_size: int) -> list[dict[str, Any]]:
        """Every version of one model, following page tokens."""
        params: dict[str, str | int] = {"filter": name_filter(name), "max_results": page_size}
        versions: list[dict[str, Any]] = []
        seen_tokens: set[str] = set()
        while True:
            body = await self._call("GET", "/model-versions/search", params=params)
            page = body.get("model_versions", [])
            if not isinstance(page, list):
                raise UpstreamError("MLflow returned a malformed version list", upstream="mlflow")
            versions.extend(v for v in page if isinstance(v, dict))
            token = body.get("next_page_token")
            # A repeated token would loop forever; treat it as the end.
            if not isinstance(token, str) or not token or token in seen_tokens:
                return versions
            seen_tokens.add(token)
            params["page_token"] = token

    async def get_run(self, run_id: str) -> dict[str, Any]:
        body = await self._call("GET", "/runs/get", params={"run_id": run_id})
        return _object(body, "run")

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = await self._send(method, API + path, params=params, json=json)
        if response.status_code == 403 and path != "/registered-models/get":
            # MLflow's basic-auth app answers 403 for a model that does not exist (it cannot
            # find the model's permissions); only registered-models/get still says 404.
            name = (params or {}).get("name") or (json or {}).get("name")
            if isinstance(name, str) and await self._model_missing(name):
                raise MlflowApiError(
                    404, "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found"
                )
        if response.status_code >= 400:
            self._raise_for_status(method, API + path, response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise UpstreamError(
                f"MLflow answered {method} {API + path} with a non-JSON body", upstream="mlflow"
            )
        return body

    async def _model_missing(self, name: str) -> bool:
        response = await self._send("GET", API + "/registered-models/get", params={"name": name})
        return response.status_code == 404

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: dict[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            return await self.http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(
                f"MLflow at {self.origin} did not answer {method} {path} in time",
                upstream="mlflow",
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"MLflow at {self.origin} is unreachable ({type(exc).__name__})",
                upstream="mlflow",
            ) from exc

    def _raise_for_status(self, method: str, path: str, response: httpx.Response) -> None:
        status = response.status_code
        error_code, message = _mlflow_error(response)
        if status >= 500 or status in (401, 403, 429):
            log.warning("MLflow answered %s %s with %s %s", method, path, status, error_code)
            # Failing or overloaded (its database down, say) passes; refused credentials do not.
            transient = status >= 500 or status == 429
            raise (UpstreamUnavailable if transient else UpstreamError)(
                f"MLflow answered {method} {path} with HTTP {status}",
                upstream="mlflow",
                upstream_status=status,
                upstream_error_code=error_code,
            )
        raise MlflowApiError(status, error_code, message)


def name_filter(name: str) -> str:
    """MLflow search filter for one model name; its grammar has quotes but no escapes."""
    if "'" not in name:
        return f"name='{name}'"
    if '"' not in name:
        return f'name="{name}"'
    raise BadRequest(
        "model names containing both ' and \" cannot be searched in MLflow", field="name"
    )


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise UpstreamError(f"MLflow answer lacks the '{key}' object", upstream="mlflow")
    return value


def _mlflow_error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return str(body.get("error_code", "UNKNOWN")), str(body.get("message", ""))
    return "UNKNOWN", ""
