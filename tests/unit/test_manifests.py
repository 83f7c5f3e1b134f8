"""Manifests of one cell: placement on the pool, GPU requests, warm readiness, restricted pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
