"""Side-by-side benchmark: this platform's inference vs ``mlflow models serve`` vs Seldon MLServer.

All servers serve the same registered model version on this machine, each pinned to one core
(``taskset -c 0``) with one worker; wrk drives them from the other core (``taskset -c 1``, one
thread) with a fixed JSON body. Rounds are interleaved across servers and medians are reported.

    uv run python bench/inference_bench.py                 # the issue-4 cells, ~8 min
    uv run python bench/inference_bench.py --profile full  # lr, rf, mixed x 1|100 rows x 8|64 conns

Needs the local stack (``uv run mlops up``) and wrk (``apt-get install -y wrk``). See
bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from common import (
    BENCH_DIR,
    ROOT,
    BenchError,
    auth_headers,
    cpu_busy,
    elapsed,
    export_served_code,
    git_state,
    log,
    stack_env,
)
from load import check_tools, run_wrk, write_lua
from payloads import Protocol, build_body, encode, predictions_of, probabilities_of
from prepare import MODELS, RegisteredModel, benchmark_rows, ensure_model
from report import (
    DETAIL_HEADER,
    detail_rows,
    markdown_table,
    summarise,
    summary_header,
    summary_rows,
    text_table,
)
from servers import (
    SERVER_LABELS,
    Launch,
    Processes,
    Server,
    check_inference_version,
    download_model,
    ensure_mlserver_venv,
    launch_inference,
    launch_mlflow,
    launch_mlserver,
    mlserver_requirements,
)

Cell = tuple[str, int, int]  # (model key, rows per request, connections)

# The cells of issue 4's table: LR 1 row and 100 rows at 8 connections, RF 1 row at 64.
PROFILES: dict[str, list[Cell]] = {
    "issue": [("lr", 1, 8), ("lr", 100, 8), ("rf", 1, 64)],
    "full": [(m, r, c) for m in ("lr", "rf", "mixed") for r in (1, 100) for c in (8, 64)],
    # What checking a token costs: run with --servers inference,inference-noauth.
    "auth": [("lr", 1, 8), ("lr", 1, 64)],
    # What the prediction log costs (issue 14): run with --servers inference,inference-nolog
    # and --inference-env INFERENCE_PREDICTION_LOG_ENABLED=true (the log ships off).
    "predlog": [("lr", 1, 8), ("lr", 1, 64), ("lr", 100, 8)],
    # What following a rollout costs (issue 15): run with --servers inference,inference-norollout
    # and --rollout 10.
    "rollout": [("lr", 1, 8), ("lr", 1, 64)],
}
# Second inference processes that differ from ``inference`` by one setting: a feature's cost.
INFERENCE_VARIANTS: dict[str, dict[str, str]] = {
    "inference-noauth": {"INFERENCE_AUTH_ENABLED": "false"},
    "inference-nolog": {"INFERENCE_PREDICTION_LOG_ENABLED": "false"},
    "inference-norollout": {"INFERENCE_FOLLOW_ROLLOUTS": "false"},
}
# The alias a --rollout sends its share to: the champion's own version, so that every answer
# still matches the registered model while the whole split path runs.
CANARY_ALIAS = "bench-canary"
ALL_SERVERS = (
    "inference",
    "inference-v2",
    *INFERENCE_VARIANTS,
    "mlflow",
    "mlserver",
    "mlserver-batching",
)
DEFAULT_SERVERS = ("inference", "mlflow", "mlserver", "mlserver-batching")
PER_RUN_OVERHEAD_S = 0.1  # wrk start/stop, on top of --pause


def _csv(kind: type[int] | type[str]) -> Any:
    def parse(text: str) -> list[Any]:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]

    return parse


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="inference_bench.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Needs `uv run mlops up` running and wrk installed (apt-get install -y wrk).",
        formatter_class=_Help,
    )
    grid = parser.add_argument_group("what to measure")
    grid.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="issue",
        help="issue: LR 1 and 100 rows at 8 conns + RF 1 row at 64 (issue 4's table, ~8 min); "
        "full: lr, rf, mixed x 1|100 rows x 8|64 conns (~27 min; ~34 with inference-v2); "
        "auth, predlog, rollout: with --servers inference,inference-noauth|nolog|norollout, a "
        "feature's cost",
    )
    grid.add_argument("--models", type=_csv(str), help="grid instead of a profile: lr,rf,mixed")
    grid.add_argument("--rows", type=_csv(int), help="grid: rows per request (default 1,100)")
    grid.add_argument("--connections", type=_csv(int), help="grid: connections (default 8,64)")
    grid.add_argument(
        "--servers",
        type=_csv(str),
        default=list(DEFAULT_SERVERS),
        help=f"comma list of {', '.join(ALL_SERVERS)} (inference-v2: the same process as "
        "inference, through its Open Inference Protocol endpoint)",
    )
    grid.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    grid.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    grid.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of unrecorded load per server before the first round (0: none)",
    )
    grid.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    grid.add_argument("--timeout", default="5s", help="wrk --timeout")
    grid.add_argument("--server-core", default="0", help="taskset CPU list for the servers")
    grid.add_argument("--load-core", default="1", help="taskset CPU list for wrk")

    srv = parser.add_argument_group("servers")
    srv.add_argument(
        "--inference-env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for this platform's inference service (repeatable), e.g. "
        "INFERENCE_BATCH_MAX_SIZE=32",
    )
    srv.add_argument(
        "--inference-ref",
        metavar="GIT_REF",
        help="run this platform's inference from the code at this commit (git archive of "
        "services/inference/src and libs/common/src, first on PYTHONPATH) instead of the working "
        "tree: pins one version for a long run, or measures an older one (before/after)",
    )
    srv.add_argument(
        "--rollout",
        type=int,
        metavar="PERCENT",
        help="during the run, a rollout of each model at the gateway: champion 100-PERCENT, "
        f"{CANARY_ALIAS} PERCENT (an alias set to the champion's version); ended at the end",
    )
    srv.add_argument(
        "--mlserver-parallel-workers",
        type=int,
        default=1,
        help="MLServer's parallel_workers (1 is its default: one inference worker)",
    )
    srv.add_argument("--mlserver-batch-size", type=int, default=32, help="max_batch_size")
    srv.add_argument(
        "--mlserver-batch-time", type=float, default=0.005, help="max_batch_time in seconds"
    )
    srv.add_argument(
        "--mlserver-requirement",
        action="append",
        default=[],
        metavar="SPEC",
        help="override one pin of the MLServer venv, e.g. mlserver==1.7.0 (repeatable)",
    )
    srv.add_argument(
        "--start-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for a server to be ready",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write the results as markdown to this file")
    out.add_argument(
        "--json",
        type=Path,
        help="raw results (every run); default bench/results/inference-<UTC time>.json",
    )
    out.add_argument(
        "--workdir",
        type=Path,
        help="where logs, bodies and models go (default: "
        "a new temp dir, removed at the end unless --keep-workdir or a failure)",
    )
    out.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    if args.models or args.rows or args.connections:
        models = args.models or ["lr", "rf"]
        args.cells = [
            (m, r, c)
            for m in models
            for r in (args.rows or [1, 100])
            for c in (args.connections or [8, 64])
        ]
        args.profile = "custom"
    else:
        args.cells = PROFILES[args.profile]
    unknown = [m for m, _, _ in args.cells if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {sorted(set(unknown))}; choose from {sorted(MODELS)}")
    bad = [s for s in args.servers if s not in ALL_SERVERS]
    if bad:
        parser.error(f"unknown server(s) {bad}; choose from {', '.join(ALL_SERVERS)}")
    if args.rollout is not None and not 0 < args.rollout < 100:
        parser.error("--rollout must be between 1 and 99")
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be >= 1 and --duration > 0")
    return args


def planned_seconds(args: argparse.Namespace) -> float:
    runs = len(args.cells) * len(args.servers) * args.rounds
    models = len({m for m, _, _ in args.cells})
    warmups = models * len(args.servers) * (args.warmup + PER_RUN_OVERHEAD_S if args.warmup else 0)
    return float(runs * (args.duration + args.pause + PER_RUN_OVERHEAD_S) + warmups)


def check_machine(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))
    for flag, value in (("--server-core", args.server_core), ("--load-core", args.load_core)):
        wanted = {int(x) for x in value.split(",") if x.isdigit()}
        if not wanted or not wanted <= set(cores):
            raise BenchError(f"{flag} {value}: this process may run on cores {cores} only")
    if set(args.server_core.split(",")) & set(args.load_core.split(",")):
        log("warning: servers and wrk share a core; results will not be comparable")


def check_stack(env: dict[str, str]) -> None:
    for name in ("TRAINER_URL", "GATEWAY_URL"):
        url = f"{env[name]}/health"
        try:
            ok = httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            raise BenchError(f"{url} is not healthy: start the stack first (`uv run mlops up`)")


# -- prediction check ------------------------------------------------------------------------


def _same_labels(got: list[Any], want: list[Any]) -> bool:
    if len(got) != len(want):
        return False
    try:
        return bool(np.allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float)))
    except (TypeError, ValueError):
        return [str(x) for x in got] == [str(x) for x in want]


def check_predictions(
    servers: list[Server],
    model_dir: Path,
    rows: pd.DataFrame,
    bodies: dict[tuple[int, Protocol], Path],
    env: dict[str, str],
) -> dict[str, Any]:
    """Every server must predict what the registered model predicts in process, on every body.

    The reference is the downloaded model version loaded with MLflow's pyfunc in this process;
    this platform's probabilities are also compared with scikit-learn's ``predict_proba``.
    """
    import mlflow.pyfunc
    import mlflow.sklearn

    reference = mlflow.pyfunc.load_model(str(model_dir)).predict(rows)
    want_all = [x.item() if hasattr(x, "item") else x for x in np.asarray(reference).ravel()]
    estimator = mlflow.sklearn.load_model(str(model_dir))
    proba = estimator.predict_proba(rows) if hasattr(estimator, "predict_proba") else None
    results: dict[str, Any] = {
        "reference": "mlflow.pyfunc in process",
        "rows_checked": sorted({count for count, _ in bodies}),
        "reference_predictions": want_all,
    }
    with httpx.Client(timeout=60) as client:
        for server in servers:
            for (count, protocol), path in sorted(bodies.items()):
                if protocol != server.protocol:
                    continue
                want = want_all[:count]
                response = client.post(
                    server.url,
                    content=path.read_bytes(),
                    headers={"content-type": "application/json", **auth_headers(env)},
                )
                if response.status_code != 200:
                    raise BenchError(
                        f"{server.label}: POST {server.url} ({count} rows) -> "
                        f"{response.status_code}: {response.text[:1000]}"
                    )
                body = response.json()
                got = predictions_of(server.protocol, body)
                if not _same_labels(got, want):
                    diff = [
                        i
                        for i, (a, b) in enumerate(zip(got, want, strict=False))
                        if str(a) != str(b)
                    ]
                    raise BenchError(
                        f"{server.label} disagrees with the registered model on {count} rows "
                        f"(rows {diff[:10]}): got {got[:10]}, expected {want[:10]}"
                    )
                if server.protocol == "inference" and proba is not None:
                    probs = probabilities_of(body)
                    if probs is None or not np.allclose(
                        np.asarray(probs, dtype=float), proba[:count], atol=1e-6
                    ):
                        raise BenchError(
                            f"{server.label}: probabilities on {count} rows differ from "
                            "scikit-learn's predict_proba"
                        )
            results[server.key] = "agrees"
    return results


# -- the run -----------------------------------------------------------------------------------


def write_bodies(
    model: RegisteredModel, row_counts: list[int], protocols: set[Protocol], workdir: Path
) -> tuple[dict[tuple[int, Protocol], Path], pd.DataFrame]:
    """One body file per (rows, protocol), all built from the same rows of the same frame."""
    rows = benchmark_rows(model, max(row_counts))
    files = {}
    for count in row_counts:
        for protocol in sorted(protocols):
            path = workdir / "bodies" / f"{model.key}-{count}-{protocol}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(build_body(protocol, rows.head(count), model.columns)))
            files[(count, protocol)] = path
    return files, rows


def inference_env(args: argparse.Namespace) -> dict[str, str]:
    extra = dict(args.inference_env)
    if args.inference_pythonpath:
        extra["PYTHONPATH"] = os.pathsep.join(
            p for p in (args.inference_pythonpath, extra.get("PYTHONPATH")) if p
        )
    return extra


def start_servers(
    args: argparse.Namespace,
    procs: Processes,
    model: RegisteredModel,
    model_dir: Path,
    env: dict[str, str],
    workdir: Path,
) -> list[Server]:
    """Launch every server (they boot in parallel on the server core), then wait for each."""
    core = args.server_core
    launches: list[Launch] = []
    ours = [s for s in ("inference", "inference-v2") if s in args.servers]
    if ours:
        launches.append(
            launch_inference(procs, model, env, workdir, core, inference_env(args), ours)
        )
    for key, setting in INFERENCE_VARIANTS.items():
        if key in args.servers:
            launches.append(
                launch_inference(
                    procs,
                    model,
                    env,
                    workdir,
                    core,
                    {**inference_env(args), **setting},
                    [key],
                    instance=key.removeprefix("inference"),
                )
            )
    if "mlflow" in args.servers:
        launches.append(launch_mlflow(procs, model, env, workdir, core))
    variants = [s for s in ("mlserver", "mlserver-batching") if s in args.servers]
    if variants:
        launches.append(
            launch_mlserver(
                procs,
                model,
                model_dir,
                env,
                workdir,
                core,
                variants,
                args.mlserver_parallel_workers,
                args.mlserver_batch_size,
                args.mlserver_batch_time,
            )
        )
    servers = [server for launch in launches for server in launch.wait(args.start_timeout)]
    for server in servers:
        if server.key.startswith("inference"):
            check_inference_version(server, model, auth_headers(env))
    order = {key: i for i, key in enumerate(args.servers)}
    return sorted(servers, key=lambda s: order[s.key])


def start_rollout(env: dict[str, str], model: RegisteredModel, percent: int) -> None:
    """Point the canary alias at the champion's version and split ``percent`` to it."""
    base = f"{env['GATEWAY_URL']}/v1/models/{model.name}"
    headers = auth_headers(env)
    moved = httpx.put(
        f"{base}/aliases/{CANARY_ALIAS}",
        json={"version": int(model.version), "reason": "inference benchmark"},
        headers=headers,
        timeout=30,
    )
    if moved.status_code != 200:
        raise BenchError(f"gateway: moving {CANARY_ALIAS}: {moved.status_code} {moved.text}")
    body = {
        "variants": [
            {"alias": "champion", "weight": 100 - percent},
            {"alias": CANARY_ALIAS, "weight": percent},
        ],
        "reason": "inference benchmark",
    }
    started = httpx.put(f"{base}/rollout", json=body, headers=headers, timeout=30)
    if started.status_code != 200:
        raise BenchError(f"gateway: starting the rollout: {started.status_code} {started.text}")
    log(f"rollout of {model.name}: champion {100 - percent}%, {CANARY_ALIAS} {percent}%")


