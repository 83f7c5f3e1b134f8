"""The `BenchmarkSuite` API (bakeoff.dev/v1alpha1): the pydantic models are the source of truth.

Field names are camelCase on the wire, snake_case in code. The models check each field on its
own; rules that relate fields to each other live in `validation.check_suite`, which can name
the exact field path of a problem (a pydantic model validator could only blame the parent).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from bakeoff_bench import config as bench_config
from bakeoff_bench.models import StrictModel
from bakeoff_serve.options import ExecutionProvider as ExecutionProvider
from bakeoff_serve.options import Precision as Precision
from bakeoff_serve.options import WireInput as WireInput

API_GROUP: Final = "bakeoff.dev"
API_VERSION: Final = "v1alpha1"
KIND: Final = "BenchmarkSuite"

# Names end up in Kubernetes object names and labels, and in URL paths (/v2/models/{name}).
DnsLabel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
# A suite's name is a label value (bakeoff.dev/suite), so at most 63; every child name built
# from it is bounded to 63 with a hash suffix (naming.bounded).
SuiteName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
# A label value as Kubernetes accepts it (nodeSelector values end up in pod specs; a bad one
# would fail every Deployment the operator creates, long after `kubectl apply` succeeded).
LabelValue = Annotated[
    str,
    StringConstraints(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"),
]
# The keys of such a map cannot carry a pattern in a structural schema: `validation.check_suite`
# checks them (the operator reports a bad one as Validated=False).
LABEL_KEY_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# Oversize sweeps: a closed-loop scenario sends at most this many requests (warm-up included)
# per cell. A million is hours of GPU time at typical latencies; anything larger is a typo.
MAX_SCENARIO_REQUESTS: Final = 1_000_000
# A model name as Triton's repository layout and the /v2/models/{name} path accept it.
ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
]


class BuiltinModel(StrEnum):
    VIT_B32_CLIP = "vit-b32-clip"
    VIT_TINY_CLIP = "vit-tiny-clip"


class InputFormat(StrEnum):
    FP32_TENSOR = "fp32-tensor"


class BackendKind(StrEnum):
    PYTORCH = "pytorch"
    TRITON_ONNX = "triton-onnx"
    ONNXRUNTIME = "onnxruntime"
    EXTERNAL = "external"


class CleanupPolicy(StrEnum):
    ON_SUCCESS = "OnSuccess"
    ALWAYS = "Always"
    NEVER = "Never"


class ModelSource(StrictModel):
    builtin: BuiltinModel = Field(description="Architecture to serve (OpenCLIP ViT-B/32 tower)")
    weights: str | None = Field(
        default=None,
        description="Path to a PyTorch state dict for the builtin; omitted: seeded random init",
    )


class ModelInput(StrictModel):
    format: InputFormat = Field(default=InputFormat.FP32_TENSOR, description="Payload format")


class ModelSpec(StrictModel):
    name: ModelName = Field(description="Model name served at /v2/models/{name}")
    source: ModelSource
    input: ModelInput = Field(default_factory=ModelInput)
    seed: int = Field(default=0, ge=0, description="Seed of random init and of the inputs")


class DynamicBatching(StrictModel):
    max_queue_delay_microseconds: int = Field(
        default=0, ge=0, le=1_000_000, description="How long Triton waits to form a batch"
    )
    preferred_batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, max_length=32
    )


# A Secret's name (a DNS subdomain) and one of its keys, as Kubernetes accepts them.
SecretName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]  # fmt: skip
SecretKey = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
]
# An HTTP header name (an RFC 9110 token, the characters gateways actually use).
HeaderName = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_]*$")
]


class SecretKeyRef(StrictModel):
    """One key of a Secret in the suite's namespace."""

    name: SecretName = Field(description="The Secret's name")
    key: SecretKey = Field(description="The key whose value is used")


class SecretValue(StrictModel):
    """A value kept in a Secret: only the benchmark Job mounts it, as a file."""

    secret_ref: SecretKeyRef = Field(description="{name, key} of a Secret in this namespace")


class BasicAuth(StrictModel):
    username: SecretValue = Field(description="HTTP basic auth user name")
    password: SecretValue = Field(description="HTTP basic auth password")


class SecretHeader(StrictModel):
    """A header every request carries, for inference gateways that want one (an API key)."""

    name: HeaderName = Field(description="Header name, e.g. X-Api-Key")
    value: SecretValue = Field(description="Its value, from a Secret")


