"""Entry point of the trainer API (``trainer-api``)."""

from __future__ import annotations

from mlops_common.service import serve

from trainer.app import create_app
from trainer.settings import TrainerSettings


def run() -> None:
    serve("trainer", TrainerSettings, create_app)


if __name__ == "__main__":
    run()
