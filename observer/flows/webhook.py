"""The `webhook:` action's checks and its `${NAME}` references to environment variables.

A webhook URL is an absolute http:// or https:// URL with a host. `headers:` values may name
environment variables as `${NAME}` (the whole value or part of it: `Bearer ${HOOK_TOKEN}`);
`sign: {secret: ${NAME}}` names the variable holding the HMAC key. Values are looked up when
`observer run` starts (a missing variable stops it with a clear error), never written into a
flow file, the outbox, the history or a log. Pure: no I/O, the environment is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from observer.flows.compiled import CompiledAction
from observer.flows.spec import WebhookSpec

__all__ = [
    "HEADER_NAME",
    "RESERVED_HEADERS",
    "SECRET_REF_PATTERN",
    "URL_PATTERN",
    "compile_webhook",
    "conflicting_webhooks",
    "env_refs",
    "resolve_env",
    "sign_secret_ref",
    "webhook_header_problems",
    "webhook_url_problem",
]

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
# For the JSON Schema (editors); the compiler checks more (webhook_url_problem).
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]*@?[^\s/?#]+"
SECRET_REF_PATTERN = r"^\s*\$\{[A-Za-z_][A-Za-z0-9_]*\}\s*$"
# Set by the observer itself (or by the HTTP client), so a flow cannot replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "host",
        "observer-id",
        "x-observer-signature",
    }
)


def webhook_url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, or None."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return f"webhook URL {url!r} contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"webhook URL {url!r} is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"webhook URL {url!r} must be http:// or https:// (it has {shown})"
    if not parts.hostname:
        return f"webhook URL {url!r} has no host"
    if port == 0:
        return f"webhook URL {url!r} has port 0"
    if "{{" in url or "${" in url:
        return (
            f"webhook URL {url!r}: a URL is fixed text (no templates, no ${{NAME}}); "
            "put secrets in headers"
        )
    return None


def env_refs(value: str) -> list[str]:
    """The environment variables a value names (`${NAME}`)."""
    return _REF.findall(value)


def _bad_ref(value: str) -> bool:
    """A `${` that does not start a well-formed `${NAME}`."""
    return "${" in _REF.sub("", value)


def webhook_header_problems(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """(header name, problem) for each bad header of a webhook action."""
    out = []
    for name, value in headers.items():
        if not HEADER_NAME.match(name):
            out.append((name, f"header name {name!r} is not a valid HTTP header name"))
        elif name.lower() in RESERVED_HEADERS:
            out.append((name, f"header {name!r} is set by the observer and cannot be given"))
        elif not isinstance(value, str):
            out.append((name, f"header {name!r}: the value must be a string"))
        elif any(c in value for c in "\r\n\0"):
            out.append((name, f"header {name!r}: the value contains a line break"))
        elif _bad_ref(value):
            out.append(
                (
                    name,
                    f"header {name!r}: write environment variables as ${{NAME}} "
                    "(letters, digits, _)",
                )
            )
        elif "{{" in value:
            out.append((name, f"header {name!r}: webhook headers are not templates"))
    return out


def sign_secret_ref(secret: str) -> str | None:
    """The variable `sign.secret` names (it must be exactly `${NAME}`), or None if it is not
    such a reference."""
    m = _REF.fullmatch(secret.strip())
    return m.group(1) if m else None


def resolve_env(value: str, env: Mapping[str, str]) -> str:
    """`value` with every `${NAME}` replaced by the variable's value. Raises KeyError(NAME)
    for a variable that is not set or empty."""

    def value_of(m: re.Match[str]) -> str:
        found = env.get(m.group(1), "")
        if not found:
            raise KeyError(m.group(1))
        return found

    return _REF.sub(value_of, value)


def compile_webhook(
    name: str, hook: WebhookSpec
) -> tuple[CompiledAction, list[tuple[tuple[str, ...], str]]]:
    """The compiled action and its problems, each with where it is under `webhook:`."""
    problems: list[tuple[tuple[str, ...], str]] = []
    problem = webhook_url_problem(hook.url)
    if problem is not None:
        problems.append((("url",), f"action '{name}': {problem}"))
    for header, message in webhook_header_problems(hook.headers):
        problems.append((("headers", header), f"action '{name}': {message}"))
    secret_env = None
    if hook.sign is not None:
        secret_env = sign_secret_ref(hook.sign.secret)
        if secret_env is None:
            problems.append(
                (
                    ("sign", "secret"),
                    f"action '{name}': sign.secret must name an environment variable as "
                    "${NAME} (a secret is never written in a flow file)",
                )
            )
    action = CompiledAction(
        name,
        "webhook",
        url=hook.url,
        severity=hook.severity,
        webhook_headers=tuple(hook.headers.items()),
        sign_secret_env=secret_env,
    )
    return action, problems


def conflicting_webhooks(actions: Mapping[str, CompiledAction]) -> list[tuple[str, str]]:
    """(action name, problem) for webhook actions of one flow that POST to the same URL with
    other headers or signing: a delivery is matched to its action by flow, version and URL."""
    first: dict[str, CompiledAction] = {}
    out = []
    for name, action in actions.items():
        if action.kind != "webhook" or action.url is None:
            continue
        seen = first.setdefault(action.url, action)
        if seen is not action and (seen.webhook_headers, seen.sign_secret_env) != (
            action.webhook_headers,
            action.sign_secret_env,
        ):
            out.append(
                (
                    name,
                    f"action '{name}' posts to the same URL as action '{seen.name}' with other "
                    "headers or signing; use one action for one URL",
                )
            )
    return out
