#!/usr/bin/env bash
# Builds the images the compose files define, with plain `docker build` (BuildKit, no buildx
# needed), from the repository root. The compose files are the one list of images and of how each
# is built (context, Dockerfile, target, build args, image name): nothing here names an image.
# Each image is tagged with its name from compose (`localhost/mlops/NAME:latest` unless a
# *_IMAGE variable says otherwise) and with its version, and labelled
# org.opencontainers.image.version: the build args a build section's `x-build-args-from` names are
# read here, a pyproject.toml's [project] version ({pyproject: PATH}) or a package's version in
# uv.lock ({lock: PACKAGE}).
#
# Usage: infra/docker/build-images.sh [--all | --local] [NAME...]
#   (nothing)  the images of compose.yaml: trainer model-gateway inference mlflow airflow
#   --all      also the stand-ins of compose.local.yaml (postgres-local valkey-local seaweedfs-local)
#              and compose.scale.local.yaml (haproxy-local)
#   --local    only those stand-ins
#   NAME       only these images (the last part of the image name, e.g. trainer or valkey-local)
# Environment:
#   BASE_IMAGE         Python base of the Python images (compose's default: python:3.11-slim-bookworm;
#                      compose.local.yaml's: mlops-base/python:3.11-bookworm)
#   BASE_DEBIAN_IMAGE  Debian base of the PostgreSQL stand-in (default mlops-base/debian:bookworm)
#   TRAINER_IMAGE, GATEWAY_IMAGE, INFERENCE_IMAGE, MLFLOW_IMAGE, AIRFLOW_IMAGE  image names, as in
#                      compose.yaml (e.g. your registry's)
#   COMPOSE            compose command line (default: `docker compose`, else `docker-compose`);
#                      only `config` is run, which needs no engine
#   DOCKER             docker CLI (default: docker, or Debian's /usr/bin/docker when the one on
#                      PATH has no buildx: BuildKit is needed for the cache mounts)
#   BUILD_ARGS         extra arguments for every `docker build` (e.g. --cache-from ...)
set -euo pipefail
cd "$(dirname "$0")/../.."

export DOCKER_BUILDKIT=1
if [ -z "${DOCKER:-}" ]; then
    DOCKER=docker
    if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
        DOCKER=/usr/bin/docker
    fi
fi
if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    echo "build-images.sh: no Docker Compose (set COMPOSE to its command line)" >&2
    exit 2
fi

files=(-f infra/compose/compose.yaml)
select=default
names=()
for arg in "$@"; do
    case "$arg" in
        --all) select=all ;;
        --local) select=local ;;
        -*) echo "build-images.sh: unknown option $arg" >&2; exit 2 ;;
        *) names+=("$arg") ;;
    esac
done
config_json() {  # the compose model of compose.yaml [+ compose.local.yaml], not interpolated
    "${compose[@]}" "$@" config --no-interpolate --format json
}
# With --all or --local, the stand-ins too: compose.local.yaml replaces third-party services, and
# compose.scale.local.yaml the proxy that compose.scale.yaml adds.
default_config=$(config_json "${files[@]}")
if [ "$select" != default ]; then
    files+=(-f infra/compose/compose.local.yaml -f infra/compose/compose.scale.yaml
        -f infra/compose/compose.scale.local.yaml)
fi
config=$(config_json "${files[@]}")

# Reads the compose model on stdin; prints one line per image to build, its fields separated by
# US (0x1f): short name, image, Dockerfile, context, target, version, then NAME=VALUE build args.
IFS= read -r -d '' plan_py <<'EOF' || true
import json, os, re, sys, tomllib

def interpolate(value):
    """compose's ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, $$ (from the environment)."""
    def one(m):
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        val = os.environ.get(name)
        if op in (":-", ":?") and not val or op in ("-", "?") and val is None:
            if op.endswith("?"):
                sys.exit(f"build-images.sh: {name} must be set: {arg}")
            return arg
        return val or ""
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}",
                  lambda m: "$" if m.group(0) == "$$" else one(m), str(value))