class EndpointTls(StrictModel):
    """How an https endpoint is trusted and how the client proves who it is."""

    ca: SecretValue | None = Field(
        default=None, description="PEM CA certificate(s) to trust besides the system's"
    )
    client_certificate: SecretValue | None = Field(
        default=None, description="PEM client certificate (mutual TLS); with clientKey"
    )
    client_key: SecretValue | None = Field(
        default=None, description="PEM private key of clientCertificate"
    )


class EndpointAuth(StrictModel):
    """Credentials by reference: Secrets the benchmark Job mounts as files. Neither the
    operator nor the Job's ServiceAccount reads Secrets through the API."""

    bearer_token: SecretValue | None = Field(
        default=None, description="Sent as Authorization: Bearer <token>"
    )
    basic: BasicAuth | None = Field(default=None, description="HTTP basic auth")
    headers: list[SecretHeader] = Field(
        default_factory=list, max_length=16, description="Headers with values from Secrets"
    )
    tls: EndpointTls | None = Field(default=None, description="https only: CA, client cert")

    def secret_values(self) -> list[tuple[str, SecretValue]]:
        """(field path under auth, value) of every Secret reference, in spec order."""
        found: list[tuple[str, SecretValue | None]] = [
            ("bearerToken", self.bearer_token),
            ("basic.username", self.basic.username if self.basic else None),
            ("basic.password", self.basic.password if self.basic else None),
            *[(f"headers[{i}].value", h.value) for i, h in enumerate(self.headers)],
            ("tls.ca", self.tls.ca if self.tls else None),
            ("tls.clientCertificate", self.tls.client_certificate if self.tls else None),
            ("tls.clientKey", self.tls.client_key if self.tls else None),
        ]
        return [(path, value) for path, value in found if value is not None]


class Endpoint(StrictModel):
    """An Open Inference Protocol server that already runs: benchmarked as it is."""

    http_url: str = Field(
        min_length=1, max_length=2048, pattern=r"^https?://",
        description="Base URL of its KServe v2 HTTP endpoint, e.g. http://triton.ml:8000",
    )  # fmt: skip
    metrics_url: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://",
        description="Its Prometheus endpoint with Triton's nv_inference_* metrics, if any",
    )  # fmt: skip
    model_name: ModelName | None = Field(
        default=None, description="Model name it serves; default: spec.model.name"
    )
    auth: EndpointAuth | None = Field(
        default=None,
        description="Credentials from Secrets (bearer token, basic auth, headers, TLS); never "
        "put them in the URLs",
    )


PRECISION: Final = "Weights and compute dtype"
BATCHING: Final = (
    "Merge queued requests into one execution: Triton's dynamic batcher, or the pytorch "
    "server's own (which batches up to maxBatchSize: preferredBatchSizes is Triton's only)"
)


class BackendBase(StrictModel):
    """What every kind of backend has; each kind adds its own fields (see `Backend`)."""

    name: DnsLabel = Field(description="Unique name of this candidate")
    max_batch_size: int = Field(
        default=32, gt=0, le=1024, description="Largest batch a request may carry"
    )
    pools: list[DnsLabel] | None = Field(
        default=None, max_length=16, description="Measure on these pools only; default: all"
    )


class BakeoffServerBackend(BackendBase):
    """What Bakeoff's own server offers whichever engine runs the model."""

    precision: Precision = Field(default=Precision.FP32, description=PRECISION)
    dynamic_batching: DynamicBatching | None = Field(default=None, description=BATCHING)
    input_format: WireInput = Field(
        default=WireInput.FP32,
        description="uint8 sends the 8-bit pixels (a quarter of the bytes), scaled on the GPU; "
        "jpeg one JPEG file per image, decoded by the server",
    )
    cuda_graphs: bool | None = Field(
        default=None, description="One CUDA graph per batch bucket; default on GPU pools"
    )
    instances_per_gpu: int = Field(
        default=1, ge=1, le=8,
        description="Model instances per GPU, overlapping copies and compute",
    )  # fmt: skip
    workers_per_gpu: int = Field(
        default=1, ge=1, le=8,
        description="Server processes per GPU behind one port (SO_REUSEPORT), each with its "
        "own event loop and model instances; 2 or more keep a GPU fed with large requests "
        "(FP32 input at large batches). A pool with gpus: N starts N x workersPerGpu",
    )  # fmt: skip


