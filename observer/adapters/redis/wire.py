"""A raw Redis connection: commands packed with hiredis, replies read in order.

redis-py builds Python objects per command, which costs more than the rest of the hot path
together; here a whole batch is one packed command and replies are parsed by hiredis.
Requests can be pipelined: `send` several, then `read` the replies in the same order.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis

from observer.errors import StoreError

__all__ = ["RedisWire", "redis_address"]


def redis_address(url: str) -> dict[str, Any]:
    """host, port, db, username, password, tls, unix path of a redis:// / rediss:// / unix:// URL."""
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        raise StoreError(
            f"unsupported Redis URL scheme {u.scheme!r} (redis://, rediss:// or unix://)"
        )
    db = 0
    path = (u.path or "").lstrip("/")
    if u.scheme != "unix" and path:
        try:
            db = int(path)
        except ValueError:
            raise StoreError(f"bad database number in Redis URL: {path!r}") from None
    if "db=" in (u.query or ""):
        for part in u.query.split("&"):
            if part.startswith("db="):
                db = int(part[3:])
    return {
        "host": u.hostname or "localhost",
        "port": u.port or 6379,
        "db": db,
        "username": unquote(u.username) if u.username else None,
        "password": unquote(u.password) if u.password else None,
        "tls": u.scheme == "rediss",
        "unix": u.path if u.scheme == "unix" else None,
    }


class RedisWire:
    """One blocking connection. Not thread-safe: owned by the consumer loop."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._addr = redis_address(url)
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()
        self.outstanding = 0  # replies sent for and not read yet

    def connect(self) -> None:
        self.close()
        a = self._addr
        try:
            if a["unix"]:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(a["unix"])
            else:
                sock = socket.create_connection((a["host"], a["port"]), timeout=self._timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if a["tls"]:
                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=a["host"])
        except OSError as exc:
            raise StoreError(f"cannot connect to Redis at {self.where}: {exc}") from exc
        self._sock = sock
        self._reader = hiredis.Reader()
        self.outstanding = 0
        if a["password"] is not None:
            args = (
                ("AUTH", a["username"], a["password"]) if a["username"] else ("AUTH", a["password"])
            )
            self.call(*args)
        if a["db"]:
            self.call("SELECT", a["db"])

    @property
    def where(self) -> str:
        a = self._addr
        return a["unix"] or f"{a['host']}:{a['port']}/{a['db']}"

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self.outstanding = 0

    def send(self, payload: bytes, replies: int = 1) -> None:
        """Send packed command(s) whose `replies` replies will be read later."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(payload)
        except OSError as exc:
            self.close()
            raise StoreError(f"Redis connection to {self.where} failed: {exc}") from exc
        self.outstanding += replies

    def read(self) -> Any:
        """The next reply (a `hiredis.ReplyError` is returned, not raised)."""
        if self._sock is None:
            raise StoreError("Redis connection is closed")
        reader = self._reader
        try:
            while True:
                reply = reader.gets()
                if reply is not False:
                    self.outstanding -= 1
                    return reply
                data = self._sock.recv(1 << 16)
                if not data:
                    raise StoreError(f"Redis at {self.where} closed the connection")
                reader.feed(data)
        except StoreError:
            self.close()
            raise
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise StoreError(f"Redis connection to {self.where} failed: {exc}") from exc

    def call(self, *args: Any) -> Any:
        """Send one command and wait for its reply (raises StoreError on an error reply).
        Replies of earlier pipelined requests must have been read."""
        self.send(hiredis.pack_command(args))
        reply = self.read()
        if isinstance(reply, hiredis.ReplyError):
            raise StoreError(f"Redis {args[0]} failed: {reply}")
        return reply
