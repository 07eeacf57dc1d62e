"""Webhook delivery off the consumer thread.

Worker threads POST webhook records, retrying failures (a transport error, a timeout or a
non-2xx answer) with exponential backoff, capped. A record leaves the outbox when it was
delivered (2xx), after `max_attempts`, or at once when retrying cannot help (`WebhookRefused`:
a destination the policy refuses, a secret that is not set); then it is logged and counted.
A slow or dead webhook only occupies a worker: the consumer loop never waits for it.

Each POST carries `content-type: application/json`, the record's `observer-id`, the headers
its flow's action declares (`${NAME}` resolved from the environment) and, with `sign:`,
`X-Observer-Signature: sha256=<hex HMAC-SHA256 of the body>`. URLs are logged masked
(`scheme://host[:port]/…`); header values and secrets never.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from observer.errors import ConfigError, ObserverError
from observer.flows.compiled import CompiledAction, CompiledFlow
from observer.flows.registry import FlowRegistry
from observer.flows.webhook import env_refs, resolve_env
from observer.masking import mask_webhook_url
from observer.runtime.backoff import backoff_ms
from observer.runtime.outbox import OutboxRecord

__all__ = [
    "SIGNATURE_HEADER",
    "Post",
    "WebhookDispatcher",
    "WebhookRefused",
    "WebhookTarget",
    "WebhookTargets",
    "backoff_ms",
    "refused_destination",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Observer-Signature"

Post = Callable[[str, bytes, Mapping[str, str]], int]
"""POST (url, body, headers) -> HTTP status; raises on a transport error or timeout, and
`WebhookRefused` when the request must not be sent at all."""


class WebhookRefused(ObserverError):
    """A webhook that retrying cannot deliver (e.g. a refused destination): given up at once."""


# -- where webhooks may go ---------------------------------------------------------------------

# Cloud metadata services: the link-local ranges (AWS, Azure, GCP, Oracle: 169.254.169.254),
# AWS' IPv6 endpoint and Alibaba's, and GCP's names for it.
_METADATA_ADDRESSES = {
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}
_METADATA_NAMES = {"metadata.google.internal", "metadata.goog"}


def refused_destination(host: str) -> str | None:
    """Why a webhook must not go to `host` (a name or an address) unless link-local
    destinations are allowed; None when it may. Names are checked as written; the poster
    checks the addresses they resolve to as well."""
    name = host.strip("[]").rstrip(".").lower()
    if name in _METADATA_NAMES:
        return f"{name} is a cloud metadata service"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return f"{ip} is a link-local address (where cloud metadata services answer)"
    if ip in _METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata service"
    return None


# -- what each webhook sends -------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """The resolved extra headers and signing key of one webhook action."""

    headers: tuple[tuple[str, str], ...] = ()
    secret: bytes | None = None


def _webhook_actions(flow: CompiledFlow) -> Iterator[CompiledAction]:
    seen: set[str] = set()
    handlers = [
        h
        for s in flow.steps
        for h in (s.if_missing, s.if_late, s.if_warning, s.if_out_of_order)
        if h
    ]
    handlers += [e.handler for e in flow.errors]
    if flow.sla is not None:
        handlers += [flow.sla.if_breached, flow.sla.if_warning]
    for handler in handlers:
        for action in handler.actions:
            if action.kind == "webhook" and action.name not in seen:
                seen.add(action.name)
                yield action


class WebhookTargets:
    """Headers and signing keys of the deployed flows' webhooks, resolved from `env`.

    A record is matched to its action by the flow and version in its body (the alert record)
    and its URL; `registry` is called each time, so flows deployed later are found."""

    def __init__(self, registry: Callable[[], FlowRegistry], env: Mapping[str, str]) -> None:
        self._registry = registry
        self._env = env

    def check(self, registry: FlowRegistry, *, allow_link_local: bool) -> None:
        """Raise ConfigError naming every webhook of `registry` whose environment variables
        are not set, or whose URL names a refused destination (at start: nothing is sent yet)."""
        problems = []
        for flow in registry:
            for action in _webhook_actions(flow):
                where = f"flow '{flow.name}' v{flow.version} ({flow.file}) action '{action.name}'"
                for name in self._missing(action):
                    problems.append(f"{where}: environment variable {name} is not set")
                host = urlsplit(action.url or "").hostname or ""
                why = None if allow_link_local else refused_destination(host)
                if why is not None:
                    problems.append(
                        f"{where}: webhook to {mask_webhook_url(action.url or '')} refused: {why} "
                        "(set OBSERVER_WEBHOOK_ALLOW_LINK_LOCAL=true to allow it)"
                    )
        if problems:
            raise ConfigError("webhooks: " + "; ".join(problems))

    def _missing(self, action: CompiledAction) -> list[str]:
        names = [n for _, v in action.webhook_headers for n in env_refs(v)]
        if action.sign_secret_env is not None:
            names.append(action.sign_secret_env)
        return sorted({n for n in names if not self._env.get(n)})

    def _action(self, url: str, body: bytes | None) -> CompiledAction | None:
        registry = self._registry()
        try:
            alert = orjson.loads(body or b"null")
        except orjson.JSONDecodeError:
            alert = None
        flows: list[CompiledFlow] = []
        if isinstance(alert, dict) and isinstance(alert.get("version"), int):
            own = registry.get(str(alert.get("flow")), alert["version"])
            flows += [own] if own is not None else []
        flows += sorted(registry, key=lambda f: -f.version)
        for flow in flows:
            for action in _webhook_actions(flow):
                if action.url == url:
                    return action
        return None

    def target(self, url: str, body: bytes | None) -> WebhookTarget:
        """What to add to a POST of `body` to `url`. Raises WebhookRefused when a variable it
        needs is not set (any more)."""
        action = self._action(url, body)
        if action is None:  # no deployed flow names it any more: plain POST
            return WebhookTarget()
        try:
            headers = tuple((k, resolve_env(v, self._env)) for k, v in action.webhook_headers)
            secret = None
            if action.sign_secret_env is not None:
                secret = resolve_env(f"${{{action.sign_secret_env}}}", self._env).encode()
        except KeyError as exc:
            raise WebhookRefused(f"environment variable {exc.args[0]} is not set") from None
        return WebhookTarget(headers, secret)


def sign(secret: bytes, body: bytes) -> str:
    """The value of `X-Observer-Signature`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    """A small pool of threads delivering webhooks with retries."""

    def __init__(
        self,
        post: Post,
        *,
        targets: WebhookTargets | None = None,
        workers: int = 2,
        max_attempts: int = 8,
        base_ms: int = 200,
        cap_ms: int = 30_000,
        monotonic: Callable[[], float],
        max_queued_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._post = post
        self._targets = targets
        self._workers = workers
        self._max_attempts = max_attempts
        self._base_ms = base_ms
        self._cap_ms = cap_ms
        self._mono = monotonic
        self._cond = threading.Condition()
        # (due at, seq, shard, record, attempts so far)
        self._heap: list[tuple[float, int, int, OutboxRecord, int]] = []
        self._seq = itertools.count()
        self._busy = 0
        self._done: list[tuple[int, str, bool]] = []
        self._stop = False
        self._threads: list[threading.Thread] = []
        # hostile input (issue 12): the bodies waiting (or retrying) take at most this much
        self._max_queued = max_queued_bytes
        self._queued = 0

    def start(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._run, name=f"observer-webhook-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, shard: int, record: OutboxRecord) -> None:
        """Queue a record. One that would take the queue over its byte budget (a webhook down
        while thousands of deviations want it) is given up at once: logged, and counted as a
        webhook given up; its alert is on the alerts topic all the same."""
        size = len(record.value or b"")
        with self._cond:
            if self._queued + size > self._max_queued:
                log.error(
                    "webhook %s not attempted: %d bytes of webhooks wait already (budget %d); "
                    "observer-id %s",
                    mask_webhook_url(record.webhook or ""),
                    self._queued,
                    self._max_queued,
                    record.observer_id,
                    extra={"observer_id": record.observer_id},
                )
                self._done.append((shard, record.observer_id, False))
                return
            self._queued += size
            heapq.heappush(self._heap, (self._mono(), next(self._seq), shard, record, 0))
            self._cond.notify()

    def take_done(self) -> list[tuple[int, str, bool]]:
        with self._cond:
            done, self._done = self._done, []
        return done

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._busy

    def stop(self, timeout_s: float) -> None:
        """Stop the workers (records not delivered yet stay in the outbox for the next start)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = self._mono() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - self._mono()))

    def _next(self) -> tuple[int, OutboxRecord, int] | None:
        with self._cond:
            while not self._stop:
                if self._heap:
                    wait = self._heap[0][0] - self._mono()
                    if wait <= 0:
                        _, _, shard, record, attempts = heapq.heappop(self._heap)
                        self._busy += 1
                        return shard, record, attempts
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _retry_delay_s(self, attempts: int) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones; None: give up. (The
        one place that decides retries, to be swapped for a shared retry policy.)"""
        if attempts >= self._max_attempts:
            return None
        return backoff_ms(attempts, self._base_ms, self._cap_ms) / 1000.0

    def _run(self) -> None:
        while (item := self._next()) is not None:
            shard, record, attempts = item
            attempts += 1
            problem, final = self._deliver(record)
            delay = None if final else self._retry_delay_s(attempts)
            where = mask_webhook_url(record.webhook or "")
            with self._cond:
                self._busy -= 1
                if problem is None or delay is None:
                    self._queued -= len(record.value or b"")
                if problem is None:
                    self._done.append((shard, record.observer_id, True))
                elif delay is None:
                    log.error(
                        "webhook %s: giving up after %d attempt%s (%s); observer-id %s",
                        where,
                        attempts,
                        "" if attempts == 1 else "s",
                        problem,
                        record.observer_id,
                        extra={"observer_id": record.observer_id},
                    )
                    self._done.append((shard, record.observer_id, False))
                else:
                    log.warning(
                        "webhook %s: %s; attempt %d, retrying in %.1fs",
                        where,
                        problem,
                        attempts,
                        delay,
                    )
                    heapq.heappush(
                        self._heap, (self._mono() + delay, next(self._seq), shard, record, attempts)
                    )
                    self._cond.notify()

    def _deliver(self, record: OutboxRecord) -> tuple[str | None, bool]:
        """(problem or None, whether it is final)."""
        assert record.webhook is not None
        body = record.value or b"null"
        headers = {"content-type": "application/json"}
        for name, value in record.headers:
            headers[name] = "" if value is None else value.decode("utf-8", "replace")
        try:
            if self._targets is not None:
                target = self._targets.target(record.webhook, record.value)
                headers.update(target.headers)
                if target.secret is not None:
                    headers[SIGNATURE_HEADER] = sign(target.secret, body)
            status = self._post(record.webhook, body, headers)
        except WebhookRefused as exc:
            return self._scrub(str(exc), record.webhook), True
        except Exception as exc:
            return self._scrub(f"{type(exc).__name__}: {exc}", record.webhook), False
        return (None if 200 <= status < 300 else f"HTTP {status}"), False

    @staticmethod
    def _scrub(problem: str, url: str) -> str:
        """An error message never repeats the URL whole."""
        return problem.replace(url, mask_webhook_url(url)) if url else problem
