"""Names and labels of everything the operator creates, in one place.

Children get deterministic names so that a restarted operator, or a repeated event, finds
what exists instead of creating a twin. Tests import these too.
"""

from __future__ import annotations

import hashlib
from typing import Final

from bakeoff_bench import publish

MAX_NAME_LEN: Final = 63  # DNS-1123 label: Service names and label values cap at 63
GROUP: Final = "bakeoff.dev"

LABEL_SUITE: Final = f"{GROUP}/suite"
LABEL_BACKEND: Final = f"{GROUP}/backend"
LABEL_POOL: Final = f"{GROUP}/pool"
LABEL_COMPONENT: Final = f"{GROUP}/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "bakeoff-operator"

COMPONENT_BACKEND: Final = "backend"
COMPONENT_BENCH: Final = "bench"
COMPONENT_RESULT: Final = "result"
COMPONENT_CLIENT_RESULT: Final = "client-result"  # one client pod's part, before the merge
COMPONENT_BARRIER: Final = "barrier"

# The key of the CellResult JSON in a result ConfigMap: the Job writes it (bakeoff_bench.publish).
RESULT_KEY: Final = publish.RESULT_KEY
BENCH_SERVICE_ACCOUNT: Final = "bakeoff-bench"


def bounded(name: str, limit: int = MAX_NAME_LEN) -> str:
    """`name` if it fits, else a prefix plus a short hash: still unique, still deterministic."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def cell_base(suite: str, backend: str, pool: str) -> str:
    return f"{suite}-{backend}-{pool}"


def backend_name(suite: str, backend: str, pool: str) -> str:
    """The Deployment and the Service of one cell's backend."""
    return bounded(cell_base(suite, backend, pool))


def _attempt(attempt: int) -> str:
    return "" if attempt == 1 else f"-{attempt}"


def job_name(suite: str, backend: str, pool: str, attempt: int = 1) -> str:
    """The benchmark Job; a second run (a void first run of several clients) gets `-2`."""
    return bounded(f"{cell_base(suite, backend, pool)}-bench{_attempt(attempt)}")


def result_name(suite: str, backend: str, pool: str) -> str:
    """The ConfigMap a benchmark Job writes its CellResult into."""
    return bounded(f"{cell_base(suite, backend, pool)}-result")


def client_result_prefix(suite: str, backend: str, pool: str, attempt: int = 1) -> str:
    """Client pod i of a several-client Job writes its part into `<prefix>-<i>`."""
    return bounded(f"{cell_base(suite, backend, pool)}-part{_attempt(attempt)}", MAX_NAME_LEN - 3)


def client_result_name(suite: str, backend: str, pool: str, index: int, attempt: int = 1) -> str:
    return f"{client_result_prefix(suite, backend, pool, attempt)}-{index}"


def barrier_name(suite: str, backend: str, pool: str, attempt: int = 1) -> str:
    """The ConfigMap the client pods of one Job meet at (bakeoff_bench.barrier)."""
    return bounded(f"{cell_base(suite, backend, pool)}-barrier{_attempt(attempt)}")


def cell_labels(suite: str, backend: str, pool: str, component: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGER,
        LABEL_SUITE: bounded(suite),
        LABEL_BACKEND: bounded(backend),
        LABEL_POOL: bounded(pool),
        LABEL_COMPONENT: component,
    }


def backend_selector(suite: str, backend: str, pool: str) -> dict[str, str]:
    """Selects exactly the pods of one cell's backend (Deployment selector, anti-affinity)."""
    labels = cell_labels(suite, backend, pool, COMPONENT_BACKEND)
    return {k: labels[k] for k in (LABEL_SUITE, LABEL_BACKEND, LABEL_POOL, LABEL_COMPONENT)}


def suite_selector(suite: str) -> str:
    """Label selector (string form) for everything one suite created."""
    return f"{LABEL_SUITE}={bounded(suite)},{LABEL_MANAGED_BY}={MANAGER}"
