"""Webhook POSTs over httpcore (the transport under httpx), for the runtime's webhook workers.

What a plain HTTP client does not give, and a webhook to a URL from a flow file needs:

- **one deadline per attempt**: connecting (name lookup included), TLS, sending and reading
  the answer together take at most `timeout_s`. Every socket operation gets the time left, so
  a server that trickles its answer a byte at a time is cut off too (a per-phase timeout would
  wait for it forever).
- **a bounded answer**: only the status is used; at most `max_response_bytes` of the body are
  read, and the connection is dropped if there is more.
- **no requests to link-local addresses** (cloud metadata services, 169.254.169.254) unless
  allowed: the host name is resolved here and every address it resolves to is checked before
  connecting to the checked address (no second lookup that could answer otherwise).
- no redirects followed, no proxies from the environment; credentials in the URL's userinfo
  are sent as HTTP Basic authorization.
"""

from __future__ import annotations

import base64
import concurrent.futures
import socket
import ssl
import threading
import time
import typing
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import httpcore

from observer.runtime.webhooks import WebhookRefused, refused_destination

__all__ = ["WebhookPoster"]

_SocketOption = typing.Any


class _Deadline(threading.local):
    """The deadline (time.monotonic) of the attempt the current worker thread is making."""

    at: float = float("inf")

    def left(self, wanted: float | None) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the webhook attempt ran out of time")
        return left if wanted is None else min(wanted, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every operation ends by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._deadline.left(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _CheckedBackend(httpcore.NetworkBackend):
    """Resolves the host itself, refuses link-local destinations, connects to a checked address
    and bounds every operation by the attempt's deadline."""

    def __init__(self, deadline: _Deadline, allow_link_local: bool) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline
        self._allow_link_local = allow_link_local
        # name lookups have no timeout of their own: they run here, waited for until the deadline
        self._lookups = concurrent.futures.ThreadPoolExecutor(4, "observer-webhook-dns")

    def _refuse(self, host: str, address: str) -> None:
        why = None if self._allow_link_local else refused_destination(address)
        if why is not None:
            via = "" if address == host else f"{host} resolves to {address}: "
            raise WebhookRefused(
                f"destination refused: {via}{why} "
                "(OBSERVER_WEBHOOK_ALLOW_LINK_LOCAL=true allows it)"
            )

    def _addresses(self, host: str, port: int) -> list[str]:
        self._refuse(host, host)
        lookup = self._lookups.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            found = lookup.result(timeout=self._deadline.left(None))
        except concurrent.futures.TimeoutError:
            raise httpcore.ConnectTimeout(f"looking up {host} took too long") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            self._refuse(host, address)
        return addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError(f"{host} resolved to no address")
        for address in self._addresses(host, port):
            try:
                stream = self._inner.connect_tcp(
                    address, port, self._deadline.left(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks do not use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self._lookups.shutdown(wait=False, cancel_futures=True)


class WebhookPoster:
    """`post(url, body, headers) -> status`: thread-safe, pooled connections."""

    def __init__(
        self,
        timeout_s: float,
        *,
        max_response_bytes: int = 65_536,
        allow_link_local: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._deadline = _Deadline()
        self._backend = _CheckedBackend(self._deadline, allow_link_local)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=None,  # one request per worker thread at a time
            keepalive_expiry=30.0,
            network_backend=self._backend,
        )

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        url, sent = _basic_auth(url, dict(headers))
        t = self._timeout_s
        self._deadline.at = time.monotonic() + t
        try:
            with self._pool.stream(
                "POST",
                url,
                headers=[(k.encode(), v.encode()) for k, v in sent.items()],
                content=body,
                extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
            ) as response:
                read = 0
                for chunk in response.iter_stream():
                    read += len(chunk)
                    if read > self._max_response_bytes:
                        break  # the rest is not read; leaving early closes the connection
                return int(response.status)
        finally:
            self._deadline.at = float("inf")

    def close(self) -> None:
        self._pool.close()
        self._backend.close()


def _basic_auth(url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Credentials in the URL become an Authorization header (as browsers and httpx do)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, headers
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    headers.setdefault("Authorization", "Basic " + base64.b64encode(pair).decode())
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), headers
