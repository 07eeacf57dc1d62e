"""Configuration: flags win over environment over defaults; librdkafka keys at the edge only;
secrets never shown."""

from __future__ import annotations

import pytest

from observer.config import ObserverConfig, is_secret_key, mask_url, topics_from_env
from observer.errors import ConfigError


def test_defaults() -> None:
    c = ObserverConfig.load({}, {})
    assert (c.bootstrap_servers, c.group_id, c.http_port, c.key_prefix) == (
        "localhost:9092",
        "observer",
        8000,
        "observer",
    )
    assert c.redis_url.get_secret_value() == "redis://localhost:6379/0"
    assert (c.alerts_topic, c.outcomes_topic, c.dlq_topic) == (
        "observer.alerts",
        "observer.outcomes",
        "observer.dlq",
    )
    assert c.schema_registry_url is None


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    env = {
        "OBSERVER_GROUP_ID": "from-env",
        "OBSERVER_HTTP_PORT": "0",
        "OBSERVER_BOOTSTRAP_SERVERS": "env:9092",
        "OBSERVER_DLQ_TOPIC": "my.dlq",
    }
    c = ObserverConfig.load({"group_id": "from-flag", "bootstrap_servers": None}, env)
    assert c.group_id == "from-flag"
    assert c.bootstrap_servers == "env:9092"  # a flag left out (None) does not count
    assert c.http_port == 0 and c.dlq_topic == "my.dlq"
    assert c.topics().dlq == "my.dlq" and topics_from_env(env).dlq == "my.dlq"


def test_observer_kafka_variables_become_librdkafka_settings() -> None:
    env = {
        "OBSERVER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "OBSERVER_KAFKA_SASL_MECHANISM": "PLAIN",
        "OBSERVER_KAFKA_SASL_PASSWORD": "hunter2",
        "OBSERVER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "OBSERVER_KAFKA_ENABLE_AUTO_COMMIT": "true",  # the observer relies on manual commits
        "OBSERVER_KAFKA_PORT": "9092",  # ops/stack's, not librdkafka's
        "OBSERVER_KAFKA_VERSION": "4.1.1",
    }
    c = ObserverConfig.load({}, env)
    cons = c.consumer_settings()
    assert cons["security.protocol"] == "SASL_SSL" and cons["sasl.mechanism"] == "PLAIN"
    assert cons["sasl.password"] == "hunter2" and cons["session.timeout.ms"] == "6000"
    assert cons["enable.auto.commit"] is False
    assert (
        cons["partition.assignment.strategy"] == "cooperative-sticky"
        and cons["fetch.queue.backoff.ms"] == 10
    )
    assert "port" not in cons and "version" not in cons
    prod = c.producer_settings()
    assert (
        prod["enable.idempotence"] is True
        and prod["acks"] == "all"
        and "session.timeout.ms" not in prod
    )
    assert prod["sasl.password"] == "hunter2"
    assert "linger.ms" not in c.admin_settings()
    assert c.overridden_forced() == ["enable.auto.commit"]


def test_secrets_are_masked_everywhere_they_could_be_shown() -> None:
    env = {
        "OBSERVER_KAFKA_SASL_PASSWORD": "hunter2",
        "OBSERVER_KAFKA_SSL_KEY_PASSWORD": "k3y",
        "OBSERVER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "s3cret",
        "OBSERVER_KAFKA_SASL_USERNAME": "alice",
        "OBSERVER_REDIS_URL": "redis://user:redispw@cache:6380/2",
        "OBSERVER_SCHEMA_REGISTRY_URL": "https://sr:srpw@registry:8081",
    }
    c = ObserverConfig.load({}, env)
    shown = repr(c) + str(c) + repr(c.describe()) + str(c.model_dump())
    for secret in ("hunter2", "k3y", "s3cret", "redispw", "srpw"):
        assert secret not in shown
    d = c.describe()
    assert d["kafka"]["sasl.username"] == "alice" and d["kafka"]["sasl.password"] == "***"
    assert d["redis_url"] == "redis://user:***@cache:6380/2"
    assert d["schema_registry_url"] == "https://sr:***@registry:8081"
    assert (
        is_secret_key("ssl.keystore.password")
        and is_secret_key("ssl.key.pem")
        and not is_secret_key("security.protocol")
    )
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_invalid_values_name_the_variable_or_flag() -> None:
    with pytest.raises(ConfigError, match="OBSERVER_HTTP_PORT"):
        ObserverConfig.load({}, {"OBSERVER_HTTP_PORT": "eighty"})
    with pytest.raises(ConfigError, match="--http-port"):
        ObserverConfig.load({"http_port": 70_000}, {})
    with pytest.raises(ConfigError, match="OBSERVER_KEY_PREFIX"):
        ObserverConfig.load({}, {"OBSERVER_KEY_PREFIX": "a{b}"})


