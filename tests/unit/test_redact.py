"""The operator's log filter: no URL credentials, no whole objects, every other line as it was."""

from __future__ import annotations

import logging

import pytest

from bakeoff import redact

SECRET = "CANARY-s3cr3t"


def dump(head: str, payload: str) -> tuple[str, str]:
    """A kopf line that ends in a payload, and what must be left of it."""
    return f"{head}: {payload}", f"{head}: <{len(payload)} characters not logged>"


CASES = [
    # (id, message as logged, what must be left)
    (
        "url-credentials",
        f"cannot reach http://bench:{SECRET}@triton.ml:8000/v2 (connection refused)",
        "cannot reach http://***@triton.ml:8000/v2 (connection refused)",
    ),
    ("url-token-only", f"GET https://{SECRET}@h/metrics", "GET https://***@h/metrics"),
    ("body", *dump("Creation is in progress", f"{{'spec': {{'u': 'http://u:{SECRET}@h'}}}}")),
    ("diff", *dump("Update diff", f"(('add', ('spec',), None, '{SECRET}'),)")),
    ("patch", *dump("Merge-patching the resource with", f"{{'annotations': '{SECRET}'}}")),
    ("status-patch", *dump("JSON-patching the status with", "[{'op': 'replace'}]")),
    (
        "ordinary-line",
        "created Job clip-pytorch-a100-bench",
        "created Job clip-pytorch-a100-bench",
    ),
    ("email-is-not-a-url", "mail ops@example.com", "mail ops@example.com"),
]


@pytest.mark.parametrize(("message", "left"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_redact_leaves_no_secret_and_no_payload(message: str, left: str) -> None:
    assert redact.redact(message) == left
    assert SECRET not in redact.redact(message)


def test_installed_filter_rewrites_records_before_any_handler_sees_them() -> None:
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    name = "bakeoff.test-redact.child"
    redact.install(name)
    redact.install(name)  # idempotent
    logger = logging.getLogger(name)
    assert sum(isinstance(f, redact.RedactingFilter) for f in logger.filters) == 1
    parent = logging.getLogger("bakeoff.test-redact")
    handler = Collect()
    parent.addHandler(handler)  # a handler further up, as the root's console handler is
    try:
        logger.warning("endpoint %s failed", f"http://u:{SECRET}@h:8000")
        logger.warning("plain %d", 7)
    finally:
        parent.removeHandler(handler)
    assert seen == ["endpoint http://***@h:8000 failed", "plain 7"]
