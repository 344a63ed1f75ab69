"""FastAPI dependencies: objects the lifespan put on ``app.state``, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from mlops_common.auth import Principal, TokenVerifier
from mlops_common.service import from_state

from inference.feedback import FeedbackHandler
from inference.handlers import PredictionHandler


class ModelGuard:
    """Lets through callers whose token holds ``predict`` for the served model."""

    def __init__(self, verifier: TokenVerifier, model_name: str) -> None:
        self.verifier = verifier
        self.model_name = model_name

    async def check(self, authorization: str | None) -> Principal:
        principal = await self.verifier.verify(authorization)
        principal.require("predict", self.model_name)
        return principal


async def authorize(request: Request) -> None:
    """401/403 unless the request may use the served model (a no-op with auth turned off)."""
    guard: ModelGuard | None = request.app.state.guard
    if guard is not None:
        await guard.check(request.headers.get("authorization"))


_handler = from_state("handler")


# Async on purpose, as from_state's dependency: FastAPI runs a sync dependency in its thread
# pool, a thread hop per call. The check and the handler are one dependency: each costs
# microseconds here.
async def get_authorized_handler(request: Request) -> PredictionHandler:
    await authorize(request)
    handler: PredictionHandler = request.app.state.handler
    return handler


async def get_authorized_feedback(request: Request) -> FeedbackHandler:
    """Labels for the served model need what predicting with it does: ``predict``."""
    await authorize(request)
    feedback: FeedbackHandler = request.app.state.feedback
    return feedback


HandlerDep = Annotated[PredictionHandler, Depends(_handler)]
ServingDep = Annotated[PredictionHandler, Depends(get_authorized_handler)]
FeedbackDep = Annotated[FeedbackHandler, Depends(get_authorized_feedback)]
