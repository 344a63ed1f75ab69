"""``inference`` console script: read settings from the environment and serve."""

from __future__ import annotations

from mlops_common.service import serve

from inference.app import create_app
from inference.settings import InferenceSettings


def run() -> None:
    serve(
        "inference",
        InferenceSettings,
        create_app,
        shutdown_grace_s=lambda settings: settings.shutdown_grace_s,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    run()
