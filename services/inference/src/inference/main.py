"""``inference`` console script: read settings from the environment and serve."""

from __future__ import annotations

import sys

import uvicorn
from mlops_common.logging import configure_logging
from pydantic import ValidationError

from inference.app import create_app
from inference.settings import InferenceSettings


def run() -> None:
    try:
        # Required fields come from the environment, which mypy cannot see.
        settings = InferenceSettings()  # type: ignore[call-arg]  # model_name comes from the env
    except ValidationError as exc:
        sys.exit(f"inference: invalid settings (INFERENCE_*, S3_* variables):\n{exc}")
    configure_logging("inference", settings.log_level, settings.log_json)
    # log_config=None: uvicorn's loggers go through the handler configured above (one format).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # Per-request access lines cost more than scoring a linear model; /metrics counts requests.
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    run()
