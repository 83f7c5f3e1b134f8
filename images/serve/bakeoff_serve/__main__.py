"""Command line of the backend images: `python -m bakeoff_serve <command> ...`.

Called by the container entrypoints and by `launch` (the local runner and the protocol
tests). Each command is one subparser plus one `_run_*` function; add a command by writing
an `_add_<name>` function and listing it in `_COMMANDS`. Usage errors print one line and
exit 2, like argparse's own errors, so a bad Deployment arg is obvious in the pod log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, NoReturn

from bakeoff_serve import triton_repo
from bakeoff_serve.options import Engine, ExecutionProvider, Precision, WireInput

# model_prep.Runtime, restated so `--help` need not import model_prep (it imports torch).
_PrepRuntime = Literal["python-backend", "onnxruntime-native"]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line: `prog: error: message`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None
    if not sizes:
        raise argparse.ArgumentTypeError("needs at least one batch size")
    return sizes


def _gpu_indices(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None
    if not gpus:
        raise argparse.ArgumentTypeError("needs at least one GPU index")
    return gpus


def _optional_batch_sizes(text: str) -> tuple[int, ...]:
    return _batch_sizes(text) if text.strip() else ()


def _run_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # Imported here so `--help` and usage errors stay fast (torch takes seconds to import).
    import pydantic
    import torch

    from bakeoff_serve.app import main as app_main
    from bakeoff_serve.app.settings import Device, Settings

    try:
        settings = Settings(
            model_name=args.model_name,
            builtin=args.builtin,
            weights=args.weights,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            max_batch_size=args.max_batch_size,
            warmup_batch_sizes=args.warmup_batch_sizes,
            input_format=args.input_format,
            cuda_graphs=args.cuda_graphs,
            dynamic_batching=args.dynamic_batching,
            max_queue_delay_us=args.max_queue_delay_us,
            gpus=args.gpus,
            instances_per_device=args.instances_per_device,
            workers_per_device=args.workers_per_device,
            engine=args.engine,
            execution_provider=getattr(args, "execution_provider", None),
            cache_dir=getattr(args, "cache_dir", None),
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            (".".join(str(part) for part in error["loc"]) + ": " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        )
        parser.error(problems)
    if settings.device is Device.CUDA and not torch.cuda.is_available():
        parser.error("--device cuda was requested but CUDA is not available on this machine")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return app_main.serve(settings)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both engines of Bakeoff's own server take."""
    parser.add_argument("--model-name", required=True, help="name served at /v2/models/{name}")
    parser.add_argument("--builtin", required=True, help="builtin model, e.g. vit-b32-clip")
    parser.add_argument("--weights", type=Path, default=None, help="state dict (default: random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--precision", choices=[p.value for p in Precision], default=Precision.FP32.value
    )
    parser.add_argument("--host", default="127.0.0.1", help="address both ports bind")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--warmup-batch-sizes",
        type=_batch_sizes,
        default=(1,),
        help="comma-separated batch sizes run once before ready (default 1; on cuda every "
        "batch bucket is warmed and captured anyway)",
    )
    parser.add_argument(
        "--input-format", choices=[w.value for w in WireInput], default=WireInput.FP32.value,
        help="wire input: FP32 in [0, 1], UINT8 in [0, 255] scaled on the device, or one "
        "JPEG file per image (BYTES; nvJPEG on the GPU with torchvision, else Pillow)",
    )  # fmt: skip
    parser.add_argument(
        "--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
        help="capture one CUDA graph per batch bucket (default: on with --device cuda)",
    )  # fmt: skip
    parser.add_argument(
        "--dynamic-batching", action="store_true",
        help="merge queued requests into one execution, like Triton's dynamic batcher",
    )  # fmt: skip
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=0,
        help="with --dynamic-batching: how long a batch may wait to fill up (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--gpus", type=int, default=1,
        help="serve on GPUs 0..N-1, each with its own worker processes (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--workers-per-device", type=int, default=1,
        help="server processes per GPU (or on the CPU), one port shared by SO_REUSEPORT; "
        "more than one feeds a GPU large requests from several event loops (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--instances-per-device", type=int, default=1,
        help="model instances per device, to overlap copies with compute (default 1)",
    )  # fmt: skip


