"""Entry point of the trainer API (``trainer-api``)."""

from __future__ import annotations

import uvicorn
from mlops_common.logging import configure_logging

from trainer.app import create_app
from trainer.settings import TrainerSettings


def run() -> None:
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    run()
