"""Kind `external`: an Open Inference Protocol server that already runs, measured as it is.

Nothing is deployed or started: the load generator goes to the endpoint, from a laptop
(`bakeoff run --local`) or from the benchmark Job alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Final

from bakeoff import api
from bakeoff.backends.base import BackendPod, LocalServer
from bakeoff.rules import Rule
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config
from bakeoff_bench.credentials import RESERVED_HEADERS

_KIND = api.BackendKind.EXTERNAL
_BACKEND = ("spec", "backends", "[]")
# `scheme://anything-but-a-path@`: a user (and password, or a token) in the URL.
_CREDENTIALS_IN_URL: Final = r"^[a-zA-Z][-a-zA-Z0-9+.]*://[^/?#]*@"
_NO_CREDENTIALS_HINT: Final = (
    "remove them from the URL, put them in a Secret and name it in endpoint.auth "
    "(bearerToken, basic or headers, each a secretRef {name, key})"
)
_AUTH = "has(self.endpoint) && has(self.endpoint.auth)"
_TLS = f"{_AUTH} && has(self.endpoint.auth.tls)"
_RESERVED_CEL = ", ".join(f"'{name}'" for name in sorted(RESERVED_HEADERS))
_ONE_AUTHORIZATION = "has(self.endpoint.auth.bearerToken) || has(self.endpoint.auth.basic)"


def _external(endpoint: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A rule's breaking change: backend 0 of the tests' suite becomes this external one."""
    return (("spec.backends.0", {"name": "ext", "kind": "external", "endpoint": endpoint}),)


def _ref(key: str) -> dict[str, Any]:
    return {"secretRef": {"name": "s", "key": key}}


def _has_credentials(url: str | None) -> bool:
    return url is not None and re.match(_CREDENTIALS_IN_URL, url) is not None


def _auth(backend: Any) -> api.EndpointAuth | None:
    return backend.endpoint.auth if backend.endpoint is not None else None


def _one_authorization(backend: Any) -> bool:
    auth = _auth(backend)
    return auth is None or auth.bearer_token is None or auth.basic is None


def _tls_over_https(backend: Any) -> bool:
    auth = _auth(backend)
    return auth is None or auth.tls is None or backend.endpoint.http_url.startswith("https://")


def _certificate_with_key(backend: Any) -> bool:
    auth = _auth(backend)
    if auth is None or auth.tls is None:
        return True
    return (auth.tls.client_certificate is None) == (auth.tls.client_key is None)


def _headers_ok(backend: Any) -> bool:
    auth = _auth(backend)
    if auth is None:
        return True
    authorization = auth.bearer_token is not None or auth.basic is not None
    return all(
        h.name.lower() not in RESERVED_HEADERS
        and not (h.name.lower() == "authorization" and authorization)
        for h in auth.headers
    )


def _bad_headers(backend: Any) -> str:
    auth = _auth(backend)
    names = [h.name for h in auth.headers] if auth is not None else []
    return (
        f"rename or remove {', '.join(n for n in names if n.lower() in RESERVED_HEADERS) or 'it'}"
        "; Authorization comes from bearerToken or basic"
    )


