"""Container health probe: the standard library only, so no image needs curl or wget.

    probe URL                         healthy when GET URL answers 200
    probe URL --status 200,503        ... answers one of these statuses
    probe URL --json a.b=value        ... answers 200 with JSON whose a.b equals value
    probe tcp://HOST:PORT             healthy when something accepts a TCP connection there

Exit status 0 when healthy, 1 otherwise (with the reason on stderr, which `docker inspect` shows).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit


def check_tcp(url: str, timeout: float) -> str | None:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return f"bad tcp:// address {url!r}"
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{parts.port}: {exc}"


def lookup(body: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def check_http(url: str, timeout: float, statuses: set[int], expect: list[str]) -> str | None:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    if status not in statuses:
        return f"{url}: HTTP {status}: {raw[:300]!r}"
    if expect:
        try:
            body = json.loads(raw)
        except ValueError:
            return f"{url}: not JSON: {raw[:300]!r}"
        for item in expect:
            path, _, wanted = item.partition("=")
            found = lookup(body, path)
            if str(found) != wanted:
                return f"{url}: {path} is {found!r}, expected {wanted!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--status", default="200", help="accepted HTTP statuses, comma-separated")
    parser.add_argument("--json", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.url.startswith("tcp://"):
        problem = check_tcp(args.url, args.timeout)
    else:
        statuses = {int(s) for s in args.status.split(",") if s.strip()}
        problem = check_http(args.url, args.timeout, statuses, args.json)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
