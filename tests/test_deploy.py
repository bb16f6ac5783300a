"""deploy/: the Kubernetes manifests are valid API objects, and the numbers in deploy/ agree —
with each other and with the configuration the server actually reads from them.

The image is not built here (no container daemon in the test environment); what can be checked
without one is: its user, port, health check, entry point and uv version.
tests/test_nginx_drain.py runs deploy/nginx/nursery-pipes.conf in a real nginx.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nursery_pipes import RuntimeConfig
from nursery_pipes.cli._serve import apply_overrides
from nursery_pipes.service import parse_listen

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")
"""The oldest and newest API versions the manifests must satisfy (gRPC probes: GA in 1.27)."""

IDLE_MIB = 56
PER_WORKER_MIB = 13
"""A replica's memory, measured by benchmarks/bench_nginx.py (PSS of server + workers, PassThrough
nodes): the Deployment's memory request must hold an idle replica plus max_processes workers."""
SHUTDOWN_MARGIN_SECS = 5
"""After the drain and the workers' grace period: the runtime stopping and sweeping /dev/shm."""


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents() if d["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (only,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def server_config() -> RuntimeConfig:
    """What ``nursery-pipes serve`` makes of the container's environment."""
    env = {e["name"]: e["value"] for e in container()["env"]}
    return apply_overrides(RuntimeConfig(), env=env)


def mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # strict: no unknown field


def test_every_probe_and_port_is_the_port_the_server_listens_on() -> None:
    _, port = parse_listen(server_config().server.listen)
    _, metrics_port = parse_listen(server_config().metrics.listen)
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"grpc": port, "metrics": metrics_port}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container()[probe]["grpc"] == {"port": port}, probe  # the server's own health service
    service_ports = {p["name"]: p["targetPort"] for p in one("Service")["spec"]["ports"]}
    assert service_ports == {"grpc": "grpc", "metrics": "metrics"}
    selector = one("Service")["spec"]["selector"]
    assert selector.items() <= one("Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_the_grace_period_covers_prestop_drain_and_worker_grace() -> None:
    config = server_config()
    pod = one("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    needed = pre_stop + config.server.drain_timeout_secs + config.multiprocess.grace_period_secs
    assert pod["terminationGracePeriodSeconds"] >= needed + SHUTDOWN_MARGIN_SECS
    assert config.server.drain_timeout_secs == 60  # what the comments and docs/scaling.md say


def test_the_memory_request_holds_the_bounded_replica() -> None:
    config = server_config()
    requests = container()["resources"]["requests"]
    limits = container()["resources"]["limits"]
    assert mib(requests["memory"]) >= IDLE_MIB + config.limits.max_processes * PER_WORKER_MIB
    assert mib(limits["memory"]) >= mib(requests["memory"])
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert {"/dev/shm", "/tmp"} <= mounts  # shared-memory rings; FIFOs with a read-only root


def test_the_image_runs_serve_as_the_pods_non_root_user_with_a_grpc_health_check() -> None:
    text = DOCKERFILE.read_text()
    final = text.rsplit("\nFROM ", 1)[1]  # the runtime stage
    user = re.search(r"^USER (\d+):(\d+)$", final, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) != 0
    pod_security = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert int(user.group(1)) == pod_security["runAsUser"]
    listen = re.search(r"NURSERY_PIPES_SERVER__LISTEN=(\S+)", final)
    assert listen is not None
    _, port = parse_listen(listen.group(1))
    assert f"EXPOSE {port}" in final
    assert port == parse_listen(server_config().server.listen)[1]
    healthcheck = re.search(r"^\s+CMD (\[.*\])$", final, re.MULTILINE)
    assert healthcheck is not None
    assert yaml.safe_load(healthcheck.group(1))[:4] == [
        "nursery-pipes",
        "health",
        "--server",
        f"127.0.0.1:{port}",
    ]
    assert 'ENTRYPOINT ["nursery-pipes", "serve"]' in final
    syncs = [shlex.split(line) for line in text.splitlines() if line.startswith("RUN uv sync")]
    assert syncs
    assert all("--locked" in s for s in syncs)
    makefile_uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv is not None
    assert f"ARG UV_VERSION={makefile_uv.group(1)}" in text  # the uv CI uses
