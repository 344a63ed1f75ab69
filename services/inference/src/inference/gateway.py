"""Client of the model-gateway: which version an alias points to, and where its files are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import httpx
from mlops_common.auth import Principal
from mlops_common.errors import ServiceUnavailable
from pydantic import ValidationError

from inference.model import ModelVersion

INTROSPECTION_ATTEMPTS = 3


class GatewayError(Exception):
    """The gateway could not be asked, or answered something unusable."""


@dataclass(frozen=True)
class AliasMissing:
    """The model or the alias does not exist (yet): a normal state before the first promotion."""

    message: str


class GatewayClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def resolve(self, name: str, alias: str) -> ModelVersion | AliasMissing:
        """The version behind ``name@alias``, or ``AliasMissing`` when there is none."""
        path = f"/v1/models/{quote(name, safe='')}/aliases/{quote(alias, safe='')}"
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return AliasMissing(_error_message(response))
        if response.status_code != 200:
            raise GatewayError(
                f"gateway answered {response.status_code} for {path}: {_error_message(response)}"
            )
        try:
            return ModelVersion.model_validate_json(response.content)
        except ValidationError as exc:
            raise GatewayError(f"unexpected gateway answer for {path}: {exc}") from exc

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


def _unreachable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot check the token: the gateway is unreachable ({type(exc).__name__})"
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:200]
