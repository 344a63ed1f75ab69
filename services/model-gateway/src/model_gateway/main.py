"""Console entry point: ``model-gateway``."""

from __future__ import annotations

from mlops_common.service import serve

from model_gateway.app import create_app
from model_gateway.settings import GatewaySettings


def run() -> None:
    serve("model-gateway", GatewaySettings, create_app)


if __name__ == "__main__":
    run()
