"""What the fault-injection tests share: a bounded load generator and the table they report.

``Load`` keeps N connections busy with predictions on loopback for as long as its ``with`` block
lasts (and never longer than ``max_s``), recording every request's start, end and outcome.
``FaultReport`` collects one row per fault and writes the table into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
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


@dataclass
class Load:
    """Predictions from ``connections`` concurrent clients, each waiting for its answer."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    connections: int = 4
    timeout_s: float = 10.0
    max_s: float = 300.0
    # False: a new connection per request, so a refused connection is a request that never
    # reached the server, and no request can meet a kept-alive connection being closed.
    keepalive: bool = True
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

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
        limits = httpx.Limits(
            max_connections=self.connections,
            max_keepalive_connections=self.connections if self.keepalive else 0,
        )
        deadline = time.monotonic() + self.max_s
        async with httpx.AsyncClient(
            headers=self.headers, timeout=self.timeout_s, limits=limits
        ) as client:

            async def one_client() -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    self.outcomes.append(await self._request(client))

            await asyncio.gather(*(one_client() for _ in range(self.connections)))

    async def _request(self, client: httpx.AsyncClient) -> Outcome:
        started = time.monotonic()
        try:
            response = await client.post(f"{self.url}/predict", json=self.body)
        except httpx.HTTPError as exc:
            return Outcome(started, time.monotonic(), None, type(exc).__name__, None)
        ended = time.monotonic()
        if response.status_code != 200:
            return Outcome(started, ended, response.status_code, response.text[:200], None)
        return Outcome(started, ended, 200, None, int(response.json()["model"]["version"]))

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
