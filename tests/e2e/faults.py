"""What the fault-injection tests share: a bounded load generator and the table they report.

``Load`` keeps N connections busy with predictions on loopback for as long as its ``with`` block
lasts (and never longer than ``max_s``), recording every request's start, end and outcome.
``FaultReport`` collects one row per fault and writes the table into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    error: str | None
    version: int | None
    # The server took the request: it asked for the body (100 Continue) or answered.
    taken: bool = True


class Refused(Exception):
    """The connection ended before the server took the request (never reached the app)."""


@dataclass
class Load:
    """Predictions from ``connections`` concurrent clients, each waiting for its answer.

    A lean HTTP/1.1 client on asyncio streams rather than a full client library: the load
    generator shares two cores with the stack, and its own overhead would show up as latency.
    Each request announces its body with ``Expect: 100-continue``, so a request the server took
    (it asked for the body) is told apart from one whose connection was refused or reset first.
    """

    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    connections: int = 4
    timeout_s: float = 10.0
    max_s: float = 300.0
    # False: a new connection per request (no request can meet a kept-alive connection that
    # the server is closing).
    keepalive: bool = True
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        parsed = httpx.URL(self.url)
        self._host, self._port = parsed.host, parsed.port or 80
        payload = json.dumps(self.body).encode()
        head = [
            f"POST {parsed.path.rstrip('/')}/predict HTTP/1.1",
            f"Host: {self._host}:{self._port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            "Expect: 100-continue",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        if not self.keepalive:
            head.append("Connection: close")
        self._head = ("\r\n".join(head) + "\r\n\r\n").encode()
        self._payload = payload

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_s

        async def one_client() -> None:
            conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
            while not self._stop.is_set() and time.monotonic() < deadline:
                outcome, conn = await self._request(conn)
                self.outcomes.append(outcome)
            if conn is not None:
                conn[1].close()

        await asyncio.gather(*(one_client() for _ in range(self.connections)))

    async def _request(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
    ) -> tuple[Outcome, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        started = time.monotonic()
        taken = writer_done = False
        try:
            async with asyncio.timeout(self.timeout_s):
                if conn is None:
                    conn = await asyncio.open_connection(self._host, self._port)
                reader, writer = conn
                writer.write(self._head)
                status, headers, body = await _response(reader)
                if status == 100:
                    taken = True
                    writer.write(self._payload)
                    status, headers, body = await _response(reader)
                else:  # answered at once (401, 503...): the body was never sent
                    taken, writer_done = True, True
        except (OSError, TimeoutError, Refused, asyncio.IncompleteReadError) as exc:
            if conn is not None:
                conn[1].close()
            return Outcome(started, time.monotonic(), None, type(exc).__name__, None, taken), None
        ended = time.monotonic()
        if writer_done or not self.keepalive or headers.get("connection") == "close":
            writer.close()
            conn = None
        if status != 200:
            return Outcome(started, ended, status, body[:200].decode(errors="replace"), None), conn
        version = int(json.loads(body)["model"]["version"])
        return Outcome(started, ended, 200, None, version), conn

    # ---- what happened ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def versions(self) -> Counter[int]:
        return Counter(o.version for o in self.outcomes if o.version is not None)

    def slowest_s(self) -> float:
        return max((o.ended - o.started for o in self.outcomes), default=0.0)

    def describe(self) -> str:
        return f"{self.total} predictions, {self.connections} connections"


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names) and its Content-Length body."""
    line = await reader.readline()
    if not line:
        raise Refused("connection closed before any answer")
    status = int(line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:
        return status, headers, b""
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


@dataclass
class FaultRow:
    fault: str
    done: str
    load: str
    client_failures: str
    jobs_lost: str
    duplicate_versions: str
    recovery: str


@dataclass
class FaultReport:
    rows: list[FaultRow] = field(default_factory=list)

    def add(self, row: FaultRow) -> None:
        self.rows.append(row)

    def table(self) -> str:
        head = (
            "| fault | what was done | load during it | failures seen by clients | jobs lost "
            "| duplicate versions | time to recover |"
        )
        lines = [head, "|---|---|---|---|---:|---:|---|"]
        for r in self.rows:
            cells = (
                r.fault,
                r.done,
                r.load,
                r.client_failures,
                r.jobs_lost,
                r.duplicate_versions,
                r.recovery,
            )
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)

    def write(self, doc: Path, when: str) -> None:
        """Replace the table between the markers in ``doc`` (kept there for readers)."""
        text = doc.read_text()
        block = f"{BEGIN}\n_Measured {when}._\n\n{self.table()}\n{END}"
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        doc.write_text(pattern.sub(lambda _: block, text, count=1))


def seconds(value: float) -> str:
    return f"{value:.1f} s"
