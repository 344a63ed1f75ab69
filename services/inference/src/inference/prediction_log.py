"""The prediction log: one row per scored row, as Parquet files in S3, for the drift monitor.

Files: ``s3://<INFERENCE_PREDICTION_LOG_BUCKET>/predictions/<model>/date=YYYY-MM-DD/
<instance>-<UTC time>-<seq>.parquet`` (``date`` is the UTC day of the rows' ``ts``; ``instance``
is ``INFERENCE_INSTANCE_ID``, default ``<hostname>:<port>``, with ``:`` written ``-``). One file
holds one model version's rows. Columns, in this order:

=====================  =======================  ================================================
column                 type                     value
=====================  =======================  ================================================
``request_id``         string                   the request's ``X-Request-Id`` (request_ids.py)
``ts``                 timestamp[us, UTC]       when the prediction was made
``model``              string                   registered model name
``version``            int64                    its version
``alias``              string                   the alias it was served as: during a
                                                rollout, the variant that answered (or the
                                                mirror)
``mirror``             bool                     true: the rollout's mirror scored a copy of
                                                the request; its answer was not returned
``latency_ms``         float64                  the request's time in the service, from its
                                                route starting (token checked) to the
                                                prediction being ready; the same for every
                                                row of a request
``feature.<name>``     per signature type       one column per input, named as in the model's
                                                signature and in its order (rows sent as lists
                                                are read in that order): double float64, float
                                                float32, long int64, integer int32, string
                                                string, boolean bool; other kinds as Arrow reads
                                                them. Null: the value was missing. A model
                                                without a signature: the rows' own keys (or
                                                positions 0, 1, ...)
``prediction``         the model's type         int64 or string (or bool) class labels as the
                                                classifier has them; float64 for regression
                                                (null where it was not finite)
``proba.<class>``      float64                  classifiers with predict_proba: one column per
                                                class, in the model's class order
=====================  =======================  ================================================

What a request pays: ``PredictionLog.record`` appends its values to per-model columns (plain
lists and arrays: no object per request for the garbage collector to scan later), under a lock.
Every ``INFERENCE_PREDICTION_LOG_FLUSH_ROWS`` rows or ``..._FLUSH_INTERVAL_S`` seconds a hand-off
thread turns those columns into one Arrow table per model version and day (a few vectorized
calls for thousands of rows) and passes it to the writer process (``log_writer.py``), which
encodes the Parquet file and uploads it: the expensive, GIL-holding work runs outside the
serving process. Rows are held, and count against ``..._MAX_BUFFERED_ROWS``, from ``record``
until the writer reports their file written or given up on. Records that do not fit (the writer
is behind, or S3 is down) are dropped and counted in
``inference_prediction_log_records_total{outcome}``; so are the rows a writer process held when
it died (it is started again, ``inference_prediction_log_writer_exits_total``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import IO, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from inference.errors import describe_exception
from inference.fastpath import NUMERIC_KINDS, Decoded
from inference.log_writer import STOP, Done, Job, WriterConfig, read_frame, serve, write_frame
from inference.model import Prediction, ServedModel
from inference.sink import ObjectWriter, Outcome, SinkConfig, flush_loop, report_lost
from inference.validation import InputSchema

Inputs = Decoded | pd.DataFrame

# Signature kinds -> the column type every file uses for them, whichever path decoded the rows.
ARROW_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "string": pa.string(),
    "boolean": pa.bool_(),
}
TIMESTAMP = pa.timestamp("us", tz="UTC")
_DAY_S = 86_400
# A writer process that died is started again after this, doubling while it keeps dying
# before writing anything (a broken install must not fork in a loop).
_RESTART_BASE_S = 1.0
_RESTART_MAX_S = 60.0

log = logging.getLogger(__name__)


# ---- the request side: columns ------------------------------------------------------------------
class _Columns:
    """One model version's rows of one UTC day, decoded (compiled path) or as DataFrames.

    Values go into a few lists and arrays, not an object per request: kept for seconds by the
    thousand, per-request objects made every young garbage collection scan and promote them.
    """

    __slots__ = (
        "classes",
        "counts",
        "day",
        "decoded",
        "frames",
        "latency",
        "mirror",
        "model",
        "numeric",
        "predictions",
        "proba",
        "request_ids",
        "rows",
        "strings",
        "ts",
        "with_proba",
    )

    def __init__(
        self,
        model: ServedModel,
        day: int,
        inputs: Inputs,
        prediction: Prediction,
        mirror: bool = False,
    ) -> None:
        self.model = model
        self.day = day
        self.mirror = mirror
        self.decoded = isinstance(inputs, Decoded)
        self.request_ids: list[str] = []
        self.counts = array("q")
        self.ts = array("d")
        self.latency = array("d")
        self.numeric: list[np.ndarray] = []
        self.strings: list[list[Any]] = (
            [[] for _ in inputs.categorical] if isinstance(inputs, Decoded) else []
        )
        self.frames: list[pd.DataFrame] = []
        self.predictions: list[Any] = []
        self.proba: list[float | None] = []
        self.classes = prediction.classes
        self.with_proba = False
        self.rows = 0

    def add(
        self,
        request_id: str,
        ts: float,
        latency_ms: float,
        inputs: Inputs,
        prediction: Prediction,
        rows: int,
    ) -> None:
        self.request_ids.append(request_id)
        self.counts.append(rows)
        self.ts.append(ts)
        self.latency.append(latency_ms)
        if isinstance(inputs, Decoded):
            self.numeric.append(inputs.numeric)
            for column, values in zip(self.strings, inputs.categorical, strict=True):
                column.extend(values)
        else:
            self.frames.append(inputs)
        self.predictions.extend(prediction.predictions)
        if self.classes is not None:
            probabilities = prediction.probabilities
            if probabilities is None:
                self.proba.extend([None] * (len(self.classes) * rows))
            else:
                self.with_proba = True
                for row in probabilities:
                    self.proba.extend(row)
        self.rows += rows

    # ---- columns -> Arrow, in the hand-off thread ------------------------------------------------
    def table(self) -> pa.Table:
        """The rows in the layout above."""
        meta = self.model.meta
        total = self.rows
        counts = np.frombuffer(self.counts, dtype=np.int64)
        per_request = None if total == len(counts) else np.repeat(np.arange(len(counts)), counts)
        ids = pa.array(self.request_ids, pa.string())
        ts_us = np.rint(np.frombuffer(self.ts, dtype=np.float64) * 1e6).astype(np.int64)
        latency = np.frombuffer(self.latency, dtype=np.float64)
        columns: dict[str, pa.Array] = {
            "request_id": ids if per_request is None else ids.take(per_request),
            "ts": pa.array(np.repeat(ts_us, counts)).cast(TIMESTAMP),
            "model": pa.array([meta.name] * total, pa.string()),
            "version": pa.array(np.full(total, meta.version, dtype=np.int64)),
            "alias": pa.array([meta.alias] * total, pa.string()),
            "mirror": pa.array(np.full(total, self.mirror, dtype=np.bool_)),
            "latency_ms": pa.array(np.repeat(latency, counts)),
        }
        schema = self.model.input_schema
        features = (
            self._decoded_table(schema) if self.decoded else _frame_table(schema, self.frames)
        )
        for name in features.column_names:
            columns[f"feature.{name}"] = features.column(name).combine_chunks()
        columns.update(self._prediction_columns())
        return pa.table(columns)

    def _decoded_table(self, schema: InputSchema | None) -> pa.Table:
        """The compiled path's arrays: numbers in one float matrix, strings in per-column lists."""
        # Only models with a named signature are compiled.
        assert schema is not None
        numeric = [c for c in schema.columns if c.type in NUMERIC_KINDS]
        strings = [c for c in schema.columns if c.type == "string"]
        matrix = self.numeric[0] if len(self.numeric) == 1 else np.concatenate(self.numeric)
        by_column = np.ascontiguousarray(matrix.T)
        arrays: dict[str, pa.Array] = {}
        for i, column in enumerate(numeric):
            # NaN is how the decoder wrote a missing number.
            arrays[column.name] = pa.array(by_column[i], from_pandas=True)
        for column, values in zip(strings, self.strings, strict=True):
            arrays[column.name] = pa.array(values, pa.string(), from_pandas=True)
        return _typed(schema, pa.table({c.name: arrays[c.name] for c in schema.columns}))

    def _prediction_columns(self) -> dict[str, pa.Array]:
        values = pa.array(self.predictions)
        if self.classes is None and pa.types.is_null(values.type):
            values = values.cast(pa.float64())  # a regressor whose rows were all non-finite
        columns = {"prediction": values}
        classes = self.classes
        if classes is None or not self.with_proba:
            return columns
        # None (a missing or non-finite probability) becomes NaN here, then null.
        matrix = np.array(self.proba, dtype=np.float64).reshape(-1, len(classes))
        by_class = np.ascontiguousarray(matrix.T)
        for k, label in enumerate(classes):
            columns[f"proba.{label}"] = pa.array(by_class[k], from_pandas=True)
        return columns


