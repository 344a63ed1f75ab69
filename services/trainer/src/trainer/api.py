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

from trainer.handlers import JobsHandler
from trainer.health import HealthCheck
from trainer.metrics import TrainerMetrics
from trainer.schemas import HealthView, JobView, MonitorRequest, TrainRequest


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
                # A 503 (database down) refuses no request: the client should retry it as it is.
                if exc.status_code < 500:
                    metrics.job_submitted("rejected")
                raise
            metrics.job_submitted("created" if response.status_code == 202 else "duplicate")
            return response

        return counted


router = APIRouter()
submissions = APIRouter(route_class=SubmissionRoute)


HandlerDep = Annotated[JobsHandler, Depends(from_state("handler"))]
HealthDep = Annotated[HealthCheck, Depends(from_state("health"))]
Trainer = Annotated[Principal, Depends(requires("train"))]
JobReader = Annotated[Principal, Depends(requires("jobs:read"))]

_auth_errors: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown, expired or revoked token"},
    403: {"description": "The token lacks the scope, or may not use this model"},
    503: {"description": "The platform database is unavailable; see Retry-After"},
}
_submit_errors: dict[int | str, dict[str, Any]] = {
    **_auth_errors,
    409: {"description": "The idempotency key was used for a different request"},
    413: {"description": "The body is larger than TRAINER_MAX_BODY_BYTES"},
    429: {"description": "TRAINER_MAX_ACTIVE_JOBS jobs are queued or running; see Retry-After"},
    503: {
        "description": "The platform database is unavailable: nothing was recorded, retry the "
        "same request later (see Retry-After). A broker (Redis) outage is no error: the job is "
        "accepted and kept, and handed to the workers once the broker is back"
    },
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
    """Validate and record a training job; answers at once with the job to poll.

    The job is kept in the database and handed to the workers' queue as soon as the broker
    answers: a broker outage delays it, and never refuses or loses it.
    """
    principal.require("train", body.model_name)
    job, created = handler.submit(body)
    response.headers["Location"] = f"/v1/jobs/{job.job_id}"
    if not created:
        response.status_code = 200
    return job


@router.post(
    "/v1/monitor", status_code=202, response_model=JobView, tags=["jobs"], responses=_submit_errors
)
def monitor(
    body: MonitorRequest, handler: HandlerDep, principal: Trainer, response: Response
) -> JobView:
    """Queue a monitoring job: the served version's recent prediction log against its training
    data (drift per feature, with Evidently) and the labels sent back (live quality); answers at
    once with the job to poll. Its ``result`` holds the figures and the retraining decision, and
    the job logs an MLflow run with the HTML report. Scope ``train``: the workers run it.
    """
    principal.require("train", body.model_name)
    job, created = handler.submit_monitoring(body)
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
    kind: Literal["train", "monitor"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobView]:
    return handler.list(model_name, status, limit, principal, kind)


@router.get(
    "/health",
    tags=["health"],
    response_model=HealthView,
    responses={503: {"model": HealthView, "description": "The database is unavailable"}},
)
async def health(check: HealthDep) -> JSONResponse:
    """Database, broker and workers, probed concurrently; answers within
    TRAINER_HEALTH_TIMEOUT_S. 503 only when the database is down (no job can be accepted);
    without broker or workers it is 200 and ``degraded``: jobs are accepted and kept."""
    view, status = await check.run()
    return JSONResponse(view.model_dump(mode="json"), status_code=status)
