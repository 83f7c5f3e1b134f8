"""A real Prometheus (Debian's package) scraping the operator the way prometheus-operator scrapes
the chart's ServiceMonitor.

prometheus-operator turns each ServiceMonitor endpoint into a scrape job: Kubernetes service
discovery of the Endpoints in the monitor's namespaces, then relabelling that keeps the
Service the selector matches and the named port, and sets the target labels `namespace`,
`service`, `pod`, `container`, `endpoint` and `job`; `honor_labels` follows `honorLabels`.
`scrape_config` below writes that job from the rendered ServiceMonitor (the relabelling
rules as prometheus-operator generates them).

Debian builds Prometheus without Kubernetes service discovery (its client library is not
packaged), so `discovered_targets` does that part: it reads the Endpoints from the API and
writes, for file-based discovery, the same `__meta_kubernetes_*` labels Prometheus' endpoints
role attaches. Everything after discovery (relabelling, scraping, the TSDB, PromQL) is the
real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s


def _label_name(key: str) -> str:
    """A Kubernetes label key as Prometheus writes it into a meta label name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def scrape_config(monitor: dict[str, Any], targets_file: Path) -> dict[str, Any]:
    """The scrape job prometheus-operator generates for the monitor's first endpoint."""
    meta, spec = monitor["metadata"], monitor["spec"]
    endpoint = spec["endpoints"][0]
    namespace = meta["namespace"]
    relabel: list[dict[str, Any]] = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
    ]
    for key, value in sorted(spec["selector"].get("matchLabels", {}).items()):
        name = _label_name(key)
        relabel.append({
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_service_label_{name}",
                f"__meta_kubernetes_service_labelpresent_{name}",
            ],
            "regex": f"({re.escape(value)});true",
        })  # fmt: skip
    relabel += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
         "regex": endpoint["port"]},
        {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind",
                           "__meta_kubernetes_endpoint_address_target_name"],
         "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"},
        {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind",
                           "__meta_kubernetes_endpoint_address_target_name"],
         "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
         "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]  # fmt: skip
    return {
        "job_name": f"serviceMonitor/{namespace}/{meta['name']}/0",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "honor_timestamps": True,
        "scrape_interval": endpoint.get("interval", "30s"),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scheme": endpoint.get("scheme", "http"),
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        "relabel_configs": relabel,
    }


def discovered_targets(core: k8s.CoreV1Api, namespaces: list[str]) -> list[dict[str, Any]]:
    """What Prometheus' `endpoints` role discovers in these namespaces (ready addresses)."""
    groups = []
    for namespace in namespaces:
        for endpoints in core.list_namespaced_endpoints(namespace).items:
            service = core.read_namespaced_service(endpoints.metadata.name, namespace)
            service_labels: dict[str, str] = {}
            for key, value in (service.metadata.labels or {}).items():
                service_labels[f"__meta_kubernetes_service_label_{_label_name(key)}"] = value
                service_labels[f"__meta_kubernetes_service_labelpresent_{_label_name(key)}"] = (
                    "true"
                )
            for subset in endpoints.subsets or []:
                for address in subset.addresses or []:
                    ref = address.target_ref
                    pod = core.read_namespaced_pod(ref.name, namespace) if ref else None
                    for port in subset.ports or []:
                        labels = {
                            "__meta_kubernetes_namespace": namespace,
                            "__meta_kubernetes_endpoints_name": endpoints.metadata.name,
                            "__meta_kubernetes_service_name": service.metadata.name,
                            "__meta_kubernetes_endpoint_port_name": port.name or "",
                            "__meta_kubernetes_endpoint_port_protocol": port.protocol or "TCP",
                            "__meta_kubernetes_endpoint_ready": "true",
                            **service_labels,
                        }
                        if ref is not None:
                            labels["__meta_kubernetes_endpoint_address_target_kind"] = ref.kind
                            labels["__meta_kubernetes_endpoint_address_target_name"] = ref.name
                        if pod is not None:
                            labels["__meta_kubernetes_pod_name"] = pod.metadata.name
                            labels["__meta_kubernetes_pod_phase"] = pod.status.phase or ""
                            labels["__meta_kubernetes_pod_node_name"] = pod.spec.node_name or ""
                            for container in pod.spec.containers:
                                ports = [p.container_port for p in container.ports or []]
                                if port.port in ports:
                                    labels["__meta_kubernetes_pod_container_name"] = container.name
                        groups.append({"targets": [f"{address.ip}:{port.port}"], "labels": labels})
    return groups


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """`prometheus` on loopback with one scrape job and file-based discovery."""

    def __init__(self, workdir: Path, job: dict[str, Any]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package is not installed (make test-node installs it)"
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({"scrape_configs": [job]}, sort_keys=False))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def check_config(self) -> str:
        done = subprocess.run(
            ["promtool", "check", "config", str(self.config)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.25)
        raise AssertionError(f"prometheus not ready in 60 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active
