"""The suite of the credential tests (local, cluster, node): an external inference gateway
behind TLS that wants a bearer token and an API-key header, both from the Secret
`credentials`, and trusts the CA in the Secret `ca` (`tls_certs`, `fake_oip.tls_gateway`).
"""

from __future__ import annotations

from typing import Any


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretRef": {"name": name, "key": key}}


def gateway_backend(
    url: str, credentials: str = "gateway", ca: str = "gateway-ca", name: str = "gateway"
) -> dict[str, Any]:
    """The external backend: `url` and its /metrics, with every credential from Secrets."""
    auth = {
        "bearerToken": secret_ref(credentials, "token"),
        "headers": [{"name": "X-Api-Key", "value": secret_ref(credentials, "api-key")}],
        "tls": {"ca": secret_ref(ca, "ca.crt")},
    }
    endpoint = {"httpUrl": url, "metricsUrl": f"{url}/metrics", "auth": auth}
    return {"name": name, "kind": "external", "maxBatchSize": 8, "endpoint": endpoint}


def gateway_suite(
    url: str, model: str, pool: dict[str, Any], scenarios: dict[str, Any]
) -> dict[str, Any]:
    """A suite of the gateway alone on `pool`."""
    return {
        "apiVersion": "bakeoff.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "gateway"},
        "spec": {
            "model": {"name": model, "source": {"builtin": "vit-tiny-clip"}},
            "backends": [gateway_backend(url)],
            "nodePools": [pool],
            "scenarios": scenarios,
        },
    }