def _add_pytorch(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    parser = subparsers.add_parser(
        "pytorch",
        help="serve a builtin model with PyTorch over KServe v2 (HTTP + gRPC)",
        description="Bakeoff's Open Inference Protocol server, the model in PyTorch.",
    )
    _add_server_arguments(parser)
    parser.set_defaults(handler=_run_server, command_parser=parser, engine=Engine.PYTORCH)


def _add_onnxruntime(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    parser = subparsers.add_parser(
        "onnxruntime",
        help="serve a builtin model exported to ONNX, in ONNX Runtime, over KServe v2",
        description="Bakeoff's Open Inference Protocol server, the model in ONNX Runtime "
        "(IOBinding; on a GPU CUDA graphs per batch bucket, or TensorRT engines).",
    )
    _add_server_arguments(parser)
    parser.add_argument(
        "--execution-provider", choices=[e.value for e in ExecutionProvider], default=None,
        help="ONNX Runtime's provider (default: cpu, or cuda with --device cuda)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="exported models and TensorRT engine/timing caches (default ~/.cache/bakeoff)",
    )  # fmt: skip
    parser.set_defaults(handler=_run_server, command_parser=parser, engine=Engine.ONNXRUNTIME)


def _run_triton_prep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bakeoff_serve import model_prep, onnx_export, tritonserver
    from bakeoff_serve.model_configs import BUILTIN_MODELS

    if args.builtin not in BUILTIN_MODELS:
        parser.error(f"--builtin {args.builtin}: known models are {', '.join(BUILTIN_MODELS)}")
    if args.precision == "fp16" and args.execution_provider != "tensorrt":
        parser.error("--precision fp16 needs --execution-provider tensorrt")
    if args.format == "native" and args.execution_provider == "cpu":
        parser.error("--format native needs --execution-provider cuda or tensorrt")
    try:
        repo = model_prep.prepare_triton_repository(
            args.out, args.model_name, args.builtin, args.weights, args.seed,
            args.cache_dir or tritonserver.default_cache_dir(),
            max_batch_size=args.max_batch_size,
            execution_provider=ExecutionProvider(args.execution_provider),
            precision=Precision(args.precision), preferred_batch_sizes=args.preferred_batch_sizes,
            max_queue_delay_us=args.max_queue_delay_us,
            warmup_batch_sizes=args.warmup_batch_sizes,
            runtime=_FORMATS[args.format], gpus=args.gpus, trt_cache_dir=args.trt_cache_dir,
            trt_workspace_bytes=args.trt_workspace_bytes,
        )  # fmt: skip
    except (onnx_export.OnnxExportError, OSError, ValueError) as exc:
        print(f"bakeoff_serve triton-prep: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote model repository {repo}/{args.model_name}", file=sys.stderr)
    return 0


# --format value -> model_prep runtime.
_FORMATS: dict[str, _PrepRuntime] = {
    "python-backend": "python-backend",
    "native": "onnxruntime-native",
}


def _add_triton_prep(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    parser = subparsers.add_parser(
        "triton-prep",
        help="export the model to ONNX and write a Triton model repository",
        description="Model prep for the triton-onnx backends (the init container).",
    )
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--builtin", required=True)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--execution-provider",
        choices=[e.value for e in ExecutionProvider],
        default=ExecutionProvider.CPU.value,
    )
    parser.add_argument(
        "--precision",
        choices=[p.value for p in Precision if p in triton_repo.ONNX_RUNTIME_PRECISIONS],
        default=Precision.FP32.value,
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument(
        "--preferred-batch-sizes", type=_optional_batch_sizes, default=(), help="e.g. 8,16"
    )
    parser.add_argument("--warmup-batch-sizes", type=_batch_sizes, default=(1,))
    parser.add_argument("--out", type=Path, required=True, help="the model repository folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="ONNX export cache")
    parser.add_argument(
        "--format",
        choices=list(_FORMATS),
        default="python-backend",
        help="python-backend: for the bundled tritonserver (CPU mock, local); native: "
        "platform onnxruntime_onnx for NVIDIA's Triton images on GPU pools",
    )
    parser.add_argument(
        "--gpus", type=_gpu_indices, default=(0,), help="native: GPU indices, one instance each"
    )
    parser.add_argument(
        "--trt-cache-dir",
        type=Path,
        default=None,
        help="native + tensorrt: engine and timing cache (default <out>/<model>/trt-cache)",
    )
    parser.add_argument(
        "--trt-workspace-bytes", type=int, default=1 << 30, help="native + tensorrt (1 GiB)"
    )
    parser.set_defaults(handler=_run_triton_prep, command_parser=parser)


def _run_triton(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bakeoff_serve import launch, tritonserver

    try:
        command = launch.triton_server_command(
            args.repo, args.http_port, args.grpc_port, args.metrics_port, host=args.host
        )
    except tritonserver.TritonNotInstalledError as exc:
        parser.error(str(exc))
    # Replace this process: signals from the kubelet go straight to tritonserver.
    os.execve(command.argv[0], list(command.argv), {**os.environ, **command.env})


def _add_triton(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    parser = subparsers.add_parser(
        "triton",
        help="run the bundled tritonserver on a model repository (CPU-mock image)",
        description="Serve a repository written by triton-prep with the bundled tritonserver.",
    )
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.set_defaults(handler=_run_triton, command_parser=parser)


_COMMANDS: list[Callable[[argparse._SubParsersAction[_Parser]], None]] = [
    _add_pytorch,
    _add_onnxruntime,
    _add_triton_prep,
    _add_triton,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bakeoff_serve", description="Bakeoff's backends and model prep.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], int] = args.handler
    return handler(args, args.command_parser)


if __name__ == "__main__":
    sys.exit(main())
