"""Aggregation (medians over rounds) and the side-by-side tables, as text and as markdown."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from servers import SERVER_LABELS


@dataclass(frozen=True)
class CellKey:
    model: str  # model key: lr | rf | mixed
    rows: int
    connections: int


@dataclass
class Summary:
    """One server in one cell: medians over the rounds, errors summed over them."""

    server: str
    model_name: str
    model_version: int
    cell: CellKey
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    timeouts: int
    rps_rounds: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "model": self.model_name,
            "model_version": self.model_version,
            "rows": self.cell.rows,
            "connections": self.cell.connections,
            "rounds": self.rounds,
            "rps_median": round(self.rps, 1),
            "p50_ms_median": round(self.p50_ms, 3),
            "p99_ms_median": round(self.p99_ms, 3),
            "non2xx_total": self.non2xx,
            "socket_errors_total": self.socket_errors,
            "timeouts_total": self.timeouts,
            "rps_rounds": [round(x, 1) for x in self.rps_rounds],
        }


def summarise(runs: list[dict[str, Any]]) -> list[Summary]:
    """Group the raw runs by (cell, server), keeping the order they first appeared in."""
    groups: dict[tuple[CellKey, str], list[dict[str, Any]]] = {}
    for run in runs:
        key = (CellKey(run["model_key"], run["rows"], run["connections"]), run["server"])
        groups.setdefault(key, []).append(run)
    out = []
    for (cell, server), items in groups.items():
        out.append(
            Summary(
                server=server,
                model_name=items[0]["model"],
                model_version=items[0]["model_version"],
                cell=cell,
                rounds=len(items),
                rps=statistics.median(r["rps"] for r in items),
                p50_ms=statistics.median(r["p50_ms"] for r in items),
                p99_ms=statistics.median(r["p99_ms"] for r in items),
                non2xx=sum(r["non2xx"] for r in items),
                socket_errors=sum(r["socket_errors"] for r in items),
                timeouts=sum(r["timeouts"] for r in items),
                rps_rounds=[r["rps"] for r in items],
            )
        )
    return out


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def fmt_rps(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den <= 0:
        return "n/a"
    ratio = num / den
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def _by_cell(summaries: list[Summary]) -> dict[CellKey, dict[str, Summary]]:
    cells: dict[CellKey, dict[str, Summary]] = {}
    for s in summaries:
        cells.setdefault(s.cell, {})[s.server] = s
    return cells


DETAIL_HEADER = [
    "server",
    "model",
    "rows",
    "conns",
    "req/s",
    "p50",
    "p99",
    "non-2xx / sock err / timeouts",
    "req/s vs mlflow",
]


def detail_rows(summaries: list[Summary]) -> list[list[str]]:
    rows = []
    for cell, servers in _by_cell(summaries).items():
        mlflow = servers.get("mlflow")
        for key, s in servers.items():
            rows.append(
                [
                    SERVER_LABELS.get(key, key),
                    f"{s.model_name} v{s.model_version}",
                    str(cell.rows),
                    str(cell.connections),
                    fmt_rps(s.rps),
                    fmt_ms(s.p50_ms),
                    fmt_ms(s.p99_ms),
                    f"{s.non2xx} / {s.socket_errors} / {s.timeouts}",
                    fmt_ratio(s.rps, mlflow.rps if mlflow else None),
                ]
            )
    return rows


def _has_v2(summaries: list[Summary]) -> bool:
    return any(s.server == "inference-v2" for s in summaries)


def summary_header(summaries: list[Summary]) -> list[str]:
    v2 = _has_v2(summaries)
    return [
        "model",
        "rows",
        "conns",
        "inference req/s",
        *(["inference V2 req/s"] if v2 else []),
        "mlflow req/s",
        "MLServer req/s",
        "MLServer+batching req/s",
        "ours / mlflow",
        "ours / MLServer+batching",
        *(["ours V2 / MLServer+batching"] if v2 else []),
        "ours p99 / p50",
    ]


def summary_rows(summaries: list[Summary]) -> list[list[str]]:
    """One row per cell: each server's req/s and this platform's ratios (``ours`` = /predict)."""
    v2 = _has_v2(summaries)
    keys = ["inference", *(["inference-v2"] if v2 else []), "mlflow", "mlserver"]
    keys.append("mlserver-batching")
    rows = []
    for cell, servers in _by_cell(summaries).items():

        def rps(key: str, servers: dict[str, Summary] = servers) -> float | None:
            found = servers.get(key)
            return found.rps if found else None

        ours = servers.get("inference")
        rows.append(
            [
                next(iter(servers.values())).model_name,
                str(cell.rows),
                str(cell.connections),
                *(fmt_rps(v) if (v := rps(k)) is not None else "-" for k in keys),
                fmt_ratio(rps("inference"), rps("mlflow")),
                fmt_ratio(rps("inference"), rps("mlserver-batching")),
                *([fmt_ratio(rps("inference-v2"), rps("mlserver-batching"))] if v2 else []),
                fmt_ratio(ours.p99_ms, ours.p50_ms) if ours else "n/a",
            ]
        )
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    numeric = [i >= 2 for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---" if i < 2 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
