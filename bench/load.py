"""Load generation with wrk: one thread pinned to its own core, a fixed JSON body, parsed results."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import BenchError, require_tool

# wrk's Lua: POST the file named by BENCH_BODY_FILE; at the end print one JSON line with exact
# counts and latency percentiles in microseconds (wrk's text output rounds them).
LUA_SCRIPT = """\
local path = os.getenv("BENCH_BODY_FILE")
local file = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
-- The platform's services need a token; by environment, so it is on no command line or file.
local auth = os.getenv("BENCH_AUTHORIZATION")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,"
    .. "\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,"
    .. "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d,\\"mean_us\\":%.1f}\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non2xx: int
    socket_errors: int  # connect + read + write
    timeouts: int
    raw: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("raw")
        return out


def check_tools() -> str:
    require_tool("taskset", "apt-get install -y util-linux")
    return require_tool("wrk", "apt-get install -y wrk  (Debian/Ubuntu package)")


def write_lua(workdir: Path) -> Path:
    path = workdir / "post.lua"
    path.write_text(LUA_SCRIPT)
    return path


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Parse wrk's ``--latency`` output (and the Lua ``done`` line when present)."""
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps_match is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output[-2000:]}")
    rps = float(rps_match.group(1))
    percentiles = {
        int(m.group(1)): _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.MULTILINE)
    }
    count = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    connect, read, write, timeout = (int(g) for g in sock.groups()) if sock else (0, 0, 0, 0)
    result = LoadResult(
        requests=int(count.group(1)) if count else 0,
        duration_s=_ms(count.group(2)) / 1e3 if count else 0.0,
        rps=rps,
        p50_ms=percentiles.get(50, float("nan")),
        p90_ms=percentiles.get(90, float("nan")),
        p99_ms=percentiles.get(99, float("nan")),
        max_ms=float("nan"),
        mean_ms=float("nan"),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=connect + read + write,
        timeouts=timeout,
        raw=output,
    )
    exact = re.search(r"^BENCH_JSON (\{.*\})$", output, re.MULTILINE)
    if exact:
        data = json.loads(exact.group(1))
        duration_s = data["duration_us"] / 1e6
        result.requests = data["requests"]
        result.duration_s = duration_s
        result.rps = data["requests"] / duration_s if duration_s else rps
        result.p50_ms = data["p50_us"] / 1e3
        result.p90_ms = data["p90_us"] / 1e3
        result.p99_ms = data["p99_us"] / 1e3
        result.max_ms = data["max_us"] / 1e3
        result.mean_ms = data["mean_us"] / 1e3
        result.non2xx = data["status"]
        result.socket_errors = data["connect"] + data["read"] + data["write"]
        result.timeouts = data["timeout"]
    return result


def run_wrk(
    wrk: str,
    lua: Path,
    url: str,
    body_file: Path,
    connections: int,
    duration_s: float,
    core: str,
    timeout: str = "5s",
    authorization: str = "",
) -> LoadResult:
    """One wrk run: ``taskset -c CORE wrk -t1 -cN -dDs --latency --timeout 5s -s post.lua URL``."""
    argv = [
        "taskset",
        "-c",
        core,
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
        "--timeout",
        timeout,
        "-s",
        str(lua),
        url,
    ]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AUTHORIZATION": authorization}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration_s + 60)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return parse_wrk(proc.stdout)
