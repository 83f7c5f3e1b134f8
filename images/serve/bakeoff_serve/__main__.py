"""Command line of the backend images: `python -m bakeoff_serve <command> ...`.

Called by the container entrypoints and by `launch` (the local runner and the protocol
tests). Each command is one subparser plus one `_run_*` function; add a command by writing
an `_add_<name>` function and listing it in `_COMMANDS`. Usage errors print one line and
exit 2, like argparse's own errors, so a bad Deployment arg is obvious in the pod log.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


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


def _run_pytorch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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


def _add_pytorch(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    parser = subparsers.add_parser(
        "pytorch",
        help="serve a builtin model with PyTorch over KServe v2 (HTTP + gRPC)",
        description="The PyTorch Open Inference Protocol server.",
    )
    parser.add_argument("--model-name", required=True, help="name served at /v2/models/{name}")
    parser.add_argument("--builtin", required=True, help="builtin model, e.g. vit-b32-clip")
    parser.add_argument("--weights", type=Path, default=None, help="state dict (default: random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--host", default="127.0.0.1", help="address both ports bind")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--warmup-batch-sizes",
        type=_batch_sizes,
        default=(1,),
        help="comma-separated batch sizes run once before ready (default 1)",
    )
    parser.set_defaults(handler=_run_pytorch, command_parser=parser)


_COMMANDS: list[Callable[[argparse._SubParsersAction[_Parser]], None]] = [_add_pytorch]


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
