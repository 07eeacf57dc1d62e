"""Both Redis clients of the observer connect with the settings of one URL, against the real
redis-server: the database of `?db=` or the path, an ACL user with its password in the userinfo
or in `?password=`, and a refused login reported as a configuration error (not retried)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from observer.adapters.redis.wire import RedisWire, check_redis_access
from observer.errors import ConfigError, StoreError
from observer.redis_settings import parse_redis_url

from .conftest import Stack


def _with(stack: Stack, *, userinfo: str = "", path: str = "/0", query: str = "") -> str:
    hostport = stack.redis_url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    return f"redis://{userinfo}{hostport}{path}{query}"


@pytest.fixture
def acl_user(redis_client: redis.Redis, unique: str) -> Iterator[tuple[str, str]]:
    """An ACL user allowed only the keys under f"{unique}:"."""
    name, password = f"{unique}-user", uuid.uuid4().hex
    redis_client.acl_setuser(
        name, enabled=True, passwords=[f"+{password}"], keys=[f"{unique}:*"], commands=["+@all"]
    )
    yield name, password
    redis_client.acl_deluser(name)


@pytest.mark.parametrize("where", ["?db=5", "/5", "/0?db=5"])
def test_both_clients_use_the_database_the_url_names(stack: Stack, unique: str, where: str) -> None:
    path, _, query = where.partition("?")
    settings = parse_redis_url(_with(stack, path=path or "/0", query=f"?{query}" if query else ""))
    wire = RedisWire(settings, 5.0)
    key = f"{unique}:db"
    py = redis.Redis(**settings.redis_py_kwargs(5.0))
    try:
        wire.call("SET", key, "here")
        assert py.get(key) == b"here"
        assert redis.Redis.from_url(_with(stack, path="/5")).get(key) == b"here"
        assert redis.Redis.from_url(_with(stack, path="/0")).get(key) is None
    finally:
        py.delete(key)
        py.close()
        wire.close()


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_an_acl_user_logs_in_with_the_password_in_the_userinfo_or_the_query(
    stack: Stack, unique: str, acl_user: tuple[str, str], form: str
) -> None:
    name, password = acl_user
    url = (
        _with(stack, userinfo=f"{name}:{password}@")
        if form == "userinfo"
        else _with(stack, userinfo=f"{name}@", query=f"?password={password}")
    )
    settings = parse_redis_url(url)
    check_redis_access(settings)
    wire = RedisWire(settings, 5.0)
    py = redis.Redis(**settings.redis_py_kwargs(5.0))
    try:
        wire.call("SET", f"{unique}:acl", "ok")
        assert py.get(f"{unique}:acl") == b"ok"
        assert py.acl_whoami() == name
        with pytest.raises(StoreError, match="NOPERM"):  # the user's key pattern holds
            wire.call("SET", "someone-else", "x")
    finally:
        wire.close()
        py.close()


def test_a_refused_login_is_a_config_error_an_unreachable_server_is_not(
    stack: Stack, acl_user: tuple[str, str]
) -> None:
    name, _ = acl_user
    wrong = parse_redis_url(_with(stack, userinfo=f"{name}:not-it@"))
    with pytest.raises(ConfigError, match="refused access: WRONGPASS") as err:
        check_redis_access(wrong)
    assert "not-it" not in str(err.value)
    with pytest.raises(StoreError, match="cannot connect"):
        check_redis_access(parse_redis_url("redis://127.0.0.1:1/0"), timeout_s=2)
