"""Errors specific to the inference service (rendered by mlops_common's handlers)."""

from __future__ import annotations

from mlops_common.errors import PayloadTooLarge

__all__ = ["ModelLoadError", "ModelRejected", "PayloadTooLarge", "StoreUnavailable"]


class ModelLoadError(Exception):
    """A model version could not be downloaded, loaded or verified; the message says why."""


class ModelRejected(ModelLoadError):
    """A model version refused on purpose, before any of its bytes were deserialized.

    Its artifacts ask for something inference never does for a model: unpickle it, run code it
    ships, trust types it names, load another flavor, or write files outside its directory.
    Counted apart from other load failures (``inference_model_events_total{event="rejected"}``).
    """


class StoreUnavailable(ModelLoadError):
    """The object store could not be asked: unreachable, timed out, or failing (5xx, throttling).

    Says nothing about the version itself, so it is retried soon, not after the long backoff of
    a version that was refused or failed to load.
    """


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message``: enough for a status field, short enough for a log."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