def read_version(context, source):
    (kind, where), = source.items()
    if kind == "pyproject":
        with open(os.path.join(context, where), "rb") as f:
            return tomllib.load(f)["project"]["version"]
    if kind == "lock":
        with open(os.path.join(context, "uv.lock"), "rb") as f:
            return next(p["version"] for p in tomllib.load(f)["package"] if p["name"] == where)
    sys.exit(f"build-images.sh: x-build-args-from: unknown source {source}")

def images(model):
    found = {}
    for service, spec in sorted(model["services"].items()):
        build = spec.get("build")
        if not build:
            continue
        image = interpolate(spec.get("image") or f"localhost/mlops/{service}:latest")
        args = {k: interpolate(v) for k, v in (build.get("args") or {}).items()}
        args.update({k: read_version(build["context"], v) for k, v in (build.get("x-build-args-from") or {}).items()})
        entry = (build["context"], build.get("dockerfile", "Dockerfile"), build.get("target", ""),
                 tuple(sorted(args.items())))
        if found.setdefault(image, entry) != entry:
            sys.exit(f"build-images.sh: services disagree on how {image} is built ({service})")
    return found

chosen = images(json.load(sys.stdin))
if os.environ["SELECT"] == "local":
    default = images(json.loads(os.environ["DEFAULT_CONFIG"]))
    chosen = {k: v for k, v in chosen.items() if k not in default}
short = {image: image.rsplit("/", 1)[-1].split(":")[0] for image in chosen}
wanted = sys.argv[1:]
unknown = sorted(set(wanted) - set(short.values()))
if unknown:
    sys.exit(f"build-images.sh: unknown image {' '.join(unknown)} (known: {' '.join(sorted(short.values()))})")
for image, (context, dockerfile, target, args) in chosen.items():
    if wanted and short[image] not in wanted:
        continue
    version = dict(args).get("VERSION", "")
    fields = [short[image], image, os.path.join(context, dockerfile), context, target, version]
    fields += [f"{k}={v}" for k, v in args]
    print("\x1f".join(fields))
EOF
plan=$(DEFAULT_CONFIG=$default_config SELECT=$select python3 -c "$plan_py" "${names[@]}" <<<"$config")

build() {  # NAME IMAGE DOCKERFILE CONTEXT TARGET VERSION [BUILD_ARG...]
    local name=$1 image=$2 file=$3 context=$4 target=$5 version=$6
    shift 6
    local repo=${image%:*} started=$SECONDS log opts=()
    [[ "$image" == *:* && "${image##*:}" != */* ]] || repo=$image
    opts+=(-t "$image")
    [ -z "$version" ] || opts+=(-t "$repo:$version")
    [ -z "$target" ] || opts+=(--target "$target")
    for arg in "$@"; do opts+=(--build-arg "$arg"); done
    log=$(mktemp "/tmp/build-$name.XXXXXX.log")
    # shellcheck disable=SC2086  # BUILD_ARGS is a list of words on purpose
    if ! "$DOCKER" build --progress=plain -f "$file" "${opts[@]}" ${BUILD_ARGS:-} "$context" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "build of $image failed (full log: $log)" >&2
        return 1
    fi
    rm -f "$log"
    # Every image runs as a non-root numeric user and carries its version label.
    local user label
    user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$image")
    label=$("$DOCKER" image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$image")
    if [ -z "$user" ] || [ "${user%%:*}" = 0 ] || [ "${user%%:*}" = root ]; then
        echo "$image runs as root (USER '$user')" >&2
        return 1
    fi
    printf 'built %s in %ds (%s, user %s, version label %s)\n' "$image" "$((SECONDS - started))" \
        "$("$DOCKER" image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')" \
        "$user" "${label:-none}"
}

[ -n "$plan" ] || { echo "build-images.sh: nothing to build" >&2; exit 2; }
while IFS=$'\x1f' read -r -a fields; do
    build "${fields[@]}"
done <<<"$plan"