# A rule's CEL runs even where another rule already failed: every optional field is `has`-ed.
RULES: tuple[Rule, ...] = (
    Rule(
        "endpoint URL carries no credentials", _BACKEND,
        f"!has(self.endpoint) || !self.endpoint.httpUrl.matches('{_CREDENTIALS_IN_URL}')",
        lambda backend: backend.endpoint is None or not _has_credentials(backend.endpoint.http_url),
        "endpoint.httpUrl must not carry credentials (user:password@ or token@): anyone who can "
        "read the suite could read them", _NO_CREDENTIALS_HINT,
        field=".endpoint.httpUrl", kind=_KIND,
        breaks_it=_external({"httpUrl": "http://u:p@ext:8000"}),
    ),
    Rule(
        "metrics URL carries no credentials", _BACKEND,
        "!has(self.endpoint) || !has(self.endpoint.metricsUrl) || "
        f"!self.endpoint.metricsUrl.matches('{_CREDENTIALS_IN_URL}')",
        lambda backend: backend.endpoint is None
        or not _has_credentials(backend.endpoint.metrics_url),
        "endpoint.metricsUrl must not carry credentials (user:password@ or token@)",
        _NO_CREDENTIALS_HINT + "; on the endpoint's host and port the metrics get them too",
        field=".endpoint.metricsUrl", kind=_KIND,
        breaks_it=_external(
            {"httpUrl": "http://ext:8000", "metricsUrl": "http://t0ken@ext:8002/metrics"}
        ),
    ),
    Rule(
        "one Authorization", _BACKEND,
        f"!({_AUTH}) || !has(self.endpoint.auth.bearerToken) || !has(self.endpoint.auth.basic)",
        _one_authorization,
        "endpoint.auth has both bearerToken and basic: both would be the Authorization header",
        "keep one of them", field=".endpoint.auth", kind=_KIND,
        breaks_it=_external({"httpUrl": "http://ext:8000", "auth": {
            "bearerToken": _ref("t"), "basic": {"username": _ref("u"), "password": _ref("p")}}}),
    ),
    Rule(
        "headers the load generator writes", _BACKEND,
        f"!({_AUTH}) || !has(self.endpoint.auth.headers) || self.endpoint.auth.headers.all(h, "
        f"!(h.name.lowerAscii() in [{_RESERVED_CEL}]) && !(h.name.lowerAscii() == "
        f"'authorization' && ({_ONE_AUTHORIZATION})))",
        _headers_ok,
        "endpoint.auth.headers names a header the load generator writes itself (Host, "
        "Content-Length, Content-Type, ...) or Authorization beside bearerToken or basic",
        "rename or remove it; Authorization comes from bearerToken or basic",
        field=".endpoint.auth.headers", kind=_KIND, hint_for=_bad_headers,
        breaks_it=_external({"httpUrl": "http://ext:8000", "auth": {
            "headers": [{"name": "Content-Length", "value": _ref("k")}]}}),
    ),
    Rule(
        "tls needs https", _BACKEND,
        f"!({_TLS}) || self.endpoint.httpUrl.startsWith('https://')",
        _tls_over_https,
        "endpoint.auth.tls is set but endpoint.httpUrl is not https://",
        "use an https:// URL, or remove tls", field=".endpoint.auth.tls", kind=_KIND,
        breaks_it=_external({"httpUrl": "http://ext:8000", "auth": {"tls": {"ca": _ref("ca")}}}),
    ),
    Rule(
        "client certificate with its key", _BACKEND,
        f"!({_TLS}) || has(self.endpoint.auth.tls.clientCertificate) == "
        "has(self.endpoint.auth.tls.clientKey)",
        _certificate_with_key,
        "endpoint.auth.tls needs clientCertificate and clientKey together",
        "set both (e.g. tls.crt and tls.key of a kubernetes.io/tls Secret), or neither",
        field=".endpoint.auth.tls", kind=_KIND,
        breaks_it=_external(
            {"httpUrl": "https://ext:8443", "auth": {"tls": {"clientKey": _ref("tls.key")}}}
        ),
    ),
)  # fmt: skip


def secret_file(root: PurePath, value: api.SecretValue) -> str:
    """Where a Secret's key is read: ROOT/<secret>/<key>, in a pod (the Job's mounts) and on
    a laptop (`--secrets-dir`) alike."""
    return str(root / value.secret_ref.name / value.secret_ref.key)


def target_auth(auth: api.EndpointAuth | None, root: PurePath) -> bench_config.TargetAuth | None:
    """The load generator's view of `auth`: the file of each Secret key, never a value."""
    if auth is None:
        return None
    tls = auth.tls
    return bench_config.TargetAuth(
        bearer_token_file=secret_file(root, auth.bearer_token) if auth.bearer_token else None,
        basic_username_file=secret_file(root, auth.basic.username) if auth.basic else None,
        basic_password_file=secret_file(root, auth.basic.password) if auth.basic else None,
        header_files={h.name: secret_file(root, h.value) for h in auth.headers},
        ca_file=secret_file(root, tls.ca) if tls and tls.ca else None,
        client_certificate_file=(
            secret_file(root, tls.client_certificate) if tls and tls.client_certificate else None
        ),
        client_key_file=secret_file(root, tls.client_key) if tls and tls.client_key else None,
    )


@dataclass(frozen=True)
class External:
    backend: api.ExternalBackend

    def describe(self) -> str:
        return f"external server at {self.backend.endpoint.http_url}"

    def identity(self, gpu: bool) -> None:
        return None  # whatever serves there, Bakeoff did not choose it

    def remote_target(
        self, suite: api.BenchmarkSuite, secrets_root: PurePath
    ) -> bench_config.Target:
        endpoint = self.backend.endpoint
        return bench_config.Target(
            http_url=endpoint.http_url.rstrip("/"),
            metrics_url=endpoint.metrics_url,
            model_name=endpoint.model_name or suite.spec.model.name,
            auth=target_auth(endpoint.auth, secrets_root),
        )

    def pod(
        self, suite: api.BenchmarkSuite, pool: api.NodePool, settings: OperatorSettings
    ) -> BackendPod | None:
        return None

    def start_locally(
        self, suite: api.BenchmarkSuite, gpus: int, work_dir: Path, cache_dir: Path | None
    ) -> LocalServer | None:
        return None
