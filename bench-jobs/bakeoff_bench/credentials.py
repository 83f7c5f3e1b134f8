"""Credentials for an endpoint, read from files: a mounted Secret's keys in a bench pod, or the
same layout in a folder on a laptop (`bakeoff run --local --secrets-dir`).

The config names files, never values (it travels in the Job's spec); this module reads them
once per client process. Headers go to the endpoint's own origin only (scheme, host, port):
a metrics URL on another host gets none of them.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from bakeoff_bench.config import TargetAuth

# Headers the load generator writes itself, or that say how the body is framed: a Secret
# must not replace them (the API refuses them too; this is the last line).
RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "content-type", "connection", "transfer-encoding",
     "user-agent", "inference-header-content-length", "accept-encoding"}
)  # fmt: skip


class CredentialsError(ValueError):
    """A credential file is missing, unreadable or malformed; the message names it."""


@dataclass(frozen=True)
class Credentials:
    """What every request to the endpoint carries, and how its TLS is checked."""

    origin: tuple[str, str, int] | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ssl_context: ssl.SSLContext | None = None
    # What is sent, without a value, e.g. "headers Authorization, X-Api-Key; a custom CA".
    summary: str = "none"

    def headers_for(self, url: str) -> dict[str, str]:
        """The credential headers for `url`: all of them on the endpoint's origin, else none."""
        return dict(self.headers) if _origin(url) == self.origin else {}


NO_CREDENTIALS: Final = Credentials()


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _read(path: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(f"{what}: no file {path} (is the Secret's key there?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{what}: cannot read {path}: {exc}") from None
    # `kubectl create secret --from-file` keeps the file's final newline: not part of a token.
    value = text.strip()
    if not value:
        raise CredentialsError(f"{what}: {path} is empty")
    if "\r" in value or "\n" in value:
        raise CredentialsError(f"{what}: {path} holds more than one line")
    return value


def _existing(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise CredentialsError(f"{what}: no file {path} (is the Secret's key there?)")
    return path


def _ssl_context(auth: TargetAuth) -> ssl.SSLContext:
    # The system's CAs and the given one: a metrics URL elsewhere may use a public certificate.
    context = ssl.create_default_context()
    if auth.ca_file is not None:
        try:
            context.load_verify_locations(cafile=_existing(auth.ca_file, "tls.ca"))
        except ssl.SSLError as exc:
            raise CredentialsError(f"tls.ca: {auth.ca_file} is no PEM certificate: {exc}") from None
    if auth.client_certificate_file is not None and auth.client_key_file is not None:
        certificate = _existing(auth.client_certificate_file, "tls.clientCertificate")
        key = _existing(auth.client_key_file, "tls.clientKey")
        try:
            context.load_cert_chain(certificate, key)
        except ssl.SSLError as exc:
            raise CredentialsError(
                f"tls.clientCertificate/clientKey: {certificate} and {key} are no matching PEM "
                f"certificate and key: {exc}"
            ) from None
    return context


def load(auth: TargetAuth | None, http_url: str) -> Credentials:
    """Read the credential files of `auth` for the endpoint at `http_url`."""
    https = urlsplit(http_url).scheme == "https"
    if auth is None:
        return Credentials(_origin(http_url), {}, ssl.create_default_context() if https else None)
    headers: dict[str, str] = {}
    if auth.bearer_token_file is not None:
        headers["Authorization"] = "Bearer " + _read(auth.bearer_token_file, "bearerToken")
    if auth.basic_username_file is not None and auth.basic_password_file is not None:
        user = _read(auth.basic_username_file, "basic.username")
        password = _read(auth.basic_password_file, "basic.password")
        if ":" in user:
            raise CredentialsError(f"basic.username: {auth.basic_username_file} holds a ':'")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    for name, path in auth.header_files.items():
        taken = name.lower() == "authorization" and "Authorization" in headers
        if name.lower() in RESERVED_HEADERS or taken:
            raise CredentialsError(f"headers: {name} is set by the load generator itself")
        headers[name] = _read(path, f"headers[{name}]")
    for name, value in headers.items():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise CredentialsError(f"{name}: the value is not a valid HTTP header") from None
    context = _ssl_context(auth) if https else None
    told = [f"headers {', '.join(headers)}"] if headers else []
    if auth.ca_file is not None:
        told.append("a custom CA")
    if auth.client_certificate_file is not None:
        told.append("a TLS client certificate")
    return Credentials(_origin(http_url), headers, context, "; ".join(told) or "none")
