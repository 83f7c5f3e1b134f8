"""Which requests `http_protocol.DirectBodyProtocol` receives into one buffer (a pure rule)."""

from __future__ import annotations

import pytest

from bakeoff_serve.app.http_protocol import DIRECT_MAX_BYTES, DIRECT_MIN_BYTES, direct_body_size

BIG = str(DIRECT_MIN_BYTES * 10).encode()


@pytest.mark.parametrize("path", ["/v2/models/vit/infer", "/v2/models/vit/versions/1/infer"])
def test_a_large_infer_post_is_received_directly(path: str) -> None:
    assert direct_body_size(b"POST", path, [(b"content-length", BIG)]) == int(BIG)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        (b"GET", "/v2/models/vit/infer", [(b"content-length", BIG)]),
        (b"POST", "/v2/models/vit", [(b"content-length", BIG)]),
        (b"POST", "/v2/models/vit/infer/x", [(b"content-length", BIG)]),
        (b"POST", "/v2/repository/index", [(b"content-length", BIG)]),
        # no length, chunked, malformed, repeated: uvicorn's parser and the app decide
        (b"POST", "/v2/models/vit/infer", []),
        (b"POST", "/v2/models/vit/infer", [(b"transfer-encoding", b"chunked")]),
        (
            b"POST",
            "/v2/models/vit/infer",
            [(b"content-length", BIG), (b"transfer-encoding", b"chunked")],
        ),
        (b"POST", "/v2/models/vit/infer", [(b"content-length", b"-5")]),
        (b"POST", "/v2/models/vit/infer", [(b"content-length", b"12x")]),
        (b"POST", "/v2/models/vit/infer", [(b"content-length", BIG), (b"content-length", BIG)]),
        # small bodies cost uvicorn nothing; huge ones are not reserved before they arrive
        (
            b"POST",
            "/v2/models/vit/infer",
            [(b"content-length", str(DIRECT_MIN_BYTES - 1).encode())],
        ),
        (
            b"POST",
            "/v2/models/vit/infer",
            [(b"content-length", str(DIRECT_MAX_BYTES + 1).encode())],
        ),
    ],
)
def test_everything_else_takes_uvicorns_path(
    method: bytes, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    assert direct_body_size(method, path, headers) is None


def test_the_bounds_are_inclusive() -> None:
    for size in (DIRECT_MIN_BYTES, DIRECT_MAX_BYTES):
        assert (
            direct_body_size(
                b"POST", "/v2/models/m/infer", [(b"content-length", str(size).encode())]
            )
            == size
        )
