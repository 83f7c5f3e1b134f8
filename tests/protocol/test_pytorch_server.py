"""Bakeoff's PyTorch OIP server against the official tritonclient, over HTTP and gRPC.

The server runs as a real subprocess (see conftest.py). Outputs are compared with the same
model run in this process; every client mistake must come back as a 4xx / INVALID_ARGUMENT
with a message, and the server must still answer afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import orjson
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bakeoff_serve import __main__ as cli
from bakeoff_serve import engine, launch, model, process
from bakeoff_serve.app import main as app_main
from bakeoff_serve.app.settings import Settings

if TYPE_CHECKING:  # conftest is not importable as a package module; the type is enough
    from conftest import PytorchServer

pytestmark = pytest.mark.protocol

IN, OUT = model.INPUT_NAME, model.OUTPUT_NAME
PIXELS = np.random.default_rng(42).random((3, 3, 224, 224), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(pytorch_server: PytorchServer) -> np.ndarray[Any, Any]:
    """The served model's output for PIXELS, computed in this process."""
    built, _ = model.build_model(pytorch_server.builtin, seed=pytorch_server.seed)
    with torch.inference_mode():
        embedding: np.ndarray[Any, Any] = built(torch.from_numpy(PIXELS)).numpy()
    return embedding


def http_input(
    array: np.ndarray[Any, Any], *, binary: bool = True, datatype: str = "FP32", name: str = IN
) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def grpc_input(
    array: np.ndarray[Any, Any], *, datatype: str = "FP32", name: str = IN
) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def raw_post(
    server: PytorchServer, body: bytes, headers: dict[str, str], model_name: str | None = None
) -> tuple[int, dict[str, Any]]:
    """POST bytes tritonclient would never send; returns (status, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(
            "POST", f"/v2/models/{model_name or server.model_name}/infer", body, headers
        )
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


def assert_still_serving(client: httpclient.InferenceServerClient, server: PytorchServer) -> None:
    result = client.infer(server.model_name, [http_input(PIXELS[:1])])
    assert result.as_numpy(OUT).shape == (1, 512)


def scrape(server: PytorchServer) -> dict[str, float]:
    """Sum of each metric family over this model's samples (failure reasons summed)."""
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "counter", family.name  # no GPU gauges on CPU
        totals[family.name] = sum(
            s.value for s in family.samples if s.labels.get("model") == server.model_name
        )
    return totals


# --- metadata and readiness -----------------------------------------------------------


def test_http_server_and_model_metadata(
    pytorch_http_client: httpclient.InferenceServerClient, pytorch_server: PytorchServer
) -> None:
    client, name = pytorch_http_client, pytorch_server.model_name
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata()
    assert server["name"] == "bakeoff-pytorch"
    assert set(server["extensions"]) == {"binary_tensor_data", "model_configuration"}
    assert client.get_model_metadata(name) == {
        "name": name,
        "versions": ["1"],
        "platform": "bakeoff_pytorch",
        "inputs": [{"name": IN, "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": OUT, "datatype": "FP32", "shape": [-1, 512]}],
    }
    assert client.get_model_metadata(name, "1")["name"] == name


def test_grpc_server_and_model_metadata(
    pytorch_grpc_client: grpcclient.InferenceServerClient, pytorch_server: PytorchServer
) -> None:
    client, name = pytorch_grpc_client, pytorch_server.model_name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert client.get_server_metadata(as_json=True)["name"] == "bakeoff-pytorch"
    metadata = client.get_model_metadata(name, as_json=True)
    assert metadata["inputs"] == [
        {"name": IN, "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}
    ]
    assert metadata["outputs"] == [{"name": OUT, "datatype": "FP32", "shape": ["-1", "512"]}]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_model_config_reports_runtime_and_provenance(
    pytorch_http_client: httpclient.InferenceServerClient,
    pytorch_grpc_client: grpcclient.InferenceServerClient,
    pytorch_server: PytorchServer,
) -> None:
    name = pytorch_server.model_name
    http_config = pytorch_http_client.get_model_config(name)
    grpc_config = pytorch_grpc_client.get_model_config(name, as_json=True)["config"]
    for config in (http_config, grpc_config):
        assert config["name"] == name
        assert int(config["max_batch_size"]) == pytorch_server.max_batch_size
        assert config["input"][0]["data_type"] == "TYPE_FP32"
        assert [int(d) for d in config["input"][0]["dims"]] == [3, 224, 224]
        runtime = config["parameters"]["runtime"]["string_value"]
        assert runtime == f"pytorch {torch.__version__.split('+')[0]} cpu fp32"
        provenance = config["parameters"]["model_provenance"]["string_value"]
        assert "vit-tiny-clip" in provenance and "random init" in provenance


# --- inference matches the in-process model -------------------------------------------


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(True, True), (False, False), (True, False), (False, True)],
    ids=["binary-in-binary-out", "json-in-json-out", "binary-in-json-out", "json-in-binary-out"],
)
def test_http_infer_matches_in_process_model(
    pytorch_http_client: httpclient.InferenceServerClient,
    pytorch_server: PytorchServer,
    reference: np.ndarray[Any, Any],
    binary_in: bool,
    binary_out: bool,
) -> None:
    result = pytorch_http_client.infer(
        pytorch_server.model_name,
        [http_input(PIXELS, binary=binary_in)],
        outputs=[httpclient.InferRequestedOutput(OUT, binary_data=binary_out)],
        request_id="req-1",
    )
    assert result.get_response()["id"] == "req-1"
    embedding = result.as_numpy(OUT)
    assert embedding.dtype == np.float32 and embedding.shape == (3, 512)
    assert np.abs(embedding - reference).max() < 1e-5


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_http_request_matches(
    pytorch_http_client: httpclient.InferenceServerClient,
    pytorch_server: PytorchServer,
    reference: np.ndarray[Any, Any],
    algorithm: str,
) -> None:
    result = pytorch_http_client.infer(
        pytorch_server.model_name,
        [http_input(PIXELS)],
        model_version="1",
        request_compression_algorithm=algorithm,
    )
    assert np.abs(result.as_numpy(OUT) - reference).max() < 1e-5


