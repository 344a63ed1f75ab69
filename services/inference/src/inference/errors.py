"""Errors specific to the inference service (rendered by mlops_common's handlers)."""

from __future__ import annotations

from mlops_common.errors import PlatformError


class PayloadTooLarge(PlatformError):
    status_code = 413
    code = "payload_too_large"


class ModelLoadError(Exception):
    """A model version could not be downloaded, loaded or verified; the message says why."""


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message``: enough for a status field, short enough for a log."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
