"""FastAPI dependencies: objects the lifespan put on ``app.state``, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from inference.handler import PredictionHandler


async def get_handler(request: Request) -> PredictionHandler:
    # async on purpose: FastAPI runs a sync dependency in its thread pool, a thread hop per call.
    return cast(PredictionHandler, request.app.state.handler)


HandlerDep = Annotated[PredictionHandler, Depends(get_handler)]
