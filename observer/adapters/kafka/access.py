"""A check at start that Kafka lets the observer in: one metadata request with the observer's
own settings. A refused login or a failed TLS handshake is a configuration problem that
retrying cannot fix; it is reported once, clearly, instead of librdkafka retrying forever."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from observer.errors import ConfigError

__all__ = ["check_kafka_access"]

_AFTER = re.compile(r"\s*\(after \d+ms in state \w+\)\s*$")
_HINTS = {
    KafkaError._AUTHENTICATION: (
        "Kafka refused the login",
        "check OBSERVER_KAFKA_SASL_USERNAME, OBSERVER_KAFKA_SASL_PASSWORD and "
        "OBSERVER_KAFKA_SASL_MECHANISM",
    ),
    KafkaError._SSL: (
        "TLS with Kafka failed",
        "set OBSERVER_KAFKA_SSL_CA_LOCATION to the CA that signed the broker's certificate "
        "(and check OBSERVER_KAFKA_SECURITY_PROTOCOL)",
    ),
}


def check_kafka_access(settings: Mapping[str, Any], timeout_s: float = 10.0) -> bool:
    """True once the cluster answered a metadata request, False if it did not answer within
    `timeout_s` (it may later: the caller goes on and retries). Raises ConfigError when the
    settings are invalid, the login is refused or TLS fails."""
    refused: list[KafkaError] = []
    conf = {k: v for k, v in settings.items() if k not in ("logger", "error_cb")}
    conf.update(log_level=0, error_cb=lambda err: refused.append(err))
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:
        raise ConfigError(f"invalid Kafka settings: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if admin.list_topics(timeout=min(0.5, max(0.05, deadline - time.monotonic()))).brokers:
                return True
        except KafkaException:
            pass
        admin.poll(0)
        for err in refused:
            if err.code() in _HINTS:
                what, hint = _HINTS[err.code()]
                raise ConfigError(f"{what}: {_AFTER.sub('', err.str())}; {hint}")
        if time.monotonic() >= deadline:
            return False
