"""Champion and challenger are scored on the same rows; the champion only as the platform signed it.

The champion is a real skops model, signed like the trainer signs, in an object store held in
memory at the location the gateway resolves the alias to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlops_common.datasets import frame_digest
from mlops_common.signing import SIGNATURE_FILE, ManifestSigner, generate_key_pair
from mlops_common.storage import S3Uri
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from skops import io as skops_io
from skops.io.exceptions import UntrustedTypesFoundException
from trainer.datasets import load_builtin
from trainer.pipeline import build_pipeline, evaluate
from trainer.schemas import Promotion
from trainer.training import EvalRows, Trainer

from .conftest import MemoryObjectStore

PRIVATE, _ = generate_key_pair()
OTHER_KEY, _ = generate_key_pair()
CHAMPION_URI = "s3://mlflow/1/models/m-champion/artifacts"


class FakeGateway:
    def __init__(self, holder: dict[str, Any] | None) -> None:
        self.holder = holder
        self.moves: list[tuple[int, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if self.holder is None:
                return httpx.Response(404, json={"error": {"code": "not_found"}})
            return httpx.Response(200, json=self.holder)
        body = json.loads(request.content)
        self.moves.append((body["version"], request.headers["x-actor"]))
        return httpx.Response(200, json={"version": body["version"]})


class FakeRegistry:
    """The MlflowClient calls promotion makes: tags on model versions."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault((name, version), {})[key] = value


def holdout(name: str) -> tuple[Any, Any, EvalRows]:
    data = load_builtin(name)
    x_train, x_test, y_train, y_test = train_test_split(
        data.features, data.target, test_size=0.3, random_state=0
    )
    rows = EvalRows(x_test, y_test, "holdout", frame_digest(x_test.assign(target=y_test)))
    return x_train, y_train, rows


def put_champion(
    store: MemoryObjectStore,
    tmp_path: Path,
    *,
    key: str = PRIVATE,
    model_name: str = "m",
    task: str = "classification",
    sign: bool = True,
) -> Any:
    """A fitted pipeline stored as the trainer stores a version; returns the model."""
    x_train, y_train, _ = holdout("iris" if task == "classification" else "diabetes")
    estimator = LogisticRegression(max_iter=1000) if task == "classification" else Ridge()
    model = build_pipeline(x_train, estimator).fit(x_train, y_train)
    folder = tmp_path / "champion"
    folder.mkdir()
    skops_io.dump(model, folder / "model.skops")
    (folder / "MLmodel").write_text("flavors: {}\n")
    if sign:
        envelope = ManifestSigner(key).sign_dir(folder, model_name=model_name, run_id="r4")
        (folder / SIGNATURE_FILE).write_bytes(envelope)
    store.put_dir(folder, S3Uri.parse(CHAMPION_URI))
    return model


def make_trainer(
    gateway: FakeGateway, store: MemoryObjectStore | None = None
) -> tuple[Trainer, FakeRegistry]:
    registry = FakeRegistry()
    trainer = Trainer(
        store=store or MemoryObjectStore(),  # type: ignore[arg-type]
        gateway=httpx.Client(base_url="http://gw", transport=httpx.MockTransport(gateway.handle)),
        mlflow_client=registry,  # type: ignore[arg-type]
        experiment="promotion",
        max_rows=1,
        signing_key=PRIVATE,
    )
    return trainer, registry


HOLDER = {"version": 4, "run_id": "r4", "artifact_uri": CHAMPION_URI}


def promote(
    trainer: Trainer,
    metrics: dict[str, float],
    spec: Promotion,
    rows: EvalRows,
    task: str = "classification",
) -> tuple[bool, dict[str, Any]]:
    return trainer.promote("m", 5, task, metrics, rows, spec, "job-1")  # type: ignore[arg-type]


def test_first_version_takes_a_free_alias() -> None:
    gateway = FakeGateway(None)
    trainer, registry = make_trainer(gateway)
    promoted, decision = promote(trainer, {"f1": 0.8}, Promotion(), holdout("iris")[2])
    assert promoted and gateway.moves == [(5, "trainer:job/job-1")]
    assert "no model held champion" in decision["reason"]
    assert decision["promote"] and decision["moved"]
    assert registry.tags[("m", "5")]["mlops.compare.decision"] == "promote"


@pytest.mark.parametrize(("better", "expected"), [(True, True), (False, False)])
def test_the_champion_is_scored_on_the_challengers_rows(
    tmp_path: Path, better: bool, expected: bool
) -> None:
    store = MemoryObjectStore()
    champion = put_champion(store, tmp_path)
    _, _, rows = holdout("iris")
    theirs = evaluate("classification", champion, rows.features, rows.target)["f1"]
    gateway = FakeGateway(HOLDER)
    trainer, registry = make_trainer(gateway, store)

    mine = {"f1": min(1.0, theirs + 0.01) if better else theirs - 0.01}
    promoted, decision = promote(trainer, mine, Promotion(), rows)

    assert promoted is expected and bool(gateway.moves) is expected
    assert decision["current_version"] == 4
    assert decision["current_value"] == pytest.approx(theirs)
    comparison = decision["comparison"]
    assert comparison["rows"] == len(rows.features) and comparison["rows_source"] == "holdout"
    assert comparison["rows_digest"] == rows.digest and comparison["champion_error"] is None
    assert comparison["champion_metrics"]["f1"] == pytest.approx(theirs)
    assert f"on the same rows ({rows.digest[:12]})" in decision["reason"]
    tags = registry.tags[("m", "5")]
    assert tags["mlops.compare.champion_version"] == "4"
    assert float(tags["mlops.compare.champion_value"]) == pytest.approx(theirs)
    assert tags["mlops.compare.candidate_value"] == str(mine["f1"])
    assert tags["mlops.compare.rows_digest"] == rows.digest
    assert tags["mlops.compare.decision"] == ("promote" if expected else "keep")