def end_rollout(env: dict[str, str], model: RegisteredModel) -> None:
    url = f"{env['GATEWAY_URL']}/v1/models/{model.name}/rollout"
    response = httpx.delete(url, headers=auth_headers(env), timeout=30)
    log(f"rollout of {model.name} ended ({response.status_code})")


def wait_for_rollout(servers: list[Server], timeout_s: float = 60) -> dict[str, Any]:
    """Every inference server that follows rollouts serves every variant before load starts."""
    states: dict[str, Any] = {}
    for server in servers:
        if not server.key.startswith("inference") or server.key == "inference-norollout":
            continue
        health_url = f"http://127.0.0.1:{server.details['port']}/health"
        deadline = time.monotonic() + timeout_s
        while True:
            rollout = httpx.get(health_url, timeout=5).json().get("rollout")
            if rollout and all(v["ready"] for v in rollout["variants"]):
                states[server.label] = rollout
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{server.label} does not serve the rollout: {rollout}")
            time.sleep(0.2)
    log("rollout served by " + ", ".join(states))
    return states


def bench_model(
    args: argparse.Namespace,
    model: RegisteredModel,
    cells: list[Cell],
    env: dict[str, str],
    workdir: Path,
    wrk: str,
    lua: Path,
    runs: list[dict[str, Any]],
    checks: dict[str, Any],
) -> None:
    row_counts = sorted({r for _, r, _ in cells})
    log(f"model {model.name} v{model.version}: downloading from the registry")
    model_dir = download_model(model, workdir / "models")
    procs = Processes()
    with procs.guard():
        log(
            f"model {model.name} v{model.version}: starting {', '.join(args.servers)} on core "
            f"{args.server_core}"
        )
        # The working tree may change between models while others work on it.
        code = args.pinned_code or git_state()
        servers = start_servers(args, procs, model, model_dir, env, workdir)
        protocols: set[Protocol] = {s.protocol for s in servers}
        bodies, rows = write_bodies(model, row_counts, protocols, workdir)
        checks[model.name] = check_predictions(servers, model_dir, rows, bodies, env)
        checks[model.name]["code"] = code
        log(
            f"model {model.name}: all {len(servers)} servers agree with the registered model "
            f"(requests of {', '.join(map(str, row_counts))} rows)"
        )
        if args.rollout is not None:
            checks[model.name]["rollout"] = wait_for_rollout(servers)
        if args.warmup > 0:
            conns = max(c for _, _, c in cells)
            for server in servers:
                run_wrk(
                    wrk,
                    lua,
                    server.url,
                    bodies[(row_counts[0], server.protocol)],
                    conns,
                    args.warmup,
                    args.load_core,
                    args.timeout,
                    auth_headers(env).get("Authorization", ""),
                )
            log(f"model {model.name}: warmed up ({args.warmup:g}s per server)")
        for rnd in range(1, args.rounds + 1):
            for key, rows_n, conns in cells:
                for server in servers:
                    if not server.process.alive():
                        raise BenchError(
                            f"{server.label} died (log {server.process.log_path}):\n"
                            f"{server.process.tail()}"
                        )
                    result = run_wrk(
                        wrk,
                        lua,
                        server.url,
                        bodies[(rows_n, server.protocol)],
                        conns,
                        args.duration,
                        args.load_core,
                        args.timeout,
                        auth_headers(env).get("Authorization", ""),
                    )
                    runs.append(
                        {
                            "model_key": key,
                            "model": model.name,
                            "model_version": model.version,
                            "rows": rows_n,
                            "connections": conns,
                            "server": server.key,
                            "round": rnd,
                            **result.as_dict(),
                        }
                    )
                    errors = result.non2xx + result.socket_errors + result.timeouts
                    log(
                        f"round {rnd}/{args.rounds} {model.name} rows={rows_n:<3} c={conns:<3} "
                        f"{server.key:<17} {result.rps:8.1f} req/s  p50 {result.p50_ms:8.2f} ms"
                        f"  p99 {result.p99_ms:8.2f} ms"
                        + (
                            f"  ERRORS non2xx={result.non2xx} sock={result.socket_errors} "
                            f"timeouts={result.timeouts}"
                            if errors
                            else ""
                        )
                    )
                    time.sleep(args.pause)
        checks[model.name]["servers"] = {s.key: s.details for s in servers}
        # After the load: what each server holds once it has served every cell.
        checks[model.name]["memory_mib"] = {s.key: s.process.memory() for s in servers}
        for server in servers:
            usage = checks[model.name]["memory_mib"][server.key]
            log(
                f"model {model.name}: {server.key} memory after load: PSS {usage['pss']:.0f} MiB"
                f" over {usage['processes']:.0f} process(es), peak RSS {usage['peak_rss']:.0f} MiB"
            )
        log(f"model {model.name}: stopping its servers")


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version.split(" Copyright")[0].strip(),
    }