def test_the_model_is_frozen() -> None:
    c = ObserverConfig.load({}, {})
    with pytest.raises(Exception, match="frozen"):
        c.group_id = "x"  # type: ignore[misc]


# -- group membership (docs/running.md, Failover) ----------------------------------------------


def test_membership_defaults_drop_a_dead_member_within_seconds_and_use_no_instance_id() -> None:
    c = ObserverConfig.load({}, {})
    for conf in (c.consumer_settings(), c.keyed_consumer_settings()):
        assert conf["session.timeout.ms"] == 6000 and conf["heartbeat.interval.ms"] == 1000
        assert conf["partition.assignment.strategy"] == "cooperative-sticky"
        assert "group.instance.id" not in conf and "group.protocol" not in conf
    assert c.consumer_settings()["group.id"] == "observer"
    assert c.keyed_consumer_settings()["group.id"] == "observer.keyed"


def test_instance_id_gives_each_stage_its_own_static_member_id() -> None:
    c = ObserverConfig.load({}, {"OBSERVER_INSTANCE_ID": "observer-0", "OBSERVER_GROUP_ID": "g"})
    assert c.instance_id == "observer-0"
    assert c.consumer_settings()["group.instance.id"] == "observer-0-router"
    assert c.keyed_consumer_settings()["group.instance.id"] == "observer-0-tracker"
    assert c.keyed_consumer_settings()["session.timeout.ms"] == 6000
    assert "group.instance.id" not in c.producer_settings()
    assert "group.instance.id" not in c.admin_settings()


def test_membership_settings_stay_overridable() -> None:
    env = {
        "OBSERVER_KAFKA_SESSION_TIMEOUT_MS": "45000",
        "OBSERVER_KAFKA_HEARTBEAT_INTERVAL_MS": "3000",
    }
    conf = ObserverConfig.load({}, env).keyed_consumer_settings()
    assert (conf["session.timeout.ms"], conf["heartbeat.interval.ms"]) == ("45000", "3000")


def test_kip_848_protocol_leaves_the_session_and_assignor_to_the_broker() -> None:
    """librdkafka refuses the classic protocol's assignor, session and heartbeat settings
    with group.protocol=consumer: the observer's defaults for them are left out."""
    c = ObserverConfig.load({}, {"OBSERVER_KAFKA_GROUP_PROTOCOL": "consumer"})
    for conf in (c.consumer_settings(), c.keyed_consumer_settings()):
        assert conf["group.protocol"] == "consumer"
        for classic in (
            "partition.assignment.strategy",
            "session.timeout.ms",
            "heartbeat.interval.ms",
        ):
            assert classic not in conf


@pytest.mark.parametrize("bad", ["two words", "a/b", "é", "x" * 201])
def test_an_invalid_instance_id_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="OBSERVER_INSTANCE_ID"):
        ObserverConfig.load({}, {"OBSERVER_INSTANCE_ID": bad})


def test_an_instance_id_with_the_kip_848_protocol_is_refused() -> None:
    """Measured (docs/running.md, Failover): with group.protocol=consumer the broker refuses a
    restarted static member until the killed one's session expires, so it would crash-loop."""
    env = {"OBSERVER_INSTANCE_ID": "observer-0", "OBSERVER_KAFKA_GROUP_PROTOCOL": "consumer"}
    with pytest.raises(ConfigError, match=r"OBSERVER_INSTANCE_ID with group\.protocol=consumer"):
        ObserverConfig.load({}, env)


def test_in_kubernetes_the_pod_name_is_the_instance_id_unless_turned_off() -> None:
    k8s = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "observer-7d9c-x2"}
    c = ObserverConfig.load({}, k8s)
    assert c.instance_id == "observer-7d9c-x2"
    assert c.consumer_settings()["group.instance.id"] == "observer-7d9c-x2-router"
    assert ObserverConfig.load({}, {**k8s, "OBSERVER_INSTANCE_ID": "none"}).instance_id == ""
    assert ObserverConfig.load({}, {**k8s, "OBSERVER_INSTANCE_ID": "pod-a"}).instance_id == "pod-a"
    kip848 = {**k8s, "OBSERVER_KAFKA_GROUP_PROTOCOL": "consumer"}
    assert ObserverConfig.load({}, kip848).instance_id == ""
    # outside Kubernetes a host name is no instance id: two processes on one host share it
    assert ObserverConfig.load({}, {"HOSTNAME": "laptop"}).instance_id == ""
