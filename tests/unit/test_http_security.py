"""Secure defaults of the ops API: loopback unless told otherwise, a bearer token guarding
everything but the probes, control endpoints only with a token, no absolute paths in /flows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from observer.config import ObserverConfig
from observer.engine.core import Topics
from observer.errors import ConfigError
from observer.flows.compiler import load_registry
from observer.http.app import create_app, flow_file_labels
from observer.http.server import HttpServer
from observer.runtime.query import InstanceQuery
from tests.unit.test_runtime_batch import FLOW

TOKEN = "0123456789abcdef-token"


class Reader:
    def read(self, flow: str, key: str) -> tuple[bytes | None, list[bytes]]:
        return None, []

    def deployed(self) -> dict[str, object] | None:
        return None

    def ping(self) -> bool:
        return True


def pause(request: Request) -> PlainTextResponse:
    return PlainTextResponse("paused")


@pytest.fixture
def servers() -> Iterator[list[HttpServer]]:
    started: list[HttpServer] = []
    yield started
    for server in started:
        server.stop()


def serve(
    tmp_path: Path, servers: list[HttpServer], token: str | None, roots: list[str] | None = None
) -> httpx.Client:
    """The ops API on a loopback port (uvicorn, as `observer run` serves it), and a client."""
    folder = tmp_path / "flows" / "team"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.yaml").write_text(FLOW)
    registry = load_registry([tmp_path / "flows"])
    app = create_app(
        InstanceQuery(registry, Reader(), Topics()),
        lambda: {"ready": True},
        CollectorRegistry(),
        token=token,
        file_label=flow_file_labels(roots or [str(tmp_path / "flows")]),
        control_routes=[Route("/control/pause", pause, methods=["POST"])],
    )
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    servers.append(server)
    return httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5)


def test_the_api_listens_on_loopback_unless_told_otherwise() -> None:
    assert ObserverConfig.load({}, {}).http_host == "127.0.0.1"
    assert ObserverConfig.load({}, {"OBSERVER_HTTP_HOST": "0.0.0.0"}).http_host == "0.0.0.0"
    assert ObserverConfig.load({}, {}).http_token is None


def test_with_a_token_everything_but_the_probes_wants_it(
    tmp_path: Path, servers: list[HttpServer]
) -> None:
    c = serve(tmp_path, servers, TOKEN)
    for path in ("/healthz", "/readyz"):
        assert c.get(path).status_code == 200, path
    for path in ("/metrics", "/flows", "/instances/shop/o1", "/nothing-here"):
        answer = c.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in answer.text
    wrong: list[dict[str, Any]] = [
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"X-Token": TOKEN},
    ]
    for headers in wrong:
        assert c.get("/flows", headers=headers).status_code == 401, headers
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/flows", headers=auth).status_code == 200
    assert c.get("/metrics", headers=auth).status_code == 200
    assert c.get("/instances/shop/o1", headers=auth).status_code == 404  # nothing stored


def test_endpoints_that_change_anything_exist_only_with_a_token(
    tmp_path: Path, servers: list[HttpServer]
) -> None:
    guarded = serve(tmp_path, servers, TOKEN)
    assert guarded.post("/control/pause").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.post("/control/pause", headers=auth).text == "paused"
    open_api = serve(tmp_path, servers, None)
    assert open_api.post("/control/pause").status_code == 404
    assert open_api.get("/flows").status_code == 200  # reads stay open without a token


def test_flows_shows_paths_relative_to_the_flows_given_never_absolute(
    tmp_path: Path, servers: list[HttpServer]
) -> None:
    flows = serve(tmp_path, servers, None).get("/flows").json()
    assert flows[0]["versions"][0]["file"] == "team/shop.yaml"
    one_file = serve(tmp_path, servers, None, [str(tmp_path / "flows" / "team" / "shop.yaml")])
    assert one_file.get("/flows").json()[0]["versions"][0]["file"] == "shop.yaml"
    assert str(tmp_path) not in one_file.get("/flows").text


def test_a_short_token_is_refused_and_the_token_is_never_shown() -> None:
    with pytest.raises(ConfigError, match=r"OBSERVER_HTTP_TOKEN: .*at least 16 characters"):
        ObserverConfig.load({}, {"OBSERVER_HTTP_TOKEN": "short"})
    c = ObserverConfig.load({}, {"OBSERVER_HTTP_TOKEN": TOKEN})
    assert c.describe()["http_token"] == "***"
    assert TOKEN not in repr(c) + str(c.describe()) + str(c.model_dump())