def workspace_versions() -> dict[str, str]:
    names = ("inference", "mlflow", "scikit-learn", "pandas", "numpy", "fastapi", "uvicorn")
    out = {}
    for name in names:
        try:
            out[name] = dist_version(name)
        except Exception:
            out[name] = "?"
    return out


def render_markdown(
    result: dict[str, Any],
    detail: list[list[str]],
    summary_head: list[str],
    summary: list[list[str]],
) -> str:
    """The results as a markdown section body (docs/benchmarks.md pastes it)."""
    settings, machine, code = result["settings"], result["machine"], result["code"]
    workspace = result["versions"]["workspace"]
    mlserver = result["versions"]["mlserver_venv"]
    dirty = code["uncommitted"]
    background = result["background_cpu_busy_percent"]
    lines = [
        f"Measured {result['finished_at']} UTC on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['memory_gib']} GiB), with the local stack up (`uv run mlops up`); the run took "
        f"{result['total_s'] / 60:.1f} min. Reproduce with:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        f"- Code under test (this platform's inference): commit `{code['commit']}` "
        f"({code['subject']})"
        + (" run from `git archive` of that commit" if code.get("source") else "")
        + (
            f", plus uncommitted changes in {', '.join(f'`{f}`' for f in dirty)}." if dirty else "."
        ),
        f"- Each server pinned to core {settings['server_core']} with one worker; wrk 1 thread "
        f"on core {settings['load_core']}, `--timeout {settings['timeout']}`, "
        f"{settings['duration_s']:g} s per run, {settings['rounds']} rounds interleaved across "
        "servers; medians of the rounds (errors: totals over the rounds).",
        "- Background load before measuring: "
        + ", ".join(f"cpu{c} {b:.0f}% busy" for c, b in sorted(background.items()))
        + ".",
        *(
            [
                f"- MLServer: `parallel_workers={settings['mlserver_parallel_workers']}`; adaptive "
                f"batching `max_batch_size={settings['mlserver_batching']['max_batch_size']}`, "
                f"`max_batch_time={settings['mlserver_batching']['max_batch_time']:g}`."
            ]
            if mlserver
            else []
        ),
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in workspace.items())
        + "; MLServer venv: "
        + (", ".join(f"{k} {v}" for k, v in sorted(mlserver.items())) or "not used")
        + f"; {machine['wrk']}.",
    ]
    moved = {
        name: check["code"]
        for name, check in result["checks"].items()
        if check.get("code") and check["code"] != code
    }
    for name, state in moved.items():
        lines.append(
            f"- The code changed while this ran: {name}'s servers started at `{state['commit']}`"
            + (
                f" with {len(state['uncommitted'])} uncommitted file(s)"
                if state["uncommitted"]
                else ""
            )
            + "."
        )
    if settings["inference_env"]:
        lines.append(
            "- Extra inference settings: "
            + ", ".join(f"`{k}={v}`" for k, v in settings["inference_env"].items())
        )
    lines += [
        "",
        markdown_table(summary_head, summary),
        "",
        markdown_table(DETAIL_HEADER, detail),
    ]
    memory = [
        [
            SERVER_LABELS.get(key, key),
            name,
            f"{usage['pss']:,.0f}",
            f"{usage['processes']:.0f}",
            f"{usage['peak_rss']:,.0f}",
        ]
        for name, check in result["checks"].items()
        for key, usage in check.get("memory_mib", {}).items()
    ]
    if memory:
        lines += [
            "",
            "Memory after the load (the server's whole process group; MLServer's two "
            "configurations share one process group):",
            "",
            markdown_table(
                ["server", "model", "PSS MiB", "processes", "largest peak RSS MiB"], memory
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "uv run python bench/inference_bench.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    started_at = dt.datetime.now(dt.UTC)
    plan = planned_seconds(args)
    log(
        f"plan: {len(args.cells)} cell(s) x {len(args.servers)} server(s) x {args.rounds} "
        f"round(s) x {args.duration:g}s of load: about {plan / 60:.1f} min plus setup"
    )
    wrk = check_tools()
    check_machine(args)
    env = stack_env()
    # This process is an MLflow/S3 client too (model download, in-process reference predictions),
    # and the servers inherit its environment (PATH: mlflow serve execs the venv's uvicorn).
    os.environ.update(env)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ)
    check_stack(env)
    log("stack is up (trainer, gateway)")

    model_keys = list(dict.fromkeys(m for m, _, _ in args.cells))
    models = {key: ensure_model(MODELS[key], env) for key in model_keys}

    mlserver_versions: dict[str, str] = {}
    if {"mlserver", "mlserver-batching"} & set(args.servers):
        if shutil.which("uv") is None:
            raise BenchError("uv is needed to create MLServer's venv (pip install uv)")
        requirements = mlserver_requirements()
        for override in args.mlserver_requirement:
            requirements = [r for r in requirements if _req_name(r) != _req_name(override)]
            requirements.append(override)
        mlserver_versions = ensure_mlserver_venv(requirements)
        log("MLServer venv: " + ", ".join(f"{k} {v}" for k, v in sorted(mlserver_versions.items())))

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="inference-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    lua = write_lua(workdir)
    log(f"work dir {workdir}")
    args.pinned_code = None
    args.inference_pythonpath = None
    if args.inference_ref:
        revision, args.inference_pythonpath = export_served_code(args.inference_ref, workdir)
        args.pinned_code = revision
    else:
        revision = git_state()
    log(
        f"code under test: {revision['commit']} ({revision['subject']})"
        + (" from git archive" if args.inference_ref else " in the working tree")
        + (
            f", {len(revision['uncommitted'])} uncommitted file(s) in it"
            if revision["uncommitted"]
            else ""
        )
    )

    background = cpu_busy(2.0)
    log(
        "background load before measuring (the stack idles): "
        + ", ".join(f"cpu{cpu} {busy:.0f}% busy" for cpu, busy in sorted(background.items()))
    )
    server_busy = max((background.get(c, 0.0) for c in args.server_core.split(",")), default=0.0)
    if server_busy > 20:
        log(f"warning: the server core is already {server_busy:.0f}% busy; results will be noisy")

    runs: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    ok = False
    try:
        if args.rollout is not None:
            for model in models.values():
                start_rollout(env, model, args.rollout)
        for key in model_keys:
            cells = [c for c in args.cells if c[0] == key]
            bench_model(args, models[key], cells, env, workdir, wrk, lua, runs, checks)
        ok = True
    finally:
        if args.rollout is not None:
            for model in models.values():
                end_rollout(env, model)
        if own_workdir and ok and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            log(f"logs kept in {workdir}")

    summaries = summarise(runs)
    detail, summary = detail_rows(summaries), summary_rows(summaries)
    summary_head = summary_header(summaries)
    finished_at = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.strftime("%Y-%m-%d %H:%M"),
        "total_s": round(elapsed(), 1),
        "command": command,
        "machine": machine_info(),
        "code": revision,
        "background_cpu_busy_percent": background,
        "versions": {"workspace": workspace_versions(), "mlserver_venv": mlserver_versions},
        "settings": {
            "profile": args.profile,
            "cells": args.cells,
            "servers": args.servers,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "timeout": args.timeout,
            "server_core": args.server_core,
            "load_core": args.load_core,
            "inference_env": dict(args.inference_env),
            "inference_ref": args.inference_ref,
            "mlserver_parallel_workers": args.mlserver_parallel_workers,
            "mlserver_batching": {
                "max_batch_size": args.mlserver_batch_size,
                "max_batch_time": args.mlserver_batch_time,
            },
        },
        "models": {
            m.name: {
                "version": m.version,
                "run_id": m.run_id,
                "artifact_uri": m.artifact_uri,
                "description": MODELS[k].description,
            }
            for k, m in models.items()
        },
        "checks": checks,
        "summary": [s.as_dict() for s in summaries],
        "runs": runs,
    }
    print()
    print(text_table(summary_head, summary))
    print()
    print(text_table(DETAIL_HEADER, detail))
    print()
    json_path = args.json or BENCH_DIR / "results" / (
        f"inference-{finished_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"raw results: {_rel(json_path)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_markdown(result, detail, summary_head, summary))
        log(f"markdown: {_rel(args.out)}")
    log(f"done in {elapsed() / 60:.1f} min")
    return 0


def _req_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
    return (match.group(0) if match else spec).lower().replace("_", "-")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # Ctrl-C and SIGTERM unwind through every `finally`, which stops the servers. SIGINT is set
    # explicitly: a shell's background job may have inherited it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"inference_bench: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("inference_bench: interrupted; every process it started was stopped", file=sys.stderr)
        sys.exit(130)
