"""Settings of the PyTorch OIP server, built from the CLI by `bakeoff_serve.__main__`.

A strict pydantic model rather than pydantic-settings: the server is always started with an
explicit command line (by `launch.pytorch_server_command` or a Deployment's args), and a
typo must fail at start-up, not fall back to a default.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bakeoff_serve import model_configs
from bakeoff_serve.options import Engine, ExecutionProvider, Precision, WireInput


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class Settings(BaseModel):
    # protected_namespaces=(): "model_name" is our field, not pydantic's namespace.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Name the model is served under (/v2/models/{name}).",
    )
    builtin: str = Field(min_length=1, description="Builtin architecture from bakeoff_serve.model.")
    weights: Path | None = Field(
        default=None, description="State dict to load; seeded random init when absent."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the random init and warm-up data.")
    device: Device = Field(default=Device.CPU, description="Where the model runs.")
    precision: Precision = Field(default=Precision.FP32, description="Weights and compute dtype.")
    host: str = Field(default="127.0.0.1", min_length=1, description="Address both ports bind.")
    http_port: int = Field(gt=0, lt=65536, description="HTTP/REST port (KServe v2 + /metrics).")
    grpc_port: int = Field(gt=0, lt=65536, description="gRPC port (KServe v2).")
    max_batch_size: int = Field(default=32, gt=0, description="Largest batch a request may carry.")
    warmup_batch_sizes: tuple[int, ...] = Field(
        default=(1,), min_length=1, description="Batch sizes run once before the server is ready."
    )
    input_format: WireInput = Field(default=WireInput.FP32, description="Wire input tensor.")
    cuda_graphs: bool | None = Field(
        default=None, description="One CUDA graph per batch bucket; default: on with cuda."
    )
    dynamic_batching: bool = Field(
        default=False, description="Merge queued requests into one batch, like Triton's."
    )
    max_queue_delay_us: int = Field(
        default=0, ge=0, le=1_000_000, description="How long a batch waits to fill up."
    )
    gpus: int = Field(default=1, ge=1, le=16, description="GPUs to serve on, one instance each.")
    instances_per_device: int = Field(
        default=1, ge=1, le=8, description="Model instances per device (Triton's count)."
    )
    workers_per_device: int = Field(
        default=1, ge=1, le=8,
        description="Server processes per GPU (or on the CPU), behind one port.",
    )  # fmt: skip
    engine: Engine = Field(default=Engine.PYTORCH, description="What runs the model.")
    execution_provider: ExecutionProvider | None = Field(
        default=None, description="onnxruntime: its provider; default cpu, or cuda on a GPU."
    )
    cache_dir: Path | None = Field(
        default=None, description="onnxruntime: exported models and TensorRT engines."
    )

    @property
    def worker_count(self) -> int:
        """Server processes: workers_per_device on each GPU, or on the CPU."""
        devices = self.gpus if self.device is Device.CUDA else 1
        return devices * self.workers_per_device

    @property
    def use_cuda_graphs(self) -> bool:
        return self.device is Device.CUDA if self.cuda_graphs is None else self.cuda_graphs

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, value: str) -> str:
        if value not in model_configs.BUILTIN_MODELS:
            raise ValueError(
                f"unknown builtin {value!r}; known: {', '.join(model_configs.BUILTIN_MODELS)}"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.http_port == self.grpc_port:
            raise ValueError(f"http port and grpc port are both {self.http_port}")
        bad = [b for b in self.warmup_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"warm-up batch sizes {bad} are outside 1..max_batch_size ({self.max_batch_size})"
            )
        if (
            self.device is Device.CPU
            and self.precision is Precision.FP16
            and self.engine is Engine.PYTORCH
        ):
            raise ValueError(
                "fp16 on cpu is not supported (slow or missing CPU kernels); use fp32 or bf16"
            )
        if self.device is Device.CPU and self.cuda_graphs:
            raise ValueError("cuda graphs need --device cuda; drop --cuda-graphs on cpu")
        if self.device is Device.CPU and self.gpus > 1:
            raise ValueError(f"--gpus {self.gpus} needs --device cuda")
        if self.max_queue_delay_us and not self.dynamic_batching:
            raise ValueError("a max queue delay needs --dynamic-batching")
        self._check_engine()
        if self.weights is not None and not self.weights.is_file():
            raise ValueError(f"weights file {self.weights} does not exist")
        return self

    def _check_engine(self) -> None:
        if self.engine is Engine.PYTORCH:
            if self.execution_provider is not None:
                raise ValueError("--execution-provider is the onnxruntime engine's")
            return
        if self.precision is Precision.BF16:
            raise ValueError("onnxruntime serves fp32 and fp16; use --precision fp16")
        provider = self.execution_provider
        if provider is None:
            return
        if (provider is ExecutionProvider.CPU) != (self.device is Device.CPU):
            raise ValueError(
                f"execution provider {provider.value} does not run on --device "
                f"{self.device.value}: cpu runs on cpu, cuda and tensorrt on cuda"
            )
