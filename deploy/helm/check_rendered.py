"""Check manifests rendered by ``helm template`` (run by deploy/checks/20-helm.sh).

Usage: ``python deploy/helm/check_rendered.py CHART KUBERNETES_VERSION FILE...``, with the Python
of the venv that has ``kubernetes-validate``. For each file (one render):

- every document is validated, strictly (unknown fields are errors), against the Kubernetes
  JSON schemas that ``kubernetes-validate`` ships for KUBERNETES_VERSION; a document of a kind
  with no schema fails, except the CRDs in :data:`CRDS`, which are skipped with a note (and
  checked below for what ties them to the rest);
- the objects must fit together: every Service, PodDisruptionBudget and ServiceMonitor selects
  pods or Services that the render has, every ScaledObject targets a rendered Deployment with
  ``maxReplicaCount`` at its topics' partition count (from ``schemas/topics.toml``), every
  Secret and ConfigMap a pod reads is rendered (or is the existing Secret named by the render),
  probes use declared ports, and each ``python -m`` command names a module of this repository.

Also: CHART's ``values.yaml`` ``kafka.topics.partitions`` must equal the catalogue's counts.
Exit status 1 on any failure, with one line per problem.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils

ROOT = Path(__file__).resolve().parents[2]
#: Custom resources without a schema in kubernetes-validate: skipped with a note.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def catalogue_partitions() -> dict[str, tuple[str, int]]:
    """``camelCase logical name -> (topic name, partitions)`` from schemas/topics.toml."""
    data = tomllib.loads((ROOT / "schemas" / "topics.toml").read_text())
    default = data["defaults"]["partitions"]
    return {
        camel(logical): (spec["name"], spec.get("partitions", default))
        for logical, spec in data["topics"].items()
    }


def check_values_partitions(chart_dir: Path, problems: list[str]) -> None:
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    chart = values["kafka"]["topics"]["partitions"]
    catalogue = {key: count for key, (_, count) in catalogue_partitions().items()}
    if chart != catalogue:
        problems.append(
            f"values.yaml kafka.topics.partitions {chart} differ from schemas/topics.toml "
            f"{catalogue}"
        )


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(owner, pod labels, pod spec)`` of every Deployment and Job."""
    return [
        (
            name_of(d),
            d["spec"]["template"]["metadata"].get("labels", {}),
            d["spec"]["template"]["spec"],
        )
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    ]


def check_consistency(docs: list[dict[str, Any]], where: str, problems: list[str]) -> None:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind.get("Deployment", {})
    pods = pod_specs(docs)
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})

    def fail(message: str) -> None:
        problems.append(f"{where}: {message}")

    for name, svc in by_kind.get("Service", {}).items():
        selected = [spec for _, labels, spec in pods if matches(svc["spec"]["selector"], labels)]
        if not selected:
            fail(f"Service/{name} selects no pod")
        declared = {
            port.get("name")
            for spec in selected
            for container in spec["containers"]
            for port in container.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if selected and isinstance(target, str) and target not in declared:
                fail(f"Service/{name} targets port {target}, which its pods do not declare")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        if not any(matches(selector, labels) for _, labels, _ in pods):
            fail(f"PodDisruptionBudget/{name} selects no pod")
    # Secrets a pod may read without the render creating them: the existing one it names.
    external = {
        ref["secretKeyRef"]["name"]
        for _, _, spec in pods
        for container in spec.get("containers", []) + spec.get("initContainers", [])
        for ref in (env.get("valueFrom", {}) for env in container.get("env", []))
        if "secretKeyRef" in ref and ref["secretKeyRef"]["name"] not in secrets
    }
    if len(external) > 1:
        fail(f"pods read several Secrets the render does not create: {sorted(external)}")
    for owner, _, spec in pods:
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                fail(f"{owner} mounts ConfigMap {volume['configMap']['name']}, not rendered")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            check_container(owner, container, secrets, configmaps, fail)
    for name, scaled in by_kind.get("ScaledObject", {}).items():
        check_scaled_object(name, scaled, deployments, fail)
    services = by_kind.get("Service", {})
    for name, monitor in by_kind.get("ServiceMonitor", {}).items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services.values() if matches(selector, s["metadata"]["labels"])]
        ports = {port.get("name") for s in selected for port in s["spec"]["ports"]}
        if not selected:
            fail(f"ServiceMonitor/{name} selects no Service")
        job_label = monitor["spec"].get("jobLabel")
        for service in selected:
            job = service["metadata"]["labels"].get(job_label, "") if job_label else ""
            # deploy/prometheus/rules.yml and the dashboard select up{job=~"herald.*"}.
            if not job.startswith("herald-"):
                fail(
                    f"ServiceMonitor/{name} names Service/{service['metadata']['name']}'s job "
                    f"{job or service['metadata']['name']!r}, not herald-<component>"
                )
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in ports:
                fail(f"ServiceMonitor/{name} scrapes port {endpoint['port']}, which no Service has")


