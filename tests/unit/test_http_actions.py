"""The ops API's held-action endpoints (contract §7, §9): they exist only with a token, want
it, and list, release, drop, pause and resume like `observer actions` (same selection)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from observer.flows.compiler import load_registry
from observer.http.actions import action_routes
from observer.http.app import create_app
from observer.http.server import HttpServer
from observer.runtime.query import InstanceQuery
from observer.topics import Topics
from tests.unit.test_runtime_guardrails import Group

TOKEN = "0123456789abcdef-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    g = Group(tmp_path)
    g.start([0, 1, 2, 3])
    g.storm(8)  # two published, two held by the rate, four by the incident
    yield g
    g.close()


def serve(group: Group, token: str | None, servers: list[HttpServer]) -> httpx.Client:
    registry = load_registry([group.flow])
    app = create_app(
        InstanceQuery(registry, group.store, Topics()),
        lambda: {"ready": True},
        CollectorRegistry(),
        token=token,
        control_routes=action_routes(group.store, group.clock.now_ms),
    )
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    servers.append(server)
    return httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5)


@pytest.fixture
def servers() -> Iterator[list[HttpServer]]:
    started: list[HttpServer] = []
    yield started
    for server in started:
        server.stop()


def test_the_endpoints_exist_only_with_a_token_and_want_it(
    group: Group, servers: list[HttpServer]
) -> None:
    open_api = serve(group, None, servers)
    assert open_api.get("/actions/shop").status_code == 404
    assert open_api.post("/actions/shop/release").status_code == 404
    guarded = serve(group, TOKEN, servers)
    assert guarded.get("/actions/shop").status_code == 401
    assert guarded.post("/actions/shop/release").status_code == 401
    assert guarded.post("/actions/pause").status_code == 401


def test_list_release_drop_pause_and_resume(group: Group, servers: list[HttpServer]) -> None:
    c = serve(group, TOKEN, servers)
    listing = c.get("/actions/shop", headers=AUTH).json()
    assert listing["paused"] is False and sum(listing["held"].values()) == 6
    (incident,) = listing["incidents"]
    assert incident["deviation"] == "missing" and incident["step"] == "paid"
    rate = c.get("/actions/shop", params={"key": "o-2"}, headers=AUTH).json()["actions"]
    assert [(a["key"], a["reason"]) for a in rate] == [("o-2", "rate")]
    released = c.post("/actions/shop/release", json={"key": "o-2"}, headers=AUTH).json()
    assert released == {"flow": "shop", "selected": 1, "released": 1}
    group.turn(10)
    assert rate[0]["observer_id"] in [i for _v, i in group.out("cmds")]
    dropped = c.post("/actions/shop/drop", params={"incident": incident["id"]}, headers=AUTH).json()
    assert dropped["dropped"] == 4
    assert c.post("/actions/shop/drop", json=["x"], headers=AUTH).status_code == 400
    paused = c.post("/actions/shop/pause", json={"reason": "outage"}, headers=AUTH).json()
    assert paused["pauses"] == {"shop": "outage"}
    assert c.get("/actions/shop", headers=AUTH).json()["paused_reason"] == "outage"
    assert c.post("/actions/resume", headers=AUTH).json()["pauses"] == {}
