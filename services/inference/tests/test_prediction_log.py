"""The prediction log: what reaches S3 for each scored row, when, and what is dropped.

The app writes to a ``RecordingStore``; files are read back with pyarrow, as the drift monitor
reads them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from inference.prediction_log import ChildWriter
from inference.sink import Batch, RecordSink, SinkConfig
from mlops_common.settings import S3Settings
from pydantic import SecretStr

from .conftest import CHURN_V2_INPUTS, FakeS3, RecordingStore

pytestmark = pytest.mark.anyio

PREDICTIONS = "s3://data/predictions/"
META = ["request_id", "ts", "model", "version", "alias", "mirror", "latency_ms"]
MIXED = ["age", "income", "visits", "city", "plan"]
PRICES = ["age", "income", "visits", "city", "member"]
KEY = re.compile(
    r"s3://data/predictions/(?P<model>[^/]+)/date=(?P<day>\d{4}-\d\d-\d\d)/"
    r"inference-test-8800-\d{8}T\d{12}Z-(?P<seq>\d{6})\.parquet"
)


def logged(svc: Any, outcome: str) -> float:
    value = svc.metrics.registry.get_sample_value(
        "inference_prediction_log_records_total", {"outcome": outcome}
    )
    return float(value or 0.0)


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def nulls(values: pd.Series[Any]) -> list[Any]:
    return [None if pd.isna(v) else v for v in values]


# ---- what is written ------------------------------------------------------------------------------
async def test_classifier_rows_carry_features_prediction_and_probabilities(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["mixed"].iloc[:3]  # a missing age (row 1) and city (row 2)
    gateway.set_alias("mixed", 1)
    before = datetime.now(UTC)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        assert svc.manager.current.compiled
        response = await svc.post_json("/predict", {"instances": to_rows(frame)})
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]

    [uri] = svc.records.keys(PREDICTIONS)
    key = KEY.fullmatch(uri)
    assert key is not None, uri
    assert (key["model"], key["seq"]) == ("mixed", "000001")
    table = svc.records.table(PREDICTIONS)
    pipeline = artifacts.pipelines["mixed-v1"]
    assert table.column_names == [
        *META,
        *(f"feature.{name}" for name in MIXED),
        "prediction",
        "proba.churn",
        "proba.stay",
    ]
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["ts"] == pa.timestamp("us", tz="UTC")
    assert (types["request_id"], types["model"], types["alias"]) == (pa.string(),) * 3
    assert (types["version"], types["latency_ms"]) == (pa.int64(), pa.float64())
    assert types["feature.age"] == pa.float64()
    assert types["feature.visits"] == pa.int64()  # long in the signature, whatever the decoder
    assert types["feature.city"] == pa.string()
    assert types["prediction"] == pa.string()
    data = table.to_pydict()
    assert data["request_id"] == [request_id] * 3
    assert all(before <= ts <= after for ts in data["ts"])
    assert key["day"] == data["ts"][0].date().isoformat()
    assert data["model"] == ["mixed"] * 3
    assert data["version"] == [1] * 3
    assert data["alias"] == ["champion"] * 3
    assert all(0 < ms < 10_000 for ms in data["latency_ms"])
    assert len(set(data["latency_ms"])) == 1  # the request's, on each of its rows
    for name in MIXED:
        assert data[f"feature.{name}"] == nulls(frame[name]), name
    assert data["prediction"] == pipeline.predict(frame).tolist()
    proba = np.column_stack([data["proba.churn"], data["proba.stay"]])
    assert np.allclose(proba, pipeline.predict_proba(frame))


async def test_regressor_rows_sent_as_lists_are_named_in_signature_order(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["prices"].iloc[:4]
    as_lists = [[row[name] for name in PRICES] for row in to_rows(frame)]
    gateway.set_alias("prices", 1)
    async with service("prices") as svc:
        assert await svc.manager.poll_once()
        assert not svc.manager.current.compiled  # the general path: booleans
        response = await svc.post_json("/predict", {"instances": as_lists})
    assert response.status_code == 200, response.text

    table = svc.records.table(PREDICTIONS)
    assert table.column_names == [*META, *(f"feature.{name}" for name in PRICES), "prediction"]
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["prediction"] == pa.float64()
    assert types["feature.member"] == pa.bool_()
    assert types["feature.visits"] == pa.int64()
    data = table.to_pydict()
    for name in PRICES:
        assert data[f"feature.{name}"] == nulls(frame[name]), name
    assert np.allclose(data["prediction"], artifacts.pipelines["prices-v1"].predict(frame))
    assert data["model"] == ["prices"] * 4


async def test_v2_inference_is_logged_under_the_header_request_id(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:2]
    rows = to_rows(frame)
    inputs = [
        {"name": name, "datatype": kind, "shape": [2], "data": [row[name] for row in rows]}
        for name, kind in CHURN_V2_INPUTS
    ]
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        response = await svc.post_json("/v2/models/churn/infer", {"id": "v2-1", "inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "v2-1"
    data = svc.records.table(PREDICTIONS).to_pydict()
    assert data["request_id"] == [response.headers["x-request-id"]] * 2
    assert data["prediction"] == artifacts.pipelines["churn-v1"].predict(frame).tolist()
    assert data["feature.member"] == frame["member"].tolist()


async def test_one_file_per_model_version(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["churn"].iloc[:1])
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        assert (await svc.post_json("/predict", {"instances": rows})).status_code == 200
        gateway.set_alias("churn", 2)
        assert await svc.manager.poll_once()
        assert (await svc.post_json("/predict", {"instances": rows})).status_code == 200
    uris = svc.records.keys(PREDICTIONS)
    assert len(uris) == 2
    assert sorted(svc.records.table(PREDICTIONS).column("version").to_pylist()) == [1, 2]


async def test_a_model_without_signature_logs_the_rows_own_keys(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:3]
    gateway.set_alias("bare", 1)
    async with service("bare") as svc:
        assert await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": to_rows(frame)})
    assert response.status_code == 200, response.text
    table = svc.records.table(PREDICTIONS)
    names = [f"feature.{name}" for name in frame.columns]
    assert table.column_names == [*META, *names, "prediction", "proba.churn", "proba.stay"]
    data = table.to_pydict()
    assert data["feature.city"] == nulls(frame["city"])
    assert data["prediction"] == response.json()["predictions"]


# ---- when it is written ---------------------------------------------------------------------------
async def test_a_file_is_written_once_flush_rows_wait(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:4])
    gateway.set_alias("mixed", 1)
    settings = {"prediction_log_flush_rows": 4, "prediction_log_flush_interval_s": 600}
    async with service("mixed", **settings) as svc:
        assert await svc.manager.poll_once()
        for row in rows[:3]:
            assert (await svc.post_json("/predict", {"instances": [row]})).status_code == 200
        await asyncio.sleep(0.3)
        assert svc.records.keys(PREDICTIONS) == []
        assert (await svc.post_json("/predict", {"instances": rows[3:]})).status_code == 200
        await until(lambda: svc.records.keys(PREDICTIONS))
        assert svc.records.table(PREDICTIONS).num_rows == 4
        assert logged(svc, "written") == 4


async def test_what_waits_is_written_every_flush_interval(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:1])
    gateway.set_alias("mixed", 1)
    async with service("mixed", prediction_log_flush_interval_s=0.2) as svc:
        assert await svc.manager.poll_once()
        assert (await svc.post_json("/predict", {"instances": rows})).status_code == 200
        await until(lambda: svc.records.keys(PREDICTIONS), timeout_s=5)
        assert svc.records.table(PREDICTIONS).num_rows == 1


# ---- what is dropped ------------------------------------------------------------------------------
async def test_a_full_buffer_drops_records_never_requests_and_every_row_is_counted(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:20])
    bodies = [{"instances": rows[i % 19 : i % 19 + 1 + i % 2]} for i in range(80)]
    store = RecordingStore()
    store.gate = threading.Event()  # S3 is slow: the writer cannot keep up
    gateway.set_alias("mixed", 1)
    settings = {
        "prediction_log_flush_rows": 2,
        "prediction_log_max_buffered_rows": 6,
        "prediction_log_flush_interval_s": 600,
    }
    async with service("mixed", record_store=store, **settings) as svc:
        assert await svc.manager.poll_once()
        answers = await asyncio.gather(*(svc.post_json("/predict", b) for b in bodies))
        assert [a.status_code for a in answers] == [200] * len(bodies)
        assert logged(svc, "dropped") > 0
        store.gate.set()
    predicted = sum(len(b["instances"]) for b in bodies)
    written, dropped = logged(svc, "written"), logged(svc, "dropped")
    assert written + dropped == predicted
    assert written == store.table(PREDICTIONS).num_rows > 0
    held = svc.metrics.registry.get_sample_value(
        "inference_record_buffer_rows", {"kind": "predictions"}
    )
    assert held == 0


async def test_s3_down_drops_after_the_retries_and_requests_succeed(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:5])
    store = RecordingStore()
    store.down = True
    gateway.set_alias("mixed", 1)
    settings = {
        "prediction_log_flush_rows": 2,
        "prediction_log_write_attempts": 2,
        "prediction_log_retry_base_s": 0.01,
    }
    async with service("mixed", record_store=store, **settings) as svc:
        assert await svc.manager.poll_once()
        for row in rows:
            response = await svc.post_json("/predict", {"instances": [row]})
            assert response.status_code == 200, response.text
        await until(lambda: logged(svc, "dropped") >= 4)
        scrape = (await svc.client.get("/metrics")).text
        assert 'inference_prediction_log_records_total{outcome="dropped"}' in scrape
    assert (logged(svc, "written"), logged(svc, "dropped")) == (0, 5)
    # Two tries per file (how the rows split into files depends on the writer's pace).
    assert store.attempts >= 2
    assert store.attempts % 2 == 0
    assert store.objects == {}


async def test_logging_off_starts_no_writer_and_writes_nothing(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:2])
    gateway.set_alias("mixed", 1)
    async with service("mixed", prediction_log_enabled=False) as svc:
        assert await svc.manager.poll_once()
        assert "predictions-writer" not in {t.name for t in threading.enumerate()}
        assert svc.app.state.handler._log is None
        response = await svc.post_json("/predict", {"instances": rows})
        assert response.status_code == 200
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert svc.records.keys(PREDICTIONS) == []
    assert (logged(svc, "written"), logged(svc, "dropped")) == (0, 0)


# ---- the writer process ------------------------------------------------------------------------
def writer_exits(svc: Any) -> float:
    value = svc.metrics.registry.get_sample_value("inference_prediction_log_writer_exits_total", {})
    return float(value or 0.0)


async def test_under_load_a_writer_process_writes_and_a_killed_one_is_replaced_every_row_counted(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any, fake_s3: FakeS3
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:20])
    bodies = [{"instances": rows[i % 19 : i % 19 + 1 + i % 2]} for i in range(60)]
    gateway.set_alias("mixed", 1)
    s3 = S3Settings(
        endpoint_url=fake_s3.url,
        access_key_id="test",
        secret_access_key=SecretStr("test-secret"),
        connect_timeout_s=2,
        read_timeout_s=5,
    )
    settings = {
        "s3": s3,
        "prediction_log_flush_rows": 10,
        "prediction_log_max_buffered_rows": 40,
        "prediction_log_flush_interval_s": 0.2,
        "prediction_log_write_attempts": 1,
    }
    served = 0
    async with service("mixed", writer_process=True, **settings) as svc:
        assert await svc.manager.poll_once()
        log = svc.app.state.handler._log
        first = log.writer
        assert isinstance(first, ChildWriter)
        assert first.pid != os.getpid()

        async def burst() -> None:
            nonlocal served
            answers = await asyncio.gather(*(svc.post_json("/predict", b) for b in bodies))
            assert [a.status_code for a in answers] == [200] * len(bodies)
            served += sum(len(b["instances"]) for b in bodies)

        await burst()
        await until(lambda: logged(svc, "written") > 0)
        os.kill(first.pid, signal.SIGKILL)
        await until(lambda: writer_exits(svc) == 1)
        await burst()
        # The next file starts another writer process, which writes it.
        await until(lambda: log.writer is not None and log.writer.pid != first.pid)
        written_before = logged(svc, "written")
        await burst()
        await until(lambda: logged(svc, "written") > written_before)
    written, dropped = logged(svc, "written"), logged(svc, "dropped")
    assert written + dropped == served
    assert written == fake_s3.table(PREDICTIONS).num_rows
    assert writer_exits(svc) == 1
    assert log.held_rows == 0
    table = fake_s3.table(PREDICTIONS)
    assert table.column_names[: len(META)] == META
    assert set(table.column("model").to_pylist()) == {"mixed"}
    for uri in fake_s3.objects:
        assert KEY.fullmatch(uri), uri


# ---- the sink on its own --------------------------------------------------------------------------
def _config(**overrides: Any) -> SinkConfig:
    values: dict[str, Any] = {
        "bucket": "data",
        "prefix": "things",
        "instance": "host-1",
        "flush_rows": 1,
        "flush_interval_s": 600,
        "max_buffered_rows": 100,
        "write_attempts": 1,
        "retry_base_s": 0.01,
    }
    return SinkConfig(**{**values, **overrides})


def _one_table(records: Any) -> list[Batch]:
    return [Batch("m", date(2026, 12, 2), pa.table({"x": list(records)}))]


def test_shutdown_gives_up_on_a_stuck_write_at_the_deadline_and_counts_it_once() -> None:
    store = RecordingStore()
    store.gate = threading.Event()
    outcomes: dict[str, int] = {}

    def count(outcome: str, rows: int) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + rows

    sink: RecordSink[int] = RecordSink(_config(), store, _one_table, on_outcome=count)
    sink.start()
    sink.add(1, 1)
    deadline = time.monotonic() + 10
    while store.attempts == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sink.add(2, 1)  # waits behind the stuck write
    started = time.monotonic()
    sink.close(0.2)
    assert time.monotonic() - started < 2
    assert outcomes == {"dropped": 2}
    sink.add(3, 1)  # after close: dropped at once
    store.gate.set()  # the stuck write ends after all
    sink._thread.join(10)
    assert not sink.running
    assert outcomes == {"dropped": 3}
    assert sink.held_rows == 0


def test_file_names_follow_the_layout() -> None:
    store = RecordingStore()
    sink: RecordSink[int] = RecordSink(_config(), store, _one_table, clock=lambda: 1_764_700_000.5)
    sink.start()
    sink.add(7, 1)
    sink.close(5)
    assert list(store.objects) == [
        "s3://data/things/m/date=2026-12-02/host-1-20251202T182640500000Z-000001.parquet"
    ]
