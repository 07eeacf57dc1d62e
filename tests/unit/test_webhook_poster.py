"""The webhook poster against local HTTP servers: one deadline for the whole attempt (a server
that trickles its answer is cut off), a bounded answer read, credentials from the URL sent as
Basic authorization, and link-local destinations refused before anything is sent."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest

from observer.adapters.webhook import WebhookPoster, _CheckedBackend, _Deadline
from observer.runtime.webhooks import WebhookRefused


class _Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    got: list[tuple[str, dict[str, str], bytes]] = []
    finished = threading.Event()  # the trickling answer was sent to its end
    sent = 0  # bytes of the big answer sent before the client hung up

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).got.append((self.path, dict(self.headers), body))
        if self.path == "/trickle":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            try:
                for _ in range(40):  # a header line every 0.25 s: 10 s in all
                    self.wfile.flush()
                    if type(self).finished.wait(0.25):
                        return
                    self.wfile.write(b"X-Slow: still here\r\n")
                type(self).finished.set()
            except OSError:
                pass
            return
        if self.path == "/big":
            self.send_response(200)
            self.send_header("content-length", str(50_000_000))
            self.end_headers()
            try:
                for _ in range(5_000):
                    self.wfile.write(b"x" * 10_000)
                    type(self).sent += 10_000
            except OSError:
                pass
            return
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.got = []
    _Hook.finished = threading.Event()
    _Hook.sent = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Hook.finished.set()
    server.shutdown()
    server.server_close()


def test_a_post_sends_body_and_headers_and_returns_the_status(hook: str) -> None:
    poster = WebhookPoster(5.0)
    try:
        assert poster(f"{hook}/ok", b'{"a": 1}', {"content-type": "application/json"}) == 204
    finally:
        poster.close()
    ((path, headers, body),) = _Hook.got
    assert (path, body, headers["content-type"]) == ("/ok", b'{"a": 1}', "application/json")


def test_credentials_in_the_url_become_basic_authorization_not_part_of_the_request(
    hook: str,
) -> None:
    poster = WebhookPoster(5.0)
    try:
        url = hook.replace("http://", "http://alice:p%40ss@") + "/ok?x=1"
        assert poster(url, b"{}", {}) == 204
    finally:
        poster.close()
    ((path, headers, _),) = _Hook.got
    assert path == "/ok?x=1"
    assert headers["Authorization"] == "Basic YWxpY2U6cEBzcw=="  # alice:p@ss


def test_one_deadline_covers_the_whole_attempt_even_a_trickling_answer(hook: str) -> None:
    poster = WebhookPoster(1.0)
    try:
        with pytest.raises(httpcore.TimeoutException):
            poster(f"{hook}/trickle", b"{}", {})
        # cut off by the deadline, long before the server's 10 s of trickling were over
        assert not _Hook.finished.is_set()
    finally:
        poster.close()


def test_only_a_bounded_part_of_the_answer_is_read(hook: str) -> None:
    poster = WebhookPoster(10.0, max_response_bytes=100_000)
    try:
        assert poster(f"{hook}/big", b"{}", {}) == 200
        assert poster(f"{hook}/ok", b"{}", {}) == 204  # the pool still works
    finally:
        poster.close()
    assert _Hook.sent < 50_000_000


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://[fe80::1]:8080/x",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
def test_link_local_destinations_are_refused_before_connecting(url: str) -> None:
    poster = WebhookPoster(2.0)
    try:
        with pytest.raises(WebhookRefused, match="destination refused"):
            poster(url, b"{}", {})
    finally:
        poster.close()


def test_a_name_that_resolves_to_a_link_local_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    real = socket.getaddrinfo

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host == "innocent.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    poster = WebhookPoster(2.0)
    try:
        with pytest.raises(
            WebhookRefused, match=r"innocent\.example resolves to 169\.254\.169\.254"
        ):
            poster("http://innocent.example/hook", b"{}", {})
    finally:
        poster.close()
    assert _Hook.got == []
    # OBSERVER_WEBHOOK_ALLOW_LINK_LOCAL=true: the same lookup is let through
    allowed = _CheckedBackend(_Deadline(), allow_link_local=True)
    try:
        assert allowed._addresses("innocent.example", 80) == ["169.254.169.254"]
    finally:
        allowed.close()
