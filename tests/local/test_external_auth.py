"""An external backend behind TLS (a private CA) and a bearer token plus an API-key header,
measured end to end by `bakeoff run --local --secrets-dir`, with two client processes that
each read the credentials themselves. The gateway (`fake_oip` with `required_headers`)
answers 401 without them; the token shows up in no file Bakeoff writes and in no output line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeoff import cli

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).parents[1]))
from fake_oip import MODEL, FakeOipServer, tls_gateway
from gateway_suite import gateway_suite
from tls_certs import Pki, make_pki

pytestmark = pytest.mark.local

TOKEN = "CANARY-local-b3arer-91c2"
API_KEY = "CANARY-local-k3y-5e07"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def gateway(pki: Pki) -> Iterator[FakeOipServer]:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY}
    with tls_gateway(headers, pki.server_context()) as served:
        yield served


def suite(url: str) -> dict[str, Any]:
    pool = {"name": "local", "gpus": 0, "costPerHour": 1.0}
    scenarios = {
        "clients": 2,
        "single": {"requests": 10, "warmup": 2},
        "batchSweep": None,
        "concurrencySweep": {"levels": [4], "batchSizes": [1], "requests": 60, "warmup": 4},
    }
    return gateway_suite(url, MODEL, pool, scenarios)


def secrets_dir(folder: Path, pki: Pki) -> Path:
    """The layout a bench pod mounts: <secret>/<key>."""
    (folder / "gateway").mkdir(parents=True)
    (folder / "gateway" / "token").write_text(TOKEN + "\n")
    (folder / "gateway" / "api-key").write_text(API_KEY)
    (folder / "gateway-ca").mkdir()
    (folder / "gateway-ca" / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    return folder


def test_tls_and_a_bearer_token_from_secret_files_measure_the_gateway_end_to_end(
    gateway: FakeOipServer, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite(gateway.url)))
    out = tmp_path / "out"
    secrets = secrets_dir(tmp_path / "secrets", pki)
    code = cli.main(["run", str(suite_file), "--local", "--out", str(out),
                     "--secrets-dir", str(secrets)])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    cell = json.loads((out / "gateway" / "cells" / "gateway-local.json").read_text())
    sweep = cell["concurrencySweep"][0]
    assert sweep["requests"] == 60 and sweep["failed"] == 0
    assert [share["requests"] for share in sweep["clients"]] == [30, 30]
    assert gateway.unauthorized == 0 and gateway.success >= 64
    assert "credentials from files (Secrets): headers Authorization, X-Api-Key; a custom CA" in (
        " ".join(cell["notes"])
    )
    # The credentials are in no file Bakeoff wrote and in no line it printed.
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for path in written:
        text = path.read_text(errors="replace")
        assert TOKEN not in text and API_KEY not in text, path
    assert TOKEN not in printed.out + printed.err and API_KEY not in printed.out + printed.err


def test_without_the_secret_files_the_run_says_where_to_put_them(
    gateway: FakeOipServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite(gateway.url)))
    code = cli.main(["run", str(suite_file), "--local", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert "backend 'gateway' endpoint.auth.bearerToken: Secret gateway key token" in err
    assert "DIR/<secret>/<key>" in err and "--secrets-dir DIR" in err
