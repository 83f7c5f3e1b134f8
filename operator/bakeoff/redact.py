"""Keep credentials and whole objects out of the operator's log (and the Events kopf posts
from it).

Credentials belong in Secrets (`endpoint.auth`), and the API refuses an endpoint URL with
credentials in it (`http://user:token@triton.ml:8000`); this filter is the second line, for
a suite applied where the CRD's rules did not run. kopf logs whole bodies, diffs and patches
at DEBUG (`--verbose`), and its diff-base annotation holds the entire spec, so a verbose
operator would print such a secret on every change. `install()` (called when
`bakeoff.handlers` is imported) adds a filter to kopf's per-object logger, through which
kopf's records and our handlers' go: payload dumps are replaced by their size, and URL
credentials by `***`, before any handler (console, k8s-event poster, a test's buffer) sees
the record.
"""

from __future__ import annotations

import logging
import re
from typing import Final

# kopf's per-object logger (kopf._core.actions.loggers): handlers' `logger` argument, and the
# logger kopf's processing and patching use for each object.
OBJECT_LOGGER: Final = "kopf.objects"

# `scheme://user:password@` or `scheme://token@`: keep the scheme, hide the user part.
_URL_CREDENTIALS: Final = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
# kopf's DEBUG lines that end in a whole object, diff or patch (kopf 1.3x wording).
_PAYLOAD_DUMP: Final = re.compile(
    r"^(?P<head>(?:\w+ is in progress|\w+ diff|(?:Merge|JSON)-patching the (?:resource|status) "
    r"with)): (?P<payload>.+)$",
    re.DOTALL,
)


def redact(message: str) -> str:
    """`message` without payload dumps and without URL credentials."""
    dump = _PAYLOAD_DUMP.match(message)
    if dump is not None:
        message = f"{dump['head']}: <{len(dump['payload'])} characters not logged>"
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", message)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message in place, so every later handler gets the safe text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, ()
        return True


def install(logger_name: str = OBJECT_LOGGER) -> None:
    """Add the filter to the logger (once, however often this is called)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
