"""The prediction log's writer: Parquet encoding and S3 uploads, in a process of its own.

The serving process (``prediction_log.PredictionLog``) hands over finished Arrow tables; this
module encodes and uploads them, so that work (zstd, boto3's request signing, HTTP) never holds
the serving process's GIL. Run as ``python -m inference.log_writer``: it talks over its stdin
and stdout only, in length-prefixed pickled frames, which is also why nothing it needs is on its
command line or in its environment (the S3 credentials arrive in the first frame):

- in: one ``WriterConfig``, then ``Job``s, then optionally ``STOP``; EOF means stop too;
- out: one ``Done`` per job, with how many of its rows were written and how many dropped.

``serve`` is the same loop over any pair of binary files: the app runs it in a thread instead
when it is given an object store (tests' in-memory store).

Only pyarrow, boto3 and this package's light modules are imported here: the child starts in
well under a second and does not load the serving stack.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import struct
import sys
import threading
from dataclasses import dataclass
from datetime import date
from typing import IO, Any, Final

import pyarrow as pa
from mlops_common.settings import S3Settings
from mlops_common.storage import ObjectStore, make_s3_client

from inference.sink import Batch, ObjectWriter, SinkConfig, Uploader

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")
STOP: Final = "stop"
_NICENESS = 10


@dataclass(frozen=True)
class WriterConfig:
    sink: SinkConfig
    # Only for the child process; ``serve`` in a thread is given its store directly.
    s3: S3Settings | None = None


@dataclass(frozen=True)
class Job:
    seq: int  # numbers the file, and its ``Done``
    model: str
    day: date
    table: pa.Table


@dataclass(frozen=True)
class Done:
    seq: int
    written: int
    dropped: int


# ---- framing ---------------------------------------------------------------------------------
def write_frame(out: IO[bytes], message: object) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(payload)))
    out.write(payload)
    out.flush()


def read_frame(source: IO[bytes]) -> Any:
    """The next message, or None at EOF (the other side closed or died).

    Only ever reads frames written by this package's own processes, over pipes it made.
    """
    head = _read_exactly(source, _LENGTH.size)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    payload = _read_exactly(source, length)
    if payload is None:
        return None
    return pickle.loads(payload)  # noqa: S301 - our own process's frames, over our own pipe


def _read_exactly(source: IO[bytes], size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = source.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---- the writer loop -------------------------------------------------------------------------
def serve(source: IO[bytes], sink: IO[bytes], config: WriterConfig, store: ObjectWriter) -> None:
    """Write every ``Job`` read from ``source``, answering each with a ``Done`` on ``sink``,
    until ``STOP`` or EOF; what was read by then is still written (no retry waits)."""
    jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
    stopping = threading.Event()

    def read() -> None:
        # A thread of its own, so STOP ends a retry wait of the job being written.
        try:
            while True:
                message = read_frame(source)
                if message is None or message == STOP:
                    break
                jobs.put(message)
        finally:
            stopping.set()
            jobs.put(None)

    reader = threading.Thread(target=read, name="log-writer-reader", daemon=True)
    reader.start()
    uploader = Uploader(config.sink, store)
    while (job := jobs.get()) is not None:
        rows = job.table.num_rows
        written = uploader.upload(Batch(job.model, job.day, job.table), stopping, seq=job.seq)
        try:
            write_frame(sink, Done(job.seq, rows if written else 0, 0 if written else rows))
        except (BrokenPipeError, ValueError):  # the serving side is gone: nobody to tell
            break
    reader.join()


def main() -> None:
    # stdout carries the frames: anything a library prints must not land between them.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # Ctrl-C or a supervisor's SIGTERM reach the whole process group; the serving process
    # decides when this one stops (STOP, or EOF when it is gone), after the final flush.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Where it shares a core with the serving process, requests come first: the log is the
    # one to fall behind (its buffer bound then drops rows, counted), not the answers.
    os.nice(_NICENESS)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [log-writer] %(name)s: %(message)s"
    )
    source = sys.stdin.buffer
    config = read_frame(source)
    if not isinstance(config, WriterConfig) or config.s3 is None:
        log.error("the first frame was not a WriterConfig with S3 settings: exiting")
        sys.exit(2)
    serve(source, out, config, ObjectStore(make_s3_client(config.s3)))


if __name__ == "__main__":
    # Through the package's module, not this ``__main__`` copy: the classes in the frames must
    # be the ones the serving process pickles and unpickles (``inference.log_writer.Done``).
    from inference import log_writer

    log_writer.main()
