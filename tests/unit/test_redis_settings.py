"""One Redis URL, parsed once, gives both Redis clients the same settings: the hot path's RESP
connection and redis-py (the ops API, `observer status`, the lease)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from redis.connection import parse_url

from observer.adapters.redis.wire import RedisWire
from observer.config import ObserverConfig, mask_url
from observer.errors import ConfigError
from observer.redis_settings import RedisSettings, parse_redis_url

SAME_AS_REDIS_PY = [
    "redis://localhost:6379/0",
    "redis://cache.internal:6380/3",
    "redis://:s3cret@cache:6379/1",
    "redis://alice:s3cret@cache:6379/0",
    "redis://alice@cache:6379/0?password=s3cret",
    "redis://cache:6379/0?password=s3cret",
    "redis://cache:6379/0?db=5",
    "redis://cache/2",
    "rediss://alice:pw%40x@cache:6380/0?ssl_ca_certs=/etc/ca.pem",
    "rediss://cache:6380/0?ssl_cert_reqs=none",
    "rediss://cache:6380/0?ssl_certfile=/c.pem&ssl_keyfile=/c.key&ssl_ca_certs=/ca.pem",
]


@pytest.mark.parametrize("url", SAME_AS_REDIS_PY)
def test_the_settings_are_what_redis_py_reads_from_the_same_url(url: str) -> None:
    ours = parse_redis_url(url).redis_py_kwargs(5.0)
    theirs = parse_url(url)  # type: ignore[no-untyped-call]
    defaults = {"db": 0, "port": 6379}  # what redis.Redis() assumes for what a URL leaves out
    for name in ("host", "port", "db", "username", "password"):
        assert ours.get(name) == theirs.get(name, defaults.get(name)), name
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        if name in theirs:
            assert ours[name] == theirs[name], name
    assert ours.get("ssl", False) == url.startswith("rediss://")


def test_tls_options_are_read() -> None:
    s = parse_redis_url(
        "rediss://u:p@h:6390/4?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/c.key"
        "&ssl_password=kp&ssl_cert_reqs=optional&ssl_check_hostname=false"
    )
    assert (s.host, s.port, s.db, s.username, s.password, s.tls) == ("h", 6390, 4, "u", "p", True)
    assert (s.ca_certs, s.certfile, s.keyfile, s.key_password) == (
        "/ca.pem",
        "/c.pem",
        "/c.key",
        "kp",
    )
    assert (s.cert_reqs, s.check_hostname) == ("optional", False)
    assert "p" not in repr(s).replace("rediss", "").replace("tls", "")


def test_the_tls_context_verifies_by_default_and_loads_the_client_certificate(
    tmp_path: Path,
) -> None:
    ctx = parse_redis_url("rediss://h:6380/0").ssl_context()
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    none = parse_redis_url("rediss://h:6380/0?ssl_cert_reqs=none").ssl_context()
    assert none is not None and none.verify_mode == ssl.CERT_NONE and not none.check_hostname
    assert parse_redis_url("redis://h/0").ssl_context() is None
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="cannot read a certificate or key file"):
        parse_redis_url(f"rediss://h:6380/0?ssl_ca_certs={missing}").ssl_context()
    with pytest.raises(ConfigError, match="ssl_certfile"):
        RedisWire(f"rediss://h:6380/0?ssl_certfile={missing}")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:6379/0?db=x", r"\?db= must be a whole number"),
        ("redis://h:6379/x", "the database number in the path must be a whole number"),
        ("redis://h:6379/0?db=-1", "must be a whole number"),
        ("http://h:6379/0", "unsupported scheme http://"),
        ("h:6379", "unsupported scheme"),
        ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "need TLS: use rediss://"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("rediss://h/0?ssl_check_hostname=perhaps", "ssl_check_hostname must be true or false"),
        ("rediss://h/0?ssl_keyfile=/k", "ssl_keyfile needs ssl_certfile"),
        ("redis://h/0?timeout=3", "unknown option 'timeout'"),
        ("redis://h/0?db=1&db=2", "given twice"),
        ("redis://h:99999/0", "not a valid URL|out of range"),
        ("unix://", "needs the socket's path"),
    ],
)
def test_a_bad_url_is_a_clear_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_redis_url(url)


def test_a_bad_url_in_the_configuration_names_its_variable_and_hides_the_password() -> None:
    with pytest.raises(ConfigError, match=r"OBSERVER_REDIS_URL: .*\?db= must be") as err:
        ObserverConfig.load({}, {"OBSERVER_REDIS_URL": "redis://:hunter2@h:6379/0?db=x"})
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="--redis-url"):
        ObserverConfig.load({"redis_url": "mongodb://h"}, {})


def test_unix_sockets_and_their_options() -> None:
    s = parse_redis_url("unix:///run/redis.sock?db=2&password=pw")
    assert (s.unix_path, s.db, s.password) == ("/run/redis.sock", 2, "pw")
    assert s.redis_py_kwargs(1.0)["unix_socket_path"] == "/run/redis.sock"
    assert "host" not in s.redis_py_kwargs(1.0)


def test_the_config_gives_the_parsed_settings() -> None:
    c = ObserverConfig.load({}, {"OBSERVER_REDIS_URL": "rediss://a:b@r:6380/1"})
    assert c.redis() == RedisSettings(
        host="r", port=6380, db=1, username="a", password="b", tls=True
    )


def test_mask_url_hides_passwords_in_the_userinfo_and_the_query() -> None:
    assert mask_url("redis://h:6379/0?password=s3cret") == "redis://h:6379/0?password=***"
    assert mask_url("redis://u:s3cret@h:6379/0") == "redis://u:***@h:6379/0"
    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    shown = mask_url(
        "rediss://u:a@h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_password=kp&password=b&db=2"
    )
    assert shown == (
        "rediss://u:***@h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_password=***&password=***&db=2"
    )
    assert mask_url("https://sr:pw@registry:8081/x?api_key=k&token=t") == (
        "https://sr:***@registry:8081/x?api_key=***&token=***"
    )
    assert mask_url("redis://[::1]:6379/0?password=x") == "redis://[::1]:6379/0?password=***"
    assert mask_url("redis://h:notaport/0") == "***"


def test_a_redis_cluster_url() -> None:
    s = parse_redis_url("redis+cluster://alice:pw@node-1:7000")
    assert (s.cluster, s.host, s.port, s.db, s.username, s.tls) == (
        True,
        "node-1",
        7000,
        0,
        "alice",
        False,
    )
    assert s.where == "redis+cluster://node-1:7000/0"
    assert parse_redis_url("rediss+cluster://node-1:7000?ssl_cert_reqs=none").tls
    assert not parse_redis_url("redis://node-1:7000").cluster
    with pytest.raises(ConfigError, match="database 0 only"):
        parse_redis_url("redis+cluster://node-1:7000/2")
