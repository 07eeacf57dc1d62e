"""The ops API as a Starlette app.

    GET /healthz                 200 while the process is alive
    GET /readyz                  200 when Kafka and Redis are reachable and the loop turns, else 503
    GET /metrics                 Prometheus text format
    GET /flows                   deployed flows, versions, files (relative to FLOWS), steps
    GET /instances/{flow}/{key}  one instance ("where is my order?"); 404 when unknown;
                                 `?via=ALIAS`: `key` is a value of that alias
    GET /console, /console/api/...  the web console (`observer/http/console.py`)

With a token, every endpoint but /healthz and /readyz answers 401 without
`Authorization: Bearer <token>` (compared in constant time). Endpoints that change anything
(`control_routes`) exist only when a token is set: without one they are not routed at all (404).

Endpoints are plain functions (Starlette runs them in its thread pool), so blocking reads of
the query port never block the event loop.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path, PurePath
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from observer.errors import StoreError
from observer.runtime.query import InstanceQuery

__all__ = ["CONSOLE_SHELL", "OPEN_PATHS", "BearerTokenGuard", "create_app", "flow_file_labels"]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes answer without the token
# the web console's page, script and style (no data: its /console/api/ requests need the token)
CONSOLE_SHELL = frozenset(
    {"/console", "/console/", "/console/static/console.js", "/console/static/console.css"}
)


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_INDENT_2)


class BearerTokenGuard:
    """ASGI middleware: 401 for every HTTP request outside `OPEN_PATHS` that does not carry
    `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()
        self._open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open or self._allowed(scope):
            await self._app(scope, receive, send)
            return
        response = _Json(
            {"error": "unauthorized: send Authorization: Bearer <token>"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="observer"'},
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        return hmac.compare_digest(given, self._expected)


def create_app(
    query: InstanceQuery,
    readiness: Callable[[], dict[str, Any]],
    registry: CollectorRegistry,
    *,
    token: str | None = None,
    file_label: Callable[[str], str] | None = None,
    control_routes: Sequence[BaseRoute] = (),
    console_routes: Sequence[BaseRoute] = (),
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The app; `readiness()` returns a dict with a boolean `ready`. `file_label` turns a
    flow's file into what `/flows` shows (never an absolute path). `control_routes` (endpoints
    that change anything) are mounted only with a `token`; `console_routes` (the web console,
    docs/console.md) always, its page shell open, its data behind the token."""

    def healthz(request: Request) -> Response:
        return _Json({"status": "ok"})

    def readyz(request: Request) -> Response:
        report = readiness()
        return _Json(report, status_code=200 if report.get("ready") else 503)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def flows(request: Request) -> Response:
        described = query.flows()
        label = file_label or _file_name
        for flow in described:
            for version in flow["versions"]:
                version["file"] = label(str(version["file"]))
        return _Json(described)

    def instance(request: Request) -> Response:
        flow = request.path_params["flow"]
        key = request.path_params["key"]
        via = request.query_params.get("via") or None
        try:
            view = query.instance(flow, key, via=via)
        except StoreError as exc:
            return _Json({"error": str(exc)}, status_code=503)
        if view is None:
            what = f"key '{key}'" if via is None else f"{via} '{key}'"
            return _Json({"error": f"no instance of flow '{flow}' for {what}"}, status_code=404)
        return _Json(view)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/flows", flows),
        Route("/instances/{flow}/{key:path}", instance),
    ]
    if token:
        routes += control_routes
    routes += console_routes
    app = Starlette(routes=routes)
    if not token:
        return app
    return BearerTokenGuard(
        app, token, OPEN_PATHS | CONSOLE_SHELL if console_routes else OPEN_PATHS
    )


def _file_name(path: str) -> str:
    return PurePath(path).name


def flow_file_labels(roots: Sequence[str]) -> Callable[[str], str]:
    """`file -> label`: a flow file's path relative to the FLOWS argument (folder) it was found
    in, or its name (a file given as such, or anything else): `/flows` shows where a flow
    came from without showing the machine's directory layout."""
    resolved = [Path(r).resolve() for r in roots]

    def label(file: str) -> str:
        path = Path(file).resolve()
        for root in resolved:
            if path != root and path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.name

    return label