class PytorchBackend(BakeoffServerBackend):
    """Bakeoff's PyTorch server (FastAPI, KServe v2 over HTTP and gRPC)."""

    kind: Literal[BackendKind.PYTORCH]


class OnnxruntimeBackend(BakeoffServerBackend):
    """Bakeoff's server with the model exported to ONNX and run by ONNX Runtime (IOBinding;
    CUDA graphs per batch bucket, or TensorRT engines, on GPU pools)."""

    kind: Literal[BackendKind.ONNXRUNTIME]
    execution_provider: ExecutionProvider = Field(
        description="ONNX Runtime's execution provider, cpu, cuda or tensorrt"
    )


class TritonOnnxBackend(BackendBase):
    """Triton serving the model exported to ONNX, run by ONNX Runtime."""

    kind: Literal[BackendKind.TRITON_ONNX]
    execution_provider: ExecutionProvider = Field(
        description="ONNX Runtime's execution provider, cpu, cuda or tensorrt"
    )
    precision: Precision = Field(default=Precision.FP32, description=PRECISION)
    dynamic_batching: DynamicBatching | None = Field(default=None, description=BATCHING)


class ExternalBackend(BackendBase):
    """An Open Inference Protocol server that already runs: measured as it is."""

    kind: Literal[BackendKind.EXTERNAL]
    endpoint: Endpoint = Field(
        description="where it answers, e.g. {httpUrl: http://HOST:8000, metricsUrl: "
        "http://HOST:8002/metrics}"
    )


# One model per kind, told apart by `kind`: each kind's fields are its own, and code that
# handles backends matches on the class, so a kind nobody handles fails the type check.
Backend = Annotated[
    PytorchBackend | TritonOnnxBackend | OnnxruntimeBackend | ExternalBackend,
    Field(discriminator="kind"),
]


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class NodePool(StrictModel):
    name: DnsLabel
    node_selector: dict[str, LabelValue] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per backend pod; 0 = CPU pool")
    cost_per_hour: float = Field(
        ge=0, le=10_000, description="Price of one node-hour, any currency"
    )


class Scenarios(StrictModel):
    single: bench_config.SingleScenarioSpec | None = Field(
        default_factory=bench_config.SingleScenarioSpec
    )
    batch_sweep: bench_config.BatchSweepScenarioSpec | None = Field(
        default_factory=bench_config.BatchSweepScenarioSpec
    )
    concurrency_sweep: bench_config.ConcurrencySweepScenarioSpec | None = None
    rate: bench_config.RateScenarioSpec | None = None
    steady_state: bench_config.SteadyState | None = Field(
        default=None, description="Window-based measurement for every closed-loop scenario"
    )
    workers: int = Field(default=1, ge=1, le=64, description="Client processes for rate runs")
    clients: Annotated[int, Field(ge=1, le=bench_config.MAX_CLIENTS)] | Literal["auto"] = Field(
        default=1,
        description="Client pods sharing every scenario's load (an Indexed Job; local runs: "
        "client processes): they start each measured window together and their results "
        "merge into one. auto: one per 2,000 requested requests/s of the rate scenario",
    )
    repeats: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Run every cell this many times, interleaved (A, B, A, B...), each with a "
        "fresh server; the between-run spread widens every interval (bakeoff run --local)",
    )


class Parity(StrictModel):
    reference: DnsLabel | None = Field(
        default=None, description="Backend whose outputs are the truth; default: the first"
    )
    min_cosine: float = Field(default=0.999, gt=0, le=1)


class VerdictRules(StrictModel):
    """How sure a verdict must be before it names a winner."""

    confidence: float = Field(
        default=0.95,
        ge=0.5,
        le=0.999,
        description="Confidence level of every interval (p50, p99, mean, throughput, cost)",
    )
    min_effect: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Smallest relative difference that names a winner: below it, or with "
        "overlapping intervals, a category reads 'no clear winner (within noise)'",
    )


class Cleanup(StrictModel):
    policy: CleanupPolicy = CleanupPolicy.ON_SUCCESS


class Timeouts(StrictModel):
    ready_seconds: int = Field(
        default=900,
        gt=0,
        le=86_400,
        description="How long a backend may take to be ready and warm (TensorRT builds: long)",
    )
    run_seconds: int = Field(
        default=3600, gt=0, le=604_800, description="How long one cell's benchmark Job may run"
    )


