"""Loading an MLflow scikit-learn model without running anything its artifacts ship.

``mlflow.sklearn.load_model`` follows the artifact's own MLmodel: it unpickles ``pickle`` and
``cloudpickle`` models, loads a skops model trusting the types the MLmodel lists, and puts an
MLmodel ``code`` directory on ``sys.path``. Whoever can register a version and move an alias
could run code here. So inference reads the MLmodel as plain data and refuses, before a byte of
the model is deserialized, anything but a scikit-learn model saved with skops, which it then
loads trusting only the platform's own types (``mlops_common.trusted_types``).

Every refusal is a ``ModelRejected`` whose message starts with ``refused:``: the manager keeps
the previous version serving and shows the message as ``last_error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlops_common.artifacts import unsafe_relative_path
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES

from inference.errors import ModelLoadError, ModelRejected, describe_exception

MLMODEL = "MLmodel"
# An MLmodel is a few kilobytes; anything near this is not one.
MLMODEL_MAX_BYTES = 1024 * 1024
SKLEARN = "sklearn"
PYFUNC = "python_function"
# The only loader a python_function flavor may name: the sklearn flavor's own.
SKLEARN_LOADER = "mlflow.sklearn"
SKOPS = "skops"
# MLmodel entries that make MLflow put model-supplied code on sys.path.
_CODE_KEYS = ("code", "code_paths")


@dataclass(frozen=True)
class CheckedModel:
    """What the MLmodel says, once it passed every check."""

    sklearn: dict[str, Any]
    model_file: Path
    signature: dict[str, Any] | None
    input_example: Path | None


def check_model_dir(local_dir: Path) -> CheckedModel:
    """Read ``local_dir/MLmodel`` as data and refuse anything but a skops scikit-learn model."""
    mlmodel = read_mlmodel(local_dir)
    _refuse_code(mlmodel, "MLmodel")
    flavors = mlmodel.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise ModelRejected("refused: the MLmodel lists no flavors")
    names = ", ".join(str(name) for name in flavors)
    unknown = [str(name) for name in flavors if name not in (SKLEARN, PYFUNC)]
    if unknown:
        raise ModelRejected(
            f"refused: flavor {', '.join(unknown)} is not served here (flavors: {names}); only "
            f"{SKLEARN} models saved with {SKOPS} are"
        )
    conf = flavors.get(SKLEARN)
    if not isinstance(conf, dict):
        raise ModelRejected(f"refused: not an {SKLEARN}-flavor model (flavors: {names})")
    _refuse_code(conf, f"the {SKLEARN} flavor")
    pyfunc = flavors.get(PYFUNC)
    if pyfunc is not None:
        _check_pyfunc(local_dir, pyfunc)

    serialization = conf.get("serialization_format")
    if serialization != SKOPS:
        shown = (
            "absent (MLflow reads that as pickle)" if serialization is None else repr(serialization)
        )
        raise ModelRejected(
            f"refused: serialization_format {shown}: only {SKOPS} models are loaded, a "
            "pickle-based format runs code while loading; save the model with "
            f"serialization_format={SKOPS!r}"
        )
    listed = conf.get("skops_trusted_types") or []
    if not isinstance(listed, list):
        raise ModelRejected("refused: skops_trusted_types in the MLmodel is not a list")
    extra = sorted({str(t) for t in listed} - set(PLATFORM_TRUSTED_TYPES))
    if extra:
        raise ModelRejected(
            f"refused: the MLmodel trusts types the platform does not: {', '.join(extra)} "
            f"(trusted: {', '.join(PLATFORM_TRUSTED_TYPES)})"
        )
    model_file = contained(local_dir, conf.get("pickled_model"), "pickled_model")
    if not model_file.is_file():
        raise ModelLoadError(f"{conf.get('pickled_model')} is missing from the artifacts")

    signature = mlmodel.get("signature")
    if signature is not None and not isinstance(signature, dict):
        raise ModelLoadError("the MLmodel's signature is not a mapping")
    example = mlmodel.get("saved_input_example_info")
    example_path = None
    if isinstance(example, dict) and "artifact_path" in example:
        example_path = contained(local_dir, example["artifact_path"], "the input example")
    return CheckedModel(
        sklearn=conf, model_file=model_file, signature=signature, input_example=example_path
    )


def read_mlmodel(local_dir: Path) -> dict[str, Any]:
    path = local_dir / MLMODEL
    if not path.is_file():
        raise ModelLoadError("no MLmodel file in the artifacts")
    size = path.stat().st_size
    if size > MLMODEL_MAX_BYTES:
        raise ModelRejected(f"refused: the MLmodel is {size} bytes, more than an MLmodel holds")
    try:
        # safe_load builds plain data only: no python/object tags.
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelRejected(
            f"refused: the MLmodel is not plain YAML: {describe_exception(exc)}"
        ) from exc
    if not isinstance(data, dict):
        raise ModelRejected("refused: the MLmodel is not a YAML mapping")
    return data


def contained(local_dir: Path, relative: Any, what: str) -> Path:
    """``local_dir / relative``, refused unless it is a plain relative path that stays inside."""
    if not isinstance(relative, str) or not relative:
        raise ModelRejected(f"refused: {what} is not a file name ({relative!r})")
    problem = unsafe_relative_path(relative)
    if problem is None:
        root = local_dir.resolve()
        # Also catches a symlink in the artifacts pointing elsewhere.
        if not (root / relative).resolve().is_relative_to(root):
            problem = "resolves outside the model directory"
    if problem is not None:
        raise ModelRejected(f"refused: {what} {relative!r} {problem}")
    return local_dir / relative


def load_skops(path: Path) -> Any:
    """The object in a skops file, refused if it holds a type outside the platform's list."""
    from skops import io as skops_io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        # Reads the file's schema only: nothing is constructed or imported.
        found = skops_io.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {path.name} ({SKOPS}): {describe_exception(exc)}"
        ) from exc
    untrusted = sorted(set(found) - set(PLATFORM_TRUSTED_TYPES))
    if untrusted:
        raise ModelRejected(_untrusted_message(path, untrusted))
    try:
        return skops_io.load(path, trusted=list(PLATFORM_TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise ModelRejected(_untrusted_message(path, [str(exc)])) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {path.name} ({SKOPS}): {describe_exception(exc)}"
        ) from exc


def _untrusted_message(path: Path, types: list[str]) -> str:
    return (
        f"refused: {path.name} holds types the platform does not trust: {', '.join(types)} "
        f"(trusted beyond skops' defaults: {', '.join(PLATFORM_TRUSTED_TYPES)})"
    )


def _refuse_code(conf: dict[str, Any], where: str) -> None:
    for key in _CODE_KEYS:
        value = conf.get(key)
        if value not in (None, "", []):
            raise ModelRejected(
                f"refused: {where} ships code ({key}: {value!r}); code from model artifacts "
                "is never run"
            )


def _check_pyfunc(local_dir: Path, pyfunc: Any) -> None:
    if not isinstance(pyfunc, dict):
        raise ModelRejected(f"refused: the {PYFUNC} flavor is not a mapping")
    _refuse_code(pyfunc, f"the {PYFUNC} flavor")
    loader = pyfunc.get("loader_module")
    if loader != SKLEARN_LOADER:
        raise ModelRejected(
            f"refused: the {PYFUNC} flavor names loader_module {loader!r}; only "
            f"{SKLEARN_LOADER!r} is allowed"
        )
    if "model_path" in pyfunc:
        contained(local_dir, pyfunc["model_path"], f"{PYFUNC} model_path")
