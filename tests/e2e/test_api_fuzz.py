"""Schemathesis against every service's OpenAPI, as a client holding a valid token.

Each operation of trainer, model-gateway and inference gets the schema's examples, the coverage
phase (boundary and invalid values: NUL bytes, lone surrogates, wrong types, missing fields,
values just outside each documented bound) and a bounded number of generated requests, positive
and negative. Two checks, nothing else: no answer is a 5xx (`not_a_server_error`), and every
answer, errors included, matches the schema the service documents for its status code
(`response_schema_conformance`).

The run shares the stack with the other end-to-end tests and must leave it as it found it:

- The trainer and gateway tokens may only touch models named ``fuzz-*``, which do not exist.
  A generated train body that passes every check is refused with a 403 on its model name
  *after* validation, so it never reaches the queue and no worker trains (it would eat the CPU
  the other tests need, and most such bodies would be valid jobs).
- Gateway model names are rewritten to ``fuzz-<generated>`` so the requests reach the handler
  and MLflow (which answer 404) instead of stopping at the 403.
- Token names (``POST /v1/tokens``, ``DELETE /v1/tokens/{token_name}``) are rewritten to
  ``fuzz-<generated>`` as well: the fuzz can only create and revoke tokens of its own, never
  the stack's service tokens or another test's; the ones it created are revoked at the end.
- Inference gets a ``predict`` token for the served model alone: scoring is read-only.

``FUZZ_MAX_EXAMPLES`` bounds the generated requests per operation and ``FUZZ_MAX_TIME_S`` each
service's run; the seed is fixed, so a failure reproduces. Schemathesis' own engine runs the
phases (what ``schemathesis run`` does), driven from here so the stack fixture and its tokens
can be used.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from .conftest import StackUrls

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
# Unset by default: with a time budget, schemathesis repeats the fuzzing phase until it is spent
# (a longer, nightly run); without one the run ends after MAX_EXAMPLES per operation.
MAX_TIME_S = int(os.environ["FUZZ_MAX_TIME_S"]) if os.environ.get("FUZZ_MAX_TIME_S") else None
SEED = int(os.environ.get("FUZZ_SEED", "20261127"))
CHECKS = ["not_a_server_error", "response_schema_conformance"]
PREFIX = "fuzz-"
rewritten: list[str] = []


def _token(stack: StackUrls, label: str, *scopes: str, models: str) -> str:
    # Not under PREFIX: the rewritten token names of the fuzz can never reach it.
    return stack.create_token(
        f"schemathesis-{label}-{uuid.uuid4().hex[:8]}", *scopes, models=models
    )


def _own_names(context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Gateway requests touch only model and token names under PREFIX: nothing real."""
    params = case.path_parameters
    for key in ("name", "token_name"):
        if params and key in params:
            params[key] = f"{PREFIX}{params[key]}"
            rewritten.append(case.operation.label)
    if case.operation.path == "/v1/tokens" and case.method.upper() == "POST":
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            body["name"] = f"{PREFIX}{body['name']}"


def fuzz(url: str, token: str) -> tuple[int, int, list[str]]:
    """Run the engine against one service: (operations, requests, problems)."""
    config = schemathesis.Config(seed=SEED, max_time=MAX_TIME_S)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, timeout=30)
    schema.config.update(
        headers={"Authorization": f"Bearer {token}"}, request_timeout=30, workers=1
    )
    schema.config.checks.update(included_check_names=CHECKS)
    # No stateful phase: with the model names no real model matches, there is no state to walk.
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema.config.generation.update(
        max_examples=MAX_EXAMPLES,
        # The token is the test's, the same on every request: generated Authorization headers
        # would only test the 401 path, which test_security.py covers.
        with_security_parameters=False,
    )
    # Probes and metrics are open and take no input.
    schema = schema.exclude(path_regex=r"^/(health|metrics|v2/health/.*)$")
    operations: set[str] = set()
    requests = 0
    problems: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations.add(event.recorder.label)
            requests += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        message = " ".join(failure.message.split())[:300]
                        problems.append(
                            f"{event.recorder.label}: {failure.title}: {message}\n"
                            f"    {check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return len(operations), requests, problems


def _report(service: str, url: str, token: str) -> None:
    started = time.monotonic()
    operations, requests, problems = fuzz(url, token)
    elapsed = time.monotonic() - started
    print(f"\n{service}: {operations} operations, {requests} requests in {elapsed:.0f}s")
    assert operations > 0
    unique = list(dict.fromkeys(problems))
    assert not unique, f"{len(unique)} failures:\n" + "\n".join(unique[:40])


def test_trainer_survives_the_fuzz(stack: StackUrls) -> None:
    token = _token(stack, "trainer", "train", "jobs:read", models=f"{PREFIX}*")
    _report("trainer", stack.trainer, token)


@pytest.fixture
def own_names(stack: StackUrls) -> Iterator[None]:
    GLOBAL_HOOK_DISPATCHER.register_hook_with_name(_own_names, "before_call")
    try:
        yield
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(_own_names)
        # Revoke whatever the fuzz created (only ever under PREFIX).
        listed = httpx.get(f"{stack.gateway}/v1/tokens", headers=stack.auth, timeout=30)
        for token in listed.json()["tokens"]:
            if token["name"].startswith(PREFIX) and not token.get("revoked_at"):
                httpx.delete(
                    f"{stack.gateway}/v1/tokens/{token['name']}", headers=stack.auth, timeout=30
                )


def test_gateway_survives_the_fuzz(stack: StackUrls, own_names: None) -> None:
    token = _token(stack, "gateway", "admin", models=f"{PREFIX}*")
    _report("model-gateway", stack.gateway, token)
    assert "DELETE /v1/tokens/{token_name}" in rewritten  # the guard was applied


def test_inference_survives_the_fuzz(stack: StackUrls) -> None:
    # Scoring is read-only: a predict token for the served model lets the fuzz reach the
    # row validation and the model instead of stopping at a 403.
    info = httpx.get(f"{stack.inference}/model-info", headers=stack.auth, timeout=30).json()
    token = _token(stack, "inference", "predict", models=str(info["name"]))
    _report("inference", stack.inference, token)
