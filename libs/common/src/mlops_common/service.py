"""What every service's entry point and routes share: start-up from settings, app-state deps.

``serve`` reads the settings (one line per bad setting instead of a traceback), configures
logging and runs the app under uvicorn with the platform's defaults. ``from_state`` makes the
``Annotated`` dependency that hands a route an object the lifespan put on ``app.state``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import ValidationError

from mlops_common.logging import configure_logging
from mlops_common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


def load_settings(name: str, settings_cls: type[S]) -> S:
    """The service's settings from the environment, or exit naming each bad setting."""
    try:
        return settings_cls()  # type: ignore[call-arg]  # required fields come from the env
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        sys.exit(f"{name}: invalid settings ({exc.title}): {problems}")


def serve(
    name: str,
    settings_cls: type[S],
    create_app: Callable[[S], FastAPI],
    *,
    shutdown_grace_s: Callable[[S], float] | None = None,
    **uvicorn_options: Any,
) -> None:
    """Run ``create_app(settings)``: the body of each service's console script.

    With ``shutdown_grace_s`` (read from the settings), SIGTERM drains: uvicorn stops accepting
    connections, gives requests in flight that many seconds to finish (then cancels them), runs
    the app's shutdown, and the process exits with status 0.
    """
    import uvicorn

    settings = load_settings(name, settings_cls)
    configure_logging(name, settings.log_level, settings.log_json)
    options: dict[str, Any] = {
        # One log format: uvicorn's loggers go through the handler configured above.
        "log_config": None,
        # A line per request costs more than a prediction; /metrics counts requests instead.
        "access_log": False,
        **uvicorn_options,
    }
    if shutdown_grace_s is not None:
        options["timeout_graceful_shutdown"] = shutdown_grace_s(settings)
        # uvicorn raises SIGTERM again once it has shut down, which would end the process as
        # killed by the signal (status 143): a stop that drained is a clean exit.
        signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **options)


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def from_state(attribute: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency returning ``request.app.state.<attribute>`` (set in the lifespan).

    Async on purpose: FastAPI runs sync dependencies in its thread pool, a thread hop per request.
    Use as ``HandlerDep = Annotated[MyHandler, Depends(from_state("handler"))]``.
    """

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    dependency.__name__ = f"get_{attribute}"
    return dependency