class BenchmarkSuiteSpec(StrictModel):
    model: ModelSpec
    backends: list[Backend] = Field(min_length=1, max_length=16)
    node_pools: list[NodePool] = Field(min_length=1, max_length=16)
    scenarios: Scenarios = Field(default_factory=Scenarios)
    parity: Parity = Field(default_factory=Parity)
    verdict: VerdictRules = Field(default_factory=VerdictRules)
    cleanup: Cleanup = Field(default_factory=Cleanup)
    timeouts: Timeouts = Field(default_factory=Timeouts)


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata Bakeoff reads; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: SuiteName
    namespace: str | None = None
    generation: int | None = None


# ----- status -----


class SuitePhase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    BENCHMARKING = "Benchmarking"
    ANALYZING = "Analyzing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class CellPhase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    BENCHMARKING = "Benchmarking"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class CellFailure(StrEnum):
    """Why a cell failed, for conditions and alerts (its message says it for people)."""

    BACKEND_NOT_READY = "BackendNotReady"
    BACKEND_GONE = "BackendGone"  # restarted or moved while it was measured
    BENCHMARK_FAILED = "BenchmarkFailed"
    TIMED_OUT = "TimedOut"
    NO_RESULT = "NoResult"
    RESULT_MALFORMED = "ResultMalformed"


class Condition(StrictModel):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class CellStatus(StrictModel):
    backend: str
    pool: str
    phase: CellPhase = CellPhase.PENDING
    node: str | None = None
    message: str = ""
    failure: CellFailure | None = Field(default=None, description="Why it failed, if it did")
    result_ref: str | None = Field(default=None, description="Where the full result lives")
    backend_pod: str | None = Field(
        default=None, description="The backend pod its benchmark measures (set when it starts)"
    )
    backend_restarts: int | None = Field(
        default=None, ge=0, description="That pod's container restarts when its benchmark started"
    )
    attempts: int = Field(
        default=1, ge=1, le=2,
        description="Runs of its benchmark: 2 when a first run of several clients was void",
    )  # fmt: skip


class Winner(StrictModel):
    backend: str
    pool: str
    value: float
    unit: str
    basis: str = Field(description="How the value was measured, e.g. 'p50 of 200 requests'")
    low: float | None = Field(default=None, description="The value's interval, lower end")
    high: float | None = Field(default=None, description="The value's interval, upper end")


class Tie(StrictModel):
    """A category whose leaders the evidence does not separate."""

    candidates: list[str] = Field(description="'backend/pool' of the leaders, best first")
    message: str = Field(description="Why it is a tie, and what would settle it")
    samples_needed: int | None = Field(
        default=None, description="About how many samples each would separate the leaders"
    )


class Summary(StrictModel):
    winners: dict[str, Winner] = Field(default_factory=dict)
    ties: dict[str, Tie] = Field(
        default_factory=dict, description="Categories with no clear winner (within noise)"
    )
    confidence: float | None = Field(default=None, description="Of every interval here")
    recommendations: list[str] = Field(default_factory=list)
    cost_per_1k: dict[str, float] = Field(
        default_factory=dict,
        alias="costPer1k",  # to_camel would write costPer1K
        description="'backend/pool' -> cost per 1000 inferences",
    )
    parity: dict[str, float] = Field(
        default_factory=dict, description="'backend/pool' -> worst cosine vs the reference"
    )
    excluded: list[str] = Field(
        default_factory=list, description="Cells that cannot win, with the reason"
    )


class SuiteStatus(StrictModel):
    phase: SuitePhase = SuitePhase.PENDING
    observed_generation: int | None = None
    progress: str = Field(default="", description="Cells finished / cells, e.g. '3/6'")
    winner: str = Field(default="", description="Latency winner, 'backend/pool' (printer column)")
    conditions: list[Condition] = Field(default_factory=list)
    cells: list[CellStatus] = Field(default_factory=list)
    summary: Summary | None = None


class BenchmarkSuite(StrictModel):
    api_version: Literal["bakeoff.dev/v1alpha1"]
    kind: Literal["BenchmarkSuite"]
    metadata: ObjectMeta
    spec: BenchmarkSuiteSpec
    status: SuiteStatus | None = None
