"""Webhooks as a careful user expects them: http(s) URLs only (file:line otherwise), secrets
from the environment as `${NAME}`, a signed body, link-local (cloud metadata) destinations
refused unless allowed, and URLs masked wherever they are shown."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from observer.engine.core import Engine, Topics
from observer.engine.state import Event, KeySlot
from observer.errors import ConfigError, FlowError
from observer.flows.compiler import load_registry
from observer.flows.registry import FlowRegistry
from observer.masking import mask_webhook_url
from observer.runtime.batch import history_entry
from observer.runtime.outbox import OutboxRecord, to_record
from observer.runtime.query import describe_instance
from observer.runtime.webhooks import (
    WebhookDispatcher,
    WebhookRefused,
    WebhookTargets,
    refused_destination,
)

FLOW = """\
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: orders.Paid
    within: 10s
    if_missing: [page]
actions:
  page:
    webhook:
      url: "https://hooks.example.com/services/T000/B000/XXXX?token=abc"
      severity: critical
      headers:
        Authorization: "Bearer ${HOOK_TOKEN}"
        X-Team: payments
      sign: {secret: "${HOOK_KEY}"}
"""
T0 = 1_767_225_600_000
ENV = {"HOOK_TOKEN": "tok-123", "HOOK_KEY": "k3y"}


def registry(tmp_path: Path, text: str = FLOW) -> FlowRegistry:
    (tmp_path / "flow.yaml").write_text(text)
    return load_registry([tmp_path / "flow.yaml"])


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(FlowError) as exc:
        registry(tmp_path, text)
    return [str(p) for p in exc.value.problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "must be http:// or https:// (it has file://)"),
        ("gopher://example.com:70/_x", "must be http:// or https:// (it has gopher://)"),
        ("not a url", "contains whitespace"),
        ("example.com/hook", "must be http:// or https:// (it has no scheme)"),
        ("https:///path-only", "has no host"),
        ("http://h:99999/x", "is not a valid URL"),
        ("https://h/{{key}}", "a URL is fixed text"),
    ],
)
def test_a_webhook_url_that_is_not_http_or_https_is_a_validation_error(
    tmp_path: Path, url: str, message: str
) -> None:
    text = FLOW.replace("https://hooks.example.com/services/T000/B000/XXXX?token=abc", url)
    (found,) = problems(tmp_path, text)
    where = f"{tmp_path / 'flow.yaml'}:{line_of(text, 'url:')}: "
    assert found.startswith(where + f"flow 'shop': action 'page': webhook URL {url!r}"), found
    assert message in found


def test_a_link_local_url_validates_the_policy_is_the_runtime_s(tmp_path: Path) -> None:
    text = FLOW.replace(
        "https://hooks.example.com/services/T000/B000/XXXX?token=abc",
        "http://169.254.169.254/latest/meta-data/",
    )
    reg = registry(tmp_path, text)
    targets = WebhookTargets(lambda: reg, ENV)
    with pytest.raises(ConfigError, match=r"169\.254\.169\.254 is a link-local address") as err:
        targets.check(reg, allow_link_local=False)
    assert "flow.yaml" in str(err.value) and "action 'page'" in str(err.value)
    assert "/latest/meta-data" not in str(err.value)
    targets.check(reg, allow_link_local=True)


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        ("X-Team: payments", "Content-Type: text/plain", "Content-Type", "is set by the observer"),
        (
            "X-Team: payments",
            "X-Observer-Signature: x",
            "X-Observer-Signature",
            "set by the observer",
        ),
        ("X-Team: payments", '"Bad Name": x', "Bad Name", "not a valid HTTP header name"),
        (
            "X-Team: payments",
            'X-Team: "${lower-case}"',
            "X-Team",
            "write environment variables as ${NAME}",
        ),
        ("X-Team: payments", 'X-Team: "{{ key }}"', "X-Team", "webhook headers are not templates"),
        (
            'sign: {secret: "${HOOK_KEY}"}',
            "sign: {secret: hunter2}",
            "sign:",
            "sign.secret must name an environment variable",
        ),
    ],
)
def test_bad_headers_and_a_literal_secret_are_validation_errors(
    tmp_path: Path, old: str, new: str, needle: str, message: str
) -> None:
    text = FLOW.replace(old, new)
    found = problems(tmp_path, text)
    assert len(found) == 1 and message in found[0], found
    assert found[0].startswith(f"{tmp_path / 'flow.yaml'}:{line_of(text, needle)}:"), found


def test_two_actions_posting_to_one_url_must_send_the_same(tmp_path: Path) -> None:
    text = FLOW + (
        "  page2:\n    webhook:\n"
        '      url: "https://hooks.example.com/services/T000/B000/XXXX?token=abc"\n'
    )
    (found,) = problems(tmp_path, text)
    assert "action 'page2' posts to the same URL as action 'page'" in found


# -- the runtime ------------------------------------------------------------------------------


def webhook_record(reg: FlowRegistry) -> OutboxRecord:
    engine = Engine(reg, Topics())
    slot = KeySlot("shop", "o1")
    effects = engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0), T0)
    effects += engine.fire(slot, T0 + 10_000, T0 + 10_001)
    (hook,) = [e for e in effects if getattr(e, "webhook", None)]
    return to_record(hook, T0, 0)  # type: ignore[arg-type]


def deliver(
    targets: WebhookTargets | None,
    record: OutboxRecord,
    answers: list[int] | None = None,
    attempts: int = 1,
) -> tuple[list[tuple[str, bytes, dict[str, str]]], list[tuple[int, str, bool]]]:
    calls: list[tuple[str, bytes, dict[str, str]]] = []
    statuses = iter(answers or [200])

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        calls.append((url, body, dict(headers)))
        return next(statuses)

    d = WebhookDispatcher(
        post,
        targets=targets,
        workers=1,
        max_attempts=attempts,
        base_ms=1,
        cap_ms=2,
        monotonic=time.monotonic,
    )
    d.start()
    d.submit(3, record)
    done: list[tuple[int, str, bool]] = []
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        done += d.take_done()
        time.sleep(0.005)
    d.stop(1)
    return calls, done


def test_a_post_carries_the_declared_headers_and_a_signature_of_its_body(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    record = webhook_record(reg)
    targets = WebhookTargets(lambda: reg, ENV)
    targets.check(reg, allow_link_local=False)
    (call,), done = deliver(targets, record)
    url, body, headers = call
    assert url == "https://hooks.example.com/services/T000/B000/XXXX?token=abc"
    assert headers["Authorization"] == "Bearer tok-123" and headers["X-Team"] == "payments"
    assert headers["observer-id"] == record.observer_id
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert headers["X-Observer-Signature"] == f"sha256={expected}"
    assert orjson.loads(body)["severity"] == "critical"
    assert done == [(3, record.observer_id, True)]


def test_a_missing_secret_stops_the_start_and_later_refuses_without_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = registry(tmp_path)
    targets = WebhookTargets(lambda: reg, {"HOOK_TOKEN": "tok-123", "HOOK_KEY": ""})
    with pytest.raises(ConfigError, match="environment variable HOOK_KEY is not set"):
        targets.check(reg, allow_link_local=False)
    with caplog.at_level(logging.ERROR):
        calls, done = deliver(targets, webhook_record(reg), attempts=5)
    assert calls == [] and done[0][2] is False
    assert "HOOK_KEY is not set" in caplog.text and "giving up after 1 attempt" in caplog.text


def test_urls_are_masked_in_logs_and_in_the_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = registry(tmp_path)
    record = webhook_record(reg)
    with caplog.at_level(logging.WARNING):
        deliver(WebhookTargets(lambda: reg, ENV), record, answers=[500, 500], attempts=2)
    assert "https://hooks.example.com/…" in caplog.text
    for secret in ("T000", "XXXX", "token=abc", "tok-123", "k3y"):
        assert secret not in caplog.text
    engine = Engine(reg, Topics())
    slot = KeySlot("shop", "o1")
    effects = engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0), T0)
    effects += engine.fire(slot, T0 + 10_000, T0 + 10_001)
    history = [history_entry(e, T0) for e in effects]
    assert b"XXXX" not in b"".join(history)
    legacy = orjson.dumps(
        {"at": T0, "what": "published", "category": "webhook", "webhook": record.webhook}
    )
    view = describe_instance(engine, "shop", "o1", None, [*history, legacy])
    assert view is not None
    assert {a.get("webhook") for a in view["actions"] if a["category"] == "webhook"} == {
        "https://hooks.example.com/…"
    }
    assert "XXXX" not in orjson.dumps(view).decode()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/XXXX", "https://hooks.slack.com/…"),
        ("http://user:pw@10.0.0.5:9099/hooks?sig=1", "http://10.0.0.5:9099/…"),
        ("https://example.com", "https://example.com"),
        ("https://example.com/", "https://example.com"),
        ("http://[::1]:8080/x", "http://[::1]:8080/…"),
        ("not a url", "***"),
    ],
)
def test_mask_webhook_url_shows_scheme_host_and_port_only(url: str, shown: str) -> None:
    assert mask_webhook_url(url) == shown


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("169.254.169.254", True),
        ("169.254.0.1", True),
        ("fe80::1", True),
        ("[fe80::1]", True),
        ("::ffff:169.254.169.254", True),
        ("fd00:ec2::254", True),
        ("100.100.100.200", True),
        ("metadata.google.internal", True),
        ("METADATA.GOOGLE.INTERNAL.", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.1.1", False),
        ("hooks.example.com", False),
        ("::1", False),
    ],
)
def test_link_local_and_metadata_destinations_are_refused(host: str, refused: bool) -> None:
    assert (refused_destination(host) is not None) == refused


def test_a_refused_destination_is_given_up_at_once(tmp_path: Path) -> None:
    reg = registry(tmp_path)

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        raise WebhookRefused("destination refused: 169.254.169.254 is a link-local address")

    d = WebhookDispatcher(
        post, monotonic=time.monotonic, workers=1, max_attempts=8, base_ms=1, cap_ms=1
    )
    d.start()
    d.submit(0, webhook_record(reg))
    deadline = time.monotonic() + 5
    done: list[tuple[int, str, bool]] = []
    while not done and time.monotonic() < deadline:
        done += d.take_done()
        time.sleep(0.005)
    d.stop(1)
    assert [ok for _, _, ok in done] == [False]
