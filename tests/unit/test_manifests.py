"""Manifests of one cell: placement on the pool, GPU requests, warm readiness, restricted pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bakeoff import manifests, naming, plan, validation
from bakeoff.settings import OperatorSettings

EXAMPLES = Path(__file__).parents[2] / "examples"
STUDY = validation.load_suite(EXAMPLES / "rtx4080-vs-a100.yaml")
UID = "uid-1"
GPU = OperatorSettings()
MOCK = OperatorSettings(cpu_mock=True)


def cells() -> dict[str, plan.Cell]:
    return {c.key: c for c in plan.plan_cells(STUDY.spec)}


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def test_backend_lands_on_its_pool_with_its_gpus() -> None:
    deployment = manifests.build_backend_deployment(STUDY, UID, cells()["pytorch-a100"], GPU)
    spec = pod_spec(deployment)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    server = spec["containers"][0]
    assert server["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    args = server["args"]
    assert args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--warmup-batch-sizes") + 1] == "1,4,8,16,32"


def test_cpu_mock_mode_requests_no_gpu_and_serves_on_cpu() -> None:
    for cell in cells().values():
        deployment = manifests.build_backend_deployment(STUDY, UID, cell, MOCK)
        spec = pod_spec(deployment)
        for container in spec["containers"]:
            assert "limits" not in container["resources"]
            assert container["image"] == MOCK.cpu_mock_image
        text = json.dumps(deployment)
        assert 'nvidia.com/gpu": "' not in text.replace('"nvidia.com/gpu.product"', "")
        args = spec["containers"][0]["args"]
        if "--device" in args:
            assert args[args.index("--device") + 1] == "cpu"
        for init in spec.get("initContainers", []):
            provider = init["args"][init["args"].index("--execution-provider") + 1]
            assert provider == "cpu"


def test_triton_backend_prepares_its_repository_in_an_init_container() -> None:
    deployment = manifests.build_backend_deployment(
        STUDY, UID, cells()["triton-onnx-trt-a100"], GPU
    )
    spec = pod_spec(deployment)
    prep = spec["initContainers"][0]["args"]
    assert prep[0] == "triton-prep"
    assert prep[prep.index("--execution-provider") + 1] == "tensorrt"
    assert prep[prep.index("--precision") + 1] == "fp16"
    assert prep[prep.index("--preferred-batch-sizes") + 1] == "8,16,32"
    assert prep[prep.index("--format") + 1] == "native"
    assert prep[prep.index("--gpus") + 1] == "0"
    assert spec["containers"][0]["image"] == GPU.triton_image
    service = manifests.build_backend_service(STUDY, UID, cells()["triton-onnx-trt-a100"], GPU)
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "grpc", "metrics"]


def test_benchmark_job_runs_off_the_backend_node_as_the_bench_account() -> None:
    cell = cells()["pytorch-rtx4080"]
    job = manifests.build_bench_job(STUDY, UID, cell, GPU)
    spec = pod_spec(job)
    assert spec["serviceAccountName"] == naming.BENCH_SERVICE_ACCOUNT
    term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == naming.backend_selector(
        "clip-vitb32", "pytorch", "rtx4080"
    )
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    config = json.loads(env["BAKEOFF_BENCH_CONFIG"])
    assert config["target"]["httpUrl"] == "http://clip-vitb32-pytorch-rtx4080.default.svc:8000"
    assert env["BAKEOFF_RESULT_CONFIGMAP"] == "clip-vitb32-pytorch-rtx4080-result"
    owner = json.loads(env["BAKEOFF_RESULT_OWNER"])
    assert (owner["uid"], owner["blockOwnerDeletion"]) == (UID, False)
    assert job["spec"]["activeDeadlineSeconds"] == STUDY.spec.timeouts.run_seconds
    assert "tolerations" not in spec  # never on a tainted GPU node


def test_one_worker_clusters_may_let_the_benchmark_share_the_backend_node() -> None:
    settings = OperatorSettings(bench_anti_affinity="preferred")
    job = manifests.build_bench_job(STUDY, UID, cells()["pytorch-rtx4080"], settings)
    anti = pod_spec(job)["affinity"]["podAntiAffinity"]
    assert list(anti) == ["preferredDuringSchedulingIgnoredDuringExecution"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["weight"] == 100
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == naming.backend_selector(
        "clip-vitb32", "pytorch", "rtx4080"
    )


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    for cell in cells().values():
        for manifest in (
            manifests.build_backend_deployment(STUDY, UID, cell, GPU),
            manifests.build_bench_job(STUDY, UID, cell, GPU),
        ):
            spec = pod_spec(manifest)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in spec["containers"] + spec.get("initContainers", []):
                ctx = container["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"] == {"drop": ["ALL"]}
                assert ctx["readOnlyRootFilesystem"] is True


def test_long_names_are_bounded_and_stay_distinct() -> None:
    a = naming.job_name("s" * 40, "b" * 40, "pool-a")
    b = naming.job_name("s" * 40, "b" * 40, "pool-b")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert naming.job_name("s", "b", "p") == "s-b-p-bench"


def _suite_with(backend_changes: dict[str, Any], gpus: int) -> Any:
    document = STUDY.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"]["backends"][0].update(backend_changes)
    for pool in document["spec"]["nodePools"]:
        pool["gpus"] = gpus
    return validation.parse_suite(document)


def test_pytorch_on_a_two_gpu_pool_serves_workers_per_gpu_with_its_options() -> None:
    suite = _suite_with(
        {
            "inputFormat": "uint8",
            "instancesPerGpu": 2,
            "workersPerGpu": 3,
            "cudaGraphs": False,
            "dynamicBatching": {"maxQueueDelayMicroseconds": 100},
        },
        gpus=2,
    )
    cell = next(c for c in plan.plan_cells(suite.spec) if c.backend.kind.value == "pytorch")
    server = pod_spec(manifests.build_backend_deployment(suite, UID, cell, GPU))["containers"][0]
    assert server["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    for flag in (
        "--input-format=uint8",
        "--gpus=2",
        "--workers-per-device=3",  # 2 GPUs x 3: six server processes behind one port
        "--instances-per-device=2",
        "--no-cuda-graphs",
        "--dynamic-batching",
        "--max-queue-delay-us=100",
    ):
        assert flag in server["args"]


def test_cpu_mock_pytorch_gets_no_gpu_flags() -> None:
    suite = _suite_with({"inputFormat": "uint8", "cudaGraphs": True}, gpus=2)
    cell = next(c for c in plan.plan_cells(suite.spec) if c.backend.kind.value == "pytorch")
    args = pod_spec(manifests.build_backend_deployment(suite, UID, cell, MOCK))["containers"][0]
    assert "--input-format=uint8" in args["args"]
    assert not [a for a in args["args"] if a.startswith(("--gpus", "--cuda-graphs"))]


GPU_STUDY = validation.load_suite(EXAMPLES / "gpu-study.yaml")


def _gpu_study_server(backend: str, settings: OperatorSettings) -> dict[str, Any]:
    cell = next(c for c in plan.plan_cells(GPU_STUDY.spec) if c.backend.name == backend)
    deployment = manifests.build_backend_deployment(GPU_STUDY, UID, cell, settings)
    server: dict[str, Any] = pod_spec(deployment)["containers"][0]
    return server


def test_onnxruntime_serves_bakeoffs_server_with_its_provider_and_a_writable_cache() -> None:
    server = _gpu_study_server("ort-cuda-fp16-graphs", GPU)
    args = server["args"]
    assert args[0] == "onnxruntime"
    assert args[args.index("--precision") + 1] == "fp16"
    assert args[args.index("--cache-dir") + 1] == "/models"
    assert "--execution-provider=cuda" in args and "--cuda-graphs" in args
    assert {"name": "models", "mountPath": "/models"} in server["volumeMounts"]
    assert server["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    tensorrt = _gpu_study_server("ort-tensorrt-fp16", GPU)["args"]
    assert "--execution-provider=tensorrt" in tensorrt


def test_cpu_mock_onnxruntime_runs_on_the_cpu_provider() -> None:
    args = _gpu_study_server("ort-tensorrt-fp16", MOCK)["args"]
    assert args[args.index("--device") + 1] == "cpu"
    assert "--execution-provider=cpu" in args
    assert not [a for a in args if a.startswith(("--gpus", "--cuda-graphs"))]


def _ref(name: str, key: str) -> dict[str, Any]:
    return {"secretRef": {"name": name, "key": key}}


def _gateway_study() -> Any:
    document = STUDY.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"]["backends"][1] = {
        "name": "gateway", "kind": "external",
        "endpoint": {"httpUrl": "https://gw.example:8443", "auth": {
            "bearerToken": _ref("gw-token", "token"),
            "headers": [{"name": "X-Api-Key", "value": _ref("gw-token", "api-key")}],
            "tls": {"ca": _ref("gw-ca", "ca.crt"), "clientCertificate": _ref("gw-tls", "tls.crt"),
                    "clientKey": _ref("gw-tls", "tls.key")}}},
    }  # fmt: skip
    return validation.parse_suite(document)


def test_only_the_bench_job_mounts_an_endpoints_secrets_as_files() -> None:
    study = _gateway_study()
    cell = next(c for c in plan.plan_cells(study.spec) if c.backend.name == "gateway")
    job = manifests.build_bench_job(study, UID, cell, GPU)
    spec = pod_spec(job)
    secrets = {v["secret"]["secretName"]: v for v in spec["volumes"] if "secret" in v}
    assert {name: [i["key"] for i in v["secret"]["items"]] for name, v in secrets.items()} == {
        "gw-ca": ["ca.crt"], "gw-tls": ["tls.crt", "tls.key"], "gw-token": ["api-key", "token"]
    }  # fmt: skip
    assert all(v["secret"]["defaultMode"] == 0o440 for v in secrets.values())
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    for name, volume in secrets.items():
        mount = mounts[volume["name"]]
        assert mount == {"name": volume["name"], "readOnly": True,
                         "mountPath": f"/var/run/bakeoff/secrets/{name}"}  # fmt: skip
    # The config names the mounted files; no value and no secretKeyRef in the environment.
    env = spec["containers"][0]["env"]
    assert not any("secretKeyRef" in json.dumps(e) for e in env)
    config = json.loads(next(e["value"] for e in env if e["name"] == "BAKEOFF_BENCH_CONFIG"))
    assert config["target"]["auth"] == {
        "bearerTokenFile": "/var/run/bakeoff/secrets/gw-token/token",
        "headerFiles": {"X-Api-Key": "/var/run/bakeoff/secrets/gw-token/api-key"},
        "caFile": "/var/run/bakeoff/secrets/gw-ca/ca.crt",
        "clientCertificateFile": "/var/run/bakeoff/secrets/gw-tls/tls.crt",
        "clientKeyFile": "/var/run/bakeoff/secrets/gw-tls/tls.key",
        "basicUsernameFile": None,
        "basicPasswordFile": None,
    }
    # Backends Bakeoff deploys mount no Secret.
    for other in plan.plan_cells(study.spec):
        if other.backend.name != "gateway":
            deployment = manifests.build_backend_deployment(study, UID, other, GPU)
            assert "secret" not in json.dumps(pod_spec(deployment)["volumes"])
            bench = manifests.build_bench_job(study, UID, other, GPU)
            assert not any("secret" in v for v in pod_spec(bench)["volumes"])


def test_a_backend_accepts_traffic_from_its_own_bench_job_and_the_scrapers_only() -> None:
    cell = cells()["triton-onnx-cuda-a100"]
    policy = manifests.build_backend_network_policy(STUDY, UID, cell, GPU)
    assert policy is not None and policy["kind"] == "NetworkPolicy"
    deployment = manifests.build_backend_deployment(STUDY, UID, cell, GPU)
    job = manifests.build_bench_job(STUDY, UID, cell, GPU)
    spec = policy["spec"]
    # It selects exactly this backend's pods, and the bench pods of this cell are its peers.
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    bench_rule, scrape_rule = spec["ingress"]
    peer = bench_rule["from"][0]["podSelector"]["matchLabels"]
    assert peer.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    other = manifests.build_bench_job(STUDY, UID, cells()["pytorch-a100"], GPU)
    assert not peer.items() <= other["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in bench_rule["ports"]] == [8000, 8001, 8002]
    # Triton serves metrics on their own port: scrapers reach that port only.
    assert scrape_rule["from"] == GPU.metrics_scrapers
    assert [p["port"] for p in scrape_rule["ports"]] == [8002]
    # Nothing deployed, nothing to guard: an external backend gets no policy.
    no_scrapers = OperatorSettings(metrics_scrapers=[])
    policy = manifests.build_backend_network_policy(STUDY, UID, cell, no_scrapers)
    assert policy is not None and len(policy["spec"]["ingress"]) == 1
    gateway = _gateway_study()
    external = next(c for c in plan.plan_cells(gateway.spec) if c.backend.name == "gateway")
    assert manifests.build_backend_network_policy(gateway, UID, external, GPU) is None


def test_image_references_may_be_pinned_by_digest_and_typos_are_named() -> None:
    digest = "sha256:" + "ab" * 32
    pinned = OperatorSettings(bench_image=f"registry.local:5000/bakeoff/bench-job@{digest}")
    assert pinned.bench_image.endswith(digest)
    assert OperatorSettings(bench_image=f"ghcr.io/x/bench-job:0.1.0@{digest}")
    with pytest.raises(ValueError, match="not an image reference"):
        OperatorSettings(bench_image="ghcr.io/x/bench-job@sha256:short")