def check_container(
    owner: str,
    container: dict[str, Any],
    secrets: dict[str, dict[str, Any]],
    configmaps: dict[str, dict[str, Any]],
    fail: Callable[[str], None],
) -> None:
    where = f"{owner} container {container['name']}"
    command = container.get("command", [])
    if command[:2] == ["python", "-m"]:
        module = ROOT.joinpath(*command[2].split("."))
        if not ((module / "__main__.py").exists() or module.with_suffix(".py").exists()):
            fail(f"{where} runs python -m {command[2]}, which is not in this repository")
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] not in configmaps:
            fail(f"{where} reads ConfigMap {source['configMapRef']['name']}, not rendered")
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] in secrets:
            data = {
                **secrets[ref["name"]].get("stringData", {}),
                **secrets[ref["name"]].get("data", {}),
            }
            if ref["key"] not in data:
                fail(f"{where} reads {ref['key']} from Secret/{ref['name']}, which lacks it")
    ports = {port["name"] for port in container.get("ports", [])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = container.get(probe, {}).get("httpGet")
        if http and isinstance(http["port"], str) and http["port"] not in ports:
            fail(f"{where} {probe} uses port {http['port']}, which it does not declare")


def check_scaled_object(
    name: str,
    scaled: dict[str, Any],
    deployments: dict[str, dict[str, Any]],
    fail: Callable[[str], None],
) -> None:
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]["name"]
    if target not in deployments:
        fail(f"ScaledObject/{name} targets Deployment {target}, not rendered")
    elif "replicas" in deployments[target]["spec"]:
        fail(f"Deployment/{target} sets replicas although ScaledObject/{name} owns them")
    partitions = {topic: count for topic, count in catalogue_partitions().values()}
    counts = []
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        if trigger["type"] != "kafka" or not meta.get("consumerGroup"):
            fail(f"ScaledObject/{name} has a trigger that is not kafka lag of a group")
            continue
        topic = meta["topic"]
        declared = next((t for t in partitions if topic.endswith(t)), None)
        if declared is None:
            fail(f"ScaledObject/{name} scales on {topic}, not a catalogue topic")
            continue
        counts.append(partitions[declared])
    if counts and spec["maxReplicaCount"] != min(counts):
        fail(
            f"ScaledObject/{name} maxReplicaCount {spec['maxReplicaCount']} is not the "
            f"partition count {min(counts)} of its topics"
        )
    if spec.get("minReplicaCount", 0) > spec["maxReplicaCount"]:
        fail(f"ScaledObject/{name} minReplicaCount is above maxReplicaCount")


def validate_file(path: Path, version: str, problems: list[str]) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    if not docs:
        problems.append(f"{path}: nothing rendered")
        return
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRDS:
            print(
                f"  note: {name_of(doc)} ({key[0]}) is a CRD without a schema here: "
                "schema skipped, references checked"
            )
            continue
        try:
            utils.validate(doc, version, strict=True)
        except utils.ValidationError as exc:
            field = ".".join(str(part) for part in exc.path)
            problems.append(f"{path.name}: {name_of(doc)}: {field}: {exc.message}")
        except utils.SchemaNotFoundError as exc:
            problems.append(f"{path.name}: {name_of(doc)}: {exc.message}")
    check_consistency(docs, path.name, problems)
    kinds: dict[str, int] = {}
    for doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    print(f"  {path.name}: {len(docs)} documents ({summary})")


def main(argv: list[str]) -> int:
    chart, version, files = Path(argv[0]), argv[1], [Path(name) for name in argv[2:]]
    problems: list[str] = []
    check_values_partitions(chart, problems)
    for path in files:
        validate_file(path, version, problems)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"  valid against Kubernetes {version} (strict) and consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
