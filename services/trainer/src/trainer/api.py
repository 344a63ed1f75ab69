"""Routes of the trainer API: thin, the work is in JobsHandler."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from mlops_common.auth import Principal, requires
from mlops_common.errors import PlatformError
from mlops_common.names import MAX_NEW_MODEL_NAME_LENGTH, NEW_MODEL_NAME_PATTERN
from mlops_common.service import from_state
from sqlalchemy import text

from trainer.handlers import JobsHandler
from trainer.metrics import TrainerMetrics
from trainer.queue import JobQueue
from trainer.schemas import JobView, TrainRequest


class SubmissionRoute(APIRoute):
    """Counts submissions by outcome around FastAPI's whole request handler, because most
    rejections (a malformed body, an unknown data set) happen before the route function runs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def counted(request: Request) -> Response:
            metrics: TrainerMetrics = request.app.state.metrics
            try:
                response = await handle(request)
            except RequestValidationError:
                metrics.job_submitted("rejected")
                raise
            except PlatformError as exc:
                # A 503 (queue down) refuses no request: the client should retry it as it is.
                if exc.status_code < 500:
                    metrics.job_submitted("rejected")
                raise
            metrics.job_submitted("created" if response.status_code == 202 else "duplicate")
            return response

        return counted


router = APIRouter()
submissions = APIRouter(route_class=SubmissionRoute)


HandlerDep = Annotated[JobsHandler, Depends(from_state("handler"))]
QueueDep = Annotated[JobQueue, Depends(from_state("queue"))]
Trainer = Annotated[Principal, Depends(requires("train"))]
JobReader = Annotated[Principal, Depends(requires("jobs:read"))]

_auth_errors: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown, expired or revoked token"},
    403: {"description": "The token lacks the scope, or may not use this model"},
}
_submit_errors: dict[int | str, dict[str, Any]] = {
    **_auth_errors,
    409: {"description": "The idempotency key was used for a different request"},
    413: {"description": "The body is larger than TRAINER_MAX_BODY_BYTES"},
    429: {"description": "TRAINER_MAX_ACTIVE_JOBS jobs are queued or running; see Retry-After"},
    503: {"description": "The job queue is unavailable; see Retry-After"},
}
# Job ids are UUIDs; the pattern only keeps what cannot be one (NUL and the like) from the database.
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
ModelNameFilter = Annotated[
    str | None,
    Query(
        max_length=MAX_NEW_MODEL_NAME_LENGTH,
        pattern=NEW_MODEL_NAME_PATTERN,
        description="exact name",
    ),
]


@submissions.post(
    "/v1/train", status_code=202, response_model=JobView, tags=["jobs"], responses=_submit_errors
)
def train(
    body: TrainRequest, handler: HandlerDep, principal: Trainer, response: Response
) -> JobView:
    """Validate and queue a training job; answers at once with the job to poll."""
    principal.require("train", body.model_name)
    job, created = handler.submit(body)
    response.headers["Location"] = f"/v1/jobs/{job.job_id}"
    if not created:
        response.status_code = 200
    return job


@router.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=_auth_errors)
def get_job(job_id: JobId, handler: HandlerDep, principal: JobReader) -> JobView:
    return handler.get(job_id, principal)


@router.get("/v1/jobs", response_model=list[JobView], tags=["jobs"], responses=_auth_errors)
def list_jobs(
    handler: HandlerDep,
    principal: JobReader,
    model_name: ModelNameFilter = None,
    status: Literal["queued", "running", "succeeded", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobView]:
    return handler.list(model_name, status, limit, principal)


@router.get("/health", tags=["health"])
def health(handler: HandlerDep, queue: QueueDep) -> JSONResponse:
    body: dict[str, Any] = {"status": "ok"}
    try:
        with handler.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        body["database"] = "ok"
    except Exception:
        body["database"] = "unavailable"
    body["broker"] = "ok" if queue.broker_ok() else "unavailable"
    body["workers"] = queue.workers() if body["broker"] == "ok" else []
    healthy = body["database"] == "ok" and body["broker"] == "ok"
    body["status"] = "ok" if healthy else "unavailable"
    return JSONResponse(body, status_code=200 if healthy else 503)
