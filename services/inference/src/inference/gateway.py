"""Client of the model-gateway: which version an alias points to, and where its files are."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from mlops_common.auth import Principal
from mlops_common.errors import ServiceUnavailable
from pydantic import ValidationError

from inference.model import ModelVersion

INTROSPECTION_ATTEMPTS = 3
# Sent with every alias resolve so the gateway can tell which instances serve which version
# (lineage); a gateway that does not read them loses nothing.
INSTANCE_HEADER = "X-Inference-Instance"
SERVED_VERSION_HEADER = "X-Served-Version"
# Longest one resolve may take, the transport's retries included (INFERENCE_GATEWAY_TIMEOUT_S).
DEFAULT_RESOLVE_TIMEOUT_S = 5.0


class GatewayError(Exception):
    """The gateway could not be asked, or answered something unusable.

    ``unavailable``: the gateway, or what it depends on, is down or failing (no answer, a
    timeout, a 5xx), as opposed to an answer that refuses us or cannot be read. ``dependency``
    names what failed: "gateway", or the upstream the gateway blamed ("mlflow", "s3").
    """

    def __init__(self, message: str, *, unavailable: bool, dependency: str = "gateway") -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.dependency = dependency


@dataclass(frozen=True)
class AliasMissing:
    """The model or the alias does not exist (yet): a normal state before the first promotion."""

    message: str


class GatewayClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        resolve_timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
        instance: str | None = None,
    ) -> None:
        self._client = client
        self._resolve_timeout_s = resolve_timeout_s
        self._instance = instance

    async def resolve(
        self, name: str, alias: str, *, served_version: int | None = None
    ) -> ModelVersion | AliasMissing:
        """The version behind ``name@alias``, or ``AliasMissing`` when there is none.

        ``served_version``: what this instance serves now, told to the gateway with the
        instance's name (``X-Served-Version``, empty when nothing is served yet).
        """
        path = f"/v1/models/{quote(name, safe='')}/aliases/{quote(alias, safe='')}"
        headers = {SERVED_VERSION_HEADER: "" if served_version is None else str(served_version)}
        if self._instance is not None:
            headers[INSTANCE_HEADER] = self._instance
        response = await self._bounded("get", path, headers=headers)
        if response.status_code == 404:
            return AliasMissing(_error_message(response))
        if response.status_code != 200:
            raise _refused(response, path)
        try:
            return ModelVersion.model_validate_json(response.content)
        except ValidationError as exc:
            raise GatewayError(
                f"unexpected gateway answer for {path}: {exc}", unavailable=False
            ) from exc

    async def rollout(self, name: str) -> dict[str, Any] | None:
        """The model's rollout as the gateway states it (``RolloutView``); None when the gateway
        does not know the model."""
        path = f"/v1/models/{quote(name, safe='')}/rollout"
        response = await self._bounded("get", path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _refused(response, path)
        try:
            body = response.json()
        except ValueError as exc:
            raise GatewayError(f"unexpected gateway answer for {path}", unavailable=False) from exc
        if not isinstance(body, dict):
            raise GatewayError(f"unexpected gateway answer for {path}", unavailable=False)
        return body

    async def abort_rollout(self, name: str, *, reason: str, figures: dict[str, float]) -> None:
        """End the model's rollout at once (a tripped guard); done too when there is none left
        to end (another replica was first)."""
        path = f"/v1/models/{quote(name, safe='')}/rollout/abort"
        response = await self._bounded("post", path, json={"reason": reason, "figures": figures})
        if response.status_code not in (200, 404):
            raise _refused(response, path)

    async def _bounded(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request within the resolve deadline: a gateway that accepts connections but
        never answers must not hold the poll loop for the client's full timeouts and retries."""
        try:
            async with asyncio.timeout(self._resolve_timeout_s):
                return await self._client.request(method, path, **kwargs)
        except TimeoutError as exc:
            raise GatewayError(
                f"no answer from the gateway within {self._resolve_timeout_s:g}s", unavailable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise GatewayError(
                f"cannot reach the gateway: {type(exc).__name__}: {exc}", unavailable=True
            ) from exc

    async def introspect(self, token: str) -> Principal | None:
        """What the gateway knows of a caller's token (``None``: not an active token)."""
        response = await self._introspection(token)
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"cannot check the token: the gateway answered {response.status_code} "
                f"({_error_message(response)})"
            )
        body = response.json()
        if not body.get("active"):
            return None
        expires = body.get("expires_at")
        return Principal(
            name=str(body["name"]),
            scopes=frozenset(body.get("scopes") or ()),
            models=str(body.get("models") or "*"),
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )

    async def _introspection(self, token: str) -> httpx.Response:
        # A POST is not retried by the transport, but asking twice changes nothing, and a
        # kept-alive connection the gateway closed at the same moment is common enough.
        for attempt in range(INTROSPECTION_ATTEMPTS):
            try:
                return await self._client.post("/v1/tokens/introspect", json={"token": token})
            except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
                if attempt + 1 == INTROSPECTION_ATTEMPTS:
                    raise _unreachable(exc) from exc
            except httpx.HTTPError as exc:
                raise _unreachable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _refused(response: httpx.Response, path: str) -> GatewayError:
    """An answer other than the one expected: unavailable when a 5xx, naming what the gateway
    blamed."""
    return GatewayError(
        f"gateway answered {response.status_code} for {path}: {_error_message(response)}",
        unavailable=response.status_code >= 500,
        dependency=_upstream(response) or "gateway",
    )


def _unreachable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot check the token: the gateway is unreachable ({type(exc).__name__})"
    )


def _upstream(response: httpx.Response) -> str | None:
    """The dependency the gateway blamed for an error (``details.upstream``), if it named one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    upstream = details.get("upstream") if isinstance(details, dict) else None
    return upstream if isinstance(upstream, str) and upstream.isidentifier() else None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:200]