def _utc_day(day: int) -> date:
    return datetime.fromtimestamp(day * _DAY_S, UTC).date()


def _frame_table(schema: InputSchema | None, frames: list[Any]) -> pa.Table:
    """Validated DataFrames (the general path), in signature order when there is one."""
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    frame = frame.rename(columns=str)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return _typed(schema, table) if schema is not None else table


def _typed(schema: InputSchema | None, table: pa.Table) -> pa.Table:
    """Every column of a known kind as that kind's type, so all files of a model agree."""
    if schema is None:
        return table
    fields = []
    for column in schema.columns:
        current = table.schema.field(column.name).type
        fields.append(pa.field(column.name, ARROW_TYPES.get(column.type, current)))
    return table.cast(pa.schema(fields))


# ---- where the writer runs ----------------------------------------------------------------------
class WriterEndpoint(Protocol):
    """A running writer (``log_writer.serve``): its input and output, and how to end it."""

    @property
    def input(self) -> IO[bytes]: ...

    @property
    def output(self) -> IO[bytes]: ...

    def kill(self) -> None:
        """End it now (its rows are counted by the caller)."""
        ...

    def wait(self, timeout_s: float) -> bool:
        """Whether it ended within ``timeout_s``."""
        ...


class ChildWriter:
    """``python -m inference.log_writer``: the writer in a process of its own."""

    def __init__(self, config: WriterConfig) -> None:
        # Same interpreter and environment (PYTHONPATH included: same code); the config, S3
        # credentials included, goes through the pipe, never the command line.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "inference.log_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._input: IO[bytes] = self._proc.stdin
        self._output: IO[bytes] = self._proc.stdout
        write_frame(self._input, config)

    @property
    def input(self) -> IO[bytes]:
        return self._input

    @property
    def output(self) -> IO[bytes]:
        return self._output

    @property
    def pid(self) -> int:
        return self._proc.pid

    def kill(self) -> None:
        self._proc.kill()
        self._proc.wait()

    def wait(self, timeout_s: float) -> bool:
        try:
            self._proc.wait(max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return False
        return True


class ThreadWriter:
    """The same writer loop in a thread of this process, for a given object store (tests)."""

    def __init__(self, config: WriterConfig, store: ObjectWriter) -> None:
        to_read, to_write = os.pipe()
        back_read, back_write = os.pipe()
        self._input = os.fdopen(to_write, "wb")
        self._output = os.fdopen(back_read, "rb")
        source, sink = os.fdopen(to_read, "rb"), os.fdopen(back_write, "wb")

        def run() -> None:
            with source, sink:
                serve(source, sink, config, store)

        self._thread = threading.Thread(target=run, name="predictions-writer-loop", daemon=True)
        self._thread.start()

    @property
    def input(self) -> IO[bytes]:
        return self._input

    @property
    def output(self) -> IO[bytes]:
        return self._output

    def kill(self) -> None:
        # A thread cannot be killed: EOF makes it stop after the upload it is in.
        _close_quietly(self._input)

    def wait(self, timeout_s: float) -> bool:
        self._thread.join(max(0.0, timeout_s))
        return not self._thread.is_alive()


def _close_quietly(stream: IO[bytes]) -> None:
    # A writer that died leaves a broken pipe: nothing left to flush.
    with contextlib.suppress(OSError):
        stream.close()


class _Writer:
    """A writer endpoint and the files it was handed and has not answered yet."""

    def __init__(self, endpoint: WriterEndpoint) -> None:
        self.endpoint = endpoint
        self.in_flight: dict[int, int] = {}  # seq -> rows
        self.answered = False
        self.reader: threading.Thread | None = None


# ---- the log ------------------------------------------------------------------------------------
class PredictionLog:
    """Buffers scored rows as columns and hands them, as Arrow tables, to a writer.

    ``start_writer`` starts one writer (a ``ChildWriter`` in production); another is started
    when it dies. Every row offered to ``record`` is reported once to ``on_outcome``.
    """

    def __init__(
        self,
        config: SinkConfig,
        start_writer: Callable[[], WriterEndpoint],
        *,
        on_outcome: Callable[[Outcome, int], None] = lambda _outcome, _rows: None,
        on_writer_exit: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self._start_writer = start_writer
        self._on_outcome = on_outcome
        self._on_writer_exit = on_writer_exit
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._open: dict[tuple[int, int, bool, bool], _Columns] = {}
        self._last: _Columns | None = None
        self._sealed: list[_Columns] = []
        self._open_rows = 0
        # Rows from ``record`` until the writer answers for them: what the memory bound counts.
        self._held_rows = 0
        self._stopping = False
        self._abandoned = False
        self._seq = 0
        self._writer: _Writer | None = None
        self._restart_at = 0.0
        self._restart_delay = _RESTART_BASE_S
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predictions-writer", daemon=True)

    @property
    def held_rows(self) -> int:
        """Rows in memory here or in the writer, not yet written or dropped."""
        return self._held_rows

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def writer(self) -> WriterEndpoint | None:
        """The writer now running, if any."""
        current = self._writer
        return None if current is None else current.endpoint

    def start(self) -> None:
        with self._lock:
            self._ensure_writer()
        self._thread.start()

    # ---- the request side ---------------------------------------------------------------------
    def record(
        self,
        request_id: str,
        started: float,
        model: ServedModel,
        inputs: Inputs,
        prediction: Prediction,
        *,
        mirror: bool = False,
    ) -> None:
        """Log one request's rows (``started``: ``time.perf_counter()`` when it began);
        ``mirror``: the rollout's mirror scored a copy of the request."""
        rows = len(prediction.predictions)
        latency_ms = (time.perf_counter() - started) * 1000.0
        ts = time.time()
        day = int(ts // _DAY_S)
        decoded = isinstance(inputs, Decoded)
        config = self.config
        with self._lock:
            if self._stopping or self._held_rows + rows > config.max_buffered_rows:
                kept = False
            else:
                columns = self._last
                if (
                    columns is None
                    or columns.model is not model
                    or columns.day != day
                    or columns.decoded is not decoded
                    or columns.mirror is not mirror
                ):
                    columns = self._columns(model, day, inputs, prediction, mirror)
                try:
                    columns.add(request_id, ts, latency_ms, inputs, prediction, rows)
                except Exception:  # never the request's problem
                    log.exception("prediction log: cannot keep a record, its columns dropped")
                    self._discard(columns)
                    kept = False
                else:
                    kept = True
                    self._held_rows += rows
                    self._open_rows += rows
            due = self._open_rows >= config.flush_rows
        if not kept:
            self._on_outcome("dropped", rows)
        elif due and not self._wake.is_set():
            self._wake.set()

    def _columns(
        self, model: ServedModel, day: int, inputs: Inputs, prediction: Prediction, mirror: bool
    ) -> _Columns:
        """The open columns for these rows (under the lock)."""
        decoded = isinstance(inputs, Decoded)
        key = (id(model), day, decoded, mirror)
        columns = self._open.get(key)
        if columns is None:
            # Rows keep their order within a file: a model's rows that switch between the
            # compiled and the general path close the other kind's columns first.
            other = self._open.pop((id(model), day, not decoded, mirror), None)
            if other is not None:
                self._sealed.append(other)
            columns = self._open[key] = _Columns(model, day, inputs, prediction, mirror)
        self._last = columns
        return columns

    def _discard(self, columns: _Columns) -> None:
        """Drop columns a failed ``add`` may have left uneven (under the lock)."""
        key = (id(columns.model), columns.day, columns.decoded, columns.mirror)
        if self._open.get(key) is columns:
            del self._open[key]
        if self._last is columns:
            self._last = None
        self._open_rows -= columns.rows
        self._held_rows -= columns.rows
        if columns.rows:
            self._on_outcome("dropped", columns.rows)

    # ---- shutdown -----------------------------------------------------------------------------
    def close(self, timeout_s: float) -> None:
        """Write what is held, waiting at most ``timeout_s``; rows still held then are dropped.

        Blocks: call it from a thread, not the event loop.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            writer = self._writer
            while writer is not None and writer.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._settled.wait(left)
            lost, self._held_rows = self._held_rows, 0
            self._open.clear()
            self._sealed.clear()
            self._last = None
            self._open_rows = 0
            if writer is not None:
                writer.in_flight.clear()
            # Answers arriving later must not count their rows again.
            self._abandoned = True
        if writer is not None:
            endpoint = writer.endpoint
            _close_quietly(endpoint.input)
            if not endpoint.wait(deadline - time.monotonic()):
                endpoint.kill()
            if writer.reader is not None:
                writer.reader.join(max(0.0, deadline - time.monotonic()))
        report_lost(self.config, lost, timeout_s, self._on_outcome)

    # ---- the hand-off thread ------------------------------------------------------------------
    def _run(self) -> None:
        flush_loop(
            self.config,
            self._wake,
            stopping=lambda: self._stopping,
            due=lambda: self._open_rows >= self.config.flush_rows,
            flush=self._hand_off,
        )
        writer = self._writer
        if writer is not None:
            # Gone already: its reader counts what it held.
            with contextlib.suppress(OSError, ValueError):
                write_frame(writer.endpoint.input, STOP)

    def _hand_off(self) -> None:
        with self._lock:
            batches = [*self._sealed, *self._open.values()]
            self._sealed, self._open, self._last, self._open_rows = [], {}, None, 0
        for columns in batches:
            try:
                table = columns.table()
            except Exception as exc:  # a model without a signature sent values Arrow refuses
                meta = columns.model.meta
                log.warning(
                    "prediction log: %s v%s rows cannot be written as one table: %s",
                    meta.name,
                    meta.version,
                    describe_exception(exc),
                )
                self._release(columns.rows, written=0)
                continue
            self._send(columns.model.meta.name, _utc_day(columns.day), table)

    def _send(self, model: str, day: date, table: pa.Table) -> None:
        rows = table.num_rows
        with self._lock:
            writer = self._ensure_writer()
            if writer is None:
                seq = 0
            else:
                self._seq += 1
                seq = self._seq
                writer.in_flight[seq] = rows
        if writer is None:
            self._release(rows, written=0)
            return
        try:
            write_frame(writer.endpoint.input, Job(seq, model, day, table))
        except (OSError, ValueError) as exc:  # the writer died: its reader sees EOF too
            log.warning("%s: the writer is gone: %s", self.config.prefix, describe_exception(exc))
            self._settle(writer, seq, written=0)

    def _ensure_writer(self) -> _Writer | None:
        """The running writer, started again when it died and its restart is due (lock held)."""
        if self._writer is not None:
            return self._writer
        if self._abandoned or time.monotonic() < self._restart_at:
            return None
        try:
            endpoint = self._start_writer()
        except Exception:
            log.exception("%s: cannot start the writer", self.config.prefix)
            self._writer_failed()
            return None
        writer = self._writer = _Writer(endpoint)
        writer.reader = threading.Thread(
            target=self._read, args=(writer,), name="predictions-writer-reader", daemon=True
        )
        writer.reader.start()
        return writer

    def _writer_failed(self) -> None:
        self._restart_at = time.monotonic() + self._restart_delay
        self._restart_delay = min(self._restart_delay * 2, _RESTART_MAX_S)

    def _read(self, writer: _Writer) -> None:
        """Answers from ``writer`` until it ends; then what it held is dropped."""
        while True:
            try:
                done = read_frame(writer.endpoint.output)
            except (OSError, ValueError, EOFError):
                done = None
            if not isinstance(done, Done):
                break
            writer.answered = True
            self._settle(writer, done.seq, written=done.written)
        with self._lock:
            lost = sum(writer.in_flight.values())
            writer.in_flight.clear()
            if self._writer is writer:
                self._writer = None
            expected = self._stopping
            if not expected and writer.answered:  # it worked for a while: restart at once
                self._restart_delay = _RESTART_BASE_S
                self._restart_at = 0.0
            elif not expected:
                self._writer_failed()
            self._held_rows -= lost
            self._settled.notify_all()
        _close_quietly(writer.endpoint.output)
        if not expected:
            self._on_writer_exit()
            log.error(
                "%s: the writer process ended unexpectedly; %d row(s) it held are dropped, "
                "another starts with the next file",
                self.config.prefix,
                lost,
            )
        if lost:
            self._on_outcome("dropped", lost)

    def _settle(self, writer: _Writer, seq: int, *, written: int) -> None:
        with self._lock:
            rows = writer.in_flight.pop(seq, None)
            if rows is None:  # counted already (shutdown gave up on it, or its writer died)
                return
            self._held_rows -= rows
            if not writer.in_flight:
                self._settled.notify_all()
        self._report(rows, min(written, rows))

    def _release(self, rows: int, *, written: int) -> None:
        with self._lock:
            if self._abandoned:
                return
            self._held_rows -= rows
        self._report(rows, written)

    def _report(self, rows: int, written: int) -> None:
        if written:
            self._on_outcome("written", written)
        if rows > written:
            self._on_outcome("dropped", rows - written)
