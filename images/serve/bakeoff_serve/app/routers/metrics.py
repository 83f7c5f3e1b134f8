"""GET /metrics: Triton-named Prometheus metrics on the HTTP port.

Triton serves metrics on a port of its own (8002); this server keeps one HTTP port and the
bench job's scraper takes the metrics URL from the backend it runs against.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from bakeoff_serve import server_metrics
from bakeoff_serve.app.dependencies import StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    text = state.render_metrics()
    return Response(text, media_type=server_metrics.CONTENT_TYPE)
