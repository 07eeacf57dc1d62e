"""The ops API as a Starlette app.

    GET /healthz                 200 while the process is alive
    GET /readyz                  200 when Kafka and Redis are reachable and the loop turns, else 503
    GET /metrics                 Prometheus text format
    GET /flows                   deployed flows, versions, paths and steps
    GET /instances/{flow}/{key}  one instance ("where is my order?"); 404 when unknown

Endpoints are plain functions (Starlette runs them in its thread pool), so blocking reads of
the query port never block the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from observer.errors import StoreError
from observer.runtime.query import InstanceQuery

__all__ = ["create_app"]


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_INDENT_2)


def create_app(
    query: InstanceQuery, readiness: Callable[[], dict[str, Any]], registry: CollectorRegistry
) -> Starlette:
    """The app; `readiness()` returns a dict with a boolean `ready`."""

    def healthz(request: Request) -> Response:
        return _Json({"status": "ok"})

    def readyz(request: Request) -> Response:
        report = readiness()
        return _Json(report, status_code=200 if report.get("ready") else 503)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def flows(request: Request) -> Response:
        return _Json(query.flows())

    def instance(request: Request) -> Response:
        flow = request.path_params["flow"]
        key = request.path_params["key"]
        try:
            view = query.instance(flow, key)
        except StoreError as exc:
            return _Json({"error": str(exc)}, status_code=503)
        if view is None:
            return _Json(
                {"error": f"no instance of flow '{flow}' for key '{key}'"}, status_code=404
            )
        return _Json(view)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/flows", flows),
            Route("/instances/{flow}/{key:path}", instance),
        ]
    )
