"""`RedisSettings`: one Redis URL, parsed once, for both Redis clients of the observer.

The hot path talks to Redis over its own RESP connection (`wire.py`); the ops API, `observer
status` and the lease use redis-py. Both are built from the same `RedisSettings`, so they
always connect with the same address, database, credentials and TLS settings. The URL is the
one redis-py reads:

    redis://[[user]:password@]host[:port][/db][?option=value&...]
    rediss://...      TLS
    unix:///path/to/redis.sock[?db=N&password=...]
    redis+cluster://host:port, rediss+cluster://...
                      a Redis Cluster: any of its nodes (the others are learnt); database 0

Options: `db`, `username`, `password` (userinfo wins over these two, as in redis-py),
`ssl_ca_certs` (CA file), `ssl_ca_path` (CA directory), `ssl_certfile` + `ssl_keyfile` (client
certificate), `ssl_password` (of an encrypted key file), `ssl_cert_reqs` (`required` (default),
`optional`, `none`), `ssl_check_hostname` (`true` (default with `required`) or `false`).
Anything else is a `ConfigError`, as is a bad value: a wrong URL is found at start, not at the
first write.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from observer.errors import ConfigError

__all__ = ["RedisSettings", "parse_redis_url"]

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_BOOL = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_OPTIONS = (
    "db",
    "username",
    "password",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_TLS_ONLY = tuple(o for o in _OPTIONS if o.startswith("ssl_"))


@dataclass(frozen=True)
class RedisSettings:
    """Where and how to connect. `repr` never shows the passwords."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    unix_path: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    ca_path: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = None
    cert_reqs: str = "required"
    check_hostname: bool = True
    cluster: bool = False  # issue 18: a Redis Cluster (host:port is any of its nodes)

    def __repr__(self) -> str:
        return f"RedisSettings({self.where}, tls={self.tls})"

    @property
    def where(self) -> str:
        """The address without secrets, for messages."""
        if self.unix_path is not None:
            return f"unix://{self.unix_path} db {self.db}"
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None without TLS). Raises ConfigError when a certificate or
        key file cannot be read."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_certs, capath=self.ca_path)
            if self.cert_reqs != "required" or not self.check_hostname:
                ctx.check_hostname = False
            ctx.verify_mode = _CERT_REQS[self.cert_reqs]
            if self.certfile is not None:
                ctx.load_cert_chain(self.certfile, self.keyfile, self.key_password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"Redis TLS settings: cannot read a certificate or key file ({exc}); check "
                "ssl_ca_certs, ssl_ca_path, ssl_certfile and ssl_keyfile in the Redis URL"
            ) from exc
        return ctx

    def redis_py_client(self, timeout_s: float) -> Any:
        """A redis-py client with these settings: `redis.Redis`, or `redis.cluster.RedisCluster`
        for a cluster (it follows the slot map and redirections itself)."""
        import redis
        from redis.cluster import RedisCluster

        kwargs = self.redis_py_kwargs(timeout_s)
        if self.cluster:
            kwargs.pop("db")
            return RedisCluster(**kwargs)
        return redis.Redis(**kwargs)

    def redis_py_kwargs(self, timeout_s: float) -> dict[str, Any]:
        """Keyword arguments of `redis.Redis(...)` with exactly these settings."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        if self.unix_path is not None:
            kwargs["unix_socket_path"] = self.unix_path
            return kwargs
        kwargs.update(host=self.host, port=self.port)
        if self.tls:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=self.ca_certs,
                ssl_ca_path=self.ca_path,
                ssl_certfile=self.certfile,
                ssl_keyfile=self.keyfile,
                ssl_password=self.key_password,
                ssl_cert_reqs=self.cert_reqs,
                ssl_check_hostname=self.check_hostname and self.cert_reqs == "required",
            )
        return kwargs


def _problem(message: str) -> ConfigError:
    return ConfigError(f"Redis URL: {message}")


def _int(name: str, text: str, low: int, high: int) -> int:
    value = int(text) if text.isascii() and text.isdigit() else -1
    if not low <= value <= high:
        raise _problem(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return value


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise _problem(f"unknown option {name!r} (known: {', '.join(_OPTIONS)})")
        if name in options:
            raise _problem(f"option {name!r} is given twice")
        options[name] = value
    return options


def parse_redis_url(url: str) -> RedisSettings:
    """Parse a redis:// / rediss:// / unix:// URL. Raises ConfigError saying what is wrong
    (never repeating the URL, which may hold a password)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _problem(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        raise _problem(
            f"unsupported scheme {parts.scheme + '://' if parts.scheme else '(none)'} "
            "(use redis://, rediss:// for TLS, unix://, or redis+cluster:// for a Redis Cluster)"
        )
    options = _options(parts.query)
    cluster = parts.scheme.endswith("+cluster")
    tls = parts.scheme.startswith("rediss")
    if not tls and any(o in options for o in _TLS_ONLY):
        given = ", ".join(o for o in _TLS_ONLY if o in options)
        raise _problem(f"{given} need TLS: use rediss://")
    db = 0
    path = parts.path.lstrip("/")
    if "db" in options:
        db = _int("?db=", options["db"], 0, 1_000_000)
    elif parts.scheme != "unix" and path:
        db = _int("the database number in the path", path, 0, 1_000_000)
    username = unquote(parts.username) if parts.username else options.get("username") or None
    password = unquote(parts.password) if parts.password else options.get("password") or None
    cert_reqs = options.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise _problem(f"ssl_cert_reqs must be one of none, optional, required, not {cert_reqs!r}")
    check = options.get("ssl_check_hostname", "true").lower()
    if check not in _BOOL:
        raise _problem(f"ssl_check_hostname must be true or false, not {check!r}")
    if ("ssl_keyfile" in options) and ("ssl_certfile" not in options):
        raise _problem("ssl_keyfile needs ssl_certfile (the client certificate)")
    if cluster and db:
        raise _problem("a Redis Cluster has database 0 only")
    if parts.scheme == "unix":
        if not parts.path:
            raise _problem("unix:// needs the socket's path (unix:///run/redis.sock)")
        return RedisSettings(db=db, username=username, password=password, unix_path=parts.path)
    if port is not None and not 0 < port < 65536:
        raise _problem(f"port {port} is out of range")
    return RedisSettings(
        host=parts.hostname or "localhost",
        port=port or 6379,
        db=db,
        username=username,
        password=password,
        tls=tls,
        ca_certs=options.get("ssl_ca_certs") or None,
        ca_path=options.get("ssl_ca_path") or None,
        certfile=options.get("ssl_certfile") or None,
        keyfile=options.get("ssl_keyfile") or None,
        key_password=options.get("ssl_password") or None,
        cert_reqs=cert_reqs,
        check_hostname=_BOOL[check],
        cluster=cluster,
    )
