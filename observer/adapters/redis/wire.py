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

import hiredis

from observer.errors import ConfigError, StoreError
from observer.redis_settings import RedisSettings, parse_redis_url

__all__ = ["RedisWire", "check_redis_access"]


class RedisWire:
    """One blocking connection. Not thread-safe: owned by the consumer loop."""

    def __init__(self, settings: RedisSettings | str, timeout_s: float = 10.0) -> None:
        """`settings`: parsed once by the caller (`parse_redis_url`); a URL string is parsed
        here (tests, tools)."""
        self.settings = parse_redis_url(settings) if isinstance(settings, str) else settings
        self._tls = self.settings.ssl_context()
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()
        self.outstanding = 0  # replies sent for and not read yet

    def connect(self) -> None:
        """Connect, authenticate and select the database. Raises StoreError; its `__cause__`
        is an `ssl.SSLError` when TLS failed (e.g. an untrusted certificate) and a
        `hiredis.ReplyError` when Redis refused the credentials."""
        self.close()
        a = self.settings
        try:
            if a.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(a.unix_path)
            else:
                sock = socket.create_connection((a.host, a.port), timeout=self._timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=a.host)
        except ssl.SSLError as tls_error:
            raise _because(
                StoreError(f"TLS with Redis at {self.where} failed: {tls_error}"), tls_error
            ) from tls_error
        except OSError as exc:
            raise _because(
                StoreError(f"cannot connect to Redis at {self.where}: {exc}"), exc
            ) from exc
        self._sock = sock
        self._reader = hiredis.Reader()
        self.outstanding = 0
        if a.password is not None:
            auth: Any = ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
            self.send(hiredis.pack_command(auth))
            reply = self.read()
            if isinstance(reply, hiredis.ReplyError):
                self.close()
                who = f"user '{a.username}'" if a.username else "the default user"
                raise _because(
                    StoreError(f"Redis at {self.where} refused the credentials of {who}: {reply}"),
                    reply,
                )
        if a.db:
            self.call("SELECT", a.db)

    @property
    def where(self) -> str:
        return self.settings.where

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
            raise _because(
                StoreError(f"Redis connection to {self.where} failed: {exc}"), exc
            ) from exc
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
            raise _because(
                StoreError(f"Redis connection to {self.where} failed: {exc}"), exc
            ) from exc

    def call(self, *args: Any) -> Any:
        """Send one command and wait for its reply (raises StoreError on an error reply).
        Replies of earlier pipelined requests must have been read."""
        self.send(hiredis.pack_command(args))
        reply = self.read()
        if isinstance(reply, hiredis.ReplyError):
            raise _because(StoreError(f"Redis {args[0]} failed: {reply}"), reply)
        return reply


_REFUSED = ("NOAUTH", "WRONGPASS", "NOPERM")


def _because(err: StoreError, cause: BaseException) -> StoreError:
    """`raise err from cause`, written out: compiled by mypyc (setup.py), a `raise ... from`
    loses its cause (mypy 2.4), and `check_redis_access` reads it."""
    err.__cause__ = cause
    return err


def check_redis_access(settings: RedisSettings, timeout_s: float = 5.0) -> None:
    """Connect, log in and PING once. Raises ConfigError when Redis refuses the credentials or
    TLS fails (retrying cannot help), StoreError when it does not answer (it may later)."""
    wire = RedisWire(settings, timeout_s)
    try:
        wire.connect()
        wire.call("PING")
    except StoreError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise ConfigError(
                f"Redis at {settings.where}: its TLS certificate is not trusted "
                f"({cause.verify_message}); give the CA that signed it as "
                "?ssl_ca_certs=/path/ca.pem in the Redis URL"
            ) from None
        if isinstance(cause, ssl.SSLError):
            raise ConfigError(
                f"Redis at {settings.where}: TLS failed ({cause.reason or cause}); is it a TLS "
                "port, and does it want a client certificate (?ssl_certfile=&ssl_keyfile=)?"
            ) from None
        if isinstance(cause, hiredis.ReplyError) and str(cause).startswith(_REFUSED):
            raise ConfigError(
                f"Redis at {settings.where} refused access: {str(cause).rstrip('.')}; check "
                "the user and password in the Redis URL (redis://user:password@host:port/db)"
            ) from None
        raise
    finally:
        wire.close()
