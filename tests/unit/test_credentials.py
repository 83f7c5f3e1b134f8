"""Credentials by reference: the load generator reads Secret keys from files and sends them,
over TLS with a custom CA and a client certificate, to the endpoint's origin only.

The server is `fake_oip` behind a throwaway CA (`tls_certs`, openssl): it answers 401 to any
request without the credentials and counts both kinds.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import fake_oip
import pytest
from fake_oip import MODEL, FakeOipServer

from bakeoff_bench import credentials, runner
from bakeoff_bench.config import BenchConfig, TargetAuth

sys.path.insert(0, str(Path(__file__).parents[1]))
from tls_certs import Pki, make_pki

TOKEN = "t0ken-for-the-gateway"
API_KEY = "k3y-for-the-gateway"


def files(folder: Path, **values: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, value in values.items():
        (folder / name).write_text(value)
        paths[name] = str(folder / name)
    return paths


def test_bearer_and_header_values_come_from_their_files(tmp_path: Path) -> None:
    # A Secret created from a file keeps its final newline: not part of the token.
    paths = files(tmp_path, token=TOKEN + "\n", key=API_KEY)
    auth = TargetAuth(bearer_token_file=paths["token"], header_files={"X-Api-Key": paths["key"]})
    loaded = credentials.load(auth, "https://gw.example:8443")
    assert loaded.headers == {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY}
    assert loaded.ssl_context is not None
    assert loaded.summary == "headers Authorization, X-Api-Key"
    assert TOKEN not in repr(loaded)


def test_basic_auth_encodes_user_and_password(tmp_path: Path) -> None:
    paths = files(tmp_path, user="bench", password="pa:ss")
    auth = TargetAuth(basic_username_file=paths["user"], basic_password_file=paths["password"])
    loaded = credentials.load(auth, "http://gw:8000")
    assert loaded.headers["Authorization"] == "Basic " + base64.b64encode(b"bench:pa:ss").decode()
    assert loaded.ssl_context is None


def test_credentials_go_to_the_endpoints_origin_only(tmp_path: Path) -> None:
    auth = TargetAuth(bearer_token_file=files(tmp_path, token=TOKEN)["token"])
    loaded = credentials.load(auth, "https://gw.example")
    assert loaded.headers_for("https://gw.example:443/metrics") == loaded.headers
    assert loaded.headers_for("https://GW.example/v2") == loaded.headers
    assert loaded.headers_for("http://gw.example/metrics") == {}
    assert loaded.headers_for("https://gw.example:8002/metrics") == {}
    assert loaded.headers_for("https://prometheus.example/metrics") == {}


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (TargetAuth(bearer_token_file="/nonexistent/s/token"),
         "bearerToken: no file /nonexistent/s/token"),
        (TargetAuth(header_files={"Content-Length": "/dev/null"}),
         "Content-Length is set by the load generator itself"),
        (TargetAuth(ca_file="/nonexistent/ca.crt"), "tls.ca: no file /nonexistent/ca.crt"),
    ],
)  # fmt: skip
def test_a_missing_or_forbidden_credential_is_named(auth: TargetAuth, message: str) -> None:
    with pytest.raises(credentials.CredentialsError, match=message):
        credentials.load(auth, "https://gw:8443")


def test_an_empty_or_multiline_secret_is_refused(tmp_path: Path) -> None:
    paths = files(tmp_path, empty="\n", two="a\nb\n")
    with pytest.raises(credentials.CredentialsError, match="is empty"):
        credentials.load(TargetAuth(bearer_token_file=paths["empty"]), "http://gw")
    with pytest.raises(credentials.CredentialsError, match="more than one line"):
        credentials.load(TargetAuth(bearer_token_file=paths["two"]), "http://gw")


# --- against a TLS server that checks ---------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def gateway(pki: Pki) -> AsyncIterator[FakeOipServer]:
    fake = FakeOipServer(
        required_headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY}
    )
    async with fake_oip.serving(fake, ssl_context=pki.server_context(True)) as served:
        yield served


def bench_config(url: str, auth: TargetAuth | None) -> BenchConfig:
    target = {"httpUrl": url, "metricsUrl": f"{url}/metrics", "modelName": MODEL}
    return BenchConfig.model_validate(
        {"suite": "s", "backend": "gw", "pool": "loopback",
         "target": {**target, "auth": auth.model_dump(by_alias=True) if auth else None},
         "single": {"requests": 20, "warmup": 2}, "parityBatch": 2, "readyTimeoutS": 3}
    )  # fmt: skip


def full_auth(tmp_path: Path, pki: Pki) -> TargetAuth:
    paths = files(tmp_path / "secrets", token=TOKEN, key=API_KEY)
    return TargetAuth(
        bearer_token_file=paths["token"],
        header_files={"X-Api-Key": paths["key"]},
        ca_file=str(pki.ca_cert),
        client_certificate_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
    )


async def test_a_whole_run_over_mutual_tls_sends_the_credentials_with_every_request(
    gateway: FakeOipServer, pki: Pki, tmp_path: Path
) -> None:
    result = await runner.run_bench(bench_config(gateway.url, full_auth(tmp_path, pki)))
    assert result.single is not None and result.single.failed == 0
    assert gateway.success == 22 + 2  # warm-up, measured, parity
    assert gateway.unauthorized == 0
    # Health, metadata, config, metrics and every infer: all carried the credentials.
    assert gateway.authorized > gateway.infer_calls
    assert result.single.server is not None  # the metrics on the endpoint's origin got them too
    notes = " ".join(result.notes)
    assert "credentials from files (Secrets): headers Authorization, X-Api-Key" in notes
    assert TOKEN not in result.model_dump_json() and API_KEY not in result.model_dump_json()


async def test_without_the_ca_the_server_is_not_trusted(
    gateway: FakeOipServer, pki: Pki, tmp_path: Path
) -> None:
    auth = full_auth(tmp_path, pki).model_copy(update={"ca_file": None})
    with pytest.raises(runner.BenchError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await runner.run_bench(bench_config(gateway.url, auth))
    assert gateway.success == 0


async def test_a_wrong_token_is_the_servers_401_not_a_silent_zero(
    gateway: FakeOipServer, pki: Pki, tmp_path: Path
) -> None:
    auth = full_auth(tmp_path, pki)
    Path(auth.bearer_token_file or "").write_text("wrong")
    with pytest.raises(runner.BenchError, match="HTTP 401"):
        await runner.run_bench(bench_config(gateway.url, auth))
    assert gateway.unauthorized > 0 and gateway.success == 0
