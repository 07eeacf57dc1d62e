"""The ops API's control endpoints for held actions (contract §7, §9): mounted only when a
token is set (`create_app(control_routes=...)`), so they always need `Authorization: Bearer`.

    GET  /actions/{flow}            guardrails of the flow (paused, open incidents, held by
                                    action) and its held actions; `?incident=ID&key=KEY&id=OID`
    POST /actions/{flow}/release    release the selection (JSON body or query: incident, key,
                                    ids): the flow's decider publishes them, same observer-ids
    POST /actions/{flow}/drop       drop the selection (recorded in the instances' history)
    POST /actions/{flow}/pause      hold every action of the flow (JSON body: reason)
    POST /actions/{flow}/resume     lift the flow's pause
    POST /actions/pause, /actions/resume   the same for every flow

A release or drop with no selection at all takes every held action of the flow, like the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from observer.errors import ConfigError, StoreError
from observer.runtime.guard_ports import HeldActions
from observer.runtime.held_ops import (
    Selection,
    describe_guard,
    held_actions,
    ids_of,
    release_or_drop,
    view,
)

__all__ = ["action_routes"]


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _selection(flow: str, query: Any, body: dict[str, Any]) -> Selection:
    ids = body.get("ids") or query.getlist("id")
    if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
        raise ValueError("ids must be a list of observer-ids")
    incident = body.get("incident", query.get("incident"))
    key = body.get("key", query.get("key"))
    for name, value in (("incident", incident), ("key", key)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
    return Selection(flow, incident, key, ids_of(ids))


Handler = Callable[[Request, dict[str, Any]], Response]


def action_routes(port: HeldActions, now_ms: Callable[[], int]) -> list[BaseRoute]:
    """The routes, over `port` (its blocking calls run in Starlette's thread pool)."""

    def endpoint(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                body = _body(await request.body()) if request.method == "POST" else {}
                return await run_in_threadpool(fn, request, body)
            except StoreError as exc:
                return _json({"error": str(exc)}, 503)
            except ConfigError as exc:  # what this store cannot do (a Redis Cluster: pausing)
                return _json({"error": str(exc)}, 409)
            except ValueError as exc:  # orjson's decode error is one too
                return _json({"error": f"bad request: {exc}"}, 400)

        return run

    def list_held(request: Request, body: dict[str, Any]) -> Response:
        flow = request.path_params["flow"]
        sel = _selection(flow, request.query_params, body)
        out = describe_guard(port, flow)
        out["actions"] = [view(h) for h in held_actions(port, sel)]
        return _json(out)

    def take(mode: str) -> Handler:
        def handle(request: Request, body: dict[str, Any]) -> Response:
            flow = request.path_params["flow"]
            sel = _selection(flow, request.query_params, body)
            selected, done = release_or_drop(port, sel, mode, now_ms())
            word = "released" if mode == "release" else "dropped"
            return _json({"flow": flow, "selected": selected, word: done})

        return handle

    def switch(on: bool) -> Handler:
        def handle(request: Request, body: dict[str, Any]) -> Response:
            flow = request.path_params.get("flow")
            if on:
                port.pause(flow, str(body.get("reason") or "paused through the ops API"))
            else:
                port.resume(flow)
            return _json({"flow": flow, "paused": on, "pauses": port.paused()})

        return handle

    return [
        Route("/actions/pause", endpoint(switch(True)), methods=["POST"]),
        Route("/actions/resume", endpoint(switch(False)), methods=["POST"]),
        Route("/actions/{flow}", endpoint(list_held), methods=["GET"]),
        Route("/actions/{flow}/release", endpoint(take("release")), methods=["POST"]),
        Route("/actions/{flow}/drop", endpoint(take("drop")), methods=["POST"]),
        Route("/actions/{flow}/pause", endpoint(switch(True)), methods=["POST"]),
        Route("/actions/{flow}/resume", endpoint(switch(False)), methods=["POST"]),
    ]