def test_grpc_infer_matches_in_process_model(
    pytorch_grpc_client: grpcclient.InferenceServerClient,
    pytorch_server: PytorchServer,
    reference: np.ndarray[Any, Any],
) -> None:
    result = pytorch_grpc_client.infer(
        pytorch_server.model_name,
        [grpc_input(PIXELS)],
        outputs=[grpcclient.InferRequestedOutput(OUT)],
        request_id="req-2",
    )
    assert result.get_response().id == "req-2"
    assert np.abs(result.as_numpy(OUT) - reference).max() < 1e-5


def test_grpc_typed_fp32_contents_match(
    pytorch_server: PytorchServer, reference: np.ndarray[Any, Any]
) -> None:
    request = service_pb2.ModelInferRequest(model_name=pytorch_server.model_name)
    tensor = request.inputs.add(name=IN, datatype="FP32", shape=[1, 3, 224, 224])
    tensor.contents.fp32_contents.extend(PIXELS[:1].reshape(-1).tolist())
    with grpc.insecure_channel(pytorch_server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    embedding = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 512)
    assert list(response.outputs[0].shape) == [1, 512]
    assert np.abs(embedding - reference[:1]).max() < 1e-5


# --- client mistakes: 4xx with a message, and the server keeps serving ------------------

HttpCall = Callable[[httpclient.InferenceServerClient, str], Any]
_HTTP_BAD: list[tuple[str, HttpCall, str, str]] = [
    # (id, call(client, model name), status, message substring)
    (
        "wrong-shape",
        lambda c, m: c.infer(m, [http_input(np.zeros((1, 3, 100, 100), np.float32))]),
        "400",
        "has shape [1,3,100,100]; the model takes [-1,3,224,224]",
    ),
    (
        "int32",
        lambda c, m: c.infer(
            m, [http_input(np.zeros((1, 3, 224, 224), np.int32), datatype="INT32")]
        ),
        "400",
        "datatype INT32; the model takes FP32",
    ),
    (
        "fp16",
        lambda c, m: c.infer(m, [http_input(PIXELS[:1].astype(np.float16), datatype="FP16")]),
        "400",
        "datatype FP16",
    ),
    (
        "fp16-json",
        lambda c, m: c.infer(
            m, [http_input(PIXELS[:1].astype(np.float16), datatype="FP16", binary=False)]
        ),
        "400",
        "datatype FP16",
    ),
    (
        "batch-too-large",
        lambda c, m: c.infer(m, [http_input(np.zeros((9, 3, 224, 224), np.float32))]),
        "400",
        "batch size 9, larger than the model's max_batch_size 8",
    ),
    (
        "unknown-input",
        lambda c, m: c.infer(m, [http_input(PIXELS[:1], name="image")]),
        "400",
        "unknown input 'image'",
    ),
    (
        "unknown-output",
        lambda c, m: c.infer(
            m, [http_input(PIXELS[:1])], outputs=[httpclient.InferRequestedOutput("logits")]
        ),
        "400",
        "unknown output 'logits'",
    ),
    (
        "unknown-model",
        lambda c, m: c.infer("no-such-model", [http_input(PIXELS[:1])]),
        "404",
        "unknown model 'no-such-model'",
    ),
    (
        "unknown-version",
        lambda c, m: c.infer(m, [http_input(PIXELS[:1])], model_version="7"),
        "404",
        "has no version '7'",
    ),
]


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [case[1:] for case in _HTTP_BAD],
    ids=[case[0] for case in _HTTP_BAD],
)
def test_http_client_mistake_is_4xx_with_message(
    pytorch_http_client: httpclient.InferenceServerClient,
    pytorch_server: PytorchServer,
    call: HttpCall,
    status: str,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call(pytorch_http_client, pytorch_server.model_name)
    assert caught.value.status() == status
    assert message in caught.value.message()
    assert_still_serving(pytorch_http_client, pytorch_server)


def _binary_body(header: dict[str, Any], payload: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = orjson.dumps(header)
    return encoded + payload, {"Inference-Header-Content-Length": str(len(encoded))}


_ONE = PIXELS[:1].tobytes()
_BINARY_HEADER = {
    "inputs": [
        {
            "name": IN,
            "datatype": "FP32",
            "shape": [1, 3, 224, 224],
            "parameters": {"binary_data_size": len(_ONE)},
        }
    ]
}
_RAW_BAD: list[tuple[str, bytes, dict[str, str], int, str]] = [
    # (id, body, headers, status, message substring)
    ("truncated-binary", *_binary_body(_BINARY_HEADER, _ONE[:1000]), 400, "truncated body?"),
    (
        "json-count-mismatch",
        orjson.dumps(
            {"inputs": [{"name": IN, "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.5]}]}
        ),
        {},
        400,
        "has 1 values; shape [1,3,224,224] needs 150528",
    ),
    ("malformed-json", b'{"inputs": [{"name": ', {}, 400, "malformed JSON"),
    (
        "missing-header-length",
        _binary_body(_BINARY_HEADER, _ONE)[0],
        {},
        400,
        "needs the Inference-Header-Content-Length header",
    ),
    ("unknown-encoding", b"{}", {"Content-Encoding": "br"}, 415, "unsupported Content-Encoding"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [case[1:] for case in _RAW_BAD],
    ids=[case[0] for case in _RAW_BAD],
)
def test_raw_http_mistake_is_4xx_with_message(
    pytorch_http_client: httpclient.InferenceServerClient,
    pytorch_server: PytorchServer,
    body: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    got_status, got_body = raw_post(pytorch_server, body, headers)
    assert got_status == status
    assert message in got_body["error"]
    assert_still_serving(pytorch_http_client, pytorch_server)


GrpcCall = Callable[[grpcclient.InferenceServerClient, str], Any]
_GRPC_BAD: list[tuple[str, GrpcCall, str, str]] = [
    (
        "wrong-shape",
        lambda c, m: c.infer(m, [grpc_input(np.zeros((1, 3, 100, 100), np.float32))]),
        "StatusCode.INVALID_ARGUMENT",
        "has shape [1,3,100,100]",
    ),
    (
        "int32",
        lambda c, m: c.infer(
            m, [grpc_input(np.zeros((1, 3, 224, 224), np.int32), datatype="INT32")]
        ),
        "StatusCode.INVALID_ARGUMENT",
        "datatype INT32",
    ),
    (
        "batch-too-large",
        lambda c, m: c.infer(m, [grpc_input(np.zeros((9, 3, 224, 224), np.float32))]),
        "StatusCode.INVALID_ARGUMENT",
        "max_batch_size 8",
    ),
    (
        "unknown-input",
        lambda c, m: c.infer(m, [grpc_input(PIXELS[:1], name="image")]),
        "StatusCode.INVALID_ARGUMENT",
        "unknown input 'image'",
    ),
    (
        "unknown-model",
        lambda c, m: c.infer("no-such-model", [grpc_input(PIXELS[:1])]),
        "StatusCode.NOT_FOUND",
        "unknown model 'no-such-model'",
    ),
]


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [case[1:] for case in _GRPC_BAD],
    ids=[case[0] for case in _GRPC_BAD],
)
def test_grpc_client_mistake_is_refused_with_message(
    pytorch_grpc_client: grpcclient.InferenceServerClient,
    pytorch_server: PytorchServer,
    call: GrpcCall,
    status: str,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call(pytorch_grpc_client, pytorch_server.model_name)
    assert caught.value.status() == status
    assert message in caught.value.message()
    result = pytorch_grpc_client.infer(pytorch_server.model_name, [grpc_input(PIXELS[:1])])
    assert result.as_numpy(OUT).shape == (1, 512)


def test_grpc_raw_contents_of_wrong_size_are_invalid(pytorch_server: PytorchServer) -> None:
    request = service_pb2.ModelInferRequest(model_name=pytorch_server.model_name)
    request.inputs.add(name=IN, datatype="FP32", shape=[1, 3, 224, 224])
    request.raw_input_contents.append(_ONE[:1000])
    with grpc.insecure_channel(pytorch_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has 1000 bytes of data" in caught.value.details()
        request.raw_input_contents[0] = _ONE
        assert len(stub.ModelInfer(request).raw_output_contents[0]) == 512 * 4


# --- metrics ----------------------------------------------------------------------------


def test_metrics_count_exactly_the_images_sent(
    pytorch_http_client: httpclient.InferenceServerClient,
    pytorch_grpc_client: grpcclient.InferenceServerClient,
    pytorch_server: PytorchServer,
) -> None:
    name = pytorch_server.model_name
    before = scrape(pytorch_server)
    for batch in (1, 2, 3):
        pytorch_http_client.infer(name, [http_input(PIXELS[:batch])])
    pytorch_grpc_client.infer(name, [grpc_input(PIXELS[:2])])
    with pytest.raises(InferenceServerException):
        pytorch_http_client.infer(name, [http_input(np.zeros((1, 3, 8, 8), np.float32))])
    after = scrape(pytorch_server)
    grew = {family: after[family] - before[family] for family in after}
    assert grew["nv_inference_count"] == 8
    assert grew["nv_inference_exec_count"] == 4
    assert grew["nv_inference_request_success"] == 4
    assert grew["nv_inference_request_failure"] == 1
    for phase in ("request", "compute_infer"):
        assert grew[f"nv_inference_{phase}_duration_us"] > 0
    assert (
        after["nv_inference_request_duration_us"] >= after["nv_inference_compute_infer_duration_us"]
    )


# --- start-up behaviour ----------------------------------------------------------------


async def _asgi_get(app: Any, path: str) -> int:
    """One GET through the ASGI interface (no HTTP client library needed)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


async def test_ready_is_503_until_model_is_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    warmed: list[tuple[int, ...]] = []
    original_load = engine.InferenceEngine._load

    def gated_load(self: engine.InferenceEngine, sizes: tuple[int, ...]) -> None:
        gate.wait(timeout=30)
        original_load(self, sizes)
        warmed.append(sizes)

    monkeypatch.setattr(engine.InferenceEngine, "_load", gated_load)
    settings = Settings(
        model_name="gated",
        builtin="vit-tiny-clip",
        http_port=process.free_port(),
        grpc_port=process.free_port(),
        warmup_batch_sizes=(1, 2),
    )
    app = app_main.create_app(settings)
    async with app.router.lifespan_context(app):
        assert await _asgi_get(app, "/v2/health/live") == 200
        assert await _asgi_get(app, "/v2/health/ready") == 503
        assert await _asgi_get(app, "/v2/models/gated/ready") == 503
        assert await _asgi_get(app, "/v2/models/gated") == 200  # metadata needs no weights
        gate.set()
        for _ in range(200):
            if await _asgi_get(app, "/v2/health/ready") == 200:
                break
            await asyncio.sleep(0.05)
        assert warmed == [(1, 2)]
        assert await _asgi_get(app, "/v2/health/ready") == 200
        assert await _asgi_get(app, "/v2/models/gated/ready") == 200


# --- command line ----------------------------------------------------------------------

_BASE_ARGS = ["pytorch", "--model-name=m", "--builtin=vit-tiny-clip"]
_BASE_ARGS += ["--http-port=18000", "--grpc-port=18001"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision=fp16"], "fp16 on cpu is not supported"),
        (["--device=cuda"], "CUDA is not available"),
        (["--device=tpu"], "invalid choice: 'tpu'"),
        (["--warmup-batch-sizes=1,x"], "not a comma-separated list of ints"),
        (["--warmup-batch-sizes=64"], "outside 1..max_batch_size (32)"),
        (["--builtin=vit-huge"], "unknown builtin 'vit-huge'"),
        (["--grpc-port=18000"], "both 18000"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as caught:
        cli.main([*_BASE_ARGS, *extra])
    assert caught.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and message in stderr, stderr


def test_launch_command_is_what_the_cli_parses() -> None:
    command = launch.pytorch_server_command(
        model_name="m",
        builtin="vit-b32-clip",
        device="cuda",
        precision="bf16",
        http_port=8000,
        grpc_port=8001,
        max_batch_size=16,
        warmup_batch_sizes=[1, 8, 16],
        seed=3,
        python="/usr/bin/python3",
    )
    assert command.argv[:4] == ["/usr/bin/python3", "-m", "bakeoff_serve", "pytorch"]
    assert command.ready_url == "http://127.0.0.1:8000/v2/health/ready"
    args = cli.build_parser().parse_args(list(command.argv[3:]))
    assert (args.device, args.precision, args.max_batch_size) == ("cuda", "bf16", 16)
    assert (args.warmup_batch_sizes, args.seed, args.weights) == ((1, 8, 16), 3, None)