def test_decide_only_reports_the_decision_and_moves_nothing(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    put_champion(store, tmp_path)
    gateway = FakeGateway(HOLDER)
    trainer, _ = make_trainer(gateway, store)

    promoted, decision = promote(
        trainer, {"f1": 1.01}, Promotion(move_alias=False), holdout("iris")[2]
    )

    assert not promoted and gateway.moves == []
    assert decision["promote"] is True and decision["moved"] is False


def test_lower_is_better_for_rmse(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    champion = put_champion(store, tmp_path, task="regression")
    _, _, rows = holdout("diabetes")
    theirs = evaluate("regression", champion, rows.features, rows.target)["rmse"]
    for mine, expected in ((theirs - 1.0, True), (theirs + 1.0, False)):
        gateway = FakeGateway(HOLDER)
        trainer, _ = make_trainer(gateway, store)
        promoted, decision = promote(trainer, {"rmse": mine}, Promotion(), rows, task="regression")
        assert promoted is expected, decision["reason"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("other_key", "not a trusted key"),
        ("unsigned", f"no {SIGNATURE_FILE}"),
        ("other_model", "signed for model 'someone-else'"),
        ("changed_file", "model.skops changed after it was signed"),
        ("added_file", "not in the signed manifest"),
    ],
)
def test_a_champion_that_fails_the_checks_is_not_loaded_and_loses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, reason: str
) -> None:
    store = MemoryObjectStore()
    put_champion(
        store,
        tmp_path,
        key=OTHER_KEY if damage == "other_key" else PRIVATE,
        model_name="someone-else" if damage == "other_model" else "m",
        sign=damage != "unsigned",
    )
    model_uri = f"{CHAMPION_URI}/model.skops"
    if damage == "changed_file":
        # Same size, one byte different: only the SHA-256 tells.
        raw = bytearray(store.objects[model_uri])
        raw[-1] ^= 0xFF
        store.objects[model_uri] = bytes(raw)
    if damage == "added_file":
        store.objects[f"{CHAMPION_URI}/extra.py"] = b"import os\n"
    loads: list[Any] = []
    monkeypatch.setattr("skops.io.load", lambda *a, **k: loads.append(a))
    gateway = FakeGateway(HOLDER)
    trainer, registry = make_trainer(gateway, store)

    promoted, decision = promote(trainer, {"f1": 0.1}, Promotion(), holdout("iris")[2])

    assert loads == []  # never deserialised
    assert promoted and gateway.moves == [(5, "trainer:job/job-1")]
    assert "champion v4 could not be scored" in decision["reason"]
    assert decision["comparison"]["champion_error"].startswith("refused: ")
    assert reason in decision["comparison"]["champion_error"]
    assert decision["current_value"] is None
    assert reason in registry.tags[("m", "5")]["mlops.compare.champion_error"]


def test_a_champion_skops_refuses_to_load_loses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryObjectStore()
    put_champion(store, tmp_path)

    def untrusted(*_: Any, **__: Any) -> Any:
        raise UntrustedTypesFoundException(["builtins.eval"])

    monkeypatch.setattr("skops.io.load", untrusted)
    gateway = FakeGateway(HOLDER)
    trainer, _ = make_trainer(gateway, store)

    promoted, decision = promote(trainer, {"f1": 0.1}, Promotion(), holdout("iris")[2])

    assert promoted
    assert "model.skops cannot be loaded safely" in decision["comparison"]["champion_error"]


def test_a_champion_that_cannot_be_fetched_keeps_the_alias(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    put_champion(store, tmp_path)
    store.down = True
    gateway = FakeGateway(HOLDER)
    trainer, registry = make_trainer(gateway, store)

    promoted, decision = promote(trainer, {"f1": 1.0}, Promotion(), holdout("iris")[2])

    assert not promoted and gateway.moves == []
    assert decision["promote"] is False
    assert "could not be fetched" in decision["reason"]
    assert decision["comparison"]["champion_error"].startswith("unavailable: ")
    assert registry.tags[("m", "5")]["mlops.compare.decision"] == "keep"


def test_a_champion_that_cannot_predict_the_rows_loses(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    put_champion(store, tmp_path, task="regression")  # diabetes columns, not iris
    gateway = FakeGateway(HOLDER)
    trainer, _ = make_trainer(gateway, store)

    promoted, decision = promote(trainer, {"f1": 0.5}, Promotion(), holdout("iris")[2])

    assert promoted
    assert "cannot predict these rows" in decision["comparison"]["champion_error"]


def test_metric_of_the_other_task_is_refused() -> None:
    gateway = FakeGateway(None)
    trainer, _ = make_trainer(gateway)
    promoted, decision = promote(
        trainer, {"rmse": 1.0}, Promotion(metric="f1"), holdout("diabetes")[2], task="regression"
    )
    assert not promoted and "does not apply" in decision["reason"] and gateway.moves == []


def test_a_retry_after_the_move_does_not_move_again() -> None:
    gateway = FakeGateway({"version": 5, "run_id": "r5", "artifact_uri": CHAMPION_URI})
    trainer, _ = make_trainer(gateway)
    promoted, decision = promote(trainer, {"f1": 0.9}, Promotion(), holdout("iris")[2])
    assert promoted and gateway.moves == [] and "already points to v5" in decision["reason"]
