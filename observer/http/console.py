"""The web console's routes (docs/console.md), over `ConsoleData`:

    GET /console                              the page (HTML; its script and style below)
    GET /console/static/{console.js,console.css}
    GET /console/api/overview                 every flow and version: open, last hour, guardrails, SLO
    GET /console/api/flows/{flow}/graph.svg   the flow drawn (`?version=N`, else the newest)
    GET /console/api/flows/{flow}/live        the numbers of its nodes (`?version=N`)
    GET /console/api/flows/{flow}/steps/{step}   instances waiting there (`?overdue=1`)
    GET /console/api/alerts                   recent alerts and open incidents (`?flow=&kind=&step=`)
    GET /console/api/instances/{flow}/{key}   an instance with its timeline (`?via=ALIAS`)

The page, its script and its style hold no data and are served without the token (a browser
cannot send a bearer token with a navigation); every `/console/api/` request needs it like
the rest of the API: the page asks for the token once and sends it as `Authorization: Bearer`.
Releasing and dropping held actions goes to the API's own `/actions` endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from observer.console.service import ConsoleData, UnknownFlow
from observer.errors import StoreError

__all__ = ["console_routes"]

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _json(content: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(content, default=str),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _static(name: str) -> Response:
    body = files("observer.console").joinpath("static", name).read_bytes()
    return Response(body, media_type=_STATIC[name], headers=_SECURITY)


def _version(request: Request) -> int | None:
    raw = request.query_params.get("version")
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError("version must be a number")
    return int(raw)


Handler = Callable[[Request], Response]


def _guarded(fn: Handler) -> Handler:
    """Errors as JSON: 404 for an unknown flow or step, 400 for a bad parameter, 503 when
    Redis or Kafka cannot be read."""

    def run(request: Request) -> Response:
        try:
            return fn(request)
        except (UnknownFlow, KeyError) as exc:
            return _json({"error": str(exc).strip("'\"")}, 404)
        except StoreError as exc:
            return _json({"error": str(exc)}, 503)
        except ValueError as exc:
            return _json({"error": f"bad request: {exc}"}, 400)

    return run


def console_routes(data: ConsoleData) -> list[BaseRoute]:
    """The routes (plain functions: Starlette runs them in its thread pool)."""

    def page(request: Request) -> Response:
        return _static("index.html")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC or name == "index.html":
            return _json({"error": "not found"}, 404)
        return _static(name)

    def overview(request: Request) -> Response:
        return _json(data.overview())

    def graph(request: Request) -> Response:
        svg = data.graph(request.path_params["flow"], _version(request))
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    def live(request: Request) -> Response:
        return _json(data.flow_live(request.path_params["flow"], _version(request)))

    def step(request: Request) -> Response:
        q = request.query_params
        return _json(
            data.step_instances(
                request.path_params["flow"],
                request.path_params["step"],
                _version(request),
                overdue=q.get("overdue") in ("1", "true"),
            )
        )

    def alerts(request: Request) -> Response:
        q = request.query_params
        limit = q.get("limit", "200")
        if not limit.isdigit():
            raise ValueError("limit must be a number")
        return _json(
            data.alerts(
                q.get("flow") or None, q.get("kind") or None, q.get("step") or None, int(limit)
            )
        )

    def instance(request: Request) -> Response:
        flow, key = request.path_params["flow"], request.path_params["key"]
        via = request.query_params.get("via") or None
        found = data.instance(flow, key, via)
        if found is None:
            what = f"key '{key}'" if via is None else f"{via} '{key}'"
            return _json({"error": f"no instance of flow '{flow}' for {what}"}, 404)
        return _json(found)

    return [
        Route("/console", page),
        Route("/console/", page),
        Route("/console/static/{name}", static),
        Route("/console/api/overview", _guarded(overview)),
        Route("/console/api/flows/{flow}/graph.svg", _guarded(graph)),
        Route("/console/api/flows/{flow}/live", _guarded(live)),
        Route("/console/api/flows/{flow}/steps/{step}", _guarded(step)),
        Route("/console/api/alerts", _guarded(alerts)),
        Route("/console/api/instances/{flow}/{key:path}", _guarded(instance)),
    ]
