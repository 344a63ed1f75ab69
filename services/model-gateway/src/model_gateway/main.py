"""Console entry point: ``model-gateway``."""

from __future__ import annotations

import sys

import uvicorn
from mlops_common.logging import configure_logging
from pydantic import ValidationError

from model_gateway.app import create_app
from model_gateway.settings import GatewaySettings


def run() -> None:
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        # One line per bad setting is more useful to an operator than a traceback.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        sys.exit(f"model-gateway: invalid settings ({exc.title}): {problems}")
    configure_logging("model-gateway", settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # Keep the logging configured above instead of uvicorn's own.
        log_config=None,
    )


if __name__ == "__main__":
    run()
