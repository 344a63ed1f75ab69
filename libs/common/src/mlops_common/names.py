"""What a registered model's name and an alias may be: the gateway enforces these rules, and the
trainer checks them at submit time so a job never trains a model it could not then promote.

Each rule is a function saying what is wrong (or None), plus the same rule as a JSON-schema
pattern (ECMA regex, no flags) for the services' OpenAPI documents.
"""

from __future__ import annotations

import re

MAX_MODEL_NAME_LENGTH = 256
MAX_ALIAS_LENGTH = 64

# Control characters (C0, DEL, C1) and lone surrogates: PostgreSQL refuses NUL, and none of them
# belongs in a model name, an audit record or a log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAME_CHAR = r"[^:/\x00-\x1f\x7f-\x9f]"
MODEL_NAME_PATTERN = rf"^{_NAME_CHAR}*[^:/\s\x00-\x1f\x7f-\x9f]{_NAME_CHAR}*$"

# The names the platform itself registers: a strict subset of MODEL_NAME_PATTERN (the gateway
# also reads models registered outside the platform), safe in URLs, file names and Airflow params.
MAX_NEW_MODEL_NAME_LENGTH = 128
NEW_MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# MLflow reserves these: "latest" (any case) and version aliases such as v1 or V12.
_RESERVED_ALIAS = re.compile(r"^(?:latest|v\d+)$", re.IGNORECASE)
_RESERVED = r"[lL][aA][tT][eE][sS][tT]|[vV][0-9]+"
READABLE_ALIAS_PATTERN = r"^(?![vV][0-9]+$)[A-Za-z][A-Za-z0-9_-]{0,63}$"
SETTABLE_ALIAS_PATTERN = rf"^(?!(?:{_RESERVED})$)[A-Za-z][A-Za-z0-9_-]{{0,63}}$"


def model_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a registered model's name, or None when it can."""
    if not name.strip():
        return "model name must not be blank"
    if len(name) > MAX_MODEL_NAME_LENGTH:
        return f"model name is longer than {MAX_MODEL_NAME_LENGTH} characters"
    if ":" in name or "/" in name:
        return "model name must not contain ':' or '/'"
    if _CONTROL.search(name):
        return "model name must not contain control characters"
    return None


def alias_error(alias: str, *, for_write: bool) -> str | None:
    """Why ``alias`` cannot be read (``for_write=False``) or set, or None when it can."""
    if not _ALIAS.fullmatch(alias):
        return (
            f"invalid alias {alias!r}: it must start with a letter and contain only letters, "
            f"digits, '_' or '-' (at most {MAX_ALIAS_LENGTH} characters)"
        )
    # Reading "latest" is an MLflow feature (the newest version); only setting it is refused.
    if _RESERVED_ALIAS.fullmatch(alias) and (for_write or alias.lower() != "latest"):
        return f"alias {alias!r} is reserved by MLflow ('latest' and v<N> name versions)"
    return None
